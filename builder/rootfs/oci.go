package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// defaultPlatform is the platform picked from a multi-platform index when
// Options.Platform is empty: Basalt images are x86-64.
const defaultPlatform = "linux/amd64"

// FromOCI indexes the root filesystem of an OCI image. ref is an OCI
// image-layout folder, a docker-archive tarball (as `docker save` writes),
// or a registry reference such as "127.0.0.1:5000/img:tag" (plain HTTP for
// loopback and private addresses; credentials from the Docker config).
// The layers are flattened with their whiteouts by go-containerregistry's
// mutate.Extract, whose rules also decide duplicates; the result is spooled
// to a temporary file.
//
// Registry access fails fast: no retries, 10 s to connect, 30 s to a first
// response. ctx bounds the whole pull.
func FromOCI(ctx context.Context, ref string, opts Options) (*Tree, error) {
	t, err := fromOCI(ctx, ref, opts)
	if err != nil {
		return nil, fmt.Errorf("rootfs image %s: %w", ref, err)
	}
	return t, nil
}

func fromOCI(ctx context.Context, ref string, opts Options) (_ *Tree, err error) {
	ps := opts.Platform
	if ps == "" {
		ps = defaultPlatform
	}
	plat, err := v1.ParsePlatform(ps)
	if err != nil {
		return nil, fmt.Errorf("platform %q: %w", ps, err)
	}
	img, err := openImage(ctx, ref, plat)
	if err != nil {
		return nil, err
	}

	spool, err := newSpool(opts.TempDir)
	if err != nil {
		return nil, err
	}
	t := &Tree{source: ref, files: []*os.File{spool}}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	rc := mutate.Extract(img)
	_, err = io.Copy(spool, ctxReader{ctx, rc})
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("flatten layers: %w", err)
	}
	b := newBuilder(opts)
	// mutate.Extract writes upper layers first, so a hard link may come
	// before its target.
	if err := indexTar(b, t, 0, true); err != nil {
		return nil, err
	}
	if err := b.finish(t); err != nil {
		return nil, err
	}
	return t, nil
}

// openImage opens ref as an image-layout folder, a docker-archive file or a
// registry reference, in that order.
func openImage(ctx context.Context, ref string, plat *v1.Platform) (v1.Image, error) {
	if fi, err := os.Stat(ref); err == nil {
		if fi.IsDir() {
			idx, err := layout.ImageIndexFromPath(ref)
			if err != nil {
				return nil, fmt.Errorf("read OCI layout: %w", err)
			}
			return imageFromIndex(idx, plat)
		}
		img, err := tarball.ImageFromPath(ref, nil)
		if err != nil {
			return nil, fmt.Errorf("read docker archive: %w", err)
		}
		return img, nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("neither a file nor an image reference: %w", err)
	}
	img, err := remote.Image(r,
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(*plat),
		remote.WithTransport(newTransport()),
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
		remote.WithRetryPredicate(func(error) bool { return false }),
	)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	return img, nil
}

// newTransport is an HTTP transport with short connect and response
// timeouts, so an unreachable registry fails in seconds.
func newTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       30 * time.Second,
	}
}

// imageFromIndex picks the image from an index: its only image, or the
// one for plat when it holds several.
func imageFromIndex(idx v1.ImageIndex, plat *v1.Platform) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	var cands []v1.Descriptor
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() || d.MediaType.IsIndex() {
			cands = append(cands, d)
		}
	}
	if len(cands) > 1 {
		var match []v1.Descriptor
		for _, d := range cands {
			if d.Platform != nil && d.Platform.Satisfies(*plat) {
				match = append(match, d)
			}
		}
		if len(match) != 1 {
			return nil, fmt.Errorf("index holds %d images and %d of them are for %s", len(cands), len(match), plat)
		}
		cands = match
	}
	if len(cands) == 0 {
		return nil, errors.New("index holds no image")
	}
	d := cands[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("read index %s: %w", d.Digest, err)
		}
		return imageFromIndex(child, plat)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", d.Digest, err)
	}
	return img, nil
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
