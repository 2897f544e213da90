//go:build !linux

package reboot

import "errors"

func kernelRestart() error { return errors.New("restart through the kernel: only on Linux") }
