package webhookguard

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// alertReceiver is a real HTTP endpoint on loopback that records the
// alert messages it gets, with their signature header.
type alertReceiver struct {
	srv  *httptest.Server
	mu   sync.Mutex
	msgs []alertMessage
	sigs []string
	raw  [][]byte
}

func newAlertReceiver(t *testing.T) *alertReceiver {
	ar := &alertReceiver{}
	ar.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m alertMessage
		if err := json.Unmarshal(b, &m); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		ar.mu.Lock()
		ar.msgs, ar.sigs, ar.raw = append(ar.msgs, m), append(ar.sigs, r.Header.Get(headerKapsoSignature)), append(ar.raw, b)
		ar.mu.Unlock()
	}))
	t.Cleanup(ar.srv.Close)
	return ar
}

// count is how many messages of handler and condition came.
func (ar *alertReceiver) count(handler, condition string) int {
	ar.mu.Lock()
	defer ar.mu.Unlock()
	n := 0
	for _, m := range ar.msgs {
		if m.Handler == handler && m.Condition == condition {
			n++
		}
	}
	return n
}

// TestAlertsReachAPerson guards alert through a real Caddy and a real
// receiver: failing attempts send one "failing" message and the event's
// death one "dead" message, each debounced (two more events failing and
// dying within every send nothing more); a delivery after that sends one
// "recovered"; an inbox whose oldest event waits past pending_over says
// so; a direct handler's failed forwards alert too. Messages carry a text
// and are signed with forward_secret.
func TestAlertsReachAPerson(t *testing.T) {
	ar := newAlertReceiver(t)
	var mu sync.Mutex
	failing := true
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(id string, _ int) int {
		mu.Lock()
		defer mu.Unlock()
		if failing || strings.Contains(id, ".stuck.") {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}))
	dir := t.TempDir()
	alert := func(extra string) string {
		return fmt.Sprintf("alert %s {\n\t\t\t\tevery 3s\n\t\t\t\tpending_over 1s\n\t\t\t}%s", ar.srv.URL, extra)
	}
	c := startCaddy(t, fmt.Sprintf(`
	handle /inbox {
		webhook_guard {
			name queued
			verify kapso %[1]s
			forward_secret fwd-secret
			%[2]s
			inbox {
				to %[3]s
				path %[4]s
				retry 50ms 50ms
			}
		}
	}
	handle /stuck {
		webhook_guard {
			name stuck
			verify kapso %[1]s
			%[2]s
			inbox {
				to %[3]s
				path %[4]s
				retry 1h
			}
		}
	}
	handle /direct {
		webhook_guard {
			name direct
			verify kapso %[1]s
			%[2]s
		}
		reverse_proxy %[3]s
	}`, kapsoSecret, alert(""), up.Addr(), filepath.Join(dir, "inbox.db")))

	body, h := conversationEvent("a", 0)
	sendQueued(t, c.URL+"/inbox", body, h)
	waitFor(t, func() bool { return ar.count("queued", alertDead) == 1 })
	for n := 1; n <= 2; n++ {
		body, h := conversationEvent("a", n)
		sendQueued(t, c.URL+"/inbox", body, h)
	}
	waitFor(t, func() bool {
		ta.mu.Lock()
		defer ta.mu.Unlock()
		return len(ta.answered["wamid.a.002"]) == 3
	})
	mu.Lock()
	failing = false
	mu.Unlock()
	body, h = conversationEvent("b", 0)
	sendQueued(t, c.URL+"/inbox", body, h)
	waitFor(t, func() bool { return ar.count("queued", alertRecovered) == 1 })
	never(t, 500*time.Millisecond, func() bool {
		return ar.count("queued", alertFailing) > 1 || ar.count("queued", alertDead) > 1 || ar.count("queued", alertRecovered) > 1
	}, "an alert was repeated within every")
	if n := ar.count("queued", alertFailing); n != 1 {
		t.Fatalf("%d failing messages, want 1", n)
	}

	stuck, hs := conversationEvent("x.stuck", 0)
	sendQueued(t, c.URL+"/stuck", stuck, hs)
	waitFor(t, func() bool { return ar.count("stuck", alertPending) == 1 })

	mu.Lock()
	failing = true
	mu.Unlock()
	direct, hd := conversationEvent("d", 0)
	if status, _, _ := post(t, c.URL+"/direct", direct, hd); status != http.StatusServiceUnavailable {
		t.Fatalf("the direct forward answered %d", status)
	}
	waitFor(t, func() bool { return ar.count("direct", alertFailing) == 1 })

	ar.mu.Lock()
	defer ar.mu.Unlock()
	for i, m := range ar.msgs {
		if m.Text == "" || !strings.Contains(m.Text, m.Handler) {
			t.Errorf("message %d has no text naming its handler: %+v", i, m)
		}
		if m.Handler == "queued" && ar.sigs[i] != signHex("fwd-secret", ar.raw[i]) {
			t.Errorf("message %d is not signed with forward_secret", i)
		}
	}
	if v := metricValue(t, c, "caddy_webhook_guard_alerts_total", `condition="dead",handler="queued",outcome="sent"`); v != 1 {
		t.Errorf("alerts_total{dead,sent} = %v, want 1", v)
	}
}

// TestAlertFailuresAreCountedNotBlocking guards the alert's own failure:
// a URL that refuses connections never holds up a delivery, and each
// message that could not go is logged (without the URL, which may hold a
// token) and counted.
func TestAlertFailuresAreCountedNotBlocking(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL + "/services/T000/B000/secret-token"
	dead.Close()
	up := newUpstream(t)
	up.setRespond(func(int, recorded) (int, time.Duration) { return http.StatusBadGateway, 0 })
	c := startCaddy(t, fmt.Sprintf(`
	webhook_guard {
		name direct
		verify kapso %s
		alert %s
	}
	reverse_proxy %s`, kapsoSecret, url, up.Addr()))
	body, h := conversationEvent("f", 0)
	if status, _, _ := post(t, c.URL, body, h); status != http.StatusBadGateway {
		t.Fatalf("the forward answered %d", status)
	}
	waitFor(t, func() bool {
		return metricValue(t, c, "caddy_webhook_guard_alerts_total", `condition="failing",handler="direct",outcome="failed"`) == 1
	})
	if !strings.Contains(c.Logs(), "alert could not be sent") || strings.Contains(c.Logs(), "secret-token") {
		t.Fatalf("the failure was not logged, or the URL was:\n%s", c.Logs())
	}
}
