// Package progress shows progress bars for long steps on a terminal, and nothing elsewhere (CI logs,
// pipes, --quiet).
package progress

import (
	"io"
	"os"
	"sync"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Reporter starts progress bars. The zero value and a nil *Reporter show nothing.
type Reporter struct {
	w io.Writer
}

// New returns a Reporter writing to w when w is a terminal, quiet is false and the CI environment
// variable is unset; otherwise a Reporter that shows nothing.
func New(w *os.File, quiet bool) *Reporter {
	if quiet || os.Getenv("CI") != "" || !term.IsTerminal(int(w.Fd())) {
		return &Reporter{}
	}
	return &Reporter{w: w}
}

// Bar is one step's progress.
type Bar struct {
	mu  sync.Mutex
	bar *progressbar.ProgressBar
}

// Start begins a bar for a step of total bytes.
func (r *Reporter) Start(desc string, total int64) *Bar {
	if r == nil || r.w == nil {
		return &Bar{}
	}
	return &Bar{bar: progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(r.w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100_000_000),
		progressbar.OptionClearOnFinish(),
	)}
}

// Set reports that done of total bytes are complete. Safe for concurrent use; a nil Bar ignores it.
func (b *Bar) Set(done, _ int64) {
	if b == nil || b.bar == nil {
		return
	}
	b.mu.Lock()
	_ = b.bar.Set64(done)
	b.mu.Unlock()
}

// Finish ends the bar.
func (b *Bar) Finish() {
	if b == nil || b.bar == nil {
		return
	}
	b.mu.Lock()
	_ = b.bar.Finish()
	b.mu.Unlock()
}
