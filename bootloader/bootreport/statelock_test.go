package bootreport

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The Secure Boot variables are digested as efivarfs shows them, and a change after the boot (a dbx
// update applied by the OS) is named.
func TestSecureBootVarsChanged(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c", "\x06\x00\x00\x00\x01")
	write("dbx-d719b2cb-3d3a-4596-a3bc-dad00e67656f", "\x27\x00\x00\x00old")
	s := &StateLock{SecureBootVars: SecureBootVarDigests(dir)}
	if got := s.SecureBootVars["PK"]; got != "absent" || len(s.SecureBootVars) != 5 {
		t.Fatalf("digests %v", s.SecureBootVars)
	}
	if c := s.SecureBootVarsChanged(SecureBootVarDigests(dir)); len(c) != 0 {
		t.Errorf("nothing changed, got %v", c)
	}
	write("dbx-d719b2cb-3d3a-4596-a3bc-dad00e67656f", "\x27\x00\x00\x00new")
	write("PK-8be4df61-93ca-11d2-aa0d-00e098032b8c", "\x27\x00\x00\x00pk")
	if c := s.SecureBootVarsChanged(SecureBootVarDigests(dir)); !slices.Equal(c, []string{"PK", "dbx"}) {
		t.Errorf("changed %v, want [PK dbx]", c)
	}
	if SecureBootVarDigests(filepath.Join(dir, "missing")) != nil {
		t.Error("a missing efivarfs gave digests")
	}
}
