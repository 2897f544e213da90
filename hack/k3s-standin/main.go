// Command k3s is a stand-in for K3s in Basalt's QEMU end-to-end suite (hack/e2e), installed there as
// /usr/local/bin/k3s. A live K3s cannot run on the machines that build and test Basalt: no k3s,
// kube-apiserver or etcd binary of a usable version can be had there (see package standin). The
// stand-in does what the updater's K3s health checks look at, and nothing else.
//
//	k3s server [flags ignored]   the API server's /readyz and this node on :6443, kubelet's healthz
//	k3s agent [flags ignored]    kubelet's healthz only
//	k3s --version                the version line
//
// It reads /etc/rancher/k3s/config.yaml and its drop-ins. Tests may move the files it reads:
// K3S_STANDIN_ROOT (the file-system root, default /) and K3S_STANDIN_PROC (procfs, default /proc).
// The version it reports is set at build time: -ldflags "-X main.version=v1.36.2+k3s1".
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/basalt-os/basalt/hack/k3s-standin/standin"
)

// version is the K3s release the stand-in reports (-ldflags "-X main.version=...").
var version = standin.DefaultVersion

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is the command: it returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: k3s server|agent [flags ignored] | k3s --version")
		return 2
	}
	switch args[0] {
	case "--version", "-v", "version":
		fmt.Fprintf(stdout, "k3s version %s (k3s-standin)\n", version)
		return 0
	case "server", "agent":
	default:
		fmt.Fprintf(stderr, "k3s-standin: unknown command %q (want server, agent or --version)\n", args[0])
		return 2
	}
	err := standin.Run(ctx, standin.Options{
		Role:    args[0],
		Version: version,
		Root:    getenv("K3S_STANDIN_ROOT"),
		Proc:    getenv("K3S_STANDIN_PROC"),
		Log:     stderr,
	})
	switch {
	case errors.Is(err, standin.ErrRefused):
		return 1 // kubelet's error line is printed already
	case err != nil:
		fmt.Fprintf(stderr, "k3s-standin: %v\n", err)
		return 1
	}
	return 0
}
