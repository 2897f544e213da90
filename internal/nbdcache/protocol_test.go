package nbdcache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"
	"time"
)

func header(flags, typ uint16, cookie, offset uint64, length uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, requestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint64(b, offset)
	return binary.BigEndian.AppendUint32(b, length)
}

func TestRequestCheck(t *testing.T) {
	const size, max = 1 << 20, 64 << 10
	tests := []struct {
		name string
		req  request
		want uint32
	}{
		{"read", request{Type: cmdRead, Offset: 0, Length: 4096}, 0},
		{"read to the end", request{Type: cmdRead, Offset: size - 1, Length: 1}, 0},
		{"read of zero bytes at the end", request{Type: cmdRead, Offset: size, Length: 0}, 0},
		{"read past the end", request{Type: cmdRead, Offset: size - 1, Length: 2}, errInval},
		{"read beyond the end", request{Type: cmdRead, Offset: size + 1, Length: 0}, errInval},
		{"read with offset overflow", request{Type: cmdRead, Offset: math.MaxUint64, Length: 2}, errInval},
		{"read over max payload", request{Type: cmdRead, Offset: 0, Length: max + 1}, errInval},
		{"read with FUA", request{Type: cmdRead, Flags: cmdFlagFUA, Length: 1}, 0},
		{"read with NO_HOLE", request{Type: cmdRead, Flags: cmdFlagNoHole, Length: 1}, errInval},
		{"write", request{Type: cmdWrite, Offset: 512, Length: max}, 0},
		{"write FUA", request{Type: cmdWrite, Flags: cmdFlagFUA, Length: 1}, 0},
		{"write past the end", request{Type: cmdWrite, Offset: size - 100, Length: 101}, errNoSpc},
		{"write over max payload", request{Type: cmdWrite, Offset: 0, Length: max + 1}, errInval},
		{"write with unknown flag", request{Type: cmdWrite, Flags: 1 << 7, Length: 1}, errInval},
		{"write zeroes larger than max payload", request{Type: cmdWriteZeroes, Length: size}, 0},
		{"write zeroes NO_HOLE FUA", request{Type: cmdWriteZeroes, Flags: cmdFlagNoHole | cmdFlagFUA, Length: 1}, 0},
		{"write zeroes FAST_ZERO (not offered)", request{Type: cmdWriteZeroes, Flags: 1 << 4, Length: 1}, errInval},
		{"write zeroes past the end", request{Type: cmdWriteZeroes, Offset: size, Length: 1}, errNoSpc},
		{"trim", request{Type: cmdTrim, Offset: 4096, Length: size - 4096}, 0},
		{"trim past the end", request{Type: cmdTrim, Offset: 4096, Length: size}, errInval},
		{"flush", request{Type: cmdFlush}, 0},
		{"flush with FUA", request{Type: cmdFlush, Flags: cmdFlagFUA}, 0},
		{"cache (not offered)", request{Type: 5}, errInval},
		{"block status (not negotiated)", request{Type: 7}, errInval},
		{"unknown command", request{Type: 0xffff}, errInval},
	}
	for _, tt := range tests {
		if got := tt.req.check(size, max); got != tt.want {
			t.Errorf("%s: %+v: error %d, want %d", tt.name, tt.req, got, tt.want)
		}
	}
}

func TestParseRequest(t *testing.T) {
	r, err := parseRequest(header(1, cmdWrite, 0x0102030405060708, 0x1122334455667788, 0x99aabbcc))
	if err != nil {
		t.Fatal(err)
	}
	want := request{Flags: 1, Type: cmdWrite, Cookie: 0x0102030405060708, Offset: 0x1122334455667788, Length: 0x99aabbcc}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	bad := header(0, cmdRead, 1, 0, 0)
	bad[0] ^= 0xff
	if _, err := parseRequest(bad); !errors.Is(err, errBadMagic) {
		t.Errorf("bad magic: %v", err)
	}
	if _, err := parseRequest(bad[:27]); err == nil {
		t.Error("short header accepted")
	}
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func TestParseInfoRequest(t *testing.T) {
	tests := []struct {
		name  string
		data  []byte
		ok    bool
		want  string
		infos int
	}{
		{"empty name, no infos", infoData(""), true, "", 0},
		{"name and block size", infoData("disk", infoBlockSize), true, "disk", 1},
		{"several infos", infoData("x", 0, 1, 2, 3), true, "x", 4},
		{"too short", []byte{0, 0, 0}, false, "", 0},
		{"name longer than data", append(binary.BigEndian.AppendUint32(nil, 10), 0, 0), false, "", 0},
		{"name length near 2^32", append(binary.BigEndian.AppendUint32(nil, math.MaxUint32), 0, 0, 0, 0, 0, 0), false, "", 0},
		{"info count larger than data", func() []byte { b := infoData("a"); b[5], b[6] = 0xff, 0xff; return b }(), false, "", 0},
		{"trailing bytes", append(infoData("a", 3), 7), false, "", 0},
		{"count says 2, one given", func() []byte { b := infoData("a", 3); b[6] = 2; return b }(), false, "", 0},
		{"name over 4096 bytes", infoData(string(make([]byte, 4097))), false, "", 0},
	}
	for _, tt := range tests {
		ir, err := parseInfoRequest(tt.data)
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v, want ok=%v", tt.name, err, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, errInvalidOption) {
				t.Errorf("%s: error %v is not errInvalidOption", tt.name, err)
			}
			continue
		}
		if ir.Name != tt.want || len(ir.Infos) != tt.infos {
			t.Errorf("%s: got %+v", tt.name, ir)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add(header(0, cmdRead, 1, 0, 512))
	f.Add(header(cmdFlagFUA, cmdWrite, 2, 1<<20-1, 1))
	f.Add(header(0xffff, 0xffff, 3, math.MaxUint64, math.MaxUint32))
	f.Add(make([]byte, requestSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			return
		}
		if !bytes.Equal(header(r.Flags, r.Type, r.Cookie, r.Offset, r.Length), b) {
			t.Fatalf("%x does not round-trip through %+v", b, r)
		}
		const size, max = 1 << 20, 64 << 10
		if r.check(size, max) != 0 {
			return
		}
		// An accepted request is a known command inside the export within the payload limit.
		switch r.Type {
		case cmdRead, cmdWrite:
			if r.Length > max {
				t.Fatalf("accepted %+v over the max payload", r)
			}
			fallthrough
		case cmdTrim, cmdWriteZeroes:
			if r.Offset+uint64(r.Length) > size || r.Offset > size {
				t.Fatalf("accepted %+v past the end", r)
			}
		case cmdFlush, cmdDisc:
		default:
			t.Fatalf("accepted unknown command %+v", r)
		}
	})
}

func FuzzParseInfoRequest(f *testing.F) {
	f.Add(infoData(""))
	f.Add(infoData("basalt", infoExport, infoBlockSize))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ir, err := parseInfoRequest(b)
		if err != nil {
			return
		}
		if !bytes.Equal(infoData(ir.Name, ir.Infos...), b) {
			t.Fatalf("%x does not round-trip through %+v", b, ir)
		}
	})
}

// client is a minimal NBD client for feeding the server requests no well-behaved client sends.
type client struct {
	t  testing.TB
	nc net.Conn
}

func dial(t testing.TB, sock string) *client {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(30 * time.Second)) // a server that stops answering fails the test, not hangs it
	t.Cleanup(func() { nc.Close() })
	c := &client{t: t, nc: nc}
	greet := c.read(18)
	if binary.BigEndian.Uint64(greet) != nbdMagic || binary.BigEndian.Uint64(greet[8:]) != optMagic {
		t.Fatalf("greeting %x", greet)
	}
	if hf := binary.BigEndian.Uint16(greet[16:]); hf != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", hf)
	}
	return c
}

func (c *client) send(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.nc, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (c *client) option(opt uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.send(append(b, data...))
}

// optionReply reads one option reply and checks that it answers opt.
func (c *client) optionReply(opt uint32) (typ uint32, data []byte) {
	c.t.Helper()
	h := c.read(20)
	if m := binary.BigEndian.Uint64(h); m != optReplyMagic {
		c.t.Fatalf("option reply magic %#x", m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		c.t.Fatalf("reply to option %d, want %d", o, opt)
	}
	return binary.BigEndian.Uint32(h[12:]), c.read(int(binary.BigEndian.Uint32(h[16:])))
}

// reply reads one simple reply and returns its error and cookie.
func (c *client) reply() (errCode uint32, cookie uint64) {
	c.t.Helper()
	h := c.read(replySize)
	if m := binary.BigEndian.Uint32(h); m != simpleReplyMagic {
		c.t.Fatalf("reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	b, err := io.ReadAll(c.nc)
	if err != nil || len(b) != 0 {
		c.t.Fatalf("connection still open or sent %x: %v", b, err)
	}
}

// goTransmission negotiates with NBD_OPT_GO and returns the export size and transmission flags.
func (c *client) goTransmission() (uint64, uint16) {
	c.t.Helper()
	c.send(binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes))
	c.option(optGo, infoData("", infoBlockSize))
	var size uint64
	var flags uint16
	for {
		typ, data := c.optionReply(optGo)
		if typ == repAck {
			return size, flags
		}
		if typ != repInfo {
			c.t.Fatalf("NBD_OPT_GO reply %#x %q", typ, data)
		}
		if binary.BigEndian.Uint16(data) == infoExport {
			size, flags = binary.BigEndian.Uint64(data[2:]), binary.BigEndian.Uint16(data[10:])
		}
	}
}

func TestHandshakeOptions(t *testing.T) {
	img := newImage(t, t.TempDir(), "disk.raw", 1<<20, nil)
	_, sock := startServer(t, img, Options{ExportName: "disk", MaxPayload: 64 << 10})

	c := dial(t, sock)
	c.send(binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle))
	c.option(99, []byte("whatever")) // unknown option
	if typ, _ := c.optionReply(99); typ != repErrUnsup {
		t.Errorf("unknown option: reply %#x, want NBD_REP_ERR_UNSUP", typ)
	}
	c.option(5, nil) // NBD_OPT_STARTTLS: no TLS here
	if typ, _ := c.optionReply(5); typ != repErrUnsup {
		t.Errorf("STARTTLS: reply %#x, want NBD_REP_ERR_UNSUP", typ)
	}
	c.option(8, nil) // NBD_OPT_STRUCTURED_REPLY: simple replies only
	if typ, _ := c.optionReply(8); typ != repErrUnsup {
		t.Errorf("STRUCTURED_REPLY: reply %#x, want NBD_REP_ERR_UNSUP", typ)
	}
	c.option(optList, []byte{1})
	if typ, _ := c.optionReply(optList); typ != repErrInvalid {
		t.Errorf("LIST with data: reply %#x, want NBD_REP_ERR_INVALID", typ)
	}
	c.option(optList, nil)
	if typ, data := c.optionReply(optList); typ != repServer || string(data) != "\x00\x00\x00\x04disk" {
		t.Errorf("LIST: reply %#x %q", typ, data)
	}
	if typ, _ := c.optionReply(optList); typ != repAck {
		t.Errorf("LIST end: reply %#x", typ)
	}
	c.option(optInfo, []byte{0, 0, 0, 9, 'x'}) // malformed
	if typ, _ := c.optionReply(optInfo); typ != repErrInvalid {
		t.Errorf("malformed INFO: reply %#x, want NBD_REP_ERR_INVALID", typ)
	}
	c.option(optGo, infoData("other"))
	if typ, _ := c.optionReply(optGo); typ != repErrUnknown {
		t.Errorf("GO for an unknown export: reply %#x, want NBD_REP_ERR_UNKNOWN", typ)
	}
	c.option(optInfo, infoData("disk", infoBlockSize, 0x7777)) // an unknown info request is ignored
	var gotExport, gotBlock bool
	for {
		typ, data := c.optionReply(optInfo)
		if typ == repAck {
			break
		}
		switch {
		case typ == repInfo && bytes.Equal(data, []byte{0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x6d}):
			gotExport = true
		case typ == repInfo && bytes.Equal(data, []byte{0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0, 1, 0, 0}):
			gotBlock = true
		default:
			t.Errorf("INFO reply %#x %x", typ, data)
		}
	}
	if !gotExport || !gotBlock {
		t.Errorf("INFO: export info %v, block size info %v", gotExport, gotBlock)
	}
	c.option(optAbort, nil)
	if typ, _ := c.optionReply(optAbort); typ != repAck {
		t.Errorf("ABORT: reply %#x", typ)
	}
	c.expectClosed()

	// NBD_OPT_EXPORT_NAME, without zeroes (NBD_FLAG_C_NO_ZEROES) and with them.
	for _, noZeroes := range []bool{true, false} {
		c = dial(t, sock)
		cf := uint32(flagCFixedNewstyle)
		if noZeroes {
			cf |= flagCNoZeroes
		}
		c.send(binary.BigEndian.AppendUint32(nil, cf))
		c.option(optExportName, []byte("disk"))
		b := c.read(10)
		if size, flags := binary.BigEndian.Uint64(b), binary.BigEndian.Uint16(b[8:]); size != 1<<20 || flags != transmissionFlags {
			t.Errorf("EXPORT_NAME: size %d flags %#x", size, flags)
		}
		if !noZeroes && !bytes.Equal(c.read(124), make([]byte, 124)) {
			t.Error("EXPORT_NAME: 124 zero bytes missing")
		}
		c.send(header(0, cmdFlush, 7, 0, 0))
		if e, cookie := c.reply(); e != 0 || cookie != 7 {
			t.Errorf("flush after EXPORT_NAME: error %d cookie %d", e, cookie)
		}
	}

	// Sessions the server must end.
	for name, send := range map[string][]byte{
		"unknown client flags": binary.BigEndian.AppendUint32(nil, 1<<5),
		"bad option magic":     append(binary.BigEndian.AppendUint32(nil, 1), bytes.Repeat([]byte{0xee}, 16)...),
		"oversized option": binary.BigEndian.AppendUint32(append(binary.BigEndian.AppendUint64(
			binary.BigEndian.AppendUint32(nil, 1), optMagic), 0, 0, 0, 7), math.MaxUint32),
		"EXPORT_NAME of an unknown export": append(binary.BigEndian.AppendUint32(append(binary.BigEndian.AppendUint64(
			binary.BigEndian.AppendUint32(nil, 1), optMagic), 0, 0, 0, 1), 3), "xyz"...),
	} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, sock)
			c.send(send)
			c.expectClosed()
		})
	}
}

func TestBadRequestsGetErrors(t *testing.T) {
	const size = 1 << 20
	dir := t.TempDir()
	img := newImage(t, dir, "disk.raw", size, func(off int64) byte { return byte(off) })
	s, sock := startServer(t, img, Options{MaxPayload: 64 << 10})
	c := dial(t, sock)
	if gotSize, flags := c.goTransmission(); gotSize != size || flags != transmissionFlags {
		t.Fatalf("GO: size %d flags %#x", gotSize, flags)
	}
	expect := func(name string, req []byte, want uint32) {
		t.Helper()
		c.send(req)
		cookie := binary.BigEndian.Uint64(req[8:])
		if e, got := c.reply(); e != want || got != cookie {
			t.Errorf("%s: error %d cookie %d, want error %d cookie %d", name, e, got, want, cookie)
		}
	}
	expect("read over max payload", header(0, cmdRead, 1, 0, 64<<10+1), errInval)
	expect("read past the end", header(0, cmdRead, 2, size-10, 11), errInval)
	expect("read with offset overflow", header(0, cmdRead, 3, math.MaxUint64-1, 4), errInval)
	expect("write past the end", append(header(0, cmdWrite, 4, size-1, 2), 9, 9), errNoSpc)
	expect("write over max payload", append(header(0, cmdWrite, 5, 0, 1<<20), make([]byte, 1<<20)...), errInval)
	expect("unknown command", header(0, 42, 6, 0, 0), errInval)
	expect("unknown flag", header(1<<9, cmdRead, 7, 0, 1), errInval)
	expect("trim past the end", header(0, cmdTrim, 8, size, 1), errInval)
	expect("block status without negotiation", header(0, 7, 9, 0, 512), errInval)
	// The rejected writes' payloads were consumed: the stream is still in step, and they changed nothing.
	c.send(header(0, cmdRead, 10, size-4, 4))
	if e, cookie := c.reply(); e != 0 || cookie != 10 {
		t.Fatalf("read after errors: error %d cookie %d", e, cookie)
	}
	if got := c.read(4); !bytes.Equal(got, []byte{0xfc, 0xfd, 0xfe, 0xff}) {
		t.Fatalf("read %x", got)
	}
	// Zero-length requests succeed and do nothing.
	expect("zero-length write", header(0, cmdWrite, 11, 5, 0), 0)
	c.send(header(0, cmdRead, 12, size, 0))
	if e, cookie := c.reply(); e != 0 || cookie != 12 {
		t.Fatalf("zero-length read: error %d cookie %d", e, cookie)
	}
	if st := s.Stats(); st.Errors != 9 || st.DirtyBytes != 0 {
		t.Errorf("stats %+v, want 9 errors and nothing dirty", st)
	}

	// Pipelined requests: all sent before any reply is read; every cookie is answered once.
	var batch []byte
	for i := range 32 {
		off := uint64(i) * 4096
		batch = append(batch, header(0, cmdWrite, uint64(100+i), off, 4096)...)
		batch = append(batch, bytes.Repeat([]byte{byte(i)}, 4096)...)
	}
	batch = append(batch, header(0, cmdFlush, 200, 0, 0)...) // may run before the writes: not waited for
	c.send(batch)
	seen := map[uint64]bool{}
	for range 33 {
		e, cookie := c.reply()
		if e != 0 || seen[cookie] || (cookie < 100 || cookie > 131) && cookie != 200 {
			t.Fatalf("pipelined reply: error %d cookie %d (seen before: %v)", e, cookie, seen[cookie])
		}
		seen[cookie] = true
	}

	// A header with a bad magic ends the connection; the server keeps serving others.
	c.send(bytes.Repeat([]byte{0x42}, requestSize))
	c.expectClosed()
	c = dial(t, sock)
	c.goTransmission()
	c.send(header(0, cmdRead, 1, 31*4096, 4096))
	if e, _ := c.reply(); e != 0 {
		t.Fatalf("read on a new connection: error %d", e)
	}
	if got := c.read(4096); !bytes.Equal(got, bytes.Repeat([]byte{31}, 4096)) {
		t.Fatalf("pipelined write not visible: %x...", got[:8])
	}
	c.send(header(0, cmdDisc, 2, 0, 0))
	c.expectClosed()
	qemuIO(t, sock, nil, "read -P 31 124k 4k") // and a real client still works
}

// FuzzConnection feeds arbitrary bytes to a live server, from the start of the handshake or after a
// successful NBD_OPT_GO, and checks that the server neither crashes nor hangs: it answers or closes, and
// closes once the input ends. The server must still serve a real client afterwards.
func FuzzConnection(f *testing.F) {
	const size = 256 << 10
	img := newImage(f, f.TempDir(), "disk.raw", size, nil)
	// The fuzz target must not log through f: the server logs nowhere.
	_, sock := startServer(f, img, Options{MaxPayload: 64 << 10, SectorSize: 512, Logger: slog.New(slog.DiscardHandler)})
	goPrefix := append(binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes),
		binary.BigEndian.AppendUint32(append(binary.BigEndian.AppendUint64(nil, optMagic), 0, 0, 0, optGo), 6)...)
	goPrefix = append(goPrefix, infoData("")...)

	f.Add(false, []byte{})
	f.Add(false, goPrefix)
	f.Add(false, append(append([]byte{}, goPrefix...), header(0, cmdRead, 1, 0, 512)...))
	f.Add(true, header(0, cmdRead, 1, 0, 512))
	f.Add(true, append(header(cmdFlagFUA, cmdWrite, 2, 100, 3), 1, 2, 3))
	f.Add(true, append(header(0, cmdWrite, 3, 0, math.MaxUint32), 1, 2, 3))
	f.Add(true, header(cmdFlagNoHole, cmdWriteZeroes, 4, 1000, 100000))
	f.Add(true, append(header(0, cmdTrim, 5, 0, size), header(0, cmdFlush, 6, 0, 0)...))
	f.Add(true, header(0, cmdDisc, 7, 0, 0))
	f.Add(true, bytes.Repeat([]byte{0x25, 0x60, 0x95, 0x13}, 20))
	f.Fuzz(func(t *testing.T, transmission bool, b []byte) {
		nc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(nc, make([]byte, 18)); err != nil {
			t.Fatalf("greeting: %v", err)
		}
		in := b
		if transmission {
			in = append(append([]byte{}, goPrefix...), b...)
		}
		go func() {
			nc.Write(in) // the server may close before it has read everything
			nc.(*net.UnixConn).CloseWrite()
		}()
		if _, err := io.Copy(io.Discard, nc); err != nil {
			t.Fatalf("server did not close the connection after the input ended: %v", err)
		}
	})
	// A real client after the fuzzing: the server still works. (With -fuzz the inputs run in worker
	// processes, each with its own server; this checks the coordinator's.)
	out := qemuIO(f, sock, nil, "write -P 0x5b 0 4k", "read -P 0x5b 0 4k")
	if !strings.Contains(out, "read 4096/4096") {
		f.Fatalf("after fuzzing: %s", out)
	}
}
