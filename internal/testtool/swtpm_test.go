package testtool

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TestSWTPMPowerCycle checks what tests rely on: a power cycle resets PCRs and keeps NV indexes.
func TestSWTPMPowerCycle(t *testing.T) {
	sw := StartSWTPM(t, t.TempDir())
	tpm, err := sw.Open()
	if err != nil {
		t.Fatal(err)
	}
	const pcr = 16
	zero := make([]byte, sha256.Size)
	if got := readPCR(t, tpm, pcr); !bytes.Equal(got, zero) {
		t.Fatalf("fresh PCR %d = %x, want zeros", pcr, got)
	}
	digest := sha256.Sum256([]byte("swtpm test"))
	if _, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest[:]}}},
	}).Execute(tpm); err != nil {
		t.Fatalf("PCR_Extend: %v", err)
	}
	want := sha256.Sum256(append(zero, digest[:]...))
	if got := readPCR(t, tpm, pcr); !bytes.Equal(got, want[:]) {
		t.Fatalf("PCR %d after extend = %x, want %x", pcr, got, want)
	}
	const index = tpm2.TPMHandle(0x01800042)
	if _, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex:    index,
			NameAlg:    tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{AuthWrite: true, AuthRead: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
			DataSize:   8,
		}),
	}).Execute(tpm); err != nil {
		t.Fatalf("NV_DefineSpace: %v", err)
	}

	sw.PowerCycle(t)
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tpm); err == nil {
		t.Error("a connection from before the power cycle still works")
	}
	tpm.Close()
	tpm, err = sw.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if got := readPCR(t, tpm, pcr); !bytes.Equal(got, zero) {
		t.Errorf("PCR %d after power cycle = %x, want zeros", pcr, got)
	}
	if _, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(tpm); err != nil {
		t.Errorf("NV index lost in the power cycle: %v", err)
	}
	if _, err := (tpm2.NVReadPublic{NVIndex: index + 1}).Execute(tpm); !errors.Is(err, tpm2.TPMRCHandle) {
		t.Errorf("NV_ReadPublic of an undefined index: %v, want TPM_RC_HANDLE", err)
	}
}

func readPCR(t *testing.T, tpm transport.TPM, pcr uint) []byte {
	t.Helper()
	rsp, err := (tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(pcr),
	}}}}).Execute(tpm)
	if err != nil {
		t.Fatalf("PCR_Read: %v", err)
	}
	if len(rsp.PCRValues.Digests) != 1 {
		t.Fatalf("PCR_Read returned %d values", len(rsp.PCRValues.Digests))
	}
	return rsp.PCRValues.Digests[0].Buffer
}
