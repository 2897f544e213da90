package nbdcache

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol constants from the NBD protocol description (doc/proto.md of github.com/NetworkBlockDevice/nbd).
const (
	nbdMagic         = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic         = 0x49484156454F5054 // "IHAVEOPT"
	optReplyMagic    = 0x3e889045565a9
	requestMagic     = 0x25609513
	simpleReplyMagic = 0x67446698

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  = 1 << 0
	flagNoZeroes       = 1 << 1
	flagCFixedNewstyle = 1 << 0
	flagCNoZeroes      = 1 << 1

	// Transmission flags.
	flagHasFlags         = 1 << 0
	flagSendFlush        = 1 << 2
	flagSendFUA          = 1 << 3
	flagSendTrim         = 1 << 5
	flagSendWriteZeroes  = 1 << 6
	transmissionFlags    = flagHasFlags | flagSendFlush | flagSendFUA | flagSendTrim | flagSendWriteZeroes
	exportNameZeroesSize = 124

	// Options.
	optExportName = 1
	optAbort      = 2
	optList       = 3
	optInfo       = 6
	optGo         = 7

	// Option replies.
	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6

	// NBD_INFO types.
	infoExport    = 0
	infoBlockSize = 3

	// Commands.
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6

	// Command flags.
	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1

	// Error values.
	errIO    = 5
	errInval = 22
	errNoSpc = 28

	requestSize = 28
	replySize   = 16

	// maxOptionLen bounds the data of one option during the handshake: the largest option we parse
	// (NBD_OPT_GO) carries a name of at most 4096 bytes and a short list of information requests.
	maxOptionLen = 64 << 10
	// maxNameLen is the longest export name the protocol allows.
	maxNameLen = 4096
)

// request is one transmission-phase request header.
type request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// errBadMagic reports a request header without NBD_REQUEST_MAGIC: the stream cannot be resynchronised.
var errBadMagic = errors.New("bad request magic")

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) != requestSize {
		return request{}, fmt.Errorf("request header of %d bytes, want %d", len(b), requestSize)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != requestMagic {
		return request{}, fmt.Errorf("%w %#08x", errBadMagic, m)
	}
	return request{
		Flags:  binary.BigEndian.Uint16(b[4:6]),
		Type:   binary.BigEndian.Uint16(b[6:8]),
		Cookie: binary.BigEndian.Uint64(b[8:16]),
		Offset: binary.BigEndian.Uint64(b[16:24]),
		Length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// hasPayload reports whether the client sends Length bytes of data after the header.
func (r request) hasPayload() bool { return r.Type == cmdWrite }

// check validates a request against an export of size bytes and a maximum payload of maxPayload bytes.
// It returns 0 if the command may run, or the NBD error to answer it with, as proto.md's "Error values"
// asks: NBD_EINVAL for unknown commands or flags, oversized payloads and reads or trims past the end,
// NBD_ENOSPC for writes past the end.
func (r request) check(size uint64, maxPayload uint32) uint32 {
	allowed := uint16(cmdFlagFUA) // accepted on every command, as the spec requires when SEND_FUA is set
	switch r.Type {
	case cmdRead, cmdWrite, cmdTrim, cmdFlush, cmdDisc:
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole
	default:
		return errInval
	}
	if r.Flags&^allowed != 0 {
		return errInval
	}
	if (r.Type == cmdRead || r.Type == cmdWrite) && r.Length > maxPayload {
		return errInval
	}
	switch r.Type {
	case cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes:
		if r.Offset > size || uint64(r.Length) > size-r.Offset {
			if r.Type == cmdWrite || r.Type == cmdWriteZeroes {
				return errNoSpc
			}
			return errInval
		}
	}
	return 0
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	Name  string
	Infos []uint16
}

// errInvalidOption marks option data that does not follow the option's layout (NBD_REP_ERR_INVALID).
var errInvalidOption = errors.New("invalid option data")

// parseInfoRequest decodes the data of NBD_OPT_INFO or NBD_OPT_GO: a 32-bit name length, the name, a
// 16-bit count of information requests and that many 16-bit NBD_INFO types, and nothing after them.
func parseInfoRequest(b []byte) (infoRequest, error) {
	if len(b) < 6 {
		return infoRequest{}, fmt.Errorf("%w: %d bytes, want at least 6", errInvalidOption, len(b))
	}
	n := binary.BigEndian.Uint32(b[0:4])
	if uint64(n) > uint64(len(b)-6) {
		return infoRequest{}, fmt.Errorf("%w: name length %d exceeds the data", errInvalidOption, n)
	}
	if n > maxNameLen {
		return infoRequest{}, fmt.Errorf("%w: name of %d bytes", errInvalidOption, n)
	}
	name := string(b[4 : 4+n])
	rest := b[4+n:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return infoRequest{}, fmt.Errorf("%w: %d information requests in %d bytes", errInvalidOption, count, len(rest))
	}
	infos := make([]uint16, count)
	for i := range infos {
		infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return infoRequest{Name: name, Infos: infos}, nil
}

// appendSimpleReply appends a simple reply header.
func appendSimpleReply(b []byte, errCode uint32, cookie uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, simpleReplyMagic)
	b = binary.BigEndian.AppendUint32(b, errCode)
	return binary.BigEndian.AppendUint64(b, cookie)
}

// appendOptionReply appends an option reply header and its data.
func appendOptionReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, optReplyMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}
