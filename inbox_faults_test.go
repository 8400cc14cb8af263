package webhookguard

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// flipInRecord changes one byte of the stored record of event id in the
// bbolt file at path: the first letter of its queue's name, which follows
// the id in the record (the id's other copies, as a key, are not
// followed by it). The record's checksum no longer holds.
func flipInRecord(t *testing.T, path, id, queue string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pattern := append(append([]byte{byte(len(id))}, id...), byte(len(queue)))
	pattern = append(pattern, queue...)
	at := bytes.Index(raw, pattern)
	if at < 0 || bytes.Index(raw[at+1:], pattern) >= 0 {
		t.Fatalf("the record of %s is not once in the file", id)
	}
	raw[at+len(id)+2] ^= 0x20
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

// appNotYetUp is an app that answers 200 to everything once started on
// addr (up.startOn), recording into ta.
func appNotYetUp(t *testing.T) (ta *tally, up *upstream, addr string) {
	ta = newTally()
	up = newUnstartedUpstream(t)
	up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
	return ta, up, "127.0.0.1:" + strconv.Itoa(freePort(t))
}

// TestInboxSetsADamagedRecordAside guards point 1 of the inbox's fault
// promises, on bbolt: one pending record whose bytes changed on disk is
// set aside as damaged (logged with its id, counted, listed with its
// reason) and holds back nothing; the 49 good events and 5 new ones all
// reach the app, and oldest-pending reads what is really pending.
func TestInboxSetsADamagedRecordAside(t *testing.T) {
	dir := t.TempDir()
	ta, up, addr := appNotYetUp(t)
	site := inboxSite(dir, addr, "retry 100ms")
	c := startCaddy(t, site)
	var damaged string
	for n := range 10 {
		for k := range 5 {
			body, h := conversationEvent("c"+strconv.Itoa(k), n)
			id := sendQueued(t, c.URL, body, h)
			if k == 2 && n == 3 {
				damaged = id
			}
		}
	}
	c.stop()
	flipInRecord(t, filepath.Join(dir, "inbox.db"), damaged, "kapso")
	c.restart(site)
	// The app is still down: 49 readable events wait, the oldest since
	// the first was sent.
	waitFor(t, func() bool {
		return metricValue(t, c, "caddy_webhook_guard_inbox_oldest_pending_seconds", `handler="kapso"`) > 0
	})
	up.startOn(t, addr)
	for n := range 5 {
		body, h := conversationEvent("new", n)
		sendQueued(t, c.URL, body, h)
	}
	waitFor(t, func() bool { return ta.delivered(t) == 54 })
	ta.checkOrder(t)
	ta.mu.Lock()
	tried := len(ta.answered["wamid.c2.003"])
	ta.mu.Unlock()
	if tried != 0 {
		t.Fatal("the damaged event was delivered")
	}
	var l apiList
	if status, body := apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events?handler=kapso&status=damaged", &l); status != 200 {
		t.Fatalf("list: %d %s", status, body)
	}
	if len(l.Events) != 1 || l.Events[0].ID != damaged {
		t.Fatalf("damaged events listed: %+v", l.Events)
	}
	var raw map[string]any
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events/"+damaged, &raw)
	if !strings.Contains(fmt.Sprint(raw), "checksum") {
		t.Fatalf("the damaged event does not say why: %v", raw)
	}
	if v := metricValue(t, c, "caddy_webhook_guard_inbox_damaged_total", `handler="kapso"`); v != 1 {
		t.Fatalf("inbox_damaged_total = %v, want 1", v)
	}
	if v := metricValue(t, c, "caddy_webhook_guard_inbox_events", `handler="kapso",state="damaged"`); v != 1 {
		t.Fatalf("inbox_events{state=damaged} = %v, want 1", v)
	}
	if n := strings.Count(c.Logs(), damaged); n == 0 || !strings.Contains(c.Logs(), "damaged") {
		t.Fatalf("the damaged record was not logged with its id:\n%s", c.Logs())
	}
	waitFor(t, func() bool {
		return metricValue(t, c, "caddy_webhook_guard_inbox_oldest_pending_seconds", `handler="kapso"`) == 0
	})
}

// TestInboxRedisSetsABadBlobAside guards point 1 on Redis: an event
// blob that is not an event is set aside as damaged; the pass goes on,
// and every other conversation is delivered, by one instance.
func TestInboxRedisSetsABadBlobAside(t *testing.T) {
	rs := startRedis(t)
	ta, up, addr := appNotYetUp(t)
	c := startCaddy(t, redisInboxSite(rs.URL(), addr, ""))
	var bad string
	for n := range 3 {
		for k := range 4 {
			body, h := conversationEvent("r"+strconv.Itoa(k), n)
			id := sendQueued(t, c.URL, body, h)
			if k == 1 && n == 0 {
				bad = id
			}
		}
	}
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(rs.port)})
	defer client.Close()
	ctx := context.Background()
	seq, err := client.Get(ctx, defaultInboxPrefix+"id:"+bad).Result()
	if err != nil {
		t.Fatalf("the event's id is not in Redis: %v", err)
	}
	if err := client.Set(ctx, defaultInboxPrefix+"ev:"+seq, "not an event", 0).Err(); err != nil {
		t.Fatal(err)
	}
	up.startOn(t, addr)
	waitFor(t, func() bool { return ta.delivered(t) == 11 })
	ta.checkOrder(t)
	var l apiList
	if status, body := apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events?handler=kapso&status=damaged", &l); status != 200 {
		t.Fatalf("list: %d %s", status, body)
	}
	if len(l.Events) != 1 || l.Events[0].ID != bad {
		t.Fatalf("damaged events listed: %+v", l.Events)
	}
	if v := metricValue(t, c, "caddy_webhook_guard_inbox_damaged_total", `handler="kapso"`); v != 1 {
		t.Fatalf("inbox_damaged_total = %v, want 1", v)
	}
}

// writePendingFile runs a Caddy whose app is down until n events are
// queued in the file under dir, then stops it; it returns the file.
func writePendingFile(t *testing.T, dir string, n int) string {
	t.Helper()
	c := startCaddy(t, inboxSite(dir, "127.0.0.1:9", "retry 1h"))
	for i := range n {
		body, h := conversationEvent("c"+strconv.Itoa(i%10), i/10)
		sendQueued(t, c.URL, body, h)
	}
	c.stop()
	return filepath.Join(dir, "inbox.db")
}

// TestInboxDamagedFileIsRefused guards point 2: a file cut to half its
// size makes caddy run fail with an error that names the file and the way
// out, never a panic; a reload onto it is refused and the running config
// keeps serving every request; a file another process holds says so;
// check reports the damage and salvage makes a file a new Caddy delivers
// from.
func TestInboxDamagedFileIsRefused(t *testing.T) {
	damagedDir := t.TempDir()
	path := writePendingFile(t, damagedDir, 200)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	damagedSite := inboxSite(damagedDir, "127.0.0.1:9", "")

	t.Run("caddy run", func(t *testing.T) {
		out := startCaddyErr(t, damagedSite)
		if strings.Contains(out, "panic:") || !strings.Contains(out, path+" is damaged") ||
			!strings.Contains(out, "caddy webhook inbox salvage") {
			t.Fatalf("caddy run on a truncated file:\n%s", out)
		}
	})

	t.Run("reload", func(t *testing.T) {
		ta := newTally()
		up := newUpstream(t)
		up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
		goodSite := inboxSite(t.TempDir(), up.Addr(), "")
		c := startCaddy(t, goodSite)
		cfg := siteCaddyfile(c.admin, c.port, damagedSite)
		req, _ := http.NewRequest(http.MethodPost, c.AdminURL+"/load", strings.NewReader(cfg))
		req.Header.Set("Content-Type", "text/caddyfile")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("the reload got no answer: %v", err)
		}
		var msg bytes.Buffer
		_, _ = msg.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || !strings.Contains(msg.String(), "is damaged") {
			t.Fatalf("the reload onto a damaged file answered %d %s", resp.StatusCode, msg.String())
		}
		for n := range 100 {
			body, h := conversationEvent("after", n)
			sendQueued(t, c.URL, body, h)
		}
		waitFor(t, func() bool { return ta.delivered(t) == 100 })
		if strings.Contains(c.Logs(), "panic") {
			t.Fatalf("a panic was logged:\n%s", c.Logs())
		}
	})

	t.Run("locked", func(t *testing.T) {
		dir := t.TempDir()
		site := inboxSite(dir, "127.0.0.1:9", "")
		startCaddy(t, site)
		if out := startCaddyErr(t, site); !strings.Contains(out, "is locked by another process") {
			t.Fatalf("a second Caddy on the same file:\n%s", out)
		}
	})

	t.Run("check and salvage", func(t *testing.T) {
		out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "check", path)
		if ok || !strings.Contains(out, "read page by page") || !strings.Contains(out, "is damaged") {
			t.Fatalf("check of the truncated file (ok=%v):\n%s", ok, out)
		}
		salvagedDir := t.TempDir()
		salvaged := filepath.Join(salvagedDir, "inbox.db")
		out, ok = runCaddyCmd(t, nil, "webhook", "inbox", "salvage", path, "--output", salvaged)
		if !ok || !strings.Contains(out, "wrote ") {
			t.Fatalf("salvage (ok=%v):\n%s", ok, out)
		}
		written, _ := strconv.Atoi(strings.Fields(out[strings.Index(out, "wrote "):])[1])
		ta := newTally()
		up := newUpstream(t)
		up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
		c := startCaddy(t, inboxSite(salvagedDir, up.Addr(), ""))
		var s struct{ Handlers []handlerSummary }
		apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox", &s)
		waitFor(t, func() bool {
			apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox", &s)
			return len(s.Handlers) == 1 && s.Handlers[0].Pending == 0
		})
		if got := ta.delivered(t) + s.Handlers[0].Damaged; got != written || got == 0 {
			t.Fatalf("salvage wrote %d events; %d delivered and %d damaged", written, ta.delivered(t), s.Handlers[0].Damaged)
		}
		ta.checkOrder(t)
		if out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "check", writePendingFile(t, t.TempDir(), 10)); !ok ||
			!strings.Contains(out, "every bucket was read to its end") {
			t.Fatalf("check of a sound file (ok=%v):\n%s", ok, out)
		}
	})
}

// TestInboxRedeliveryAfterRestartIsDuplicate guards point 3: with an
// inbox, the dedupe keys are committed with the event, so a sender's
// redelivery after kill -9 (or a graceful restart, after delivery) is a
// duplicate that names the event it duplicates, and the app gets each
// message once.
func TestInboxRedeliveryAfterRestartIsDuplicate(t *testing.T) {
	dir := t.TempDir()
	ta, up, addr := appNotYetUp(t)
	site := inboxSite(dir, addr, "retry 100ms")
	c := startCaddy(t, site)
	ids := map[int]string{}
	for n := range 5 {
		body, h := conversationEvent("re", n)
		ids[n] = sendQueued(t, c.URL, body, h)
	}
	redeliver := func(when string) {
		t.Helper()
		for n := range 5 {
			body, h := conversationEvent("re", n)
			status, hdr, answer := post(t, c.URL, body, h)
			if status != http.StatusOK || !strings.Contains(string(answer), `"duplicate"`) || hdr.Get(headerDeliveryID) != ids[n] {
				t.Fatalf("%s: redelivery of event %d answered %d %s (delivery id %q, want %q)", when, n, status, answer,
					hdr.Get(headerDeliveryID), ids[n])
			}
		}
	}
	c.kill()
	c.restart(site)
	redeliver("after kill -9, pending")
	up.startOn(t, addr)
	waitFor(t, func() bool { return ta.delivered(t) == 5 })
	c.stop()
	c.restart(site)
	redeliver("after a restart, delivered")
	never(t, 300*time.Millisecond, func() bool { return ta.delivered(t) > 5 }, "a redelivery reached the app")
}

// TestInboxBatchRepeatingAMessage guards point 4: a Kapso batch whose two
// items carry the same message.id is queued at once, one item and one
// duplicate, as it is forwarded without an inbox; no request waits on a
// claim of its own.
func TestInboxBatchRepeatingAMessage(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
	c := startCaddy(t, inboxSite(t.TempDir(), up.Addr(), ""))
	item := `{"message":{"id":"wamid.twice","type":"text","text":{"body":"hi"}},"conversation":{"id":"b1"},"phone_number_id":"1"}`
	body := []byte(`{"type":"whatsapp.message.received","batch":true,"data":[` + item + `,` + item + `],` +
		`"batch_info":{"size":2,"window_ms":5000}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "batch-twice")
	h["X-Webhook-Batch"] = "true"
	status, _, answer := post(t, c.URL, body, h)
	if status != http.StatusOK || !strings.Contains(string(answer), `"items":1`) || !strings.Contains(string(answer), `"duplicates":1`) {
		t.Fatalf("the batch answered %d %s", status, answer)
	}
	waitFor(t, func() bool { return ta.delivered(t) == 1 })
	// Kapso's retry of the whole batch is a duplicate.
	if status, _, answer := post(t, c.URL, body, h); status != http.StatusOK || !strings.Contains(string(answer), `"duplicate"`) {
		t.Fatalf("the batch's retry answered %d %s", status, answer)
	}
}

// TestInboxRenamedQueueIsOrphaned guards point 5: a reload that renames
// an inbox handler leaves its queue's pending events behind, and says
// so: a warning naming the queue, its count and the fix; the summary
// lists it as orphaned; a metric counts its events; caddy webhook inbox
// move hands them to the new queue, which delivers them.
func TestInboxRenamedQueueIsOrphaned(t *testing.T) {
	dir := t.TempDir()
	ta, up, addr := appNotYetUp(t)
	c := startCaddy(t, inboxSite(dir, addr, "retry 100ms"))
	for n := range 5 {
		body, h := conversationEvent("o", n)
		sendQueued(t, c.URL, body, h)
	}
	c.reload(strings.Replace(inboxSite(dir, addr, "retry 100ms"), "name kapso", "name kapso-v2", 1))
	waitFor(t, func() bool {
		return strings.Contains(c.Logs(), "an inbox queue holds pending events that no handler serves") &&
			strings.Contains(c.Logs(), `"queue":"kapso","pending":5`)
	})
	var s struct{ Handlers []handlerSummary }
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox", &s)
	var orphan *handlerSummary
	for i := range s.Handlers {
		if s.Handlers[i].Handler == "kapso" {
			orphan = &s.Handlers[i]
		}
	}
	if orphan == nil || !orphan.Orphaned || orphan.Pending != 5 || orphan.Served {
		t.Fatalf("summary: %+v", s.Handlers)
	}
	if v := metricValue(t, c, "caddy_webhook_guard_inbox_orphaned_events", `queue="kapso"`); v != 5 {
		t.Fatalf("inbox_orphaned_events = %v, want 5", v)
	}
	out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "move", "--address", strings.TrimPrefix(c.AdminURL, "http://"), "--from", "kapso", "--to", "kapso-v2")
	if !ok || !strings.Contains(out, "5 events moved from kapso to kapso-v2") {
		t.Fatalf("move (ok=%v):\n%s", ok, out)
	}
	up.startOn(t, addr)
	waitFor(t, func() bool { return ta.delivered(t) == 5 })
	ta.checkOrder(t)
	if out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "move", "--address", strings.TrimPrefix(c.AdminURL, "http://"), "--from", "kapso-v2", "--to", "kapso"); ok ||
		!strings.Contains(out, "served") {
		t.Fatalf("moving a served queue was not refused (ok=%v):\n%s", ok, out)
	}
}

// TestHandlersSharingANameAreWarnedAbout guards the rest of point 5: two
// handlers without an inbox under one name would share a history and a
// metric series unsaid; the config loads, with a warning.
func TestHandlersSharingANameAreWarnedAbout(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`
	handle /a {
		webhook_guard {
			name shared
			verify kapso %s
		}
		reverse_proxy %s
	}
	handle /b {
		webhook_guard {
			name shared
			verify meta %s
		}
		reverse_proxy %s
	}`, kapsoSecret, up.Addr(), kapsoSecret, up.Addr()))
	waitFor(t, func() bool {
		return strings.Contains(c.Logs(), "two webhook_guard handlers have the same name") && strings.Contains(c.Logs(), `"handler":"shared"`)
	})
}

// TestInboxSmallFaults guards point 6 through a real Caddy: an order_by
// that evaluates empty is warned about once and counted; attempt-log
// errors say what happened, not which Go type failed.
func TestInboxSmallFaults(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(id string, seen int) int {
		if seen == 0 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}))
	c := startCaddy(t, inboxSite(t.TempDir(), up.Addr(), "retry 50ms\n\t\t\torder_by {http.request.header.X-Misspelt}"))
	var ids []string
	for n := range 3 {
		body, h := conversationEvent("s", n)
		ids = append(ids, sendQueued(t, c.URL, body, h))
	}
	waitFor(t, func() bool { return ta.delivered(t) == 3 })
	if n := strings.Count(c.Logs(), "order_by evaluated empty"); n != 1 {
		t.Fatalf("the empty order_by was warned about %d times, want once:\n%s", n, c.Logs())
	}
	if v := metricValue(t, c, "caddy_webhook_guard_inbox_order_key_empty_total", `handler="kapso"`); v != 3 {
		t.Fatalf("inbox_order_key_empty_total = %v, want 3", v)
	}
	var full struct {
		AttemptLog []struct{ Error string } `json:"attempt_log"`
	}
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events/"+ids[0], &full)
	if len(full.AttemptLog) != 2 || full.AttemptLog[0].Error != "the app answered 503" {
		t.Fatalf("attempt log: %+v", full.AttemptLog)
	}
}

// TestInboxRedisRecordsALateAttempt guards the last of point 6: an
// instance paused (SIGSTOP) past its lease while its attempt is in flight
// loses the event to another instance, which delivers it; when the paused
// one wakes and its attempt ends, that attempt is in the event's log as
// late, with the instance that made it, so the history shows that the
// app got the event twice.
func TestInboxRedisRecordsALateAttempt(t *testing.T) {
	rs := startRedis(t)
	release := make(chan struct{})
	first := make(chan struct{}, 1)
	up := newUpstream(t)
	up.setRespond(func(n int, _ recorded) (int, time.Duration) {
		if n == 0 {
			first <- struct{}{}
			<-release
		}
		return http.StatusOK, 0
	})
	site := redisInboxSite(rs.URL(), up.Addr(), "")
	a := startCaddy(t, site)
	body, h := conversationEvent("late", 0)
	id := sendQueued(t, a.URL, body, h)
	select {
	case <-first:
	case <-time.After(10 * time.Second):
		t.Fatal("the event was not attempted")
	}
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b := startCaddy(t, site)
	waitFor(t, func() bool { return up.count() >= 2 })
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	close(release)
	var e struct {
		Status     string
		AttemptLog []struct {
			Trigger, Instance string
			Status            int
		} `json:"attempt_log"`
	}
	waitFor(t, func() bool {
		apiCall(t, http.MethodGet, b.AdminURL+"/webhook_guard/inbox/events/"+id, &e)
		return len(e.AttemptLog) == 2
	})
	if e.Status != "delivered" || e.AttemptLog[0].Trigger != "auto" || e.AttemptLog[1].Trigger != "late" ||
		e.AttemptLog[1].Instance == "" || e.AttemptLog[1].Instance == e.AttemptLog[0].Instance {
		t.Fatalf("attempt log: %+v (status %s)", e.AttemptLog, e.Status)
	}
	if !strings.Contains(a.Logs(), "lease on the event had lapsed") {
		t.Fatalf("the late result was not logged:\n%s", a.Logs())
	}
}

// TestInboxBackupRestores guards backup and restore: a copy of a running
// inbox with 30 pending events (the app down), taken through the admin
// API while senders keep sending, restores into a new Caddy that
// delivers every one of the 30, once; compact then shrinks the drained
// file.
func TestInboxBackupRestores(t *testing.T) {
	c := startCaddy(t, inboxSite(t.TempDir(), "127.0.0.1:9", "retry 1h"))
	for n := range 30 {
		body, h := conversationEvent("bk"+strconv.Itoa(n%3), n/3)
		sendQueued(t, c.URL, body, h)
	}
	restoreDir := t.TempDir()
	copyPath := filepath.Join(restoreDir, "inbox.db")
	done := make(chan struct{})
	go func() { // senders keep sending while the copy is taken
		defer close(done)
		for n := range 10 {
			body, h := conversationEvent("during", n)
			_, _ = queue(c.URL, body, h)
		}
	}()
	out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "backup", "--address", strings.TrimPrefix(c.AdminURL, "http://"),
		"--handler", "kapso", "--output", copyPath)
	<-done
	if !ok || !strings.Contains(out, "wrote ") {
		t.Fatalf("backup (ok=%v):\n%s", ok, out)
	}
	c.kill()
	ta, up, addr := appNotYetUp(t)
	up.startOn(t, addr)
	restored := startCaddy(t, inboxSite(restoreDir, addr, "retry 100ms"))
	waitFor(t, func() bool {
		ta.mu.Lock()
		defer ta.mu.Unlock()
		n := 0
		for id := range ta.answered {
			if strings.HasPrefix(id, "wamid.bk") {
				n++
			}
		}
		return n == 30
	})
	ta.checkOrder(t)
	ta.delivered(t) // fails on an event delivered twice
	restored.stop()
	out, ok = runCaddyCmd(t, nil, "webhook", "inbox", "compact", copyPath)
	if !ok || !strings.Contains(out, "before") {
		t.Fatalf("compact (ok=%v):\n%s", ok, out)
	}
}

// TestInboxErasure guards erasure through a real Caddy: the CLI erases
// every event holding a phone number, and the number is then nowhere in
// the inbox file; DELETE of one event by id (a write, refused without
// the history's header) erases it; the rest stay pending and the log
// says how many were erased, not what.
func TestInboxErasure(t *testing.T) {
	dir := t.TempDir()
	c := startCaddy(t, inboxSite(dir, "127.0.0.1:9", "retry 1h"))
	const phone = "+15551230001"
	for n := range 3 {
		body := []byte(fmt.Sprintf(`{"message":{"id":"wamid.er.%d","from":"%s","text":{"body":"hello %d"}},"conversation":{"id":"er"}}`, n, phone, n))
		sendQueued(t, c.URL, body, kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", fmt.Sprintf("er-%d", n)))
	}
	body, h := conversationEvent("keep", 0)
	keepID := sendQueued(t, c.URL, body, h)
	body, h = conversationEvent("gone", 0)
	goneID := sendQueued(t, c.URL, body, h)
	admin := strings.TrimPrefix(c.AdminURL, "http://")
	out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "erase", "--address", admin, "--handler", "kapso", "--phone", phone)
	if !ok || !strings.Contains(out, "3 events erased") {
		t.Fatalf("erase by phone (ok=%v):\n%s", ok, out)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "inbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(phone)) || bytes.Contains(raw, []byte("hello 1")) {
		t.Fatal("the erased phone number or message text is still in the inbox file")
	}
	req, _ := http.NewRequest(http.MethodDelete, c.AdminURL+"/webhook_guard/inbox/events/"+goneID, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a DELETE without the history's header: %v %v", resp, err)
	}
	if status, body := apiCall(t, http.MethodDelete, c.AdminURL+"/webhook_guard/inbox/events/"+goneID, nil); status != 200 ||
		!strings.Contains(body, `"erased":1`) {
		t.Fatalf("DELETE: %d %s", status, body)
	}
	if status, _ := apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events/"+goneID, nil); status != http.StatusNotFound {
		t.Fatalf("the erased event answers %d", status)
	}
	var e apiEvent
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events/"+keepID, &e)
	if e.Status != "pending" {
		t.Fatalf("the event kept is %q", e.Status)
	}
	if !strings.Contains(c.Logs(), `"by":"phone","erased":3`) || strings.Contains(c.Logs(), phone) ||
		strings.Contains(c.Logs(), "15551230001") {
		t.Fatalf("the erasure's log line is missing or holds the number:\n%s", c.Logs())
	}
}
