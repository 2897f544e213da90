package secureboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestReadVars(t *testing.T) {
	p := newPKI(t)
	d := sum256([]byte("revoked image"))
	db := certDB(p.db.cert, p.snake.cert)
	dbx := SignatureDB{NewHashList(CertSHA256, owner, d)}

	v, err := ReadVars(writeEfivars(t, []byte{1}, []byte{0}, db, dbx))
	if err != nil {
		t.Fatal(err)
	}
	if !v.SecureBoot || v.SetupMode {
		t.Errorf("SecureBoot %v SetupMode %v", v.SecureBoot, v.SetupMode)
	}
	if c := v.DB.Entries(CertX509); len(c) != 2 || !bytes.Equal(c[0].Data, p.db.cert.Raw) || !bytes.Equal(c[1].Data, p.snake.cert.Raw) {
		t.Errorf("DB = %+v", v.DB)
	}
	if h := v.DBX.Entries(CertSHA256); len(h) != 1 || !bytes.Equal(h[0].Data, d) {
		t.Errorf("DBX = %+v", v.DBX)
	}

	// No dbx, no db: empty databases, no error.
	v, err = ReadVars(writeEfivars(t, []byte{1}, []byte{0}, nil, nil))
	if err != nil || len(v.DB) != 0 || len(v.DBX) != 0 {
		t.Errorf("ReadVars without db and dbx = %+v, %v", v, err)
	}
	// An empty dbx variable.
	v, err = ReadVars(writeEfivars(t, []byte{1}, []byte{0}, db, SignatureDB{}))
	if err != nil || len(v.DBX) != 0 || len(v.DB) != 2 {
		t.Errorf("ReadVars with an empty dbx = %+v, %v", v, err)
	}
	// Any non-zero SecureBoot value enforces (EDK2 skips checks only for 0).
	if v, err := ReadVars(writeEfivars(t, []byte{2}, nil, nil, nil)); err != nil || !v.SecureBoot {
		t.Errorf("SecureBoot=2: %+v, %v", v, err)
	}

	if _, err := ReadVars(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing directory: %v, want fs.ErrNotExist", err)
	}
	file := writeFile(t, filepath.Join(t.TempDir(), "file"), nil)
	if _, err := ReadVars(file); err == nil {
		t.Error("ReadVars(a file): no error")
	}

	for _, tc := range []struct {
		name, file string
		data       []byte
	}{
		{"malformed dbx", varDBX, []byte{1, 2, 3}},
		{"malformed db", varDB, list(CertSHA256, 28+48, 0, 48, make([]byte, 40))},
		{"SecureBoot of two bytes", varSecureBoot, []byte{1, 0}},
		{"empty SetupMode", varSetupMode, []byte{}},
	} {
		dir := writeEfivars(t, []byte{1}, []byte{0}, db, nil)
		writeFile(t, filepath.Join(dir, tc.file), append(binary.LittleEndian.AppendUint32(nil, 7), tc.data...))
		if v, err := ReadVars(dir); err == nil {
			t.Errorf("%s: ReadVars = %+v, no error", tc.name, v)
		}
	}
	// A file shorter than the attributes.
	dir := writeEfivars(t, []byte{1}, []byte{0}, db, nil)
	writeFile(t, filepath.Join(dir, varDBX), []byte{7, 0})
	if _, err := ReadVars(dir); err == nil {
		t.Error("a 2-byte dbx file: no error")
	}
	// A larger file than any variable store holds.
	writeFile(t, filepath.Join(dir, varDBX), make([]byte, maxVarSize+5))
	if _, err := ReadVars(dir); err == nil {
		t.Error("a huge dbx file: no error")
	}
	// An unreadable variable (a directory in its place) is an error, not
	// "missing".
	if err := os.Remove(filepath.Join(dir, varDBX)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, varDBX), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadVars(dir); err == nil {
		t.Error("dbx is a directory: no error")
	}
}
