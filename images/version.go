package images

import (
	"fmt"
	"strings"

	"golang.org/x/mod/semver"
)

// ValidateVersion checks that v is a semantic version MAJOR.MINOR.PATCH with an optional pre-release.
// Build metadata ("+...") is refused: "+" separates the boot counter in a boot entry's file name.
func ValidateVersion(v string) error {
	if strings.Contains(v, "+") {
		return fmt.Errorf("version %q: build metadata (+...) is not allowed, '+' marks boot counters in entry names", v)
	}
	if strings.HasPrefix(v, "v") || !semver.IsValid("v"+v) || semver.Canonical("v"+v) != "v"+v {
		return fmt.Errorf("version %q is not a semantic version MAJOR.MINOR.PATCH[-pre] (no leading v)", v)
	}
	return nil
}

// CompareVersions returns -1, 0 or +1 as a is older than, equal to or newer than b, by semver precedence.
// Invalid versions sort below valid ones.
func CompareVersions(a, b string) int {
	return semver.Compare("v"+a, "v"+b)
}
