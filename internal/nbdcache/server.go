package nbdcache

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
)

// Defaults for Options.
const (
	DefaultSectorSize = 4096
	DefaultMaxPayload = 32 << 20 // 2^25, the payload every NBD client may send
)

// ErrServerClosed is returned by Serve, PowerCut and Flush after Close.
var ErrServerClosed = errors.New("nbdcache: server closed")

// Options configure a Server. The zero value is ready to use.
type Options struct {
	// SectorSize is the cache's unit in bytes: a power of two from 512 to 65536 (default 4096). A write
	// that covers part of a sector reads, modifies and caches the whole sector, and a power cut keeps or
	// loses whole sectors, as a drive with that write unit would.
	SectorSize int
	// ExportName, if set, is the only export name clients may ask for; by default any name (such as
	// QEMU's empty default name) selects the image.
	ExportName string
	// MaxPayload is the largest READ or WRITE in bytes (default 32 MiB); larger ones fail with NBD_EINVAL.
	MaxPayload uint32
	// MaxInFlight bounds the requests one connection runs at once (default 16, QEMU's own limit).
	MaxInFlight int
	// Logger receives connection and protocol events; nil discards them.
	Logger *slog.Logger
}

// Stats are a server's counters since New. Commands are counted when they succeed.
type Stats struct {
	Connections  int64 // connections accepted
	Reads        int64 // NBD_CMD_READ
	Writes       int64 // NBD_CMD_WRITE, with or without FUA
	FUAWrites    int64 // WRITE, WRITE_ZEROES and TRIM with NBD_CMD_FLAG_FUA
	WriteZeroes  int64 // NBD_CMD_WRITE_ZEROES
	Trims        int64 // NBD_CMD_TRIM (modelled as writing zeroes)
	Flushes      int64 // NBD_CMD_FLUSH
	Errors       int64 // requests answered with an NBD error
	BytesWritten int64 // bytes accepted by WRITE, WRITE_ZEROES and TRIM
	DirtySectors int64 // sectors in the cache now, not yet in the file
	DirtyBytes   int64 // bytes of those sectors
	FlushedBytes int64 // bytes written to the file by flushes and FUA writes
	PowerCuts    int64 // calls of PowerCut
	DroppedBytes int64 // unflushed bytes lost by power cuts and Close
	KeptBytes    int64 // unflushed bytes that power cuts chose to write back
}

// CutResult tells what one power cut did with the unflushed sectors.
type CutResult struct {
	KeptSectors, KeptBytes       int64 // written back to the file (the keep function said yes)
	DroppedSectors, DroppedBytes int64 // lost
}

// Server serves one image file over NBD through a modelled volatile write cache.
type Server struct {
	log         *slog.Logger
	cache       *cache
	size        int64
	sectorSize  int
	exportName  string
	maxPayload  uint32
	maxInFlight int

	cutMu sync.Mutex // one PowerCut, Flush or Close at a time

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	off       bool // a power cut is running: new connections are refused
	closed    bool
	handlers  sync.WaitGroup

	connections, reads, writes, fuaWrites, writeZeroes, trims, flushes, errs, bytesWritten atomic.Int64
	powerCuts, droppedBytes, keptBytes                                                     atomic.Int64
}

// New opens the raw image at path for reading and writing and returns a server for it. The export's size
// is the file's size when New runs; the file must not change size or be written by others while the
// server runs.
func New(path string, opts Options) (*Server, error) {
	ss := opts.SectorSize
	if ss == 0 {
		ss = DefaultSectorSize
	}
	if ss < 512 || ss > 65536 || ss&(ss-1) != 0 {
		return nil, fmt.Errorf("nbdcache: sector size %d: want a power of two from 512 to 65536", ss)
	}
	maxPayload := opts.MaxPayload
	if maxPayload == 0 {
		maxPayload = DefaultMaxPayload
	}
	if maxPayload < uint32(ss) {
		return nil, fmt.Errorf("nbdcache: max payload %d is smaller than the sector size %d", maxPayload, ss)
	}
	if len(opts.ExportName) > maxNameLen {
		return nil, fmt.Errorf("nbdcache: export name of %d bytes (at most %d)", len(opts.ExportName), maxNameLen)
	}
	inFlight := opts.MaxInFlight
	if inFlight <= 0 {
		inFlight = 16
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("nbdcache: open image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nbdcache: stat image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("nbdcache: %s is not a regular file", path)
	}
	return &Server{
		log:         log.With("image", path),
		cache:       newCache(f, fi.Size(), int64(ss)),
		size:        fi.Size(),
		sectorSize:  ss,
		exportName:  opts.ExportName,
		maxPayload:  maxPayload,
		maxInFlight: inFlight,
		listeners:   make(map[net.Listener]struct{}),
		conns:       make(map[*conn]struct{}),
	}, nil
}

// Size returns the export's size in bytes.
func (s *Server) Size() int64 { return s.size }

// SectorSize returns the cache's sector size in bytes; PowerCut's keep function gets sector numbers in
// this unit (sector n covers bytes n*SectorSize up to (n+1)*SectorSize).
func (s *Server) SectorSize() int { return s.sectorSize }

// Serve accepts connections on ln and serves each until it ends, a PowerCut or Close. It may be called
// for several listeners at once (a unix socket and a TCP port, say). It returns ErrServerClosed after
// Close, or the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			return fmt.Errorf("nbdcache: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed || s.off {
			s.mu.Unlock()
			s.log.Info("connection refused: the power is off or the server closed")
			nc.Close()
			continue
		}
		c := newConn(s, nc, s.connections.Add(1))
		s.conns[c] = struct{}{}
		s.handlers.Add(1)
		s.mu.Unlock()
		c.log.Debug("connection opened", "remote", nc.RemoteAddr())
		go c.serve()
	}
}

// PowerCut models the power going off: it closes every connection (a client sees its socket drop, as
// QEMU would see a dead disk), waits until no request is being served, then writes back the unflushed
// sectors for which keep returns true and drops the others. keep is called in ascending sector order;
// nil keeps nothing. Connections arriving while PowerCut runs are refused; afterwards the server serves
// new connections as before. An error means a kept sector could not be written; the cache is empty
// either way.
func (s *Server) PowerCut(keep func(sector int64) bool) (CutResult, error) {
	s.cutMu.Lock()
	defer s.cutMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return CutResult{}, ErrServerClosed
	}
	s.off = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.off = false
		s.mu.Unlock()
	}()

	for _, c := range conns {
		c.close()
	}
	for _, c := range conns {
		<-c.done
	}
	r, err := s.cache.cut(keep)
	s.powerCuts.Add(1)
	s.droppedBytes.Add(r.droppedBytes)
	s.keptBytes.Add(r.keptBytes)
	res := CutResult{KeptSectors: r.keptSectors, KeptBytes: r.keptBytes, DroppedSectors: r.droppedSectors, DroppedBytes: r.droppedBytes}
	s.log.Info("power cut", "connections", len(conns), "dropped_sectors", r.droppedSectors, "dropped_bytes", r.droppedBytes,
		"kept_sectors", r.keptSectors, "kept_bytes", r.keptBytes)
	if err != nil {
		return res, fmt.Errorf("nbdcache: power cut: %w", err)
	}
	return res, nil
}

// KeepRandom returns a keep function for PowerCut that keeps each unflushed sector with probability p,
// drawn from a generator seeded with seed: the same seed over the same dirty sectors keeps the same
// ones. It models a cache that had written an arbitrary subset of its sectors back before the cut. The
// function is for one PowerCut call.
func KeepRandom(seed uint64, p float64) func(sector int64) bool {
	r := rand.New(rand.NewPCG(seed, 0x6e6264636163686))
	return func(int64) bool { return r.Float64() < p }
}

// Flush writes every unflushed sector to the image file, as NBD_CMD_FLUSH does; for an orderly shutdown.
func (s *Server) Flush() error {
	s.cutMu.Lock()
	defer s.cutMu.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrServerClosed
	}
	if _, err := s.cache.flush(); err != nil {
		return fmt.Errorf("nbdcache: flush: %w", err)
	}
	return nil
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	sectors, dirty, flushed := s.cache.state()
	return Stats{
		Connections:  s.connections.Load(),
		Reads:        s.reads.Load(),
		Writes:       s.writes.Load(),
		FUAWrites:    s.fuaWrites.Load(),
		WriteZeroes:  s.writeZeroes.Load(),
		Trims:        s.trims.Load(),
		Flushes:      s.flushes.Load(),
		Errors:       s.errs.Load(),
		BytesWritten: s.bytesWritten.Load(),
		DirtySectors: sectors,
		DirtyBytes:   dirty,
		FlushedBytes: flushed,
		PowerCuts:    s.powerCuts.Load(),
		DroppedBytes: s.droppedBytes.Load(),
		KeptBytes:    s.keptBytes.Load(),
	}
}

// Close stops the listeners and connections, drops the unflushed sectors like a power cut that keeps
// nothing (call Flush first to keep them) and closes the image file. Serve calls return ErrServerClosed.
func (s *Server) Close() error {
	s.cutMu.Lock()
	defer s.cutMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.close()
	}
	s.mu.Unlock()
	s.handlers.Wait()
	r, _ := s.cache.cut(nil) // keeps nothing: cannot fail
	s.droppedBytes.Add(r.droppedBytes)
	if err := s.cache.f.Close(); err != nil {
		return fmt.Errorf("nbdcache: close image: %w", err)
	}
	return nil
}

// exportOK reports whether a client may open the export by this name.
func (s *Server) exportOK(name string) bool {
	return s.exportName == "" || name == s.exportName
}
