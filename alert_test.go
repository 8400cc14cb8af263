package webhookguard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
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

func init() { caddy.RegisterModule(eventRecorder{}) }

// eventRecorder is a Caddy events handler, in the test binary (and so in
// the Caddy it runs as), that appends each event's name and handler to a
// file.
type eventRecorder struct {
	File string `json:"file"`
}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.test_record", New: func() caddy.Module { return new(eventRecorder) }}
}

func (r eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	f, err := os.OpenFile(r.File, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%s %v\n", e.Name(), e.Data["handler"])
	return err
}

// TestInboxEmitsCaddyEvents guards the inbox's Caddy events: an event
// that dies emits webhook_guard.event_dead, and the app taking an event
// again emits webhook_guard.app_recovered, to a subscriber of Caddy's
// events app (a module of the test binary), in a real Caddy run on JSON.
func TestInboxEmitsCaddyEvents(t *testing.T) {
	var mu sync.Mutex
	failing := true
	up := newUpstream(t)
	up.setRespond(func(int, recorded) (int, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return http.StatusServiceUnavailable, 0
		}
		return http.StatusOK, 0
	})
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	port, admin := freePort(t), freePort(t)
	cf := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cf, []byte(siteCaddyfile(admin, port, inboxSite(dir, up.Addr(), "retry 50ms"))), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), asCaddyEnv+"=1", "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	adapt := exec.Command(exe, "adapt", "--config", cf, "--adapter", "caddyfile")
	adapt.Env = env
	out, err := adapt.Output()
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	record := filepath.Join(dir, "events.txt")
	cfg["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events":   []string{"webhook_guard.event_dead", "webhook_guard.app_recovered"},
		"handlers": []any{map[string]any{"handler": "test_record", "file": record}},
	}}}
	js, _ := json.Marshal(cfg)
	jsonPath := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(jsonPath, js, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	run := exec.Command(exe, "run", "--config", jsonPath)
	run.Env, run.Stdout, run.Stderr = env, logs, logs
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = run.Process.Kill(); _ = run.Wait() }()
	url := "http://127.0.0.1:" + strconv.Itoa(port)
	waitFor(t, func() bool {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(url, "http://"), 100*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	recorded := func() string { b, _ := os.ReadFile(record); return string(b) }
	body, h := conversationEvent("ev", 0)
	sendQueued(t, url, body, h)
	waitFor(t, func() bool { return strings.Contains(recorded(), "webhook_guard.event_dead kapso") })
	mu.Lock()
	failing = false
	mu.Unlock()
	body, h = conversationEvent("ev", 1)
	sendQueued(t, url, body, h)
	waitFor(t, func() bool { return strings.Contains(recorded(), "webhook_guard.app_recovered kapso") })
	if n := strings.Count(recorded(), "event_dead"); n != 1 {
		t.Fatalf("%d event_dead events, want 1:\n%s", n, recorded())
	}
}
