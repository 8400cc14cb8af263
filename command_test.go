package webhookguard

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runCaddyCmd runs this test binary as the caddy command with args and
// returns its combined output and whether it exited 0.
func runCaddyCmd(t *testing.T, stdin []byte, args ...string) (string, bool) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), asCaddyEnv+"=1", "HOME="+t.TempDir())
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// TestWebhookSignCommand guards `caddy webhook sign`: each scheme's header
// is what an independent HMAC computes, and a standard signature passes
// the gateway's own verifier.
func TestWebhookSignCommand(t *testing.T) {
	body := []byte(`{"object":"whatsapp_business_account","entry":[]}`)
	file := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	stdKey := []byte("0123456789abcdef0123456789abcdef")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"kapso from file", []string{"--scheme", "kapso", "--secret", "k", "--file", file}, "X-Webhook-Signature: " + signHex("k", body)},
		{"meta vector from stdin", []string{"--scheme", "meta", "--secret", "my_app_secret"},
			"X-Hub-Signature-256: sha256=1e948187320e1d8a8ab09e20b7172f8fe97e79394c0980b59b485e00288e389d"},
		{"hmac with prefix", []string{"--scheme", "hmac", "--secret", "k", "--header", "X-Sig", "--prefix", "sha256="}, "X-Sig: sha256=" + signHex("k", body)},
		{"standard", []string{"--scheme", "standard", "--secret", "whsec_" + base64.StdEncoding.EncodeToString(stdKey), "--id", "msg_1", "--timestamp", "1750000000"},
			"Webhook-Id: msg_1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, ok := runCaddyCmd(t, body, append([]string{"webhook", "sign"}, tc.args...)...)
			if !ok || !strings.Contains(out, tc.want) {
				t.Fatalf("exit ok=%v, output %q, want it to contain %q", ok, out, tc.want)
			}
		})
	}
	if out, ok := runCaddyCmd(t, body, "webhook", "sign", "--scheme", "kapso"); ok || !strings.Contains(out, "--secret is required") {
		t.Fatalf("missing secret: ok=%v %q", ok, out)
	}
}

// TestWebhookSendCommand guards `caddy webhook send` end to end against a
// running Caddy: a sample event is accepted, --repeat shows the duplicate,
// --batch reaches the upstream as items, --meta is normalized, and a wrong
// secret makes the command fail with the gateway's 401.
func TestWebhookSendCommand(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	handle /kapso {
		webhook_guard {
			verify kapso s3nd-secret
			unbatch
		}
		reverse_proxy `+up.Addr()+`
	}
	handle /meta {
		webhook_guard {
			verify meta app-secret
			normalize meta
		}
		reverse_proxy `+up.Addr()+`
	}`)
	send := func(args ...string) (string, bool) {
		return runCaddyCmd(t, nil, append([]string{"webhook", "send"}, args...)...)
	}

	out, ok := send("--url", c.URL+"/kapso", "--secret", "s3nd-secret", "--event", "whatsapp.message.delivered")
	if !ok || !strings.Contains(out, "200 OK") || up.count() != 1 {
		t.Fatalf("single event: ok=%v upstream=%d\n%s", ok, up.count(), out)
	}
	if ev := up.requests()[0].Header.Get("X-Webhook-Event"); ev != "whatsapp.message.delivered" {
		t.Errorf("event header %q", ev)
	}

	out, ok = send("--url", c.URL+"/kapso", "--secret", "s3nd-secret", "--repeat")
	if !ok || strings.Count(out, "200 OK") != 2 || !strings.Contains(out, "X-Webhook-Duplicate: true") || up.count() != 2 {
		t.Fatalf("--repeat: ok=%v upstream=%d\n%s", ok, up.count(), out)
	}

	out, ok = send("--url", c.URL+"/kapso", "--secret", "s3nd-secret", "--batch", "4")
	if !ok || !strings.Contains(out, `"forwarded":4`) || up.count() != 6 {
		t.Fatalf("--batch 4: ok=%v upstream=%d\n%s", ok, up.count(), out)
	}

	out, ok = send("--url", c.URL+"/meta", "--secret", "app-secret", "--meta")
	last := up.requests()[up.count()-1]
	if !ok || last.Header.Get("X-Webhook-Normalized") != "true" || !bytes.Contains(last.Body, []byte(`"phoneNumberId":"106540352242922"`)) {
		t.Fatalf("--meta: ok=%v\n%s\nupstream got %s", ok, out, last.Body)
	}

	out, ok = send("--url", c.URL+"/kapso", "--secret", "wrong")
	if ok || !strings.Contains(out, "401") || !strings.Contains(out, "invalid_signature") {
		t.Fatalf("wrong secret: ok=%v\n%s", ok, out)
	}

	// --file: a Kapso body is sent with its event (the default one here),
	// so the gateway knows it by its content key too: the same batch file
	// sent again under a new idempotency key is all duplicates.
	batchFile := "testdata/kapso/v2_batch_message_received.json"
	before := up.count()
	out, ok = send("--url", c.URL+"/kapso", "--secret", "s3nd-secret", "--file", batchFile)
	if !ok || !strings.Contains(out, `"forwarded":`) || up.count() == before {
		t.Fatalf("--file batch: ok=%v upstream=%d\n%s", ok, up.count()-before, out)
	}
	if ev := up.requests()[before].Header.Get("X-Webhook-Event"); ev != "whatsapp.message.received" {
		t.Errorf("--file sent event %q, want the default whatsapp.message.received", ev)
	}
	delivered := up.count()
	out, ok = send("--url", c.URL+"/kapso", "--secret", "s3nd-secret", "--file", batchFile)
	if !ok || !strings.Contains(out, `"forwarded":0`) || up.count() != delivered {
		t.Fatalf("--file batch again: ok=%v upstream=%d\n%s", ok, up.count()-delivered, out)
	}

	// Combinations that would silently drop a flag are refused.
	for _, args := range [][]string{{"--meta", "--batch", "3"}, {"--file", batchFile, "--batch", "3"}} {
		out, ok = send(append([]string{"--url", c.URL + "/kapso", "--secret", "s3nd-secret"}, args...)...)
		if ok || !strings.Contains(out, "--batch") || up.count() != delivered {
			t.Fatalf("%v was not refused: ok=%v\n%s", args, ok, out)
		}
	}
}
