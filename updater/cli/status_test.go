package cli

import (
	"strings"
	"testing"

	"github.com/basalt-os/basalt/updater/agent"
)

// TestPrintMeasuredBoot: status's text names the state volume's lock with basalt-init's code and
// text, this image's epoch and the revoked ones, the PCR 7 binding, rollback protection and where
// the recovery escrow is.
func TestPrintMeasuredBoot(t *testing.T) {
	for _, tc := range []struct {
		name string
		mb   *agent.MeasuredBoot
		want string
	}{
		{"none", nil, ""},
		{"locked", &agent.MeasuredBoot{State: "locked", Reason: "epoch-revoked",
			Detail: "image epoch 1 revoked on this device (epochs below 2 revoked); boot a newer version", Epoch: 1, Revoked: []int{0, 1},
			PCR7: true, RollbackProtection: true, Escrow: &agent.Escrow{Path: "EFI/basalt/recovery/abc.json", Present: true}},
			"data      state volume locked (epoch-revoked): image epoch 1 revoked on this device (epochs below 2 revoked); boot a newer version\n" +
				"epoch     1 (revoked: 0 1)\n" +
				"pcr7      bound: a change of Secure Boot state or databases needs the recovery key\n" +
				"rollback  protected (TPM owner authorization set by Basalt)\n" +
				"recovery  escrowed on the ESP: EFI/basalt/recovery/abc.json\n"},
		{"unlocked", &agent.MeasuredBoot{State: "unlocked", Revoked: []int{}, Escrow: &agent.Escrow{Path: "EFI/basalt/recovery/abc.json"}},
			"data      state volume unlocked\n" +
				"epoch     0 (revoked: none)\n" +
				"pcr7      not bound\n" +
				"rollback  unprotected: the rollback index could be reset\n" +
				"recovery  no escrow on the ESP (EFI/basalt/recovery/abc.json)\n"},
		{"dbx changed", &agent.MeasuredBoot{State: "unlocked", PCR7: true, SecureBootChanged: []string{"db", "dbx"}},
			"data      state volume unlocked\n" +
				"epoch     0 (revoked: none)\n" +
				"pcr7      bound: a change of Secure Boot state or databases needs the recovery key\n" +
				"WARNING   db, dbx changed since this boot: the next boot will need the recovery key\n" +
				"rollback  unprotected: the rollback index could be reset\n"},
		{"no report", &agent.MeasuredBoot{Escrow: &agent.Escrow{Path: "EFI/basalt/recovery/abc.json"}},
			"recovery  no escrow on the ESP (EFI/basalt/recovery/abc.json)\n"},
	} {
		var b strings.Builder
		printMeasuredBoot(&b, tc.mb)
		if b.String() != tc.want {
			t.Errorf("%s:\n%s\nwant:\n%s", tc.name, b.String(), tc.want)
		}
	}
}
