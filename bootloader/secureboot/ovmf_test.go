package secureboot

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"
)

// ovmfVars returns the live variables (name -> data) of a vendor GUID in an
// OVMF_VARS file: a firmware volume holding an authenticated variable
// store, as EDK2's variable driver writes it (VariableFormat.h).
func ovmfVars(t *testing.T, fd []byte, vendor GUID) map[string][]byte {
	t.Helper()
	le := binary.LittleEndian
	if len(fd) < 56 || string(fd[40:44]) != "_FVH" {
		t.Fatal("not a firmware volume")
	}
	off := int(le.Uint16(fd[48:])) + 28 // FV header, then VARIABLE_STORE_HEADER
	const hdr = 60                      // AUTHENTICATED_VARIABLE_HEADER
	const varAdded = 0x3f
	vars := map[string][]byte{}
	for off+hdr <= len(fd) && le.Uint16(fd[off:]) == 0x55aa {
		state := fd[off+2]
		nameSize, dataSize := int(le.Uint32(fd[off+36:])), int(le.Uint32(fd[off+40:]))
		g := GUID(fd[off+44 : off+60])
		if off+hdr+nameSize+dataSize > len(fd) || nameSize%2 != 0 {
			t.Fatalf("variable at %#x runs past the store", off)
		}
		u := make([]uint16, nameSize/2)
		for i := range u {
			u[i] = le.Uint16(fd[off+hdr+2*i:])
		}
		name := strings.TrimRight(string(utf16.Decode(u)), "\x00")
		if state == varAdded && g == vendor {
			vars[name] = fd[off+hdr+nameSize : off+hdr+nameSize+dataSize]
		}
		off = (off + hdr + nameSize + dataSize + 3) &^ 3
	}
	return vars
}

// TestCheckWithOVMFVariables reads db and dbx as OVMF enrolled them (the
// snakeoil variables the QEMU suite boots with, and the Microsoft ones) and
// checks images against them.
func TestCheckWithOVMFVariables(t *testing.T) {
	p := newPKI(t)
	snakeSigned := p.sign(t, stubPath, signer{tool: "sbsign", cred: p.snake})
	leafSigned := p.sign(t, stubPath, signer{tool: "osslsigncode", cred: p.leaf, addCA: true})
	unsigned := readFile(t, stubPath, "systemd-boot-efi")

	load := func(t *testing.T, file string) *Vars {
		fd := readFile(t, filepath.Join("/usr/share/OVMF", file), "ovmf")
		vars := ovmfVars(t, fd, ImageSecurityDatabase)
		if vars["db"] == nil {
			t.Fatalf("%s: no db", file)
		}
		dir := writeEfivars(t, []byte{1}, []byte{0}, nil, nil)
		for name, efivar := range map[string]string{"db": varDB, "dbx": varDBX} {
			if data, ok := vars[name]; ok {
				writeFile(t, filepath.Join(dir, efivar), append(binary.LittleEndian.AppendUint32(nil, 0x27), data...))
			}
		}
		v, err := ReadVars(dir)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		t.Logf("%s: db %d lists, dbx %d lists: %s", file, len(v.DB), len(v.DBX), describeDB(v.DB))
		return v
	}

	t.Run("snakeoil", func(t *testing.T) {
		v := load(t, "OVMF_VARS_4M.snakeoil.fd")
		trust, err := Check(snakeSigned, v)
		if err != nil || trust.Anchor != p.snake.cert.Subject.String() {
			t.Errorf("snakeoil-signed: %v, %v", trust, err)
		}
		if _, err := Check(leafSigned, v); !errors.Is(err, ErrNotTrusted) || !strings.Contains(err.Error(), "O=SnakeOil") {
			t.Errorf("leaf-signed: %v, want ErrNotTrusted naming the snakeoil certificate", err)
		}
		if _, err := Check(unsigned, v); !errors.Is(err, ErrUnsigned) {
			t.Errorf("unsigned: %v", err)
		}
	})
	t.Run("microsoft", func(t *testing.T) {
		v := load(t, "OVMF_VARS_4M.ms.fd")
		_, err := Check(snakeSigned, v)
		if !errors.Is(err, ErrNotTrusted) {
			t.Fatalf("snakeoil-signed: %v, want ErrNotTrusted", err)
		}
		for _, want := range []string{"Microsoft Windows Production PCA 2011", "Microsoft Corporation UEFI CA 2011"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message %q does not name %s", err, want)
			}
		}
	})
}
