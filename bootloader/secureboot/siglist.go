package secureboot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// sigListHeaderSize is the size of EFI_SIGNATURE_LIST without its
// SignatureHeader: SignatureType, SignatureListSize, SignatureHeaderSize,
// SignatureSize.
const sigListHeaderSize = 16 + 4 + 4 + 4

// ownerSize is the size of EFI_SIGNATURE_DATA.SignatureOwner.
const ownerSize = 16

// ErrMalformedList is returned (wrapped) by ParseSignatureDB for bytes that
// are not a sequence of well-formed EFI_SIGNATURE_LISTs.
var ErrMalformedList = errors.New("malformed EFI signature list")

// Signature is one EFI_SIGNATURE_DATA: who added it and its data (a DER
// certificate, an image digest, ...; the list's Type says which).
type Signature struct {
	Owner GUID
	Data  []byte
}

// SignatureList is one EFI_SIGNATURE_LIST (UEFI specification 32.4.1):
// entries of one type and one size.
type SignatureList struct {
	Type    GUID
	Header  []byte // SignatureHeader; empty for every type the specification defines
	Entries []Signature
}

// SignatureDB is the content of a signature database variable such as db
// or dbx: signature lists one after the other.
type SignatureDB []SignatureList

// ParseSignatureDB parses the data of a signature database variable. Every
// size is checked against the input; lists of the types the UEFI
// specification defines must have that type's entry size and no header, as
// the firmware checks when the variable is written. Lists of other types
// are kept but never used by Check. Empty data is an empty database.
func ParseSignatureDB(data []byte) (SignatureDB, error) {
	le := binary.LittleEndian
	var db SignatureDB
	for off := 0; off < len(data); {
		rest := data[off:]
		if len(rest) < sigListHeaderSize {
			return nil, fmt.Errorf("%w: %d bytes left at offset %d, a list header needs %d", ErrMalformedList, len(rest), off, sigListHeaderSize)
		}
		var l SignatureList
		copy(l.Type[:], rest)
		listSize := uint64(le.Uint32(rest[16:]))
		hdrSize := uint64(le.Uint32(rest[20:]))
		sigSize := uint64(le.Uint32(rest[24:]))
		switch {
		case listSize > uint64(len(rest)):
			return nil, fmt.Errorf("%w: list at offset %d: SignatureListSize %d, only %d bytes left", ErrMalformedList, off, listSize, len(rest))
		case listSize < sigListHeaderSize+hdrSize:
			return nil, fmt.Errorf("%w: list at offset %d: SignatureListSize %d smaller than its header (%d)", ErrMalformedList, off, listSize, sigListHeaderSize+hdrSize)
		case sigSize <= ownerSize:
			return nil, fmt.Errorf("%w: list at offset %d: SignatureSize %d leaves no data after the owner GUID", ErrMalformedList, off, sigSize)
		case (listSize-sigListHeaderSize-hdrSize)%sigSize != 0:
			return nil, fmt.Errorf("%w: list at offset %d: %d bytes of entries are not a multiple of SignatureSize %d",
				ErrMalformedList, off, listSize-sigListHeaderSize-hdrSize, sigSize)
		}
		if want, known := entrySize(l.Type); known {
			if hdrSize != 0 {
				return nil, fmt.Errorf("%w: list at offset %d of type %v has a %d-byte header", ErrMalformedList, off, l.Type, hdrSize)
			}
			if want >= 0 && sigSize != uint64(ownerSize+want) {
				return nil, fmt.Errorf("%w: list at offset %d of type %v: SignatureSize %d, want %d", ErrMalformedList, off, l.Type, sigSize, ownerSize+want)
			}
		}
		body := rest[sigListHeaderSize:listSize]
		if hdrSize > 0 {
			l.Header = body[:hdrSize]
		}
		for e := body[hdrSize:]; len(e) > 0; e = e[sigSize:] {
			var s Signature
			copy(s.Owner[:], e)
			s.Data = e[ownerSize:sigSize]
			l.Entries = append(l.Entries, s)
		}
		db = append(db, l)
		off += int(listSize)
	}
	return db, nil
}

// MarshalBinary encodes db as a signature database variable's data (what
// efitools' cert-to-efi-sig-list and hash-to-efi-sig-list write). All
// entries of a list must have the same size.
func (db SignatureDB) MarshalBinary() ([]byte, error) {
	le := binary.LittleEndian
	var out []byte
	for i, l := range db {
		dataSize := 0
		if want, known := entrySize(l.Type); known && want >= 0 {
			dataSize = want
		}
		if len(l.Entries) > 0 {
			dataSize = len(l.Entries[0].Data)
		}
		for _, e := range l.Entries {
			if len(e.Data) != dataSize || dataSize == 0 {
				return nil, fmt.Errorf("encode signature list %d: entries of %d and %d bytes", i, dataSize, len(e.Data))
			}
		}
		sigSize := uint64(ownerSize + dataSize)
		listSize := uint64(sigListHeaderSize) + uint64(len(l.Header)) + uint64(len(l.Entries))*sigSize
		if listSize > math.MaxUint32 {
			return nil, fmt.Errorf("encode signature list %d: %d bytes", i, listSize)
		}
		out = append(out, l.Type[:]...)
		out = le.AppendUint32(out, uint32(listSize))
		out = le.AppendUint32(out, uint32(len(l.Header)))
		out = le.AppendUint32(out, uint32(sigSize))
		out = append(out, l.Header...)
		for _, e := range l.Entries {
			out = append(out, e.Owner[:]...)
			out = append(out, e.Data...)
		}
	}
	return out, nil
}

// Entries returns the entries of every list of type t, in order.
func (db SignatureDB) Entries(t GUID) []Signature {
	var out []Signature
	for _, l := range db {
		if l.Type == t {
			out = append(out, l.Entries...)
		}
	}
	return out
}

// NewCertList returns a list holding one DER X.509 certificate, as efitools'
// cert-to-efi-sig-list writes it.
func NewCertList(owner GUID, der []byte) SignatureList {
	return SignatureList{Type: CertX509, Entries: []Signature{{Owner: owner, Data: der}}}
}

// NewHashList returns a list of type t (CertSHA256, ...) holding digests.
func NewHashList(t, owner GUID, digests ...[]byte) SignatureList {
	l := SignatureList{Type: t}
	for _, d := range digests {
		l.Entries = append(l.Entries, Signature{Owner: owner, Data: d})
	}
	return l
}
