package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCheckExecutableResolvesInsideRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"bin", "sbin", "lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), []byte("\x7fELF"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "lib/systemd/data"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"sbin/init":    "/bin/busybox", // absolute: must resolve inside root, not in the initramfs
		"sbin/relinit": "../bin/busybox",
		"sbin/escape":  "/../../../../bin/sh", // climbs out: stays clamped inside root, where it is missing
		"sbin/data":    "/lib/systemd/data",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	for path, ok := range map[string]bool{
		"/sbin/init": true, "/sbin/relinit": true, "/bin/busybox": true,
		"/sbin/escape": false, "/sbin/data": false, "/sbin/missing": false, "/lib/systemd": false,
	} {
		err := checkExecutable(root, path)
		if (err == nil) != ok {
			t.Errorf("checkExecutable(%s) = %v, want ok=%v", path, err, ok)
		}
	}
}
