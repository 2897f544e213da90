package secureboot

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// DefaultEfivarsDir is where Linux mounts efivarfs.
const DefaultEfivarsDir = "/sys/firmware/efi/efivars"

// efivarfs file names: <name>-<vendor GUID> (GlobalVariable and
// ImageSecurityDatabase).
const (
	varSecureBoot = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
	varSetupMode  = "SetupMode-8be4df61-93ca-11d2-aa0d-00e098032b8c"
	varDB         = "db-d719b2cb-3d3a-4596-a3bc-dad00e67656f"
	varDBX        = "dbx-d719b2cb-3d3a-4596-a3bc-dad00e67656f"
)

// maxVarSize bounds what ReadVars reads of one variable. Firmware variable
// stores are tens to hundreds of KiB; a larger file is not a variable.
const maxVarSize = 4 << 20

// Vars is what the firmware decides image loading with.
type Vars struct {
	// SecureBoot is the SecureBoot variable: the firmware verifies every
	// image it loads against DB and DBX. When it is false the firmware loads
	// anything, and Check's verdict does not matter for booting.
	SecureBoot bool
	// SetupMode is the SetupMode variable: no platform key is enrolled
	// (SecureBoot is then false) and the key databases may be rewritten.
	SetupMode bool
	// DB lists the certificates and image digests allowed to run, DBX those
	// forbidden. A missing variable is an empty database.
	DB, DBX SignatureDB
}

// ReadVars reads SecureBoot, SetupMode, db and dbx from an efivarfs
// directory (DefaultEfivarsDir on a running system). Each file there holds
// the variable's 4-byte attributes, then its data. A missing variable reads
// as false or empty, as the firmware treats it; a missing directory is an
// error wrapping fs.ErrNotExist (no UEFI, or efivarfs not mounted). A
// variable whose data is malformed is an error: its bytes decide what
// boots, so they are not guessed at.
func ReadVars(dir string) (*Vars, error) {
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("read EFI variables: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("read EFI variables: %s is not a directory", dir)
	}
	v := &Vars{}
	var err error
	if v.SecureBoot, err = readBoolVar(dir, varSecureBoot); err != nil {
		return nil, err
	}
	if v.SetupMode, err = readBoolVar(dir, varSetupMode); err != nil {
		return nil, err
	}
	if v.DB, err = readDBVar(dir, varDB); err != nil {
		return nil, err
	}
	if v.DBX, err = readDBVar(dir, varDBX); err != nil {
		return nil, err
	}
	return v, nil
}

// readVar returns a variable's data without its attributes; nil, nil when
// the variable does not exist.
func readVar(dir, name string) ([]byte, error) {
	f, err := os.Open(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read EFI variable %s: %w", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxVarSize+1))
	if err != nil {
		return nil, fmt.Errorf("read EFI variable %s: %w", name, err)
	}
	if len(b) > maxVarSize {
		return nil, fmt.Errorf("read EFI variable %s: larger than %d bytes", name, maxVarSize)
	}
	if len(b) < 4 {
		return nil, fmt.Errorf("read EFI variable %s: %d bytes, shorter than its attributes", name, len(b))
	}
	return b[4:], nil
}

// readBoolVar reads a one-byte variable such as SecureBoot. Any value but 0
// is true: the firmware only skips verification for 0.
func readBoolVar(dir, name string) (bool, error) {
	b, err := readVar(dir, name)
	if err != nil || b == nil {
		return false, err
	}
	if len(b) != 1 {
		return false, fmt.Errorf("read EFI variable %s: %d bytes of data, want 1", name, len(b))
	}
	return b[0] != 0, nil
}

func readDBVar(dir, name string) (SignatureDB, error) {
	b, err := readVar(dir, name)
	if err != nil || b == nil {
		return nil, err
	}
	db, err := ParseSignatureDB(b)
	if err != nil {
		return nil, fmt.Errorf("read EFI variable %s: %w", name, err)
	}
	return db, nil
}
