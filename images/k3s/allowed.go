package k3s

import (
	"regexp"
	"strings"
)

// AllowedImagesExpression is the CEL expression of the ValidatingAdmissionPolicy that refuses Pods
// running images outside registries: true when every container, init container and ephemeral
// container image is allowed. It uses standard CEL only (no Kubernetes extension library), so cel-go
// evaluates it as the API server does.
//
// Image names are first normalised as container runtimes do (distribution/reference
// ParseNormalizedNamed): a name without '/' is docker.io/library/<name>; a name whose first component
// has no '.' or ':', is not localhost and is lowercase is on docker.io; index.docker.io is docker.io.
// Standard CEL has no substring function, so the expression prefixes "docker.io/" or
// "docker.io/library/" by concatenation, and the regular expression built from registries accepts the
// explicit docker.io and index.docker.io spellings itself. An entry matches only at a boundary: a
// registry ("registry.example.com:5000") is followed by '/'; a path prefix
// ("registry.example.com/team") by '/', ':' (a tag), '@' (a digest) or the end. registries must be
// valid k3s.allowedRegistries entries (images.K3s.Validate).
func AllowedImagesExpression(registries []string) string {
	re := allowedImageRegexp(registries)
	allowed := func(list string) string {
		return list + ".all(c, has(c.image) && " + normalisedImage("c.image") + ".matches(r'" + re + "'))"
	}
	return allowed("object.spec.containers") +
		" && (!has(object.spec.initContainers) || " + allowed("object.spec.initContainers") + ")" +
		" && (!has(object.spec.ephemeralContainers) || " + allowed("object.spec.ephemeralContainers") + ")"
}

// explicitDomainRE matches an image name whose first component is a registry host
// (distribution/reference splitDockerDomain).
const explicitDomainRE = `^(localhost|[^/]*[.:][^/]*|[^/]*[A-Z][^/]*)/`

// normalisedImage is a CEL expression for the image name x with Docker Hub's implicit parts added:
// "nginx" becomes docker.io/library/nginx, "rancher/x" docker.io/rancher/x; names with a registry
// host are left as they are.
func normalisedImage(x string) string {
	return "(!" + x + ".matches(r'^[^/]+/') ? 'docker.io/library/' + " + x +
		" : !" + x + ".matches(r'" + explicitDomainRE + "') ? 'docker.io/' + " + x +
		" : " + x + ")"
}

// allowedImageRegexp is the RE2 expression a normalised image name must match: one alternative per
// entry (and two for Docker Hub's library entries, which "docker.io/nginx" also reaches).
func allowedImageRegexp(registries []string) string {
	var alts []string
	for _, r := range registries {
		host, p, _ := strings.Cut(r, "/")
		// After a path, ':' starts a tag and '@' a digest, and the path may be the whole name; after a
		// host only '/' may follow. On Docker Hub a one-component path cannot be followed by a tag:
		// "docker.io/rancher:1" is docker.io/library/rancher:1.
		boundary := `/`
		if p != "" && (host != "docker.io" || strings.Contains(p, "/")) {
			boundary = `([/:@]|$)`
		}
		if host != "docker.io" {
			alts = append(alts, regexp.QuoteMeta(strings.TrimSuffix(host+"/"+p, "/"))+boundary)
			continue
		}
		const hub = `(index\.)?docker\.io/`
		switch {
		case p == "":
			alts = append(alts, hub)
			continue
		case p == "library":
			// docker.io/nginx and index.docker.io/nginx are docker.io/library/nginx.
			alts = append(alts, hub+`[^/]+$`)
		case strings.HasPrefix(p, "library/") && !strings.Contains(p[len("library/"):], "/"):
			alts = append(alts, hub+regexp.QuoteMeta(p[len("library/"):])+`([:@][^/]*)?$`)
		}
		alts = append(alts, hub+regexp.QuoteMeta(p)+boundary)
	}
	if len(alts) == 0 {
		return `^$.` // matches nothing
	}
	return "^(" + strings.Join(alts, "|") + ")"
}
