package webhookguard

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

var update = flag.Bool("update", false, "rewrite the golden JSON of the Caddyfile adapter tests")

const goldenSeparator = "----------"

// TestCaddyfileAdapt guards the Caddyfile syntax, the directive order and
// the JSON it produces: each testdata/caddyfile/*.caddyfiletest holds a
// Caddyfile, a separator line and the expected JSON (go test -update
// rewrites the JSON after a deliberate change).
func TestCaddyfileAdapt(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/caddyfile/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapter fixtures: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, _ := strings.Cut(string(raw), goldenSeparator+"\n")
			got := adaptCaddyfile(t, input)
			if *update {
				out := strings.TrimRight(input, "\n") + "\n" + goldenSeparator + "\n" + got
				if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if strings.TrimSpace(want) == "" {
				t.Fatalf("%s has no expected JSON; run go test -run TestCaddyfileAdapt -update", file)
			}
			if got != want {
				t.Fatalf("adapted JSON differs from %s\n got: %s\nwant: %s", file, got, want)
			}
		})
	}
}

func adaptCaddyfile(t *testing.T, input string) string {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, warnings, err := adapter.Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		if !strings.Contains(w.Message, "not formatted") {
			t.Errorf("warning: %s", w.Message)
		}
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return buf.String() + "\n"
}

// TestCaddyfileErrors guards the parser's refusals: each mistake names
// what was wrong.
func TestCaddyfileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, input, want string
	}{
		{"unknown option", "webhook_guard {\n bogus 1\n}", "unrecognized subdirective"},
		{"verify without scheme", "webhook_guard {\n verify\n}", "needs a scheme"},
		{"verify without secret", "webhook_guard {\n verify kapso\n}", "at least one secret"},
		{"unknown verify option", "webhook_guard {\n verify hmac s {\n colour red\n }\n}", "unrecognized verify option"},
		{"bad size", "webhook_guard {\n max_body lots\n}", "bad size"},
		{"bad duration", "webhook_guard {\n verify kapso s\n dedupe {\n ttl forever\n }\n}", "bad duration"},
		{"bad capacity", "webhook_guard {\n verify kapso s\n dedupe {\n capacity -3\n }\n}", "non-negative"},
		{"dedupe twice", "webhook_guard {\n dedupe\n dedupe\n}", "twice"},
		{"unknown dedupe option", "webhook_guard {\n dedupe {\n size 3\n }\n}", "unrecognized dedupe option"},
		{"unknown unbatch option", "webhook_guard {\n unbatch {\n size 3\n }\n}", "unrecognized unbatch option"},
		{"argument on directive", "webhook_guard kapso", "wrong argument count"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
