package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestConsoleLine(t *testing.T) {
	var out, kmsg bytes.Buffer
	c := &console{out: &out, kmsg: &kmsg}
	c.logf("starting %s", "/sbin/init")
	if out.String() != "basalt-init: starting /sbin/init\n" {
		t.Errorf("console %q", out.String())
	}
	if kmsg.String() != "<7>basalt-init: starting /sbin/init\n" {
		t.Errorf("kmsg %q", kmsg.String())
	}
}

// A panic below main ends in fatal (which reboots), not in PID 1 exiting.
func TestRecoverFatal(t *testing.T) {
	var got error
	func() {
		defer recoverFatal(func(err error) { got = err })
		var m map[string]int
		m["x"] = 1 // panics
	}()
	if got == nil || !strings.Contains(got.Error(), "panic: assignment to entry in nil map") {
		t.Fatalf("fatal got %v", got)
	}
	got = nil
	func() { defer recoverFatal(func(err error) { got = err }) }()
	if got != nil {
		t.Errorf("no panic, fatal got %v", got)
	}
}
