package lint

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/basalt-os/basalt/images/k3s"
)

var (
	secureTokenRE = regexp.MustCompile(`K10[0-9a-f]{64}::`)
	// envTokenRE is K3S_TOKEN= or K3S_AGENT_TOKEN= with a value, bare or quoted. A value starting
	// with '$' refers to another variable; an empty one ("") sets nothing.
	envTokenRE = regexp.MustCompile(`K3S_(AGENT_)?TOKEN=["']?[^\s"'$]`)
)

// tokenScanSkip are files not scanned for tokens: the binary and the compressed image tarballs,
// whose content the record pins by sha256.
func tokenScanSkip(p string) bool {
	return "/"+p == k3s.BinaryPath || strings.HasPrefix("/"+p, k3s.ImagesDir+"/")
}

func (s *state) checkNoToken() (Status, string) {
	var found []string
	for _, p := range []string{k3s.DataDir + "/server/token", k3s.DataDir + "/server/agent-token", k3s.TokenPath} {
		if s.exists(p) {
			found = append(found, p+" exists")
		}
	}
	files := append([]k3s.Dropin{{Name: k3s.ConfigPath, Data: s.base}}, s.dropins...)
	for i, f := range files {
		name := f.Name
		if i > 0 {
			name = path.Join(k3s.DropinDir, f.Name)
		}
		for _, key := range []string{"token", "agent-token", "t"} {
			if yamlHasKey(f.Data, key) {
				found = append(found, fmt.Sprintf("%s sets %s", name, key))
			}
		}
	}
	buf := make([]byte, scanChunk+scanOverlap)
	err := fs.WalkDir(s.img.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || tokenScanSkip(p) {
			return nil
		}
		hit, err := scanFile(s.img.FS, p, buf)
		if err != nil {
			return err
		}
		if hit != "" {
			found = append(found, fmt.Sprintf("/%s holds %s", p, hit))
		}
		return nil
	})
	if err != nil {
		return Fail, fmt.Sprintf("scan for tokens: %v", err)
	}
	flags, err := s.tokenFlags()
	if err != nil {
		return Fail, fmt.Sprintf("scan units and environment files for token flags: %v", err)
	}
	found = append(found, flags...)
	if len(found) > 0 {
		return Fail, "join token material in the image (provision it at first boot instead): " + strings.Join(found, "; ")
	}
	return Pass, "no token file, no token key, no K10… token or K3S_TOKEN= in any file, no --token, --agent-token or -t in units and environment files"
}

// yamlHasKey reports whether a K3s config file sets key (or key+) at its top level.
func yamlHasKey(data []byte, key string) bool {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == ' ' || line[0] == '\t' || line[0] == '#' {
			continue
		}
		k, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"'`)
		if strings.TrimSuffix(k, "+") == key {
			return true
		}
	}
	return false
}

// Token scanning reads files in chunks of scanChunk bytes, keeping the last scanOverlap bytes of a
// chunk so that a token across two chunks is still seen.
const (
	scanChunk   = 1 << 20
	scanOverlap = 80
)

// scanFile looks for a token pattern in a file, using buf (scanChunk+scanOverlap bytes); it returns
// what was found (never the token itself).
func scanFile(fsys fs.FS, p string, buf []byte) (string, error) {
	f, err := fsys.Open(p)
	if err != nil {
		return "", fmt.Errorf("open /%s: %w", p, err)
	}
	defer f.Close()
	keep := 0
	for {
		n, err := io.ReadFull(f, buf[keep:])
		chunk := buf[:keep+n]
		if secureTokenRE.Match(chunk) {
			return "a secure-format token (K10<hash>::…)", nil
		}
		if m := envTokenRE.Find(chunk); m != nil {
			return "a " + string(m[:bytes.IndexByte(m, '=')+1]) + " setting", nil
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("read /%s: %w", p, err)
		}
		keep = copy(buf, chunk[len(chunk)-scanOverlap:])
	}
}

// unitDirs are the folders of systemd units an image can hold (/run is not in an image). A folder
// reached through a symlink (/lib → usr/lib) is skipped: it is scanned under its real name.
var unitDirs = []string{"etc/systemd/system", "usr/local/lib/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"}

// envDirs are the folders of environment files that units, K3s's among them
// (EnvironmentFile=-/etc/default/%N), read.
var envDirs = []string{"etc/default", "etc/sysconfig"}

// realDir reports whether p is a folder reached without a symlink.
func realDir(fsys fs.FS, p string) bool {
	parts := strings.Split(p, "/")
	for i := range parts {
		fi, err := fs.Lstat(fsys, strings.Join(parts[:i+1], "/"))
		if err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// tokenFlags looks for a join token given on K3s's command line: --token, --agent-token or -t with
// a literal value, in the Exec lines and Environment= settings of systemd units and drop-ins and in
// environment files (/etc/default/*, /etc/sysconfig/* and those K3s's units name). -t is looked for
// only where it reaches K3s: after the k3s command, in a K3s unit, or in an environment file named
// k3s* or read by a K3s unit. The findings name file, setting and flag, never the value.
func (s *state) tokenFlags() ([]string, error) {
	var found []string
	k3sEnvFiles := map[string]bool{}
	for _, dir := range unitDirs {
		if !realDir(s.img.FS, dir) {
			continue
		}
		err := fs.WalkDir(s.img.FS, dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			unit := path.Base(p)
			if strings.HasSuffix(path.Dir(p), ".d") && strings.HasSuffix(p, ".conf") {
				unit = strings.TrimSuffix(path.Base(path.Dir(p)), ".d") // a drop-in
			} else if !strings.HasSuffix(p, ".service") {
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			data, err := fs.ReadFile(s.img.FS, p)
			if err != nil {
				return fmt.Errorf("read /%s: %w", p, err)
			}
			u := scanUnit(data, unit)
			for _, f := range u.found {
				found = append(found, "/"+p+": "+f)
			}
			if u.k3s {
				for _, e := range u.envFiles {
					k3sEnvFiles[rel(e)] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	envFiles := map[string]bool{}
	for _, dir := range envDirs {
		if !realDir(s.img.FS, dir) {
			continue
		}
		ents, err := fs.ReadDir(s.img.FS, dir)
		if err != nil {
			return nil, fmt.Errorf("read /%s: %w", dir, err)
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				envFiles[path.Join(dir, e.Name())] = true
			}
		}
	}
	for p := range k3sEnvFiles {
		envFiles[p] = true
	}
	for _, p := range sortedKeys(envFiles) {
		data, err := fs.ReadFile(s.img.FS, p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // EnvironmentFile=-… may be absent
		}
		if err != nil {
			return nil, fmt.Errorf("read /%s: %w", p, err)
		}
		short := k3sEnvFiles[p] || strings.HasPrefix(path.Base(p), "k3s")
		for _, f := range scanEnvFile(data, short) {
			found = append(found, "/"+p+": "+f)
		}
	}
	return found, nil
}

// unitScan is what scanUnit finds in a unit file.
type unitScan struct {
	k3s      bool     // an Exec line runs k3s, or the unit is named k3s*
	envFiles []string // EnvironmentFile= paths, with %N, %n, %p resolved
	found    []string
}

// scanUnit reads a systemd unit file (or drop-in) of the unit named unit for token flags.
func scanUnit(data []byte, unit string) unitScan {
	u := unitScan{k3s: strings.HasPrefix(unit, "k3s")}
	type setting struct{ key, value string }
	var settings []setting
	var cont strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if cont.Len() == 0 && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if cont.Len() > 0 && line != "" && (line[0] == '#' || line[0] == ';') {
			continue // a comment inside a continued line
		}
		if strings.HasSuffix(line, `\`) {
			cont.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cont.WriteString(line)
		full := cont.String()
		cont.Reset()
		k, v, ok := strings.Cut(full, "=")
		if ok {
			settings = append(settings, setting{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	name := strings.TrimSuffix(unit, path.Ext(unit))
	prefix, _, _ := strings.Cut(name, "@")
	specifiers := strings.NewReplacer("%N", name, "%n", unit, "%p", prefix, "%%", "%")
	for _, st := range settings {
		switch {
		case strings.HasPrefix(st.key, "Exec"):
			args := words(st.value)
			for i, a := range args {
				if path.Base(strings.TrimLeft(a, "-@:+!|")) != "k3s" {
					continue
				}
				u.k3s = true
				if f := tokenFlag(args[i+1:], true); f != "" {
					u.found = append(u.found, fmt.Sprintf("%s passes %s to k3s", st.key, f))
				}
				break
			}
		case st.key == "EnvironmentFile":
			if e := strings.TrimPrefix(st.value, "-"); e != "" {
				u.envFiles = append(u.envFiles, specifiers.Replace(e))
			}
		}
	}
	for _, st := range settings {
		if st.key != "Environment" {
			continue
		}
		for _, assign := range splitWords(st.value) {
			v, val, ok := strings.Cut(assign, "=")
			if ok {
				if f := tokenFlag(words(val), u.k3s); f != "" {
					u.found = append(u.found, fmt.Sprintf("Environment %s passes %s", v, f))
				}
			}
		}
	}
	return u
}

// scanEnvFile reads an environment file (KEY=value lines, shell quoting) for token flags in values;
// -t counts only when short is set.
func scanEnvFile(data []byte, short bool) []string {
	var found []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if f := tokenFlag(words(v), short); f != "" {
			found = append(found, fmt.Sprintf("%s passes %s", strings.TrimSpace(k), f))
		}
	}
	return found
}

// words splits s into words and splits each word again, so that the arguments inside a quoted
// string ("sh -c 'k3s server --token x'", K3S_EXEC="server --token x") are words too.
func words(s string) []string {
	var out []string
	for _, w := range splitWords(s) {
		out = append(out, splitWords(w)...)
	}
	return out
}

// splitWords splits s as systemd and the shell do for what is looked for here: blanks separate
// words, single and double quotes group, a backslash escapes the next character (not inside single
// quotes).
func splitWords(s string) []string {
	var (
		out    []string
		b      strings.Builder
		inWord bool
		quote  rune
		escape bool
	)
	for _, r := range s {
		switch {
		case escape:
			b.WriteRune(r)
			escape = false
		case r == '\\' && quote != '\'':
			escape, inWord = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				b.WriteRune(r)
			}
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r':
			if inWord {
				out = append(out, b.String())
				b.Reset()
				inWord = false
			}
		default:
			b.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, b.String())
	}
	return out
}

// tokenFlag returns the first K3s join-token flag in args given a literal value (--token x,
// --token=x, --agent-token, and -t when short is set; one dash or two, as K3s's flag parser takes
// them), or "". A value starting with '$' refers to a variable, one starting with '-' is the next flag.
func tokenFlag(args []string, short bool) string {
	for i, a := range args {
		name, val, eq := strings.Cut(a, "=")
		if !strings.HasPrefix(name, "-") || strings.HasPrefix(name, "---") {
			continue
		}
		switch strings.TrimLeft(name, "-") {
		case "token", "agent-token":
		case "t":
			if !short {
				continue
			}
		default:
			continue
		}
		if !eq {
			if i+1 >= len(args) {
				continue
			}
			val = args[i+1]
			if strings.HasPrefix(val, "-") {
				continue
			}
		}
		if val == "" || strings.HasPrefix(val, "$") {
			continue
		}
		return name
	}
	return ""
}

// registryFiles are the registries.yaml files K3s reads: RegistriesPath, or the config's
// private-registry.
func (s *state) registryFiles() []string {
	files := []string{k3s.RegistriesPath}
	if p, ok := s.cfg["private-registry"].(string); ok && p != "" && path.Clean(p) != k3s.RegistriesPath {
		files = append(files, path.Clean(p))
	}
	return files
}

// checkRegistryCredentials fails when a registries.yaml in the image holds credentials: configs.<registry>.auth
// (username, password, auth, identity token), a client key (tls.key_file) that is in the image, or a
// mirror endpoint URL with a user or password. Every device would share them; they are provisioned
// per device instead. The detail names registries and keys, never values.
func (s *state) checkRegistryCredentials() (Status, string) {
	var found, read []string
	for _, p := range s.registryFiles() {
		data, err := s.readFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Fail, fmt.Sprintf("read %s: %v", p, err)
		}
		read = append(read, p)
		var doc any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			// A syntax error names a line, not a value.
			return Fail, fmt.Sprintf("%s: %v", p, err)
		}
		configs, _ := dig(doc, "configs").(map[string]any)
		for _, reg := range sortedKeys(configs) {
			c := configs[reg]
			switch auth := dig(c, "auth").(type) {
			case nil:
			case map[string]any:
				var keys []string
				for _, k := range sortedKeys(auth) {
					if v := auth[k]; v != nil && v != "" {
						keys = append(keys, k)
					}
				}
				if len(keys) > 0 {
					found = append(found, fmt.Sprintf("%s: configs.%q.auth sets %s", p, reg, strings.Join(keys, ", ")))
				}
			default:
				found = append(found, fmt.Sprintf("%s: configs.%q.auth is set", p, reg))
			}
			if kf := str(dig(c, "tls", "key_file")); kf != "" && s.exists(kf) {
				found = append(found, fmt.Sprintf("%s: configs.%q.tls.key_file %s is in the image", p, reg, kf))
			}
		}
		mirrors, _ := dig(doc, "mirrors").(map[string]any)
		for _, m := range sortedKeys(mirrors) {
			for i, e := range strList(dig(mirrors[m], "endpoint")) {
				if u, err := url.Parse(e); err == nil && u.User != nil {
					found = append(found, fmt.Sprintf("%s: mirrors.%q.endpoint[%d] has a user or password in its URL", p, m, i))
				}
			}
		}
	}
	if len(found) > 0 {
		sort.Strings(found)
		return Fail, "registry credentials in the image (provision them per device instead): " + strings.Join(found, "; ")
	}
	if len(read) == 0 {
		return Pass, "no registries.yaml"
	}
	return Pass, strings.Join(read, ", ") + ": no auth, no client key, no credentials in endpoint URLs"
}
