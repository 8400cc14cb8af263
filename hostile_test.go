package webhookguard

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHostileInput guards fail-closed handling of every kind of bad input
// a sender (or an attacker) can produce: each gets a clear 4xx JSON error,
// nothing reaches the upstream, nothing panics, and no secret or expected
// signature shows up in a response or in Caddy's log.
func TestHostileInput(t *testing.T) {
	const (
		fwdSecret   = "hostile-forward-secret"
		metaSecret  = "hostile-meta-secret"
		verifyToken = "hostile-verify-token"
	)
	stdKey := []byte("hostile-standard-key-32-bytes!!!")
	stdSecret := "whsec_" + base64.StdEncoding.EncodeToString(stdKey)
	up := newUpstream(t)
	c := startCaddy(t, `
	handle /kapso {
		webhook_guard {
			verify kapso `+kapsoSecret+`
			max_body 4KB
			unbatch {
				max_items 5
			}
			forward_secret `+fwdSecret+`
		}
		reverse_proxy `+up.Addr()+`
	}
	handle /standard {
		webhook_guard {
			verify standard `+stdSecret+`
			dedupe
		}
		reverse_proxy `+up.Addr()+`
	}
	handle /meta {
		webhook_guard {
			verify meta `+metaSecret+`
			verify_token `+verifyToken+`
		}
		reverse_proxy `+up.Addr()+`
	}`)

	body := []byte(`{"message":{"id":"wamid.hostile"},"phone_number_id":"1"}`)
	good := signHex(kapsoSecret, body)
	other := []byte(`{"message":{"id":"wamid.other"}}`)
	signed := func(b []byte) map[string]string {
		return map[string]string{"X-Webhook-Signature": signHex(kapsoSecret, b)}
	}
	batch := func(b string) ([]byte, map[string]string) {
		h := signed([]byte(b))
		h["X-Webhook-Batch"] = "true"
		return []byte(b), h
	}
	stdSign := func(id string, ts int64, b []byte) map[string]string {
		m := hmac.New(sha256.New, stdKey)
		m.Write([]byte(id + "." + strconv.FormatInt(ts, 10) + "." + string(b)))
		return map[string]string{"Webhook-Id": id, "Webhook-Timestamp": strconv.FormatInt(ts, 10),
			"Webhook-Signature": "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))}
	}
	deep := `{"type":"x","batch":true,"data":[{"a":` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + `}]}`
	nonObject, nonObjectH := batch(`{"type":"x","batch":true,"data":[{"a":1},2]}`)
	notJSON, notJSONH := batch(`{"type":"x","batch":true,"data":[`)
	notArray, notArrayH := batch(`{"type":"x","batch":true,"data":{"a":1}}`)
	zero, zeroH := batch(`{"type":"x","batch":true,"data":[]}`)
	deepB, deepH := batch(deep)
	badUTF8, badUTF8H := batch("{\"type\":\"x\",\"batch\":true,\"data\":[{\"t\":\"\xff\xfe\"}]}")
	many, manyH := batch(string(makeBatch(6, "wamid.many.")))
	spoofBatch := signed(body)
	spoofBatch["X-Webhook-Batch"] = "true"
	big := bytes.Repeat([]byte("x"), 5000)

	type hostile struct {
		name    string
		path    string
		body    []byte
		headers map[string]string
		repeat  string // a header sent twice
		chunked bool
		status  int
		code    string
	}
	cases := []hostile{
		{"missing signature", "/kapso", body, nil, "", false, 401, "invalid_signature"},
		{"empty signature", "/kapso", body, map[string]string{"X-Webhook-Signature": ""}, "", false, 401, "invalid_signature"},
		{"garbage signature", "/kapso", body, map[string]string{"X-Webhook-Signature": "%%%garbage%%%"}, "", false, 401, "invalid_signature"},
		{"truncated signature", "/kapso", body, map[string]string{"X-Webhook-Signature": good[:40]}, "", false, 401, "invalid_signature"},
		{"over-long signature", "/kapso", body, map[string]string{"X-Webhook-Signature": good + strings.Repeat("0", 4000)}, "", false, 401, "invalid_signature"},
		{"signature with a space", "/kapso", body, map[string]string{"X-Webhook-Signature": good[:32] + " " + good[32:]}, "", false, 401, "invalid_signature"},
		{"invalid UTF-8 signature", "/kapso", body, map[string]string{"X-Webhook-Signature": "\xff" + good[1:]}, "", false, 401, "invalid_signature"},
		{"repeated signature header", "/kapso", body, map[string]string{}, "X-Webhook-Signature", false, 401, "invalid_signature"},
		{"wrong scheme header", "/kapso", body, map[string]string{"X-Hub-Signature-256": "sha256=" + good}, "", false, 401, "invalid_signature"},
		{"sha1 prefix", "/kapso", body, map[string]string{"X-Webhook-Signature": "sha1=" + good}, "", false, 401, "invalid_signature"},
		{"valid signature of another body", "/kapso", body, signed(other), "", false, 401, "invalid_signature"},
		{"spoofed verified header only", "/kapso", body, map[string]string{"X-Webhook-Verified": "kapso"}, "", false, 401, "invalid_signature"},
		{"standard: stale timestamp", "/standard", body, stdSign("msg_1", time.Now().Add(-6*time.Minute).Unix(), body), "", false, 401, "invalid_signature"},
		{"standard: future timestamp", "/standard", body, stdSign("msg_1", time.Now().Add(6*time.Minute).Unix(), body), "", false, 401, "invalid_signature"},
		{"standard: signed for another id", "/standard", body, func() map[string]string {
			h := stdSign("msg_1", time.Now().Unix(), body)
			h["Webhook-Id"] = "msg_2"
			return h
		}(), "", false, 401, "invalid_signature"},
		{"over max_body with Content-Length", "/kapso", big, signed(big), "", false, 413, "too_large"},
		{"over max_body chunked", "/kapso", big, signed(big), "", true, 413, "too_large"},
		{"batch: not JSON", "/kapso", notJSON, notJSONH, "", false, 400, "bad_request"},
		{"batch: data not an array", "/kapso", notArray, notArrayH, "", false, 400, "bad_request"},
		{"batch: non-object item", "/kapso", nonObject, nonObjectH, "", false, 400, "bad_request"},
		{"batch: zero items", "/kapso", zero, zeroH, "", false, 400, "bad_request"},
		{"batch: too many items", "/kapso", many, manyH, "", false, 413, "too_large"},
		{"batch: deep nesting", "/kapso", deepB, deepH, "", false, 400, "bad_request"},
		{"batch: invalid UTF-8", "/kapso", badUTF8, badUTF8H, "", false, 400, "bad_request"},
		{"spoofed batch header on a single body", "/kapso", body, spoofBatch, "", false, 400, "bad_request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var rd io.Reader = bytes.NewReader(tc.body)
			if tc.chunked {
				rd = io.MultiReader(rd)
			}
			req, _ := http.NewRequest(http.MethodPost, c.URL+tc.path, rd)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			if tc.repeat != "" {
				req.Header.Add(tc.repeat, good)
				req.Header.Add(tc.repeat, good)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if code, _ := errorCode(t, b); code != tc.code || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("error %q (%s), want %q as JSON", code, resp.Header.Get("Content-Type"), tc.code)
			}
			for _, secret := range []string{kapsoSecret, fwdSecret, good, stdSecret} {
				if bytes.Contains(b, []byte(secret)) {
					t.Fatalf("the response leaks a secret or the expected signature: %s", b)
				}
			}
		})
	}
	t.Run("wrong handshake token", func(t *testing.T) {
		resp, err := http.Get(c.URL + "/meta?hub.mode=subscribe&hub.verify_token=guess&hub.challenge=1")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || bytes.Contains(b, []byte(verifyToken)) {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
	})
	if n := up.count(); n != 0 {
		t.Fatalf("%d hostile requests reached the upstream", n)
	}

	// A spoofed gateway header on an otherwise valid request is replaced,
	// not believed.
	h := signed(body)
	for _, k := range []string{"X-Webhook-Verified", "X-Webhook-Duplicate", "X-Webhook-Batch-Index", "X-Webhook-Batch-Id", "X-Webhook-Normalized"} {
		h[k] = "spoofed"
	}
	if status, _, resp := post(t, c.URL+"/kapso", body, h); status != 200 {
		t.Fatalf("valid request with spoofed headers: %d %s", status, resp)
	}
	got := up.requests()[0].Header
	for _, k := range []string{"X-Webhook-Duplicate", "X-Webhook-Batch-Index", "X-Webhook-Batch-Id", "X-Webhook-Normalized"} {
		if v := got.Get(k); v != "" {
			t.Errorf("spoofed %s reached the upstream: %q", k, v)
		}
	}
	if v := got.Get("X-Webhook-Verified"); v != "kapso" {
		t.Errorf("X-Webhook-Verified = %q, want the gateway's own kapso", v)
	}

	// A replayed Standard Webhooks delivery (same id, still within the
	// tolerance) is answered as a duplicate and not forwarded again: the
	// sender's legitimate retries look the same and must not be refused.
	sh := stdSign("msg_replay", time.Now().Unix(), body)
	if status, _, resp := post(t, c.URL+"/standard", body, sh); status != 200 || up.count() != 2 {
		t.Fatalf("standard delivery: %d %s", status, resp)
	}
	status, hdr, resp := post(t, c.URL+"/standard", body, sh)
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 2 {
		t.Fatalf("replayed standard delivery: %d %s, upstream %d", status, resp, up.count())
	}

	// Secrets must appear in no log line at all, at any level.
	// Signatures neither, except in reverse_proxy's own DEBUG dump of the
	// request it forwards: the sender's signature header travels on to the
	// app on purpose (apps that verify it themselves keep working), and
	// Caddy logs forwarded headers at DEBUG. README's Guarantees says so.
	logs := c.Logs()
	for _, secret := range []string{kapsoSecret, fwdSecret, metaSecret, verifyToken, stdSecret} {
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, secret) {
				t.Errorf("Caddy's log contains a secret (%.8s…) in a line of logger %q",
					secret, logField(line, "logger")+" "+logField(line, "msg"))
			}
		}
	}
	for _, sig := range []string{good, signHex(fwdSecret, body), signHex(kapsoSecret, other)} {
		for _, line := range strings.Split(logs, "\n") {
			forwardedDump := logField(line, "logger") == "http.handlers.reverse_proxy" && logField(line, "level") == "debug"
			if strings.Contains(line, sig) && !forwardedDump {
				t.Errorf("Caddy's log contains a signature (%.12s…) in a line of logger %q",
					sig, logField(line, "logger")+" "+logField(line, "msg"))
			}
		}
	}
	for _, bad := range []string{"panic", "DATA RACE"} {
		if strings.Contains(logs, bad) {
			t.Errorf("Caddy's log mentions %q", bad)
		}
	}
}

// logField extracts a string field from a JSON log line, for messages that
// must not print the line itself.
func logField(line, field string) string {
	var m map[string]any
	if json.Unmarshal([]byte(line), &m) != nil {
		return ""
	}
	s, _ := m[field].(string)
	return s
}
