package images

// The host side of cluster rollouts, as both the builder (the system-upgrade-controller Plan, the
// node-agent DaemonSet) and the updater (its daemon, the job) name it.
const (
	// UpdaterCommand is the updater's command name on a device and in its container image.
	UpdaterCommand = "basalt-updater"
	// UpdaterSocket is the host daemon's Unix socket for cluster rollouts (its folder is mounted into
	// the node agent's pod).
	UpdaterSocket = "/run/basalt/updater.sock"
	// SUCHostRoot is where system-upgrade-controller mounts the host's / in every job pod.
	SUCHostRoot = "/host"
)
