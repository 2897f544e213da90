package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/basalt-os/basalt/images"
)

// Code is why the TPM would not release the state key: the same word appears on the console
// ("basalt-init: state locked (<code>): <text>"), in /run/basalt/state.json and in
// `basalt-updater status`.
type Code string

// Reason codes (issue 13 §6).
const (
	CodeNoTPM         Code = "no-tpm"
	CodeTPMCleared    Code = "tpm-cleared"
	CodeNoSignature   Code = "no-signature"
	CodePCR11Mismatch Code = "pcr11-mismatch"
	CodeWrongKey      Code = "wrong-key"
	CodeEpochRevoked  Code = "epoch-revoked"
	CodePCR7Changed   Code = "pcr7-changed"
	CodeLockout       Code = "lockout"
	CodeKeyMismatch   Code = "key-mismatch"
	CodeHeaderDamaged Code = "header-damaged"
	// CodeUnknownStub is the updater's only: the new UKI's stub has no known measurement rules.
	CodeUnknownStub Code = "unknown-stub"
)

// Error is a refusal with its reason code. Detail is the human text (the §6 message with its
// values); Err is the underlying error, when there is one. Neither ever holds a secret.
type Error struct {
	Code   Code
	Detail string
	Err    error
}

// Error returns "<code>: <detail>[: <err>]".
func (e *Error) Error() string {
	s := string(e.Code) + ": " + e.Detail
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// CodeOf returns the reason code of err, or "" when err is not (and does not wrap) an *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func refuse(code Code, err error, format string, args ...any) *Error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...), Err: err}
}

// The §6 texts.
const (
	textNoTPM         = "no TPM device (%s missing)"
	textTPMCleared    = "the TPM's storage key is not the one the state was sealed under (TPM cleared, or disk moved to another device)"
	textNoSignature   = "this image has no PCR signature for phase " + images.SignedPhase
	textWrongKey      = "image signed by key %s, state sealed to %s"
	textEpochRevoked  = "image epoch %d revoked on this device (epochs below %d revoked); boot a newer version"
	textPCR7Changed   = "Secure Boot state or databases changed since sealing"
	textLockout       = "TPM dictionary-attack lockout"
	textHeaderDamaged = "the LUKS2 header's TPM token is damaged"
)

// tpmFailure turns TPM_RC_LOCKOUT, which any authorized command can return, into its code; other
// errors are wrapped with what was being done.
func tpmFailure(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if errors.Is(err, tpm2.TPMRCLockout) {
		return refuse(CodeLockout, err, "%s (%s)", textLockout, what)
	}
	return fmt.Errorf("%s: %w", what, err)
}
