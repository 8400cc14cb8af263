package webhookguard

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	testMetaSecret     = "test-event-meta-secret"
	testPlatformSecret = "whsec_test_event_platform_secret" // used as it is, not base64-decoded
)

// platformSite has the history page and a handler of each format Send
// Test Event knows: Kapso with an inbox, Meta without one, and the
// second platform's (hmac in X-Webhook-Signature, with an inbox),
// behind a path matcher each but Kapso.
func platformSite(dir, upstream string) string {
	inbox := filepath.Join(dir, "inbox.db")
	return fmt.Sprintf(`
	handle /hist/* {
		webhook_guard_history
	}
	handle /meta {
		webhook_guard {
			name meta
			verify meta %[1]s
		}
		reverse_proxy %[4]s
	}
	handle /platform {
		webhook_guard {
			name platform
			verify hmac %[2]s {
				header X-Webhook-Signature
			}
			events message.incoming message.report
			dedupe {
				scope platform
			}
			inbox {
				to %[4]s
				path %[5]s
				retry 10ms 10ms
			}
		}
	}
	handle {
		webhook_guard {
			name kapso
			verify kapso %[3]s
			dedupe
			events whatsapp.message.*
			inbox {
				to %[4]s
				path %[5]s
				retry 10ms 10ms
			}
		}
	}`, testMetaSecret, testPlatformSecret, kapsoSecret, upstream, inbox)
}

// TestSendTestEvent guards Send Test Event through a real Caddy: for a
// Kapso handler with an inbox, a Meta handler without one (behind a path
// matcher) and the second platform's, POST …/inbox/test sends one sample
// of the handler's format that passes its own verification and event
// filter and reaches the app once, marked X-Webhook-Test: true; the
// history marks it as a test; caddy webhook test does the same from the
// CLI; a sender's own X-Webhook-Test is stripped; and the endpoint, a
// write, refuses a request without the page's header.
func TestSendTestEvent(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, platformSite(t.TempDir(), up.Addr()))
	for _, tc := range []struct {
		handler, verified, bodyHas, event string
		stored                            bool
	}{
		{"kapso", "kapso", `"message":{"id":"wamid.test.`, "whatsapp.message.received", true},
		{"meta", "meta", `"object":"whatsapp_business_account"`, "messages", false},
		{"platform", "hmac", `"type":"message.incoming"`, "message.incoming", true},
	} {
		t.Run(tc.handler, func(t *testing.T) {
			before := up.count()
			var r struct {
				Event        string
				AnswerStatus int `json:"answer_status"`
			}
			status, body := apiCall(t, "POST", c.AdminURL+"/webhook_guard/inbox/test?handler="+tc.handler, &r)
			if status != 200 || r.AnswerStatus != 200 || r.Event != tc.event {
				t.Fatalf("test event: %d %s", status, body)
			}
			waitFor(t, func() bool { return up.count() == before+1 })
			got := up.requests()[before]
			if got.Header.Get(headerTest) != "true" || got.Header.Get(headerVerified) != tc.verified || !strings.Contains(string(got.Body), tc.bodyHas) {
				t.Fatalf("the app got test %q, verified %q, body %s", got.Header.Get(headerTest), got.Header.Get(headerVerified), got.Body)
			}
			never(t, 300*time.Millisecond, func() bool { return up.count() > before+1 }, "the test event reached the app twice")
			events := eventsOf(t, c, tc.handler, nil)
			if len(events) == 0 || !events[0].Test || events[0].Stored != tc.stored || events[0].Event != tc.event {
				t.Fatalf("history's newest event of %s: %+v; want a test", tc.handler, events)
			}
		})
	}

	before := up.count()
	out, ok := runCaddyCmd(t, nil, "webhook", "test", "--handler", "platform", "--address", strings.TrimPrefix(c.AdminURL, "http://"))
	if !ok || !strings.Contains(out, "test message.incoming sent to platform: the route answered 200") {
		t.Fatalf("caddy webhook test:\n%s", out)
	}
	waitFor(t, func() bool { return up.count() == before+1 })

	body, h := conversationEvent("spoof", 1)
	h[headerTest] = "true"
	sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool { return up.count() == before+2 })
	if got := up.requests()[before+1]; got.Header.Get(headerTest) != "" {
		t.Errorf("a sender's X-Webhook-Test reached the app: %q", got.Header.Get(headerTest))
	}
	if events := eventsOf(t, c, "kapso", url.Values{"q": {"wamid.spoof.001"}}); len(events) != 1 || events[0].Test {
		t.Errorf("a sender's X-Webhook-Test marked its event a test: %+v", events)
	}

	resp, err := http.Post(c.AdminURL+"/webhook_guard/inbox/test?handler=kapso", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a test event without the page's header answered %d, want 403", resp.StatusCode)
	}
	if status, _ := apiCall(t, "POST", c.AdminURL+"/webhook_guard/inbox/test?handler=nobody", nil); status != 404 {
		t.Errorf("a test event to an unknown handler answered %d, want 404", status)
	}
}

// TestSecondPlatformThroughCaddy guards the second platform's events
// through a real Caddy and its inbox: signed as it signs (hex HMAC of the
// body in X-Webhook-Signature, the whsec_ secret as it is) they are
// queued and delivered; a wrong signature is refused; an event the
// route does not subscribe to is ignored; a redelivery of an envelope
// under another body (its id is the content key) is a duplicate; the
// customer orders the inbox; and caddy webhook send --sample sends each
// of its three events, which the route verifies.
func TestSecondPlatformThroughCaddy(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, platformSite(t.TempDir(), up.Addr()))
	url := c.URL + "/platform"
	sign := func(body []byte) map[string]string {
		return map[string]string{"X-Webhook-Signature": signHex(testPlatformSecret, body), "Content-Type": "application/json"}
	}
	incoming := platformSample("message.incoming", time.Now())
	status, _, answer := post(t, url, incoming, sign(incoming))
	if status != 200 || !strings.Contains(string(answer), `"queued"`) {
		t.Fatalf("message.incoming: %d %s", status, answer)
	}
	waitFor(t, func() bool { return up.count() == 1 })
	var envelope struct{ ID string }
	_ = json.Unmarshal(incoming, &envelope)
	stored := eventsOf(t, c, "platform", nil)
	if len(stored) != 1 || stored[0].OrderKey != "customer:cus_test_123" || stored[0].Event != "message.incoming" {
		t.Fatalf("stored: %+v; want order key customer:cus_test_123", stored)
	}

	redelivery := []byte(strings.Replace(string(incoming), `"liveMode":false`, `"liveMode":false,"delivery_attempt":2`, 1))
	if status, hdr, answer := post(t, url, redelivery, sign(redelivery)); status != 200 || hdr.Get(headerDuplicate) != "true" {
		t.Errorf("redelivery of envelope %s under another body: %d %s; want a duplicate", envelope.ID, status, answer)
	}
	form := platformSample("form.submitted", time.Now())
	if status, _, answer := post(t, url, form, sign(form)); status != 200 || !strings.Contains(string(answer), "ignored") {
		t.Errorf("form.submitted, not subscribed: %d %s; want ignored", status, answer)
	}
	report := platformSample("message.report", time.Now())
	if status, _, _ := post(t, url, report, map[string]string{"X-Webhook-Signature": signHex("whsec_another", report)}); status != 401 {
		t.Errorf("a wrong signature answered %d, want 401", status)
	}
	never(t, 200*time.Millisecond, func() bool { return up.count() > 1 }, "a duplicate, ignored or refused event reached the app")

	for i, sample := range []string{"message.incoming", "message.report"} {
		out, ok := runCaddyCmd(t, nil, "webhook", "send", "--sample", sample, "--secret", testPlatformSecret, "--url", url)
		if !ok || !strings.Contains(out, "200 OK") || !strings.Contains(out, "queued") {
			t.Fatalf("caddy webhook send --sample %s:\n%s", sample, out)
		}
		waitFor(t, func() bool { return up.count() == 2+i })
		if got := up.requests()[1+i]; got.Header.Get(headerVerified) != "hmac" || !strings.Contains(string(got.Body), `"type":"`+sample+`"`) {
			t.Fatalf("the app got %s verified %q", got.Body, got.Header.Get(headerVerified))
		}
	}
	out, ok := runCaddyCmd(t, nil, "webhook", "send", "--sample", "form.submitted", "--secret", testPlatformSecret, "--url", url)
	if !ok || !strings.Contains(out, "ignored") {
		t.Fatalf("caddy webhook send --sample form.submitted:\n%s", out)
	}
	if out, ok := runCaddyCmd(t, nil, "webhook", "send", "--sample", "message.sent", "--secret", "s", "--url", url); ok ||
		!strings.Contains(out, "--sample must be one of message.incoming, message.report, form.submitted") {
		t.Errorf("an unknown sample: %s", out)
	}
}

// TestReadmePlatformRecipeValidates guards README's recipe for the
// second platform: its Caddyfile, as printed, adapts and provisions in a
// site (caddy validate), with its secret in the environment.
func TestReadmePlatformRecipeValidates(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, recipe, ok := strings.Cut(string(readme), "### Recipe: the second WhatsApp platform")
	if ok {
		_, recipe, ok = strings.Cut(recipe, "```caddyfile\n")
	}
	if ok {
		recipe, _, ok = strings.Cut(recipe, "```")
	}
	if !ok || !strings.Contains(recipe, "header X-Webhook-Signature") {
		t.Fatalf("README has no recipe block for the second platform")
	}
	recipe = strings.ReplaceAll(recipe, "localhost:3000", "127.0.0.1:"+fmt.Sprint(freePort(t)))
	recipe = strings.Replace(recipe, "inbox {", "inbox {\n\t\t\tpath "+filepath.Join(t.TempDir(), "inbox.db"), 1)
	t.Setenv("PLATFORM_WEBHOOK_SECRET", testPlatformSecret)
	if out, refused := caddyValidate(t, recipe); refused {
		t.Fatalf("caddy validate of README's recipe:\n%s\n%s", out, recipe)
	}
}

// TestSendTestEventFindsItsRoute guards where Send Test Event goes and
// what it says when it cannot get there: through a handler nested in
// handle_path (the stripped prefix added back), with an events filter
// that takes only whatsapp.message.failed (a sample of that event, not
// an ignored one); a route that also matches on a header is not
// reached, and says so (502 not_reached) rather than "sent"; an app
// whose answer breaks after its headers is a 502 answer_broken, and a
// real delivery through that route is still in the history; after a
// reload whose config failed to start, the test still goes to the
// running config.
func TestSendTestEventFindsItsRoute(t *testing.T) {
	up := newUpstream(t)
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		_ = buf.Flush()
		_ = conn.Close()
	}))
	t.Cleanup(broken.Close)
	dir := t.TempDir()
	site := fmt.Sprintf(`
	handle_path /api/* {
		handle /kapso {
			webhook_guard {
				name nested
				verify kapso %[1]s
				events whatsapp.message.failed
			}
			reverse_proxy %[2]s
		}
	}
	@tagged header X-Route tagged
	handle @tagged {
		webhook_guard {
			name tagged
			verify kapso %[1]s
		}
		reverse_proxy %[2]s
	}
	handle /broken {
		webhook_guard {
			name broken
			verify kapso %[1]s
		}
		reverse_proxy %[3]s
	}
	handle {
		webhook_guard {
			name kapso
			verify kapso %[1]s
			inbox {
				to %[2]s
				path %[4]s
			}
		}
	}`, kapsoSecret, up.Addr(), strings.TrimPrefix(broken.URL, "http://"), filepath.Join(dir, "inbox.db"))
	c := startCaddy(t, site)
	test := func(handler string) (int, string) {
		t.Helper()
		return apiCall(t, "POST", c.AdminURL+"/webhook_guard/inbox/test?handler="+handler, nil)
	}

	if status, body := test("nested"); status != 200 || !strings.Contains(body, `"event":"whatsapp.message.failed"`) ||
		!strings.Contains(body, `"answer_status":200`) || strings.Contains(body, "ignored") {
		t.Errorf("nested in handle_path, events whatsapp.message.failed: %d %s", status, body)
	}
	waitFor(t, func() bool { return up.count() == 1 })
	if got := up.requests()[0]; got.Header.Get(headerEvent) != "whatsapp.message.failed" || got.Header.Get(headerTest) != "true" {
		t.Errorf("the app got event %q, test %q", got.Header.Get(headerEvent), got.Header.Get(headerTest))
	}
	if status, body := test("tagged"); status != 502 || !strings.Contains(body, "not_reached") {
		t.Errorf("a route that matches a header: %d %s; want 502 not_reached", status, body)
	}
	if status, body := test("broken"); status != 502 || !strings.Contains(body, "answer_broken") {
		t.Errorf("an answer that breaks after its headers: %d %s; want 502 answer_broken", status, body)
	}
	body, h := conversationEvent("broken", 1)
	post(t, c.URL+"/broken", body, h)
	waitFor(t, func() bool {
		events := eventsOf(t, c, "broken", url.Values{"status": {"delivered"}})
		return len(events) == 2 // the test's and this one: a 2xx whose body broke, taken by the app
	})

	// A reload whose config fails to start (its inbox file cannot be
	// created: its directory is a file) leaves the test on the running one.
	if err := os.WriteFile(filepath.Join(dir, "zz"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	failing := strings.Replace(site, filepath.Join(dir, "inbox.db"), filepath.Join(dir, "zz", "inbox.db"), 1)
	if status, _ := c.tryReload(failing); status == http.StatusOK {
		t.Fatal("the failing config loaded")
	}
	if status, body := test("kapso"); status != 200 || !strings.Contains(body, `"status":"queued"`) {
		t.Errorf("after a failed reload: %d %s; want the running config's 200 queued", status, body)
	}
}
