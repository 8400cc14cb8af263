package webhookguard

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestMetaHandshake guards the subscription check: the challenge is
// echoed byte for byte for a right token (any of several), refused with
// 403 otherwise, never forwarded, and without verify_token a handshake is
// just an unsigned request.
func TestMetaHandshake(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	handle /with {
		webhook_guard {
			verify meta app-secret
			verify_token old-token {env.WG_TEST_VERIFY_TOKEN}
		}
		reverse_proxy `+up.Addr()+`
	}
	handle /without {
		webhook_guard {
			verify meta app-secret
		}
		reverse_proxy `+up.Addr()+`
	}`, "WG_TEST_VERIFY_TOKEN=new-token")
	get := func(path string, q url.Values) (int, string, string) {
		resp, err := http.Get(c.URL + path + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	hs := func(mode, token, challenge string) url.Values {
		return url.Values{"hub.mode": {mode}, "hub.verify_token": {token}, "hub.challenge": {challenge}}
	}
	tests := []struct {
		name     string
		path     string
		q        url.Values
		status   int
		wantBody string
	}{
		{"right token", "/with", hs("subscribe", "new-token", "1158201444"), 200, "1158201444"},
		{"old token still accepted", "/with", hs("subscribe", "old-token", "abc"), 200, "abc"},
		{"challenge echoed byte for byte", "/with", hs("subscribe", "new-token", "a b&c=é<>"), 200, "a b&c=é<>"},
		{"wrong token", "/with", hs("subscribe", "guess", "1"), 403, "verify_token does not match"},
		{"token prefix", "/with", hs("subscribe", "new-toke", "1"), 403, "does not match"},
		{"empty token", "/with", hs("subscribe", "", "1"), 403, "does not match"},
		{"wrong mode", "/with", hs("unsubscribe", "new-token", "1"), 403, "hub.mode=subscribe"},
		{"no challenge", "/with", url.Values{"hub.mode": {"subscribe"}, "hub.verify_token": {"new-token"}}, 403, "hub.challenge"},
		{"no verify_token configured", "/without", hs("subscribe", "new-token", "1"), 401, "invalid_signature"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, ct, body := get(tc.path, tc.q)
			if status != tc.status || !strings.Contains(body, tc.wantBody) {
				t.Fatalf("got %d %q, want %d containing %q", status, body, tc.status, tc.wantBody)
			}
			if status == 200 && (body != tc.wantBody || !strings.HasPrefix(ct, "text/plain")) {
				t.Fatalf("challenge answer %q (%s), want exactly %q as text/plain", body, ct, tc.wantBody)
			}
			if status != 200 && ct != "application/json" {
				t.Errorf("refusal Content-Type %q", ct)
			}
		})
	}
	if up.count() != 0 {
		t.Fatalf("a handshake reached the upstream (%d requests)", up.count())
	}
	for _, secret := range []string{"new-token", "old-token"} {
		if strings.Contains(c.Logs(), secret) {
			t.Errorf("the log contains the verify token %q", secret)
		}
	}
}
