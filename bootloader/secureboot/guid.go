package secureboot

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is an EFI_GUID in its in-memory (and on-disk) byte order: the first
// three fields little-endian, the last eight bytes as written.
type GUID [16]byte

// ParseGUID parses the textual form, "8be4df61-93ca-11d2-aa0d-00e098032b8c".
func ParseGUID(s string) (GUID, error) {
	var g GUID
	parts := strings.Split(s, "-")
	if len(s) != 36 || len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 {
		return g, fmt.Errorf("parse GUID %q: want 8-4-4-4-12 hex digits", s)
	}
	b, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("parse GUID %q: %w", s, err)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(b[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(b[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(b[6:]))
	copy(g[8:], b[8:])
	return g, nil
}

func mustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String returns the textual form of g, lower case.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x",
		binary.LittleEndian.Uint32(g[0:]), binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

// Variable vendor GUIDs and signature types (UEFI specification 2.10,
// sections 3.3 and 32.4.1).
var (
	// GlobalVariable owns SecureBoot, SetupMode, PK and KEK.
	GlobalVariable = mustGUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
	// ImageSecurityDatabase owns db and dbx.
	ImageSecurityDatabase = mustGUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

	// CertX509 entries are DER X.509 certificates.
	CertX509 = mustGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
	// CertSHA256, CertSHA384 and CertSHA512 entries are Authenticode
	// digests of images.
	CertSHA256 = mustGUID("c1c41626-504c-4092-aca9-41f936934328")
	CertSHA384 = mustGUID("ff3e5307-9fd0-48c9-85f1-8ad56c701e01")
	CertSHA512 = mustGUID("093e0fae-a6c4-4f50-9f1b-d41e2b89c19a")
	// CertSHA1 entries are SHA-1 Authenticode digests (not used by Check).
	CertSHA1 = mustGUID("826ca512-cf10-4ac9-b187-be01496631bd")
	// CertX509SHA256, CertX509SHA384 and CertX509SHA512 entries are the
	// digest of a certificate's TBSCertificate followed by an EFI_TIME
	// revocation time.
	CertX509SHA256 = mustGUID("3bd2a492-96c0-4079-b420-fcf98ef103ed")
	CertX509SHA384 = mustGUID("7076876e-80c2-4ee6-aad2-28b349a6865b")
	CertX509SHA512 = mustGUID("446dbf63-2502-4cda-bcfa-2465d2b0fe9d")

	// CertTypePKCS7 is the CertType of a WIN_CERTIFICATE_UEFI_GUID holding
	// PKCS#7 SignedData.
	CertTypePKCS7 = mustGUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
)

// Other signature types the firmware knows (their entries are not used by
// Check, but their sizes are fixed).
var (
	certRSA2048       = mustGUID("3c5766e8-269c-4e34-aa14-ed776e85b3b6")
	certRSA2048SHA256 = mustGUID("e2b36190-879b-4a3d-ad8d-f2e7bba32784")
	certRSA2048SHA1   = mustGUID("67f8444f-8743-48f1-a328-1eaab8736080")
	certSHA224        = mustGUID("0b6e5233-a65c-44c9-9407-d9ab83bfc8bd")
)

// entrySize returns the size of an entry's data (SignatureSize minus the
// owner GUID) for the signature types the firmware knows, as EDK2's
// AuthVariableLib checks them when db or dbx is written: -1 for any size,
// ok false for a type it does not know.
func entrySize(t GUID) (size int, ok bool) {
	switch t {
	case CertX509:
		return -1, true
	case CertSHA1:
		return 20, true
	case certSHA224:
		return 28, true
	case CertSHA256:
		return 32, true
	case CertSHA384, CertX509SHA256:
		return 48, true
	case CertSHA512, CertX509SHA384:
		return 64, true
	case CertX509SHA512:
		return 80, true
	case certRSA2048, certRSA2048SHA256, certRSA2048SHA1:
		return 256, true
	}
	return 0, false
}
