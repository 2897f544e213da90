package build

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/basalt-os/basalt/bootloader/kmod"
	"github.com/basalt-os/basalt/builder/initrd"
	"github.com/basalt-os/basalt/builder/rootfs"
)

const (
	// initPath is where the rootfs ships basalt-init; it becomes the initrd's /init.
	initPath = "/usr/lib/basalt/basalt-init"
	// initModulesList names the modules basalt-init loads, one per line, in config order.
	initModulesList = "etc/basalt-init/modules"
	// maxModuleDepth bounds how deep under /lib/modules/<release> module files are looked for.
	maxModuleDepth = 10
	// maxModuleSize bounds a decompressed module.
	maxModuleSize = 256 << 20
)

// kernelModules is what the rootfs says about one kernel's modules: the module files under
// /lib/modules/<release>, the modules built into the kernel (modules.builtin) and the kernel's
// configuration (/boot/config-<release>), when present.
type kernelModules struct {
	tree    *rootfs.Tree
	release string
	dir     string            // /lib/modules/<release>
	hasDir  bool              // the rootfs has dir
	index   map[string]string // module name -> file, relative to dir
	builtin map[string]string // module name -> path in modules.builtin (relative to dir)
	config  kernelConfig      // nil without /boot/config-<release>
	mods    map[string]*moduleFile
}

// moduleFile is one module file read from the rootfs, decompressed.
type moduleFile struct {
	kmod.Module // Path is where it goes in the initrd (relative to dir, without a compression suffix)
	data        []byte
}

// openKernelModules indexes the rootfs's modules of kernel release.
func openKernelModules(tree *rootfs.Tree, release string) (*kernelModules, error) {
	km := &kernelModules{tree: tree, release: release, index: map[string]string{}, builtin: map[string]string{}, mods: map[string]*moduleFile{}}
	if release == "" {
		return km, nil
	}
	km.dir = "/lib/modules/" + release
	if hdr, err := tree.Stat(km.dir); err == nil && hdr.Typeflag == tar.TypeDir {
		km.hasDir = true
	}
	var err error
	if km.index, err = moduleIndex(tree, km.dir); err != nil {
		return nil, err
	}
	km.builtin = builtinModules(tree, km.dir)
	if data, err := tree.ReadFile("/boot/config-" + release); err == nil {
		km.config = parseKernelConfig(data)
	}
	return km, nil
}

// known reports whether the rootfs says anything about the kernel's modules: without its module
// folder or its configuration, nothing can be checked.
func (km *kernelModules) known() bool { return km.hasDir || km.config != nil }

// isBuiltin reports whether the module called name (normalized) is built into the kernel, by
// modules.builtin or, for the modules builtinSymbols knows, by the kernel's configuration.
func (km *kernelModules) isBuiltin(name string) bool {
	if _, ok := km.builtin[name]; ok {
		return true
	}
	if sym, ok := builtinSymbols()[name]; ok && km.config[sym] == "y" {
		return true
	}
	return false
}

// lookup reads the module called name (normalized) for kmod.Closure.
func (km *kernelModules) lookup(name string) (kmod.Module, bool, error) {
	m, err := km.read(name)
	if m == nil || err != nil {
		return kmod.Module{}, false, err
	}
	return m.Module, true, nil
}

// read returns the module file called name (normalized), decompressed, or nil when the rootfs has no
// such file.
func (km *kernelModules) read(name string) (*moduleFile, error) {
	if m, ok := km.mods[name]; ok {
		return m, nil
	}
	rel, ok := km.index[name]
	if !ok {
		return nil, nil
	}
	data, err := km.tree.ReadFile(km.dir + "/" + rel)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	plain, dst, err := decompressModule(rel, data)
	if err != nil {
		return nil, fmt.Errorf("module %s (%s/%s): %w", name, km.dir, rel, err)
	}
	mi, err := kmod.ReadModInfo(bytes.NewReader(plain))
	if err != nil {
		return nil, fmt.Errorf("module %s (%s/%s): %w", name, km.dir, rel, err)
	}
	m := &moduleFile{Module: kmod.Module{Name: name, Path: dst, Depends: mi.Depends}, data: plain}
	km.mods[name] = m
	return m, nil
}

// complete reports whether the module called name and all it depends on are there (as files or built
// in); if not, it names the first module missing. Errors are unreadable module files.
func (km *kernelModules) complete(name string, seen map[string]bool) (missing string, err error) {
	name = kmod.Normalize(name)
	if seen[name] {
		return "", nil
	}
	seen[name] = true
	m, err := km.read(name)
	if err != nil {
		return "", err
	}
	if m == nil {
		if km.isBuiltin(name) {
			return "", nil
		}
		return name, nil
	}
	for _, d := range m.Depends {
		if missing, err := km.complete(d, seen); missing != "" || err != nil {
			return missing, err
		}
	}
	return "", nil
}

// decompressModule returns the plain ELF content of a module file named rel (.ko, .ko.xz, .ko.zst or
// .ko.gz) and the name it gets in the initrd, without the compression suffix: basalt-init hands the
// file to finit_module(2) as it is, and distributions sign a module before compressing it.
func decompressModule(rel string, data []byte) ([]byte, string, error) {
	var r io.Reader
	var err error
	dst := rel
	switch {
	case strings.HasSuffix(rel, ".ko.xz"):
		dst = strings.TrimSuffix(rel, ".xz")
		r, err = xz.NewReader(bytes.NewReader(data))
	case strings.HasSuffix(rel, ".ko.zst"):
		dst = strings.TrimSuffix(rel, ".zst")
		var zr *zstd.Decoder
		if zr, err = zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1)); err == nil {
			defer zr.Close()
			r = zr
		}
	case strings.HasSuffix(rel, ".ko.gz"):
		dst = strings.TrimSuffix(rel, ".gz")
		r, err = gzip.NewReader(bytes.NewReader(data))
	case strings.HasSuffix(rel, ".ko"):
		return data, rel, nil
	default:
		return nil, "", errors.New("unknown module compression (want .ko, .ko.xz, .ko.zst or .ko.gz)")
	}
	if err != nil {
		return nil, "", fmt.Errorf("decompress: %w", err)
	}
	plain, err := io.ReadAll(io.LimitReader(r, maxModuleSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("decompress: %w", err)
	}
	if len(plain) > maxModuleSize {
		return nil, "", fmt.Errorf("decompressed module is larger than %d bytes", maxModuleSize)
	}
	return plain, dst, nil
}

// addInitrdModules copies the initrd's modules and their dependencies from the rootfs's
// /lib/modules/<release> into the initrd with a modules.dep naming only them, and writes the list
// basalt-init loads. The modules are the config's initrd.modules or, when it lists none, those of
// defaultInitrdModules the kernel has. Then it checks that the initrd can reach and mount the root
// (checkInitrd) and refuses the build when it cannot.
func (b *builder) addInitrdModules(a *initrd.Archive, tree *rootfs.Tree, release string) error {
	names := b.Config.Initrd.Modules
	configured := len(names) > 0
	if configured && release == "" {
		return fmt.Errorf("%s: initrd.modules needs the kernel release, but the kernel path is not .../vmlinuz-<release>", b.Config.Source)
	}
	km, err := openKernelModules(tree, release)
	if err != nil {
		return err
	}
	if !configured {
		if names, err = b.defaultModules(km); err != nil {
			return err
		}
	}
	entries, err := kmod.Closure(names, km.lookup, km.isBuiltin)
	if err != nil {
		return fmt.Errorf("%s: initrd.modules for kernel %s (rootfs %s): %w", b.Config.Source, release, km.dir, err)
	}
	loaded := map[string]string{} // module name -> initrd path
	for _, e := range entries {
		loaded[kmod.NameFromPath(e.Path)] = e.Path
	}
	if err := b.checkInitrd(km, loaded, !configured); err != nil {
		return err
	}
	if len(entries) == 0 {
		return nil
	}
	for _, e := range entries {
		m := km.mods[kmod.NameFromPath(e.Path)]
		if err := a.Add(initrd.Entry{Name: km.dir + "/" + e.Path, Mode: 0o644, Data: m.data}); err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
	}
	var dep bytes.Buffer
	if err := kmod.WriteModulesDep(&dep, entries); err != nil {
		return err
	}
	if err := a.Add(initrd.Entry{Name: km.dir + "/modules.dep", Mode: 0o644, Data: dep.Bytes()}); err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	// Only names that resolved to a .ko file go into the list: a module built into the kernel has no
	// modules.dep line, and basalt-init would refuse it.
	var list strings.Builder
	var builtIn []string
	for _, n := range names {
		if _, ok := km.index[kmod.Normalize(n)]; ok {
			list.WriteString(n + "\n")
		} else if km.isBuiltin(kmod.Normalize(n)) {
			builtIn = append(builtIn, n)
		}
	}
	if len(builtIn) > 0 {
		b.Log.Info("initrd modules built into the kernel: not loaded by basalt-init", "release", release, "modules", strings.Join(builtIn, " "))
	}
	if err := a.Add(initrd.Entry{Name: initModulesList, Mode: 0o644, Data: []byte(list.String())}); err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	source := "initrd.modules"
	if !configured {
		source = "default"
	}
	b.Log.Info("initrd modules", "release", release, "source", source, "listed", len(names), "files", len(entries))
	return nil
}

// defaultModules returns the modules of defaultInitrdModules that the kernel has, complete with their
// dependencies, in order; the others are left out (a default list must work across kernels): quietly
// when the kernel has no such module at all, with a log line when one it needs is missing.
func (b *builder) defaultModules(km *kernelModules) ([]string, error) {
	var names []string
	for _, n := range defaultInitrdModules(km.config) {
		if _, file := km.index[kmod.Normalize(n)]; !file {
			// Built in, or not in this kernel at all.
			b.Log.Debug("default initrd module: no module file", "module", n, "builtin", km.isBuiltin(kmod.Normalize(n)), "release", km.release)
			continue
		}
		missing, err := km.complete(n, map[string]bool{})
		if err != nil {
			return nil, fmt.Errorf("%s: default initrd modules for kernel %s: %w", b.Config.Source, km.release, err)
		}
		if missing != "" {
			b.Log.Info("default initrd module left out: a module it needs is not in the rootfs", "module", n, "missing", missing, "dir", km.dir)
			continue
		}
		names = append(names, n)
	}
	return names, nil
}

// moduleIndex maps module names to their files (relative to dir) in the rootfs. When two files have
// the same module name the first in sorted path order wins, so the result is deterministic.
func moduleIndex(tree *rootfs.Tree, dir string) (map[string]string, error) {
	index := map[string]string{}
	for depth := 0; depth < maxModuleDepth; depth++ {
		matches, err := tree.Glob(dir + "/" + strings.Repeat("*/", depth) + "*.ko*")
		if err != nil {
			return nil, fmt.Errorf("rootfs: find kernel modules: %w", err)
		}
		for _, m := range matches {
			hdr, err := tree.Lookup(m)
			if err != nil || hdr.Typeflag != tar.TypeReg {
				continue
			}
			rel := strings.TrimPrefix(m, dir+"/")
			base := path.Base(rel)
			if !strings.HasSuffix(base, ".ko") && !strings.Contains(base, ".ko.") {
				continue
			}
			name := kmod.NameFromPath(rel)
			if old, ok := index[name]; !ok || rel < old {
				index[name] = rel
			}
		}
	}
	return index, nil
}

// builtinModules reads the rootfs's modules.builtin (paths of modules built into the kernel), if any,
// as module name -> path.
func builtinModules(tree *rootfs.Tree, dir string) map[string]string {
	out := map[string]string{}
	data, err := tree.ReadFile(dir + "/modules.builtin")
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			out[kmod.NameFromPath(line)] = line
		}
	}
	return out
}

// kernelConfig is a kernel's .config: CONFIG_* symbol -> value ("y", "m", a number, or a string
// without its quotes). Symbols that are not set are absent.
type kernelConfig map[string]string

// parseKernelConfig reads a kernel .config (/boot/config-<release>).
func parseKernelConfig(data []byte) kernelConfig {
	c := kernelConfig{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "CONFIG_") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		c[k] = v
	}
	return c
}

// addInit makes the rootfs's basalt-init the initrd's /init, unless initrd.files already set /init.
func (b *builder) addInit(a *initrd.Archive, tree *rootfs.Tree) error {
	for _, f := range b.Config.Initrd.Files {
		if strings.Trim(path.Clean("/"+f.Dst), "/") == "init" {
			return nil
		}
	}
	data, err := tree.ReadFile(initPath)
	if err != nil {
		b.Log.Warn("the initrd has no /init: the image will not boot (put basalt-init at "+initPath+" in the rootfs, or set /init in initrd.files)", "error", err)
		return nil
	}
	if err := a.Add(initrd.Entry{Name: "init", Mode: 0o755, Data: data}); err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	return nil
}
