package webhookguard

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

const kapsoSecret = "kapso-integration-secret"

// TestForwardsVerifiedBodyByteIdentical guards the core promise: a signed
// delivery reaches the upstream through a real reverse_proxy with its body
// and headers unchanged, plus X-Webhook-Verified, and the placeholders are
// set for later handlers.
func TestForwardsVerifiedBodyByteIdentical(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
	}
	reverse_proxy `+up.Addr()+` {
		header_up X-Seen-Verified {http.webhook.verified}
		header_up X-Seen-Event {http.webhook.event}
	}`)

	bodies := map[string][]byte{
		"compact fixture":   compactFixture(t, "kapso/v2_message_received.json"),
		"pretty fixture":    mustRead(t, "testdata/kapso/v2_message_sent.json"),
		"unicode escapes":   []byte(`{"text":{"body":"caf\u00e9 \ud83d\udc4d"},"n":1.50}`),
		"raw utf-8":         []byte(`{"text":{"body":"café 👍"}}`),
		"not json at all":   []byte("plain text, still signed"),
		"large (1 MB)":      bytes.Repeat([]byte("a"), 1<<20),
		"empty body signed": {},
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			before := up.count()
			h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "")
			h["X-Custom"] = "kept"
			h["X-Webhook-Verified"] = "spoofed"
			status, resp, _ := post(t, c.URL+"/hook?x=1", body, h)
			if status != http.StatusOK || resp.Get("X-Upstream") != "yes" {
				t.Fatalf("status %d, upstream header %q", status, resp.Get("X-Upstream"))
			}
			reqs := up.requests()
			if len(reqs) != before+1 {
				t.Fatalf("upstream got %d requests, want 1", len(reqs)-before)
			}
			got := reqs[len(reqs)-1]
			if !bytes.Equal(got.Body, body) {
				t.Fatalf("body changed in transit: got %d bytes, sent %d", len(got.Body), len(body))
			}
			checks := map[string]string{
				"X-Webhook-Verified":  "kapso",
				"X-Seen-Verified":     "kapso",
				"X-Seen-Event":        "whatsapp.message.received",
				"X-Webhook-Event":     "whatsapp.message.received",
				"X-Webhook-Signature": h["X-Webhook-Signature"],
				"X-Custom":            "kept",
				"Content-Type":        "application/json",
				"Content-Length":      strconv.Itoa(len(body)),
			}
			if len(body) == 0 {
				delete(checks, "Content-Length")
			}
			for k, want := range checks {
				if v := got.Header.Get(k); v != want {
					t.Errorf("upstream header %s = %q, want %q", k, v, want)
				}
			}
			if n := len(got.Header.Values("X-Webhook-Verified")); n != 1 {
				t.Errorf("X-Webhook-Verified sent %d times", n)
			}
			if got.Path != "/hook?x=1" || got.Method != http.MethodPost {
				t.Errorf("upstream saw %s %s", got.Method, got.Path)
			}
		})
	}
}

// TestRejectsWithoutForwarding guards fail-closed behaviour: every way of
// being unsigned, wrongly signed or too large is answered with a JSON
// error and never reaches the upstream, and the logs carry neither the
// secret nor the expected signature.
func TestRejectsWithoutForwarding(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		max_body 1KB
	}
	reverse_proxy `+up.Addr())

	body := []byte(`{"message":{"id":"wamid.1"}}`)
	good := signHex(kapsoSecret, body)
	big := bytes.Repeat([]byte("b"), 1001)
	tests := []struct {
		name    string
		body    []byte
		headers map[string]string
		status  int
		code    string
		message string
	}{
		{"missing signature", body, nil, 401, "invalid_signature", "missing signature header"},
		{"tampered body", append([]byte{}, append(body, ' ')...), map[string]string{"X-Webhook-Signature": good}, 401, "invalid_signature", "does not match"},
		{"garbage signature", body, map[string]string{"X-Webhook-Signature": "not-a-signature"}, 401, "invalid_signature", "does not match"},
		{"signature of other secret", body, map[string]string{"X-Webhook-Signature": signHex("other", body)}, 401, "invalid_signature", "does not match"},
		{"meta header instead", body, map[string]string{"X-Hub-Signature-256": "sha256=" + signHex(kapsoSecret, body)}, 401, "invalid_signature", "missing"},
		{"too large with content-length", big, map[string]string{"X-Webhook-Signature": signHex(kapsoSecret, big)}, 413, "too_large", "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, hdr, resp := post(t, c.URL, tc.body, tc.headers)
			if status != tc.status {
				t.Fatalf("status %d, want %d (%s)", status, tc.status, resp)
			}
			if ct := hdr.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			code, msg := errorCode(t, resp)
			if code != tc.code || !strings.Contains(msg, tc.message) {
				t.Errorf("got %s %q, want %s containing %q", code, msg, tc.code, tc.message)
			}
			if strings.Contains(string(resp), good) || strings.Contains(string(resp), kapsoSecret) {
				t.Errorf("response leaks the secret or the expected signature: %s", resp)
			}
		})
	}

	t.Run("too large chunked", func(t *testing.T) {
		// An io.Reader of unknown length makes the client send chunked,
		// with no Content-Length for the early check to catch.
		req, _ := http.NewRequest(http.MethodPost, c.URL, io.MultiReader(bytes.NewReader(big)))
		req.Header.Set("X-Webhook-Signature", signHex(kapsoSecret, big))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if req.ContentLength != 0 || resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d (content length %d): %s", resp.StatusCode, req.ContentLength, b)
		}
		if code, _ := errorCode(t, b); code != "too_large" {
			t.Errorf("code %q", code)
		}
	})

	t.Run("exactly at the limit passes", func(t *testing.T) {
		limit := bytes.Repeat([]byte("c"), 1000)
		status, _, resp := post(t, c.URL, limit, map[string]string{"X-Webhook-Signature": signHex(kapsoSecret, limit)})
		if status != http.StatusOK {
			t.Fatalf("status %d: %s", status, resp)
		}
	})

	if n := up.count(); n != 1 {
		t.Fatalf("upstream got %d requests; only the one at the limit should have passed", n)
	}
	logs := c.Logs()
	for _, secret := range []string{kapsoSecret, good} {
		if strings.Contains(logs, secret) {
			t.Errorf("Caddy's log contains a secret or an expected signature")
		}
	}
	if !strings.Contains(logs, `"outcome":"invalid_signature"`) || !strings.Contains(logs, `"outcome":"too_large"`) {
		t.Errorf("rejections were not logged with their outcome:\n%s", logs)
	}
}

// TestSenderDisconnectMidBody guards that a body cut short by the sender
// is never forwarded in part.
func TestSenderDisconnectMidBody(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
	}
	reverse_proxy `+up.Addr())
	body := `{"message":{"id":"wamid.cut"}}`
	hangUpMidBody(t, c.URL, map[string]string{"X-Webhook-Signature": signHex(kapsoSecret, []byte(body))}, body, 500)
	never(t, 300*time.Millisecond, func() bool { return up.count() != 0 }, "a truncated body reached the upstream")
}

// TestMetaHMACAndStandardThroughCaddy runs each scheme end to end, with
// several verify lines on one route and two secrets on one verifier.
func TestMetaHMACAndStandardThroughCaddy(t *testing.T) {
	up := newUpstream(t)
	stdKey := []byte("standard-webhooks-key-32-bytes!!")
	c := startCaddy(t, `
	webhook_guard {
		verify meta old_app_secret my_app_secret
		verify hmac shopify-secret {
			header X-Shopify-Hmac-Sha256
			encoding base64
		}
		verify standard whsec_`+base64.StdEncoding.EncodeToString(stdKey)+`
	}
	reverse_proxy `+up.Addr())

	metaBody := []byte(`{"object":"whatsapp_business_account","entry":[]}`)
	shopBody := []byte(`{"id":820982911946154508}`)
	m := hmac.New(sha256.New, []byte("shopify-secret"))
	m.Write(shopBody)
	shopSig := base64.StdEncoding.EncodeToString(m.Sum(nil))
	stdBody := []byte(`{"type":"user.created"}`)
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	m = hmac.New(sha256.New, stdKey)
	m.Write([]byte("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W." + ts + "." + string(stdBody)))
	stdSig := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))

	tests := []struct {
		name    string
		body    []byte
		headers map[string]string
		scheme  string
		status  int
	}{
		{"meta vector", metaBody, map[string]string{"X-Hub-Signature-256": "sha256=1e948187320e1d8a8ab09e20b7172f8fe97e79394c0980b59b485e00288e389d"}, "meta", 200},
		{"meta old secret still accepted", metaBody, map[string]string{"X-Hub-Signature-256": "sha256=" + signHex("old_app_secret", metaBody)}, "meta", 200},
		{"meta retired secret", metaBody, map[string]string{"X-Hub-Signature-256": "sha256=" + signHex("retired", metaBody)}, "", 401},
		{"hmac base64", shopBody, map[string]string{"X-Shopify-Hmac-Sha256": shopSig}, "hmac", 200},
		{"standard", stdBody, map[string]string{"Webhook-Id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "Webhook-Timestamp": ts, "Webhook-Signature": stdSig}, "standard", 200},
		{"standard stale timestamp", stdBody, map[string]string{"Webhook-Id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", "Webhook-Timestamp": "1600000000", "Webhook-Signature": stdSig}, "", 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := up.count()
			status, _, resp := post(t, c.URL, tc.body, tc.headers)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, resp)
			}
			reqs := up.requests()
			if tc.status != 200 {
				if len(reqs) != before {
					t.Fatal("a rejected request reached the upstream")
				}
				return
			}
			if got := reqs[len(reqs)-1]; got.Header.Get("X-Webhook-Verified") != tc.scheme || !bytes.Equal(got.Body, tc.body) {
				t.Fatalf("upstream saw scheme %q body %q", got.Header.Get("X-Webhook-Verified"), got.Body)
			}
		})
	}
}

// TestConfigErrorsStopCaddy guards that a handler that would run open or
// with an empty key is refused at load time, with a message that says why
// and without printing the secret.
func TestConfigErrorsStopCaddy(t *testing.T) {
	tests := []struct {
		name string
		site string
		env  []string
		want string
	}{
		{"no verify", "webhook_guard {\n max_body 1MB\n}\nrespond ok", nil, "needs at least one verify"},
		{"unset env secret", "webhook_guard {\n verify kapso {env.WG_UNSET_SECRET_FOR_TEST}\n}\nrespond ok", nil, "secret"},
		{"unknown scheme", "webhook_guard {\n verify github s3cr3t\n}\nrespond ok", nil, "unknown scheme"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := startCaddyErr(t, tc.site, tc.env...)
			if !strings.Contains(out, tc.want) {
				t.Fatalf("output does not explain the error (%q):\n%s", tc.want, out)
			}
			if strings.Contains(out, "s3cr3t") {
				t.Error("output contains the secret")
			}
		})
	}
}

// TestSecretsFromEnvAndFileStayOutOfConfig guards that {env.*} and
// {file.*} secrets work and that neither the admin API's config nor the
// logs ever show their values.
func TestSecretsFromEnvAndFileStayOutOfConfig(t *testing.T) {
	up := newUpstream(t)
	file := filepath.Join(t.TempDir(), "meta-secret")
	if err := os.WriteFile(file, []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCaddy(t, `
	webhook_guard {
		verify kapso {env.WG_TEST_KAPSO_SECRET}
		verify meta {file.`+file+`}
		forward_secret {env.WG_TEST_FORWARD_SECRET}
	}
	reverse_proxy `+up.Addr(), "WG_TEST_KAPSO_SECRET=env-secret-value", "WG_TEST_FORWARD_SECRET=fwd-secret-value")

	body := []byte(`{"ok":true}`)
	if status, _, b := post(t, c.URL, body, map[string]string{"X-Webhook-Signature": signHex("env-secret-value", body)}); status != 200 {
		t.Fatalf("env secret: %d %s", status, b)
	}
	if status, _, b := post(t, c.URL, body, map[string]string{"X-Hub-Signature-256": "sha256=" + signHex("file-secret-value", body)}); status != 200 {
		t.Fatalf("file secret: %d %s", status, b)
	}
	resp, err := http.Get(c.AdminURL + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !json.Valid(cfg) || !strings.Contains(string(cfg), "{env.WG_TEST_KAPSO_SECRET}") {
		t.Fatalf("admin config does not show the placeholder: %s", cfg)
	}
	for _, s := range []string{"env-secret-value", "file-secret-value", "fwd-secret-value"} {
		if strings.Contains(string(cfg), s) {
			t.Errorf("admin config contains the secret %q", s)
		}
		if strings.Contains(c.Logs(), s) {
			t.Errorf("log contains the secret %q", s)
		}
	}
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkAddedLatency measures what a request waits for in webhook_guard
// itself with verify kapso and an in-memory dedupe (every key new), 1 KB
// bodies and a next handler that reads and closes the body, as
// reverse_proxy's transport does (a body left open keeps its pooled buffer
// from being reused, and the benchmark would then measure allocating one
// per request): the latency the gateway adds, free of the network and
// load-generator noise that hides it end to end. It reports the median
// and tail of the handler's own time, and of the next handler alone, as
// baseline, and the allocations of both.
func BenchmarkAddedLatency(b *testing.B) {
	next := drainingNext(true)
	h := benchHandler(b, &Handler{Verify: []*Verifier{{Scheme: "kapso", Secrets: []string{"bench"}}},
		Dedupe: &Dedupe{Scope: "bench-latency"}})
	body := bytes.Repeat([]byte("x"), 1024)
	sig := signHex("bench", body)
	var seq int
	request := func() (*http.Request, *httptest.ResponseRecorder) {
		seq++
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.Header.Set("X-Webhook-Signature", sig)
		r.Header.Set("X-Idempotency-Key", "latency-"+strconv.Itoa(seq))
		w := httptest.NewRecorder()
		return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil), w
	}
	for _, tc := range []struct {
		name  string
		serve func(http.ResponseWriter, *http.Request) error
	}{
		{"next-handler-only", func(w http.ResponseWriter, r *http.Request) error { return next.ServeHTTP(w, r) }},
		{"verify+dedupe", func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, next) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var took []time.Duration
			for b.Loop() {
				r, w := request()
				start := time.Now()
				err := tc.serve(w, r)
				took = append(took, time.Since(start))
				if err != nil || w.Code != http.StatusOK {
					b.Fatalf("status %d, err %v", w.Code, err)
				}
			}
			slices.Sort(took)
			at := func(q float64) float64 { return float64(took[int(q*float64(len(took)-1))].Nanoseconds()) / 1e3 }
			b.ReportMetric(at(0.5), "p50-µs")
			b.ReportMetric(at(0.99), "p99-µs")
			b.ReportMetric(at(0.999), "p99.9-µs")
		})
	}
}

// BenchmarkVerifyPath measures a verified delivery through the handler
// with verify kapso only, 1 KB bodies, and a next handler that reads and
// closes the body as a transport does, against that next handler alone:
// its allocations are what the budget "nothing per request beyond the
// body buffer" is checked with (the buffer itself comes from a pool).
func BenchmarkVerifyPath(b *testing.B) {
	next := drainingNext(true)
	h := benchHandler(b, &Handler{Verify: []*Verifier{{Scheme: "kapso", Secrets: []string{"bench"}}}})
	body := bytes.Repeat([]byte("x"), 1024)
	sig := signHex("bench", body)
	rd := bytes.NewReader(body)
	r := httptest.NewRequest(http.MethodPost, "/", rd)
	r.Header.Set("X-Webhook-Signature", sig)
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	for _, tc := range []struct {
		name  string
		serve func() error
	}{
		{"next-only", func() error { return next.ServeHTTP(w, r) }},
		{"verify", func() error { return h.ServeHTTP(w, r, next) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rd.Reset(body)
				r.Body = io.NopCloser(rd)
				r.Header.Set("X-Webhook-Signature", sig)
				w.Body.Reset()
				if err := tc.serve(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestRefusesGuardAfterTerminalHandler guards against the silent bypass:
// inside a route block the written order is kept, so a reverse_proxy (or
// respond, or file_server) written before webhook_guard would answer
// every request unverified. Such a config must fail to load with a
// message that says how to fix it, from caddy run and from caddy
// validate alike; the right order, matched terminal routes and handle
// blocks (which sort webhook_guard first) still load.
func TestRefusesGuardAfterTerminalHandler(t *testing.T) {
	up := newUpstream(t)
	guard := `webhook_guard {
			verify kapso ` + kapsoSecret + `
		}`
	for _, tc := range []struct {
		name, site string
		refused    bool
	}{
		{"reverse_proxy first in a route", "route {\n\t\treverse_proxy " + up.Addr() + "\n\t\t" + guard + "\n\t}", true},
		{"respond first in a route", "route {\n\t\trespond \"hi\"\n\t\t" + guard + "\n\t}", true},
		{"a catch-all handle block first", "route {\n\t\thandle {\n\t\t\treverse_proxy " + up.Addr() + "\n\t\t}\n\t\t" + guard + "\n\t}", true},
		{"webhook_guard first in a route", "route {\n\t\t" + guard + "\n\t\treverse_proxy " + up.Addr() + "\n\t}", false},
		{"a matched reverse_proxy first", "route {\n\t\treverse_proxy /other/* " + up.Addr() + "\n\t\t" + guard + "\n\t\treverse_proxy " + up.Addr() + "\n\t}", false},
		{"handle sorts the directives", "handle {\n\t\treverse_proxy " + up.Addr() + "\n\t\t" + guard + "\n\t}", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.refused {
				c := startCaddy(t, tc.site)
				body := []byte(`{"message":{"id":"x"}}`)
				if status, _, _ := post(t, c.URL, body, nil); status != http.StatusUnauthorized {
					t.Fatalf("an unsigned request got %d, want 401", status)
				}
				return
			}
			out := startCaddyErr(t, tc.site)
			for _, want := range []string{"webhook_guard", "answers every request first", "Put webhook_guard before it"} {
				if !strings.Contains(out, want) {
					t.Fatalf("the error does not say %q:\n%s", want, out)
				}
			}
			// caddy validate, which never starts apps, refuses it too.
			out, refused := caddyValidate(t, tc.site)
			if !refused || !strings.Contains(out, "answers every request first") {
				t.Fatalf("caddy validate did not refuse it (refused=%v):\n%s", refused, out)
			}
		})
	}
}
