package webhookguard

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
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

// TestCaddyfileAdaptErrors guards errors where the user is: mistakes that
// need no secret to spot fail caddy adapt itself, with the file and the
// line of the offending directive, instead of surfacing only at run time
// without a position.
func TestCaddyfileAdaptErrors(t *testing.T) {
	t.Parallel()
	site := func(lines string) string {
		return ":8080 {\n\twebhook_guard {\n" + lines + "\n\t}\n\treverse_proxy 127.0.0.1:9\n}\n"
	}
	for _, tc := range []struct {
		name, lines, want string
		line              int
	}{
		{"no verify", "\t\tdedupe", "webhook_guard needs at least one verify", 2},
		{"unknown scheme", "\t\tverify github s3cret", `verify github: unknown scheme "github"`, 3},
		{"hmac without header", "\t\tverify hmac s3cret", "verify hmac: the hmac scheme needs a header", 3},
		{"header on kapso", "\t\tverify kapso s3cret {\n\t\t\theader X-Sig\n\t\t}", "verify kapso: header, prefix, encoding and algorithm apply only to the hmac scheme", 3},
		{"bad algorithm", "\t\tverify hmac s3cret {\n\t\t\theader X-Sig\n\t\t\talgorithm md5\n\t\t}", `verify hmac: unknown algorithm "md5"`, 3},
		{"unknown on_store_error", "\t\tverify kapso s3cret\n\t\tdedupe {\n\t\t\ton_store_error ignore\n\t\t}", `on_store_error must be pass or reject, not "ignore"`, 5},
		{"unknown normalize", "\t\tverify meta s3cret\n\t\tnormalize kapso", `normalize: unknown format "kapso" (want meta)`, 4},
		{"redis over http", "\t\tverify kapso s3cret\n\t\tdedupe {\n\t\t\tredis http://user:pw@cache:6379\n\t\t}", "redis: want a redis:// or rediss:// URL (or unix:// for a socket), got a http:// URL", 5},
		{"events without a pattern", "\t\tverify kapso s3cret\n\t\tevents", "events needs at least one pattern", 4},
		{"max_body in words", "\t\tverify kapso s3cret\n\t\tmax_body lots", `max_body: want a size such as 5MB, 512KB or 1000000 (bytes), got "lots"`, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site(tc.lines)), map[string]any{"filename": "Caddyfile"})
			at := fmt.Sprintf("at Caddyfile:%d", tc.line)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), at) {
				t.Fatalf("adapt error = %v\nwant it to contain %q and %q", err, tc.want, at)
			}
			if strings.Contains(err.Error(), "pw@") {
				t.Fatalf("the error shows the redis password: %v", err)
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
		{"bad size", "webhook_guard {\n max_body lots\n}", `max_body: want a size such as 5MB`},
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
