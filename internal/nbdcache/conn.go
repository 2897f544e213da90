package nbdcache

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
)

// errAbort ends a session the client closed with NBD_OPT_ABORT.
var errAbort = errors.New("client aborted the handshake")

// conn is one client connection.
type conn struct {
	s    *Server
	nc   net.Conn
	br   *bufio.Reader
	log  *slog.Logger
	done chan struct{} // closed when serve has returned and nothing runs for this connection any more
	cut  atomic.Bool   // the server closed the connection (PowerCut or Close)

	wmu sync.Mutex // one reply at a time on the socket
}

func newConn(s *Server, nc net.Conn, id int64) *conn {
	return &conn{
		s:    s,
		nc:   nc,
		br:   bufio.NewReaderSize(nc, 64<<10),
		log:  s.log.With("conn", id),
		done: make(chan struct{}),
	}
}

// close closes the connection from the server's side.
func (c *conn) close() {
	c.cut.Store(true)
	c.nc.Close()
}

func (c *conn) serve() {
	defer func() {
		c.nc.Close()
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		close(c.done)
		c.s.handlers.Done()
	}()
	if err := c.handshake(); err != nil {
		if errors.Is(err, errAbort) || errors.Is(err, io.EOF) || c.cut.Load() {
			c.log.Debug("handshake ended", "reason", err)
		} else {
			c.log.Info("handshake failed", "err", err)
		}
		return
	}
	if err := c.transmission(); err != nil {
		if c.cut.Load() {
			c.log.Debug("connection cut", "err", err)
		} else {
			c.log.Info("connection ended", "err", err)
		}
		return
	}
	c.log.Debug("connection closed by the client")
}

// write sends one complete message.
func (c *conn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.nc.Write(b); err != nil {
		c.nc.Close() // the stream is broken: make the reader stop too
		return err
	}
	return nil
}

// handshake runs the fixed newstyle negotiation until the client enters the transmission phase.
func (c *conn) handshake() error {
	var b []byte
	b = binary.BigEndian.AppendUint64(b, nbdMagic)
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	if err := c.write(b); err != nil {
		return fmt.Errorf("send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("read client flags: %w", err)
	}
	clientFlags := binary.BigEndian.Uint32(cf[:])
	if clientFlags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("unknown client flags %#x", clientFlags)
	}
	noZeroes := clientFlags&flagCNoZeroes != 0

	for {
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return fmt.Errorf("read option: %w", err)
		}
		if m := binary.BigEndian.Uint64(h[0:8]); m != optMagic {
			return fmt.Errorf("bad option magic %#x", m)
		}
		opt, n := binary.BigEndian.Uint32(h[8:12]), binary.BigEndian.Uint32(h[12:16])
		if n > maxOptionLen {
			// The spec lets a server end a session it deems a denial of service; an option this long is one.
			return fmt.Errorf("option %d with %d bytes of data", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("read option %d data: %w", opt, err)
		}
		c.log.Debug("option", "option", opt, "length", n)

		var reply []byte
		switch opt {
		case optExportName:
			name := string(data)
			if len(name) > maxNameLen || !c.s.exportOK(name) {
				// NBD_OPT_EXPORT_NAME cannot be answered with an error: the session must end.
				return fmt.Errorf("unknown export %q", name)
			}
			reply = binary.BigEndian.AppendUint64(nil, uint64(c.s.size))
			reply = binary.BigEndian.AppendUint16(reply, transmissionFlags)
			if !noZeroes {
				reply = append(reply, make([]byte, exportNameZeroesSize)...)
			}
			if err := c.write(reply); err != nil {
				return fmt.Errorf("answer export name: %w", err)
			}
			return nil
		case optAbort:
			c.write(appendOptionReply(nil, opt, repAck, nil)) // the client may already have gone
			return errAbort
		case optList:
			if n != 0 {
				reply = appendOptionReply(nil, opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
				break
			}
			name := []byte(c.s.exportName)
			reply = appendOptionReply(nil, opt, repServer, append(binary.BigEndian.AppendUint32(nil, uint32(len(name))), name...))
			reply = appendOptionReply(reply, opt, repAck, nil)
		case optInfo, optGo:
			ir, perr := parseInfoRequest(data)
			ok := false
			switch {
			case perr != nil:
				reply = appendOptionReply(nil, opt, repErrInvalid, []byte(perr.Error()))
			case !c.s.exportOK(ir.Name):
				reply = appendOptionReply(nil, opt, repErrUnknown, []byte("no such export"))
			default:
				reply = c.appendInfo(nil, opt, ir)
				reply = appendOptionReply(reply, opt, repAck, nil)
				ok = true
			}
			if err := c.write(reply); err != nil {
				return fmt.Errorf("answer option %d: %w", opt, err)
			}
			if opt == optGo && ok {
				return nil // NBD_REP_ACK to NBD_OPT_GO enters the transmission phase
			}
			continue
		default:
			reply = appendOptionReply(nil, opt, repErrUnsup, nil)
		}
		if err := c.write(reply); err != nil {
			return fmt.Errorf("answer option %d: %w", opt, err)
		}
	}
}

// appendInfo appends the NBD_REP_INFO replies for NBD_OPT_INFO or NBD_OPT_GO: always NBD_INFO_EXPORT,
// and NBD_INFO_BLOCK_SIZE when asked. The minimum block size is 1: any alignment works (the cache reads,
// modifies and writes partial sectors); the preferred one is the sector size.
func (c *conn) appendInfo(b []byte, opt uint32, ir infoRequest) []byte {
	var d []byte
	d = binary.BigEndian.AppendUint16(d, infoExport)
	d = binary.BigEndian.AppendUint64(d, uint64(c.s.size))
	d = binary.BigEndian.AppendUint16(d, transmissionFlags)
	b = appendOptionReply(b, opt, repInfo, d)
	if slices.Contains(ir.Infos, infoBlockSize) {
		d = binary.BigEndian.AppendUint16(d[:0], infoBlockSize)
		d = binary.BigEndian.AppendUint32(d, 1)
		d = binary.BigEndian.AppendUint32(d, uint32(c.s.sectorSize))
		d = binary.BigEndian.AppendUint32(d, c.s.maxPayload)
		b = appendOptionReply(b, opt, repInfo, d)
	}
	return b
}

// transmission reads requests until the client disconnects or the connection breaks. Each valid request
// runs in its own goroutine (at most maxInFlight at once); replies go out as requests finish.
func (c *conn) transmission() error {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, c.s.maxInFlight)
	hdr := make([]byte, requestSize)
	for {
		if _, err := io.ReadFull(c.br, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // the client hung up between requests
			}
			return fmt.Errorf("read request: %w", err)
		}
		req, err := parseRequest(hdr)
		if err != nil {
			return err // without the magic the stream cannot be followed: hard disconnect
		}
		if req.Type == cmdDisc {
			wg.Wait() // the spec asks to finish outstanding requests first
			return nil
		}
		code := req.check(uint64(c.s.size), c.s.maxPayload)
		var payload []byte
		if req.hasPayload() {
			if code != 0 {
				// Read and throw away the data (without holding it) to stay in step with the client.
				if _, err := io.CopyN(io.Discard, c.br, int64(req.Length)); err != nil {
					return fmt.Errorf("skip payload of rejected write: %w", err)
				}
			} else {
				payload = make([]byte, req.Length)
				if _, err := io.ReadFull(c.br, payload); err != nil {
					return fmt.Errorf("read write payload: %w", err)
				}
			}
		}
		if code != 0 {
			c.log.Info("request rejected", "type", req.Type, "flags", req.Flags, "offset", req.Offset, "length", req.Length, "error", code)
			c.s.errs.Add(1)
			if err := c.write(appendSimpleReply(nil, code, req.Cookie)); err != nil {
				return fmt.Errorf("send reply: %w", err)
			}
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c.handle(req, payload)
		}()
	}
}

// handle runs one checked request and sends its reply. A failed reply write closes the connection,
// which ends the reader.
func (c *conn) handle(req request, payload []byte) {
	s := c.s
	off, n := int64(req.Offset), int64(req.Length)
	fua := req.Flags&cmdFlagFUA != 0
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("request", "type", req.Type, "flags", req.Flags, "offset", req.Offset, "length", req.Length)
	}
	var err error
	switch req.Type {
	case cmdRead:
		buf := make([]byte, replySize+n)
		if err = s.cache.readAt(buf[replySize:], off); err == nil {
			appendSimpleReply(buf[:0], 0, req.Cookie)
			s.reads.Add(1)
			c.write(buf)
			return
		}
	case cmdWrite:
		if err = s.cache.write(off, n, payload, fua); err == nil {
			s.writes.Add(1)
			s.bytesWritten.Add(n)
		}
	case cmdWriteZeroes, cmdTrim:
		// TRIM is modelled as writing zeroes: after a trim the client may assume nothing about the
		// range, so zeroes are one valid content, and the cache rules apply unchanged.
		if err = s.cache.write(off, n, nil, fua); err == nil {
			if req.Type == cmdTrim {
				s.trims.Add(1)
			} else {
				s.writeZeroes.Add(1)
			}
			s.bytesWritten.Add(n)
		}
	case cmdFlush:
		if _, err = s.cache.flush(); err == nil {
			s.flushes.Add(1)
		}
	}
	if err == nil && fua && req.Type != cmdRead && req.Type != cmdFlush {
		s.fuaWrites.Add(1)
	}
	code := uint32(0)
	if err != nil {
		c.log.Error("request failed", "type", req.Type, "offset", req.Offset, "length", req.Length, "err", err)
		s.errs.Add(1)
		code = errIO
	}
	c.write(appendSimpleReply(nil, code, req.Cookie))
}
