package build

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/basalt-os/basalt/builder/rootfs"
)

// mountPoint is a directory the booted system mounts a file system on. The root is read-only, so it
// must exist in the image: nothing can create it at boot.
type mountPoint struct {
	path string
	mode fs.FileMode
	use  string // what is mounted there, for messages
}

// mountPoints are the directories basalt-init and the OS mount on: basalt-init mounts the state
// partition on /var, the /etc overlay and the ESP on /efi, and moves /dev, /proc and /sys into the
// new root when it switches to it; the OS mounts tmpfs on /run and /tmp.
func mountPoints() []mountPoint {
	return []mountPoint{
		{"/dev", 0o755, "devtmpfs (moved there by basalt-init)"},
		{"/efi", 0o755, "the ESP (mounted by basalt-init)"},
		{"/etc", 0o755, "the /etc overlay (mounted by basalt-init)"},
		{"/proc", 0o755, "proc (moved there by basalt-init)"},
		{"/run", 0o755, "a tmpfs"},
		{"/sys", 0o755, "sysfs (moved there by basalt-init)"},
		{"/tmp", 0o777 | fs.ModeSticky, "a tmpfs"},
		{"/var", 0o755, "the state partition (mounted by basalt-init)"},
	}
}

// addMountPoints creates in the tree, as root:root with the build's time, every mount point it lacks,
// and refuses a tree where one is something other than a directory: a mount on a symlink follows it
// (out of the read-only root, or onto another mount), and a file cannot be mounted on.
func (b *builder) addMountPoints(tree *rootfs.Tree) error {
	for _, m := range mountPoints() {
		added, err := tree.AddDir(m.path, m.mode, b.created)
		var nd *rootfs.NotDirError
		if errors.As(err, &nd) {
			why := "a file system cannot be mounted on it"
			if nd.Type == "symlink" {
				why = "a mount there would follow the symlink, wherever it points"
			}
			return fmt.Errorf("rootfs: %v: it is where %s goes, and %s; make %s a directory in the rootfs, or leave it out and the builder creates it",
				nd, m.use, why, m.path)
		}
		if err != nil {
			return fmt.Errorf("rootfs: mount point %s: %w", m.path, err)
		}
		if added {
			b.Log.Debug("added mount point", "path", m.path)
			continue
		}
		if m.path == "/etc" {
			continue // the overlay shows what is there
		}
		if inside, err := tree.Glob(m.path + "/*"); err == nil && len(inside) > 0 {
			b.Log.Warn("the rootfs has files under a mount point: they are hidden at run time by what is mounted there",
				"path", m.path, "mounted", m.use, "entries", len(inside), "first", inside[0])
		}
	}
	return nil
}
