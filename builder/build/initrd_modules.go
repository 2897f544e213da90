package build

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"path"
	"strings"

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
)

// addInitrdModules copies the configured modules and their dependencies from the rootfs's
// /lib/modules/<release> into the initrd with a modules.dep naming only them, and writes the list
// basalt-init loads.
func (b *builder) addInitrdModules(a *initrd.Archive, tree *rootfs.Tree, release string) error {
	names := b.Config.Initrd.Modules
	if len(names) == 0 {
		return nil
	}
	if release == "" {
		return fmt.Errorf("%s: initrd.modules needs the kernel release, but the kernel path is not .../vmlinuz-<release>", b.Config.Source)
	}
	dir := "/lib/modules/" + release
	index, err := moduleIndex(tree, dir)
	if err != nil {
		return err
	}
	builtin := builtinModules(tree, dir)
	lookup := func(name string) (kmod.Module, bool, error) {
		rel, ok := index[name]
		if !ok {
			return kmod.Module{}, false, nil
		}
		if strings.HasSuffix(rel, ".xz") || strings.HasSuffix(rel, ".zst") || strings.HasSuffix(rel, ".gz") {
			return kmod.Module{}, false, fmt.Errorf("module %s: %s/%s is compressed; only uncompressed .ko files are supported", name, dir, rel)
		}
		data, err := tree.ReadFile(dir + "/" + rel)
		if err != nil {
			return kmod.Module{}, false, fmt.Errorf("module %s: %w", name, err)
		}
		mi, err := kmod.ReadModInfo(bytes.NewReader(data))
		if err != nil {
			return kmod.Module{}, false, fmt.Errorf("module %s (%s/%s): %w", name, dir, rel, err)
		}
		for _, s := range mi.Softdeps {
			b.Log.Debug("initrd module has a soft dependency that is not added by itself", "module", name, "softdep", s)
		}
		return kmod.Module{Name: name, Path: rel, Depends: mi.Depends}, true, nil
	}
	entries, err := kmod.Closure(names, lookup, func(n string) bool { return builtin[n] })
	if err != nil {
		return fmt.Errorf("%s: initrd.modules for kernel %s (rootfs %s): %w", b.Config.Source, release, dir, err)
	}
	for _, e := range entries {
		data, err := tree.ReadFile(dir + "/" + e.Path)
		if err != nil {
			return fmt.Errorf("initrd module %s: %w", e.Path, err)
		}
		if err := a.Add(initrd.Entry{Name: dir + "/" + e.Path, Mode: 0o644, Data: data}); err != nil {
			return fmt.Errorf("initrd: %w", err)
		}
	}
	var dep bytes.Buffer
	if err := kmod.WriteModulesDep(&dep, entries); err != nil {
		return err
	}
	if err := a.Add(initrd.Entry{Name: dir + "/modules.dep", Mode: 0o644, Data: dep.Bytes()}); err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	// Only names that resolved to a .ko file go into the list: a module built into the kernel has no
	// modules.dep line, and basalt-init would refuse it.
	var list strings.Builder
	var builtIn []string
	for _, n := range names {
		if _, ok := index[kmod.Normalize(n)]; ok {
			list.WriteString(n + "\n")
		} else if builtin[kmod.Normalize(n)] {
			builtIn = append(builtIn, n)
		}
	}
	if len(builtIn) > 0 {
		b.Log.Info("initrd modules built into the kernel: not loaded by basalt-init", "release", release, "modules", strings.Join(builtIn, " "))
	}
	if err := a.Add(initrd.Entry{Name: initModulesList, Mode: 0o644, Data: []byte(list.String())}); err != nil {
		return fmt.Errorf("initrd: %w", err)
	}
	b.Log.Info("initrd modules", "release", release, "configured", len(names), "total", len(entries))
	return nil
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

// builtinModules reads the rootfs's modules.builtin (paths of modules built into the kernel), if any.
func builtinModules(tree *rootfs.Tree, dir string) map[string]bool {
	out := map[string]bool{}
	data, err := tree.ReadFile(dir + "/modules.builtin")
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			out[kmod.NameFromPath(line)] = true
		}
	}
	return out
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
