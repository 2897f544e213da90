package cli

import (
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows an install's download as a progress bar on a terminal, and nothing elsewhere (pipes,
// files, CI), where the "install progress" log lines say the same. It is also the log's writer, so
// that a log line clears the bar instead of running into it.
type progress struct {
	w   io.Writer
	tty bool

	mu       sync.Mutex
	bar      *progressbar.ProgressBar
	finished bool
}

// newProgress returns a progress for w, shown when w is a terminal and the CI variable is unset.
func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, tty: ok && os.Getenv("CI") == "" && term.IsTerminal(int(f.Fd()))}
}

// Set reports done of total payload bytes (agent.Agent's Progress).
func (p *progress) Set(done, total int64) {
	if !p.tty || total <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	if p.bar == nil {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription("download"),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowTotalBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	_ = p.bar.Set64(done)
	if done >= total {
		p.finished = true
	}
}

// Write writes a log line above the bar.
func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil && !p.finished {
		_ = p.bar.Clear()
		n, err := p.w.Write(b)
		_ = p.bar.RenderBlank()
		return n, err
	}
	return p.w.Write(b)
}

// Finish removes the bar.
func (p *progress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil && !p.finished {
		_ = p.bar.Clear()
	}
	p.finished = true
}
