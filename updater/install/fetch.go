package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/basalt-os/basalt/internal/wait"
)

// Fetcher fetches byte ranges of update files. name is relative to the update folder (a manifest's
// Path). The returned reader yields at most length bytes; fewer means the transfer was cut.
type Fetcher interface {
	Fetch(ctx context.Context, name string, off, length int64) (io.ReadCloser, error)
}

// ErrDownload is wrapped by errors of the network: worth retrying later, never an attack by itself.
var ErrDownload = errors.New("download failed")

// HTTPFetcher fetches from a base URL with HTTP range requests.
type HTTPFetcher struct {
	// Base is the URL of the update folder; names are resolved against it.
	Base   *url.URL
	Client *http.Client
	// ResponseTimeout bounds the wait for response headers and, while the body is read, for the next
	// bytes of it (0: 30s).
	ResponseTimeout time.Duration
}

// Fetch requests bytes [off, off+length) of name. A server that ignores the range gets an error unless
// off is 0; the body is cut at length bytes, so an endless response cannot flood the caller.
func (h *HTTPFetcher) Fetch(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	u := h.Base.JoinPath(strings.Split(name, "/")...)
	body, err := GetRange(ctx, h.Client, h.ResponseTimeout, u.String(), off, length)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	return body, nil
}

// GetRange requests bytes [off, off+length) of rawURL with an HTTP range request, waiting at most
// timeout (0: 30s) for the response headers, and failing the body's Read when no data came for as long. A 200 answer is accepted only for off 0. The body is cut
// at length bytes. Network and HTTP failures wrap ErrDownload.
func GetRange(ctx context.Context, client *http.Client, timeout time.Duration, rawURL string, off, length int64) (io.ReadCloser, error) {
	if length <= 0 || off < 0 {
		return nil, fmt.Errorf("bad range %d+%d", off, length)
	}
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	if client == nil {
		client = http.DefaultClient
	}
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, rawURL, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(off+length-1, 10))
	timer := time.AfterFunc(timeout, cancel)
	resp, err := client.Do(req)
	stopped := timer.Stop()
	if err != nil {
		cancel()
		if !stopped {
			return nil, fmt.Errorf("%w: no response within %v", ErrDownload, timeout)
		}
		return nil, fmt.Errorf("%w: %v", ErrDownload, err)
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		if cr := resp.Header.Get("Content-Range"); !strings.HasPrefix(cr, "bytes "+strconv.FormatInt(off, 10)+"-") {
			resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("%w: server sent range %q for offset %d", ErrDownload, cr, off)
		}
	case resp.StatusCode == http.StatusOK && off == 0:
	default:
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("%w: %s", ErrDownload, resp.Status)
	}
	b := &body{r: io.LimitReader(resp.Body, length), c: resp.Body, cancel: cancel, idle: timeout}
	b.timer = time.AfterFunc(timeout, func() { b.stalled.Store(true); cancel() })
	return b, nil
}

// body is a response body that gives up when no byte arrives for idle (a server or a network path that
// stalls mid-transfer), so a patchy link fails the transfer for a retry instead of hanging it.
type body struct {
	r       io.Reader
	c       io.Closer
	cancel  context.CancelFunc
	idle    time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF && b.stalled.Load() {
		return n, fmt.Errorf("%w: no data for %v", ErrDownload, b.idle)
	}
	return n, err
}

func (b *body) Close() error {
	b.timer.Stop()
	err := b.c.Close()
	b.cancel()
	return err
}

// Retry says how often and how patiently a failed transfer is tried again.
type Retry struct {
	// Attempts is the number of tries in all (0: 5).
	Attempts int
	// Backoff is the wait before the second try, doubled for each further one up to MaxBackoff
	// (0: 1s and 1 minute).
	Backoff, MaxBackoff time.Duration
	// Sleep waits d or until ctx ends (nil: a timer). Tests pass one that returns at once.
	Sleep func(ctx context.Context, d time.Duration) error
}

func (r Retry) attempts() int {
	if r.Attempts <= 0 {
		return 5
	}
	return r.Attempts
}

func (r Retry) wait(ctx context.Context, attempt int) error {
	b, maxB := r.Backoff, r.MaxBackoff
	if b <= 0 {
		b = time.Second
	}
	if maxB <= 0 {
		maxB = time.Minute
	}
	d := b
	for i := 1; i < attempt && d < maxB; i++ {
		d *= 2
	}
	d = min(d, maxB)
	if r.Sleep != nil {
		return r.Sleep(ctx, d)
	}
	return wait.Sleep(ctx, d)
}
