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

// Fetch requests bytes [off, off+length) of name (see GetRange: a server that ignores the range is
// read past the first off bytes). The body is cut at length bytes, so an endless response cannot flood
// the caller.
func (h *HTTPFetcher) Fetch(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	u := h.Base.JoinPath(strings.Split(name, "/")...)
	body, err := GetRange(ctx, h.Client, h.ResponseTimeout, u.String(), off, length)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", name, err)
	}
	return body, nil
}

// GetRange requests bytes [off, off+length) of rawURL with an HTTP range request, waiting at most
// timeout (0: 30s) for the response headers, and failing the body's Read when no data came for as long.
//
// A 206 answer must carry a Content-Range that starts at off. A 200 answer (a server or a cache that
// ignores Range, as HTTP allows) carries the whole file: its first off bytes are read and discarded
// under the same idle timeout, and a Content-Length too short for the range is refused. Either way the
// body is cut at length bytes and may end early (a cut transfer). The bytes are not checked here: the
// caller checks them against signed metadata. Network and HTTP failures wrap ErrDownload.
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
	var skip int64
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if err := checkContentRange(resp.Header.Get("Content-Range"), off); err != nil {
			resp.Body.Close()
			cancel()
			return nil, err
		}
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength < off+length {
			resp.Body.Close()
			cancel()
			return nil, fmt.Errorf("%w: server ignored the range and sent the whole file of %d bytes, short of bytes %d-%d",
				ErrDownload, resp.ContentLength, off, off+length-1)
		}
		skip = off
	default:
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("%w: %s", ErrDownload, resp.Status)
	}
	b := &body{r: resp.Body, c: resp.Body, cancel: cancel, idle: timeout, skip: skip, left: length}
	b.timer = time.AfterFunc(timeout, func() { b.stalled.Store(true); cancel() })
	return b, nil
}

// checkContentRange checks that a 206 answer's Content-Range ("bytes FIRST-LAST/SIZE", SIZE may be
// "*") is well formed and starts at off. A range shorter than requested is allowed: the body then ends
// early, like a cut transfer.
func checkContentRange(cr string, off int64) error {
	bad := fmt.Errorf("%w: server sent range %q for offset %d", ErrDownload, cr, off)
	spec, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return bad
	}
	rng, size, ok := strings.Cut(spec, "/")
	if !ok {
		return bad
	}
	a, z, ok := strings.Cut(rng, "-")
	if !ok {
		return bad
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(z, 10, 64)
	if err1 != nil || err2 != nil || first != off || last < first {
		return bad
	}
	if size != "*" {
		if n, err := strconv.ParseInt(size, 10, 64); err != nil || n <= last {
			return bad
		}
	}
	return nil
}

// body is a response body that gives up when no byte arrives for idle (a server or a network path that
// stalls mid-transfer), so a patchy link fails the transfer for a retry instead of hanging it. It first
// discards skip bytes (the part of a whole-file answer before the range) and then yields at most left
// bytes.
type body struct {
	r       io.Reader
	c       io.Closer
	cancel  context.CancelFunc
	idle    time.Duration
	timer   *time.Timer
	stalled atomic.Bool
	skip    int64
	left    int64
}

func (b *body) Read(p []byte) (int, error) {
	if b.skip > 0 {
		if err := b.discard(); err != nil {
			return 0, err
		}
	}
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	return n, b.wrap(err)
}

// discard reads and drops the skip bytes before the range, resetting the idle timer on every chunk.
func (b *body) discard() error {
	buf := make([]byte, min(b.skip, 64<<10))
	for b.skip > 0 {
		n, err := b.r.Read(buf[:min(b.skip, int64(len(buf)))])
		b.skip -= int64(n)
		if n > 0 {
			b.timer.Reset(b.idle)
		}
		if b.skip == 0 {
			break
		}
		if err == io.EOF {
			return fmt.Errorf("%w: whole-file answer ended %d bytes before the range", ErrDownload, b.skip)
		}
		if err != nil {
			return b.wrap(err)
		}
	}
	return nil
}

// wrap turns a read error after a stall into an ErrDownload that says so.
func (b *body) wrap(err error) error {
	if err != nil && err != io.EOF && b.stalled.Load() {
		return fmt.Errorf("%w: no data for %v", ErrDownload, b.idle)
	}
	return err
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
