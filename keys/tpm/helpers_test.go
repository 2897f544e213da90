package tpm

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/basalt-os/basalt/images"
	"github.com/basalt-os/basalt/internal/testtool"
)

// stubSections stand for what systemd-stub measures into PCR 11 before basalt-init runs.
var stubSections = [][]byte{[]byte(".linux\x00kernel"), []byte(".osrel\x00ID=basalt"), []byte(".cmdline\x00ro"), []byte(".initrd\x00cpio")}

// testKeys are RSA-2048 PCR-policy keys: [0] the fleet's, [1] another one. Made once (≈0.1 s each).
var testKeys = sync.OnceValue(func() [2]*rsa.PrivateKey {
	var ks [2]*rsa.PrivateKey
	for i := range ks {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		ks[i] = k
	}
	return ks
})

// env is one swtpm and a TPM over one connection to it.
type env struct {
	sw  *testtool.SWTPM
	tr  transport.TPMCloser
	rec *recorder
	tpm *TPM
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{sw: testtool.StartSWTPM(t, t.TempDir())}
	e.connect(t)
	t.Cleanup(func() { e.tr.Close() })
	return e
}

func (e *env) connect(t *testing.T) {
	t.Helper()
	tr, err := e.sw.Open()
	if err != nil {
		t.Fatal(err)
	}
	e.tr = tr
	e.rec = &recorder{tr: tr}
	e.tpm = New(e.rec)
}

// powerCycle restarts swtpm on its state and reconnects.
func (e *env) powerCycle(t *testing.T) {
	t.Helper()
	e.tr.Close()
	e.sw.PowerCycle(t)
	e.connect(t)
}

// boot measures what a stub and basalt-init measure before unsealing: the sections, then phase
// enter-initrd.
func (e *env) boot(t *testing.T) {
	t.Helper()
	for _, s := range stubSections {
		if err := e.tpm.extend(images.PCRKernelBoot, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.tpm.ExtendPhase(images.PhaseEnterInitrd); err != nil {
		t.Fatal(err)
	}
}

// extendPCR7 changes PCR 7 as a Secure Boot change would.
func (e *env) extendPCR7(t *testing.T, what string) {
	t.Helper()
	if err := e.tpm.extend(images.PCRSecureBoot, []byte(what)); err != nil {
		t.Fatal(err)
	}
}

func (e *env) provision(t *testing.T, bindPCR7 bool) ([]byte, *Token) {
	t.Helper()
	secret, tok, err := e.tpm.Provision(&testKeys()[0].PublicKey, bindPCR7)
	if err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return secret, tok
}

// predictPCR11 is PCR 11 of bank after boot with sections, then the phase path.
func predictPCR11(t *testing.T, bank images.Bank, sections [][]byte, phase string) []byte {
	t.Helper()
	pcr := make([]byte, bank.Size())
	for _, s := range sections {
		d, err := bank.Digest(s)
		if err != nil {
			t.Fatal(err)
		}
		if pcr, err = bank.Extend(pcr, d); err != nil {
			t.Fatal(err)
		}
	}
	pcr, err := bank.ExtendPhase(pcr, phase)
	if err != nil {
		t.Fatal(err)
	}
	return pcr
}

// signed is a UKI's .pcrsig and .pcrpkey.
type signed struct{ pcrsig, pcrpkey []byte }

// signImage signs PCR 11 of boot (stubSections, enter-initrd) for epoch with key, for both banks.
func signImage(t *testing.T, key *rsa.PrivateKey, epoch int) signed {
	t.Helper()
	return signPCR11(t, key, epoch, func(b images.Bank) []byte {
		return predictPCR11(t, b, stubSections, images.SignedPhase)
	})
}

func signPCR11(t *testing.T, key *rsa.PrivateKey, epoch int, pcr11 func(images.Bank) []byte) signed {
	t.Helper()
	nvName, err := images.RollbackNVName()
	if err != nil {
		t.Fatal(err)
	}
	var ps images.PCRSig
	for _, b := range images.Banks {
		e, err := images.NewPCRSigEntry(key, b, pcr11(b), epoch, nvName)
		if err != nil {
			t.Fatal(err)
		}
		if err := ps.Add(b, e); err != nil {
			t.Fatal(err)
		}
	}
	return makeSigned(t, &ps, &key.PublicKey)
}

func makeSigned(t *testing.T, ps *images.PCRSig, pub *rsa.PublicKey) signed {
	t.Helper()
	sig, err := ps.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	pem, err := images.MarshalPCRKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return signed{pcrsig: sig, pcrpkey: pem}
}

// wantCode fails t unless err is an *Error with code.
func wantCode(t *testing.T, err error, code Code) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s", code)
	}
	e, ok := err.(*Error)
	if !ok || e.Code != code {
		t.Fatalf("error %q (%T), want code %s", err, err, code)
	}
	return e
}

// recorder keeps every command and response, to check that secrets never cross in clear.
type recorder struct {
	tr    transport.TPM
	mu    sync.Mutex
	log   bytes.Buffer
	sends int // commands sent since the last reset
}

func (r *recorder) Send(cmd []byte) ([]byte, error) {
	rsp, err := r.tr.Send(cmd)
	r.mu.Lock()
	r.log.Write(cmd)
	r.log.Write(rsp)
	r.sends++
	r.mu.Unlock()
	return rsp, err
}

// reset forgets what was recorded.
func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log.Reset()
	r.sends = 0
}

func (r *recorder) saw(secret []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Contains(r.log.Bytes(), secret)
}

// nvName returns NV_ReadPublic's Name of the rollback index.
func nvName(t *testing.T, tp *TPM) []byte {
	t.Helper()
	rsp, err := (tpm2.NVReadPublic{NVIndex: images.RollbackNVIndex}).Execute(tp.tr)
	if err != nil {
		t.Fatal(err)
	}
	return rsp.NVName.Buffer
}
