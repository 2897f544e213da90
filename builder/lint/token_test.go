package lint

import (
	"strings"
	"testing"
)

func TestTokenFlag(t *testing.T) {
	for _, tc := range []struct {
		line  string
		short bool
		want  string
	}{
		{"server --token x", false, "--token"},
		{"server -token=x", false, "-token"},
		{`server "--agent-token" 'x y'`, false, "--agent-token"},
		{"agent -t x", true, "-t"},
		{"agent -t x", false, ""},
		{"agent --t=x", true, "--t"},
		{"server --token-file /f --agent-token-file /g", true, ""},
		{"server --token $TOKEN -t ${T}", true, ""},
		{"server --token= -t", true, ""},
		{"server --token --debug", true, ""},
		{"server token x ---token x", true, ""},
		{`sh -c "k3s agent --token x"`, false, "--token"},
	} {
		if got := tokenFlag(words(tc.line), tc.short); got != tc.want {
			t.Errorf("%q (short %v): %q, want %q", tc.line, tc.short, got, tc.want)
		}
	}
}

func TestSplitWords(t *testing.T) {
	for in, want := range map[string]string{
		`a "b c" 'd "e"' f\ g`:  `a|b c|d "e"|f g`,
		`'--token' 'x' \`:       `--token|x|`,
		"  a\tb  ":              `a|b`,
		`K="x y" L='$z'`:        `K=x y|L=$z`,
		`'it\'s'`:               `it\s`,
		`"a \"quoted\" string"`: `a "quoted" string`,
	} {
		if got := strings.Join(splitWords(in), "|"); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}
