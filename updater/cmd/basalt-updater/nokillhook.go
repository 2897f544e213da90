//go:build !killhook

package main

import "github.com/basalt-os/basalt/updater/agent"

// installTestHooks does nothing: production builds carry no fault-injection hooks (see killhook.go).
func installTestHooks(*agent.Agent) error { return nil }
