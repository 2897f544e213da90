package testtool

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
)

// SameFile reports whether files a and b hold the same bytes, comparing them 1 MiB at a time (disk
// images are large and mostly sparse). A read error fails t.
func SameFile(t testing.TB, a, b string) bool {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		for _, err := range []error{erra, errb} {
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatal(err)
			}
		}
		if erra != nil || errb != nil { // equal counts: both files ended here
			return true
		}
	}
}
