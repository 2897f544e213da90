package build

import (
	"fmt"
	"os"

	"github.com/basalt-os/basalt/builder/uki"
	"github.com/basalt-os/basalt/images"
)

// UnsignedNotice is what the build log and `basalt inspect` say of an image built without a
// PCR-policy key.
const UnsignedNotice = images.UnsignedImageNotice

// initrdTPMConfig is basalt-init's TPM settings from the config's tpm section, with the recovery
// public key read from the host. It logs a warning when no recovery key is configured.
func (b *builder) initrdTPMConfig() (images.InitrdTPMConfig, error) {
	cfg := b.Config
	var pemText string
	if p := cfg.TPM.RecoveryKey; p != "" {
		data, err := os.ReadFile(cfg.HostPath(p))
		if err != nil {
			return images.InitrdTPMConfig{}, fmt.Errorf("%s: tpm.recoveryKey: %w", cfg.Source, err)
		}
		if _, pemText, err = images.ParseRecoveryKey(data); err != nil {
			return images.InitrdTPMConfig{}, fmt.Errorf("%s: tpm.recoveryKey %s: %w", cfg.Source, p, err)
		}
	} else {
		b.Log.Warn("tpm.recoveryKey is not set: devices will not escrow their state recovery keys; set it to the fleet's recovery public key (RSA-3072 PEM)",
			"recoveryPrint", cfg.TPM.RecoveryPrint)
	}
	return cfg.TPM.InitrdConfig(b.PCRPolicy != nil, pemText), nil
}

// signPCR11 is uki.SignPCR11 with the build's PCR-policy key and epoch, logged.
func (b *builder) signPCR11(stub []byte, sections []uki.Section) ([]uki.Section, *images.MeasuredBoot, error) {
	out, mb, err := uki.SignPCR11(stub, sections, b.PCRPolicy, b.Config.Security.Epoch)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: PCR 11: %w", b.Config.Source, err)
	}
	log := b.Log.With("stub", mb.Stub, "epoch", mb.Epoch)
	if !mb.Signed() {
		log.Warn("no PCR-policy key (basalt build --keys DIR with a pcr-policy key): the UKI carries no PCR 11 signature; " + UnsignedNotice)
	} else {
		log.Info("PCR 11 policy signed", "pkfp", mb.PCRKey, "phase", images.SignedPhase, "banks", len(images.Banks))
	}
	return out, mb, nil
}
