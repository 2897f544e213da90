package reboot

import "golang.org/x/sys/unix"

// kernelRestart flushes the file systems and restarts the machine without init's help.
func kernelRestart() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
