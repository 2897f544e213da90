package cli

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// TestProgress: off a terminal the bar prints nothing and log lines pass through unchanged; on one
// it draws the download and a log line clears it first.
func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf) // not a terminal
	p.Set(10, 100)
	p.Write([]byte("log line\n"))
	p.Set(100, 100)
	p.Finish()
	if buf.String() != "log line\n" {
		t.Errorf("off a terminal: %q", buf.String())
	}
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if newProgress(f).tty {
		t.Error("a file was taken for a terminal")
	}

	buf.Reset()
	p = &progress{w: &buf, tty: true}
	p.Set(0, 4<<20)
	p.Set(1<<20, 4<<20)
	p.Write([]byte("msg=\"install progress\"\n"))
	p.Set(4<<20, 4<<20)
	p.Finish()
	out := buf.String()
	if !strings.Contains(out, "download") || !strings.Contains(out, "msg=\"install progress\"\n") || !strings.Contains(out, "25%") {
		t.Errorf("on a terminal: %q", out)
	}
	if i, j := strings.Index(out, "\r"), strings.Index(out, "msg="); i < 0 || i > j {
		t.Errorf("the log line did not clear the bar first: %q", out)
	}
}
