// Command wirecount is a reverse proxy on loopback that counts the bytes a client fetches: for every
// request it forwards to the upstream server it appends one line to the log file, "METHOD STATUS BYTES
// PATH", BYTES being the response body bytes written to the client (TUF metadata, payload, delta files;
// headers are not counted). hack/bench/delta.sh sums the lines per install.
//
// Usage: wirecount -upstream http://127.0.0.1:8080 -listen 127.0.0.1:0 -addr-file F -log L
// It writes the address it listens on to the -addr-file once it accepts connections.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	if err := run(); err != nil {
		slog.Error("wirecount", "err", err)
		os.Exit(1)
	}
}

func run() error {
	upstream := flag.String("upstream", "", "the server to forward to (http://host:port)")
	listen := flag.String("listen", "127.0.0.1:0", "the address to listen on")
	addrFile := flag.String("addr-file", "", "write the listening address here")
	logPath := flag.String("log", "", "append one line per request here")
	flag.Parse()
	if *upstream == "" || *logPath == "" {
		return errors.New("-upstream and -log are required")
	}
	u, err := url.Parse(*upstream)
	if err != nil {
		return fmt.Errorf("parse upstream %q: %w", *upstream, err)
	}
	logf, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", *listen, err)
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()+"\n"), 0o644); err != nil {
			return fmt.Errorf("write address file: %w", err)
		}
	}
	c := &counter{proxy: httputil.NewSingleHostReverseProxy(u), log: logf}
	srv := &http.Server{Handler: c}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

type counter struct {
	proxy *httputil.ReverseProxy
	mu    sync.Mutex
	log   *os.File
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
	c.proxy.ServeHTTP(cw, r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := fmt.Fprintf(c.log, "%s %d %d %s\n", r.Method, cw.status, cw.n, r.URL.RequestURI()); err != nil {
		slog.Error("write log", "err", err)
	}
}

// countingWriter counts the body bytes written through it.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Flush lets the reverse proxy stream.
func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
