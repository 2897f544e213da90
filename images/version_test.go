package images

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/basalt-os/basalt/internal/testtool"
)

func TestValidateVersion(t *testing.T) {
	valid := []string{
		"0.0.0", "1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0", "6.0.0", "7.0.0", "8.0.0", "9.0.0", "1.1.0",
		"10.20.30", "1.2.3-rc.1", "2.0.0-rc.1", "1.3.0-rc.1", "1.2.0-rc.1", "1.0.0-alpha", "1.0.0-alpha.1",
		"1.0.0-alpha.beta", "1.0.0-beta.11", "1.0.0-1", "1.0.0-0.3.7", "1.0.0-RC.2", "1.0.0-a.b.c.1.2",
		"99999999999999999999.0.0",
	}
	for _, v := range valid {
		if err := ValidateVersion(v); err != nil {
			t.Errorf("ValidateVersion(%q): %v", v, err)
		}
	}
	// Valid semver, but systemd-boot cannot order it like semver: refused with ErrBootOrder and a suggestion.
	shapes := map[string]string{
		"2.0.0-rc1":         "2.0.0-rc.1",
		"2.0.0-rc10":        "2.0.0-rc.10",
		"2.0.0-beta2.1":     "2.0.0-beta.2.1",
		"1.0.0-1a":          "1.0.0-1.a",
		"1.0.0-rc-1":        "1.0.0-rc.1",
		"1.0.0-alpha.x-y":   "1.0.0-alpha.x.y",
		"1.0.0-rc01x":       "1.0.0-rc.1.x",
		"1.0.0-x-":          "1.0.0-x",
		"1.0.0--":           "",
		"1.0.0-0.3.7-alpha": "1.0.0-0.3.7.alpha",
	}
	for v, suggestion := range shapes {
		if err := ValidateSemver(v); err != nil {
			t.Errorf("ValidateSemver(%q): %v", v, err)
		}
		err := ValidateVersion(v)
		if !errors.Is(err, ErrBootOrder) {
			t.Errorf("ValidateVersion(%q) = %v, want ErrBootOrder", v, err)
			continue
		}
		if suggestion == "" {
			if strings.Contains(err.Error(), "write") {
				t.Errorf("ValidateVersion(%q): %v: suggests something", v, err)
			}
			continue
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("write %q", suggestion)) {
			t.Errorf("ValidateVersion(%q): %v: want the suggestion %q", v, err, suggestion)
		}
		if err := ValidateVersion(suggestion); err != nil {
			t.Errorf("suggestion %q: %v", suggestion, err)
		}
	}
	for _, v := range []string{"", "1", "1.0", "v1.0.0", "01.0.0", "1.0.0+build", "1.0.0-rc.1+3", "1.0.0-01",
		"1.0.0-", "1.0.0-rc..1", "1.0.0-rc.é", " 1.0.0", "1.0.0~rc.1"} {
		err := ValidateVersion(v)
		if err == nil || errors.Is(err, ErrBootOrder) {
			t.Errorf("ValidateVersion(%q) = %v, want a syntax error", v, err)
		}
		if ValidateSemver(v) == nil {
			t.Errorf("ValidateSemver(%q) accepted", v)
		}
	}
}

func TestBootVersion(t *testing.T) {
	for v, want := range map[string]string{
		"2.0.0":             "2.0.0",
		"2.0.0-rc.1":        "2.0.0~rc.1",
		"1.0.0-beta.11":     "1.0.0~beta.11",
		"1.0.0-alpha":       "1.0.0~alpha",
		"1.0.0-alpha.beta":  "1.0.0~alpha0beta",
		"1.0.0-a.b.c":       "1.0.0~a0b0c",
		"1.0.0-1":           "1.0.0~.1",
		"1.0.0-0.3.7":       "1.0.0~.0.3.7",
		"1.0.0-rc.1.hotfix": "1.0.0~rc.1hotfix",
		"1.0.0-RC.2":        "1.0.0~RC.2",
		// Versions from before the rule: the pre-release as it is after the '~'.
		"2.0.0-rc1":  "2.0.0~rc1",
		"2.0.0-rc-1": "2.0.0~rc-1",
		// Not semver: unchanged.
		"v1.0.0": "v1.0.0",
		"":       "",
	} {
		if got := BootVersion(v); got != want {
			t.Errorf("BootVersion(%q) = %q, want %q", v, got, want)
		}
	}
}

// analyze is systemd's own comparison: `systemd-analyze compare-versions A B` exits 12 when A < B, 0 when
// equal, 11 when A > B.
type analyze struct {
	path string
	mu   sync.Mutex
	memo map[[2]string]int
}

func newAnalyze(t *testing.T) *analyze {
	return &analyze{path: testtool.Require(t, "systemd-analyze", "systemd"), memo: map[[2]string]int{}}
}

func (s *analyze) compare(t *testing.T, a, b string) int {
	t.Helper()
	s.mu.Lock()
	r, ok := s.memo[[2]string{a, b}]
	s.mu.Unlock()
	if ok {
		return r
	}
	out, err := exec.Command(s.path, "compare-versions", "--", a, b).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		r = 0
	case errors.As(err, &ee) && ee.ExitCode() == 11:
		r = 1
	case errors.As(err, &ee) && ee.ExitCode() == 12:
		r = -1
	default:
		t.Fatalf("systemd-analyze compare-versions %q %q: %v\n%s", a, b, err, out)
	}
	s.mu.Lock()
	s.memo[[2]string{a, b}] = r
	s.mu.Unlock()
	return r
}

// each runs f on every pair with four workers (systemd-analyze takes a few milliseconds a call).
func each(pairs [][2]string, f func(a, b string)) {
	var wg sync.WaitGroup
	ch := make(chan [2]string)
	for range 4 {
		wg.Go(func() {
			for p := range ch {
				f(p[0], p[1])
			}
		})
	}
	for _, p := range pairs {
		ch <- p
	}
	close(ch)
	wg.Wait()
}

// TestCompareBootVersionsSystemd checks CompareBootVersions against systemd-analyze compare-versions on
// hand-picked strings and on random strings over the characters that matter.
func TestCompareBootVersionsSystemd(t *testing.T) {
	sa := newAnalyze(t)
	picked := []string{
		"", "0", "00", "1", "01", "001", "10", "9", "99", "100", "123", "00123", "1.0", "1.0.0", "1.00",
		"1.0.0-rc.1", "1.0.0~rc.1", "1.0.0~rc1", "1.0.0~rc.1.1", "1.0.0~", "1.0.0-", "1.0.0^", "1.0.0.",
		"1.0.0^post1", "1.0.0-a", "1.0.0-a.1", "1.0.0-1", "1.0.0-1.1", "1.0.0.a-1", "1.0.0.1-1", "1.0.0a-1",
		"1.0.1-1", "122.1", "123~rc1-1", "123", "123-a", "123-a.1", "123-1", "123-1.1", "123^post1",
		"123.a-1", "123.1-1", "123a-1", "124-1", "~", "~~", "~1", "~a", "-", "^", ".", "a", "A", "Z", "z",
		"abc", "abcde", "ab1", "a1b", "1a", "a", "rc9", "rc10", "RC10", "rc-1", "rc_1", "rc.1", "1_0",
		"1..0", "1.-0", "1-.0", "1^.0", "..", "--", "^^", "é", "1é2", "1.é.2", "é1", "\u00a0", "1\u00a02",
		"日本1", "1.0.0+3", "1.0.0+2-1", "basalt_1.0.0.efi", "basalt_10.0.0.efi", "basalt_2.0.0+3.efi",
		"basalt_2.0.0-rc.1.efi", "basalt_2.0.0-rc.1+0-3.efi", "2.0.0~alpha0beta", "2.0.0~alpha.1",
		"2.0.0~.1", "2.0.0~rc.1hotfix", "\x7f", "1\x01 2", "a~b", "a^b", "1~~2", "~-", "-~", "^~", ".~",
		"~\xc3z", "~é", "~ z", "~\x7f", "1~é", "1~", "1~\xff1",
	}
	var pairs [][2]string
	for _, a := range picked {
		for _, b := range picked {
			if a < b {
				pairs = append(pairs, [2]string{a, b})
			}
		}
	}
	// The full cross product is large (a call takes milliseconds): keep a third of the pairs that share their
	// first byte, where comparisons get past the first segment, and a sample of the others.
	rng := rand.New(rand.NewPCG(1, 2))
	var keep [][2]string
	for _, p := range pairs {
		if p[0] == "" || p[1] == "" || p[0][0] == p[1][0] && rng.IntN(3) == 0 || rng.IntN(30) == 0 {
			keep = append(keep, p)
		}
	}
	const alphabet = "0019aAbz~-^._+é"
	word := func() string {
		b := make([]byte, 0, 8)
		for range rng.IntN(8) {
			b = append(b, alphabet[rng.IntN(len(alphabet))])
		}
		return string(b)
	}
	for range 200 {
		a := word()
		b := a[:rng.IntN(len(a)+1)] + word()
		keep = append(keep, [2]string{a, b})
	}
	var mu sync.Mutex
	n := 0
	each(keep, func(a, b string) {
		want := sa.compare(t, a, b)
		got := CompareBootVersions(a, b)
		back := CompareBootVersions(b, a)
		mu.Lock()
		defer mu.Unlock()
		n++
		if got != want || back != -want {
			t.Errorf("CompareBootVersions(%q, %q) = %d (reverse %d), systemd-analyze says %d", a, b, got, back, want)
		}
	})
	t.Logf("%d pairs checked against systemd-analyze", n)
}

// semverChain is semver.org's example of precedence, lowest first.
var semverChain = []string{
	"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
	"1.0.0-rc.1", "1.0.0",
}

// TestBootOrderSystemd checks, with systemd-analyze as the judge of systemd-boot's order, that for every
// pair of versions semver's order equals systemd's order of their BootVersions whenever ValidateVersion
// accepts both, and that BootOrderAgrees flags exactly the pairs where they differ. The table of
// disagreements (plain semver strings, and BootVersion's) is logged with -v.
func TestBootOrderSystemd(t *testing.T) {
	sa := newAnalyze(t)
	var pairs [][2]string
	for i, a := range semverChain {
		for _, b := range semverChain[i+1:] {
			pairs = append(pairs, [2]string{a, b})
		}
	}
	picked := [][2]string{
		{"2.0.0-rc.1", "2.0.0"}, {"1.0.0", "1.0.1-rc.1"}, {"1.9.0", "1.10.0-alpha"}, {"1.0.0-rc.9", "1.0.0-rc.10"},
		{"1.0.0-rc9", "1.0.0-rc10"}, {"1.0.0-rc1", "1.0.0-rc.1"}, {"1.0.0-1", "1.0.0-beta"},
		{"1.0.0-1", "1.0.0-1.1"}, {"1.0.0-1a", "1.0.0-a"},
		{"1.0.0-a", "1.0.0-a1"}, {"1.0.0-a-b", "1.0.0-ab"}, {"1.0.0-a-1", "1.0.0-a.1"}, {"1.0.0-rc-1", "1.0.0-rc1"},
		{"1.0.0-RC.1", "1.0.0-rc.1"}, {"1.0.0-Beta", "1.0.0-alpha"}, {"1.0.0-alpha.beta", "1.0.0-alphab"},
		{"1.0.0-a.b.1", "1.0.0-a.1"}, {"1.0.0-rc.1.hotfix", "1.0.0-rc.1.1"}, {"1.0.0-rc.1.hotfix", "1.0.0-rc.10"},
		{"1.0.0-0", "1.0.0-a"}, {"1.0.0-x.7.z.92", "1.0.0-x.7.z.93"}, {"1.0.0-beta2", "1.0.0-beta.2"},
		{"1.0.0-alpha", "1.0.0-alpha-1"}, {"1.0.0-2", "1.0.0-10"}, {"1.0.0-a.2", "1.0.0-a.10"},
		{"1.0.0-99999999999999999999", "1.0.0-100000000000000000000"},
	}
	pairs = append(pairs, picked...)
	listed := map[[2]string]bool{}
	for _, p := range pairs {
		listed[p] = true
	}
	// Random pairs: most share their core and a prefix of pre-release identifiers, which is where the two
	// orders can part.
	rng := rand.New(rand.NewPCG(3, 4))
	num := []string{"0", "1", "2", "9", "10", "11", "100"}
	ids := [][]string{
		num,
		{"a", "b", "z", "aa", "ab", "rc", "alpha", "beta", "RC", "Z", "B"},
		{"rc1", "rc9", "rc10", "1a", "a1", "b2", "0a", "9z"},
		{"rc-1", "a-b", "x-", "-", "-1", "a--b"},
	}
	ident := func(strict bool) string {
		k := rng.IntN(10)
		switch {
		case k < 4:
			k = 0
		case k < 8 || strict:
			k = 1
		case k < 9:
			k = 2
		default:
			k = 3
		}
		return ids[k][rng.IntN(len(ids[k]))]
	}
	version := func() string {
		v := fmt.Sprintf("%s.%s.%s", num[rng.IntN(3)], num[rng.IntN(len(num))], num[rng.IntN(3)])
		if rng.IntN(5) == 0 {
			return v
		}
		strict := rng.IntN(2) == 0
		var pre []string
		for range 1 + rng.IntN(4) {
			pre = append(pre, ident(strict))
		}
		return v + "-" + strings.Join(pre, ".")
	}
	for range 400 {
		a := version()
		b := version()
		if rng.IntN(4) != 0 {
			// b: a's core and a prefix of its identifiers, then others.
			core, pre, _ := strings.Cut(a, "-")
			parts := strings.Split(pre, ".")
			if pre == "" {
				parts = nil
			}
			keep := parts[:rng.IntN(len(parts)+1)]
			_, bpre, _ := strings.Cut(b, "-")
			var more []string
			if bpre != "" {
				more = strings.Split(bpre, ".")
				more = more[:min(len(more), 1+rng.IntN(2))]
			}
			all := append(append([]string{}, keep...), more...)
			b = core
			if len(all) > 0 {
				b += "-" + strings.Join(all, ".")
			}
		}
		if a != b && ValidateSemver(a) == nil && ValidateSemver(b) == nil {
			pairs = append(pairs, [2]string{a, b})
		}
	}

	type row struct {
		a, b      string
		semver    int
		raw, boot int
		flagged   bool
	}
	var (
		mu            sync.Mutex
		rows          []row
		nStrict, nLax int
		nRaw, nBoot   int
	)
	each(pairs, func(a, b string) {
		s := CompareVersions(a, b)
		raw := sa.compare(t, a, b)
		boot := sa.compare(t, BootVersion(a), BootVersion(b))
		err := BootOrderAgrees(a, b)
		strict := ValidateVersion(a) == nil && ValidateVersion(b) == nil
		mu.Lock()
		defer mu.Unlock()
		if strict {
			nStrict++
		} else {
			nLax++
		}
		if strict && (boot != s || err != nil) {
			t.Errorf("%s vs %s (both valid): semver %d, systemd on %q vs %q: %d, BootOrderAgrees: %v",
				a, b, s, BootVersion(a), BootVersion(b), boot, err)
		}
		if (boot != s) != errors.Is(err, ErrBootOrder) {
			t.Errorf("%s vs %s: semver %d, systemd on BootVersion %d, but BootOrderAgrees: %v", a, b, s, boot, err)
		}
		var be *BootOrderError
		if errors.As(err, &be) && (be.Semver != s || be.Boot != boot) {
			t.Errorf("%s vs %s: BootOrderError %+v, want semver %d boot %d", a, b, be, s, boot)
		}
		if raw != s {
			nRaw++
		}
		if boot != s {
			nBoot++
		}
		if listed[[2]string{a, b}] && (raw != s || boot != s) {
			rows = append(rows, row{a, b, s, raw, boot, err != nil})
		}
	})
	t.Logf("%d pairs of valid versions, %d pairs with a pre-rule version; systemd disagrees with semver on "+
		"%d pairs when IMAGE_VERSION is the version, on %d with BootVersion (all refused by BootOrderAgrees)",
		nStrict, nLax, nRaw, nBoot)
	t.Logf("hand-picked pairs where they disagree:")
	t.Logf("%-28s %-28s %6s %12s %12s %s", "a", "b", "semver", "systemd raw", "systemd BV", "BootOrderAgrees")
	sym := func(c int) string { return [...]string{"<", "=", ">"}[c+1] }
	for _, r := range rows {
		flag := "ok"
		if r.flagged {
			flag = "refused"
		}
		t.Logf("%-28s %-28s %6s %12s %12s %s", r.a, r.b, sym(r.semver), sym(r.raw), sym(r.boot), flag)
	}
}

func TestBootOrderAgrees(t *testing.T) {
	if err := BootOrderAgrees("2.0.0-rc.1", "2.0.0"); err != nil {
		t.Errorf("rc.1 vs release: %v", err)
	}
	err := BootOrderAgrees("2.0.0-rc9", "2.0.0-rc10")
	var be *BootOrderError
	if !errors.As(err, &be) || !errors.Is(err, ErrBootOrder) || be.Semver != 1 || be.Boot != -1 {
		t.Fatalf("rc9 vs rc10: %v", err)
	}
	if !strings.Contains(err.Error(), "2.0.0~rc9") {
		t.Errorf("error does not name the IMAGE_VERSION: %v", err)
	}
	if err := BootOrderAgrees("2.0.0", "v2"); err == nil || errors.Is(err, ErrBootOrder) {
		t.Errorf("not semver: %v", err)
	}
}
