package webhookguard

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestMatchEvent guards the pattern rule: "*" stands for any run of
// characters, including none, anywhere in the pattern; everything else
// matches itself, so a dot is a dot and a pattern without "*" is exact.
func TestMatchEvent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"whatsapp.message.received", "whatsapp.message.received", true},
		{"whatsapp.message.received", "whatsapp.message.receivedX", false},
		{"whatsapp.message.*", "whatsapp.message.sent", true},
		{"whatsapp.message.*", "whatsapp.message.", true},
		{"whatsapp.message.*", "whatsapp.conversation.ended", false},
		{"*.report", "message.report", true},
		{"*.report", "message.reports", false},
		{"*", "", true},
		{"*", "anything", true},
		{"whatsapp.*.ended", "whatsapp.conversation.ended", true},
		{"whatsapp.*.ended", "whatsapp.ended", false}, // the two dots must both be there
		{"a*b*c", "abc", true},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "acb", false},
		{"a?c", "abc", false}, // only * is special
	} {
		if got := matchEvent(tc.pattern, tc.name); got != tc.want {
			t.Errorf("matchEvent(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

// TestEventFilterThroughCaddy guards the filter end to end: events a
// route does not subscribe to are answered 200 ignored and never reach
// the app, counted under outcome ignored; subscribed ones are forwarded;
// a Kapso batch of another event has all its items skipped; a body's
// type and a Meta payload's fields are filtered the same way; and an
// unsigned request is a 401 whatever its event.
func TestEventFilterThroughCaddy(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	handle /kapso {
		webhook_guard {
			name kapso
			verify kapso `+kapsoSecret+`
			events whatsapp.message.* whatsapp.conversation.ended
			unbatch
		}
		reverse_proxy `+up.Addr()+`
	}
	handle /platform {
		webhook_guard {
			name platform
			verify hmac platform-secret {
				header X-Signature
			}
			events message.incoming *.submitted
		}
		reverse_proxy `+up.Addr()+`
	}
	handle /meta {
		webhook_guard {
			name meta
			verify meta meta-secret
			events messages
		}
		reverse_proxy `+up.Addr()+`
	}`)
	status := func(body []byte) string {
		var v struct{ Status string }
		_ = json.Unmarshal(body, &v)
		return v.Status
	}
	msg := compactFixture(t, "kapso/v2_message_received.json")
	batch := compactFixture(t, "kapso/v2_batch_message_received.json")
	metaTemplate := compactFixture(t, "meta/08_message_template_status_update_approved.json")
	metaText := compactFixture(t, "meta/01_text_click_to_whatsapp_ad_referral.json")
	for _, tc := range []struct {
		name, path string
		body       []byte
		headers    map[string]string
		code       int
		status     string
		forwarded  int
	}{
		{"kapso subscribed", "/kapso", msg, kapsoHeaders(kapsoSecret, msg, "whatsapp.message.received", "k1"), 200, "", 1},
		{"kapso exact name", "/kapso", msg, kapsoHeaders(kapsoSecret, msg, "whatsapp.conversation.ended", "k2"), 200, "", 1},
		{"kapso other event", "/kapso", msg, kapsoHeaders(kapsoSecret, msg, "whatsapp.conversation.created", "k3"), 200, "ignored", 0},
		{"kapso unsigned", "/kapso", msg, map[string]string{"X-Webhook-Event": "whatsapp.conversation.created"}, 401, "", 0},
		{"kapso batch subscribed", "/kapso", batch, batchHeaders(batch, "b1", 2), 200, "ok", 2},
		{"platform incoming", "/platform", []byte(`{"id":"evt_1","type":"message.incoming","data":{}}`), nil, 200, "", 1},
		{"platform submitted", "/platform", []byte(`{"id":"evt_2","type":"form.submitted","data":{}}`), nil, 200, "", 1},
		{"platform report", "/platform", []byte(`{"id":"evt_3","type":"message.report","data":{}}`), nil, 200, "ignored", 0},
		{"platform no type", "/platform", []byte(`{"id":"evt_4"}`), nil, 200, "ignored", 0},
		{"meta messages", "/meta", metaText, nil, 200, "", 1},
		{"meta template status", "/meta", metaTemplate, nil, 200, "ignored", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.headers
			switch tc.path {
			case "/platform":
				h = map[string]string{"X-Signature": signHex("platform-secret", tc.body)}
			case "/meta":
				h = map[string]string{"X-Hub-Signature-256": "sha256=" + signHex("meta-secret", tc.body)}
			}
			before := up.count()
			code, _, resp := post(t, c.URL+tc.path, tc.body, h)
			if code != tc.code || up.count()-before != tc.forwarded {
				t.Fatalf("got %d %s with %d forwarded, want %d and %d", code, resp, up.count()-before, tc.code, tc.forwarded)
			}
			if tc.status != "" && status(resp) != tc.status {
				t.Fatalf("status %q, want %q: %s", status(resp), tc.status, resp)
			}
		})
	}

	// A batch of an event the route does not take: every item skipped.
	other := []byte(strings.Replace(string(batch), `"whatsapp.message.received"`, `"whatsapp.conversation.created"`, 1))
	before := up.count()
	code, _, resp := post(t, c.URL+"/kapso", other, batchHeaders(other, "b2", 2))
	var reply struct {
		Status             string
		Forwarded, Ignored int
	}
	_ = json.Unmarshal(resp, &reply)
	if code != http.StatusOK || reply.Status != "ignored" || reply.Ignored != 2 || reply.Forwarded != 0 || up.count() != before {
		t.Fatalf("batch of another event: %d %s, %d forwarded", code, resp, up.count()-before)
	}

	for _, m := range []struct {
		name, labels string
		want         float64
	}{
		{"caddy_webhook_guard_requests_total", `handler="kapso",outcome="ignored"`, 2},
		{"caddy_webhook_guard_batch_items_total", `handler="kapso",outcome="ignored"`, 2},
		{"caddy_webhook_guard_requests_total", `handler="platform",outcome="ignored"`, 2},
		{"caddy_webhook_guard_requests_total", `handler="meta",outcome="ignored"`, 1},
		{"caddy_webhook_guard_requests_total", `handler="meta",outcome="forwarded"`, 1},
	} {
		if got := metricValue(t, c, m.name, m.labels); got != m.want {
			t.Errorf("%s{%s} = %v, want %v", m.name, m.labels, got, m.want)
		}
	}
}
