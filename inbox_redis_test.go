package webhookguard

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// redisInboxSite is an inbox handler named kapso whose queue is in Redis,
// with a lease of 1 s (a dead instance's conversations are taken over
// within about a second) and retries 200 ms apart, enough of them to
// outlast the app's 503s while a test sends.
func redisInboxSite(redisURL, upstream, options string) string {
	retry := strings.TrimSpace(strings.Repeat("200ms ", 60))
	return fmt.Sprintf(`
	webhook_guard {
		name kapso
		verify kapso %s
		inbox {
			to %s
			redis %s
			lease 1s
			retry %s
			%s
		}
	}`, kapsoSecret, upstream, redisURL, retry, options)
}

// sendSpread sends events 0..total-1 of conversations conversation n%convs,
// each conversation's in order, from several goroutines, to the
// instances in turn (event n to urls[n%len(urls)]).
func sendSpread(t *testing.T, urls []string, total, convs int) {
	t.Helper()
	const senders = 10
	errs := make(chan error, senders)
	for s := range senders {
		go func() {
			for n := range total {
				if n%convs%senders != s {
					continue
				}
				body, h := conversationEvent("c"+strconv.Itoa(n%convs), n/convs)
				if _, err := queue(urls[n%len(urls)], body, h); err != nil {
					errs <- fmt.Errorf("event %d: %w", n, err)
					return
				}
			}
			errs <- nil
		}()
	}
	for range senders {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// firstDeliveries counts the distinct events the app took and the
// deliveries beyond the first of each, and checks that first deliveries
// kept each conversation's order.
func (ta *tally) firstDeliveries(t *testing.T) (distinct, repeats int) {
	t.Helper()
	ta.mu.Lock()
	defer ta.mu.Unlock()
	for conv, ids := range ta.order {
		seen := map[string]bool{}
		last := ""
		for _, id := range ids {
			if seen[id] {
				repeats++
				continue
			}
			seen[id] = true
			if id < last {
				t.Fatalf("conversation %s: first deliveries out of order: %v", conv, ids)
			}
			last = id
		}
		distinct += len(seen)
	}
	return distinct, repeats
}

// TestRedisInboxSharedByTwoInstances guards the shared queue: 2,000
// events over 50 conversations, sent alternately to two Caddy instances
// on one Redis while the app answers 503, are each delivered once and in
// order per conversation when the app recovers, and both instances take
// part in the delivery.
func TestRedisInboxSharedByTwoInstances(t *testing.T) {
	rs := startPersistentRedis(t)
	ta := newTally()
	up := newUpstream(t)
	app := &recovering{}
	up.setRespond(ta.app(app.decide))
	site := redisInboxSite(rs.URL(), up.Addr(), "concurrency 8")
	a, b := startCaddy(t, site), startCaddy(t, site)
	const total = 2000
	sendSpread(t, []string{a.URL, b.URL}, total, 50)
	app.recover()
	waitForLong(t, time.Minute, func() bool { return ta.delivered(t) == total })
	never(t, 300*time.Millisecond, func() bool { return ta.delivered(t) > total }, "an event was delivered twice")
	ta.checkOrder(t)
	for name, c := range map[string]*caddyInstance{"a": a, "b": b} {
		if v := metricValue(t, c, "caddy_webhook_guard_inbox_attempts_total", `handler="kapso",outcome="delivered"`); v == 0 {
			t.Errorf("instance %s delivered nothing: the queue was not shared", name)
		}
	}
	if v := metricValue(t, a, "caddy_webhook_guard_inbox_events", `handler="kapso",state="delivered"`); v != total {
		t.Errorf("delivered gauge = %v, want %d (read from Redis by either instance)", v, total)
	}
	// The history reads Redis too: either instance shows every event.
	var s struct {
		Handlers []struct {
			Handler   string
			Delivered int
		}
	}
	if code, body := apiCall(t, "GET", b.AdminURL+"/webhook_guard/inbox", &s); code != 200 || len(s.Handlers) != 1 || s.Handlers[0].Delivered != total {
		t.Errorf("history summary on b: %d %s", code, body)
	}
	var l apiList
	apiCall(t, "GET", a.AdminURL+"/webhook_guard/inbox/events?handler=kapso&limit=3", &l)
	if len(l.Events) != 3 || l.Next == "" || l.Events[0].Status != "delivered" {
		t.Errorf("history list on a: %+v", l)
	}
}

// TestRedisInboxSurvivesKillOfOneInstance guards what happens when an
// instance dies mid-drain: kill -9 of one of two instances after a
// quarter of 2,000 events was delivered; the other takes over its
// conversations once their leases expire, every event is delivered, the
// only repeats are attempts that were in flight at the kill (at most its
// concurrency), and first deliveries keep each conversation's order.
func TestRedisInboxSurvivesKillOfOneInstance(t *testing.T) {
	rs := startPersistentRedis(t)
	ta := newTally()
	up := newUpstream(t)
	app := &recovering{}
	answer := ta.app(app.decide)
	// Slow answers keep attempts in flight, so that the kill hits some.
	up.setRespond(func(n int, r recorded) (int, time.Duration) {
		status, _ := answer(n, r)
		return status, 2 * time.Millisecond
	})
	const concurrency = 4
	site := redisInboxSite(rs.URL(), up.Addr(), "concurrency "+strconv.Itoa(concurrency))
	a, b := startCaddy(t, site), startCaddy(t, site)
	const total = 2000
	sendSpread(t, []string{a.URL, b.URL}, total, 50)
	app.recover()
	waitForLong(t, time.Minute, func() bool { d, _ := ta.firstDeliveries(t); return d >= total/4 })
	a.kill()
	waitForLong(t, time.Minute, func() bool { d, _ := ta.firstDeliveries(t); return d == total })
	never(t, 1500*time.Millisecond, func() bool { _, r := ta.firstDeliveries(t); return r > concurrency },
		"more deliveries were repeated than the killed instance had in flight")
	if v := metricValue(t, b, "caddy_webhook_guard_inbox_events", `handler="kapso",state="pending"`); v != 0 {
		t.Errorf("pending after the drain = %v", v)
	}
}

// TestRedisInboxRidesOutARedisRestart guards the store's own outage: with
// Redis down a sender gets 503 and nothing is committed; kill -9 of Redis
// (append-only file, fsynced per write) loses no acknowledged event; once
// Redis is back the instance delivers by itself, each event once, in
// order.
func TestRedisInboxRidesOutARedisRestart(t *testing.T) {
	rs := startPersistentRedis(t)
	ta := newTally()
	up := newUnstartedUpstream(t) // the app refuses connections: events stay pending
	up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	c := startCaddy(t, redisInboxSite(rs.URL(), addr, ""))
	const total = 200
	sendSpread(t, []string{c.URL}, total, 10)

	rs.stop() // kill -9
	body, h := conversationEvent("lost", 0)
	if code, _, resp := post(t, c.URL, body, h); code != http.StatusServiceUnavailable || !strings.Contains(string(resp), "store_unavailable") {
		t.Fatalf("with Redis down: %d %s, want 503 store_unavailable", code, resp)
	}
	rs.start()
	up.startOn(t, addr)
	waitForLong(t, time.Minute, func() bool { return ta.delivered(t) == total })
	never(t, 500*time.Millisecond, func() bool { return ta.delivered(t) > total }, "an event was delivered twice, or the refused one was")
	ta.checkOrder(t)
}

// recovering is an app that answers failWith (503 when unset) until
// recover is called, then 200.
type recovering struct {
	failWith  int
	mu        sync.Mutex
	recovered bool
}

func (r *recovering) decide(string, int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.recovered:
		return http.StatusOK
	case r.failWith != 0:
		return r.failWith
	}
	return http.StatusServiceUnavailable
}

func (r *recovering) recover() {
	r.mu.Lock()
	r.recovered = true
	r.mu.Unlock()
}

// waitForLong is waitFor with a longer limit, for drains of thousands of
// events under the race detector.
func waitForLong(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", limit)
		}
	}
}

// TestRedisInboxSearchAndReplayByFilter guards search and replay by
// filter on a Redis inbox, through a real Caddy: an event is found by a
// message id in its body (read from Redis a page at a time) and by its
// conversation, a replay by filter delivers only the dead events of the
// conversation it names, and status=failed makes a failed event that
// waits an hour for its retry due now.
func TestRedisInboxSearchAndReplayByFilter(t *testing.T) {
	rs := startRedis(t)
	ta := newTally()
	up := newUpstream(t)
	app := &recovering{failWith: http.StatusInternalServerError}
	up.setRespond(ta.app(app.decide))
	site := func(prefix, retry string) string {
		return fmt.Sprintf(`
	webhook_guard {
		name kapso
		verify kapso %s
		inbox {
			to %s
			redis %s
			prefix %s
			retry %s
		}
	}`, kapsoSecret, up.Addr(), rs.URL(), prefix, retry)
	}
	c := startCaddy(t, site("filter:", "10ms 10ms"))
	for i := 1; i <= 3; i++ {
		body, h := conversationEvent(fmt.Sprintf("r%d", i), i)
		sendQueued(t, c.URL, body, h)
	}
	waitFor(t, func() bool { return summaryOf(t, c, "kapso").Dead == 3 })
	for q, want := range map[string]string{"wamid.r2.002": "conversation:r2", "conversation:r3": "conversation:r3", "wamid.nobody": ""} {
		found := eventsOf(t, c, "kapso", url.Values{"q": {q}})
		if (want == "" && len(found) != 0) || (want != "" && (len(found) != 1 || found[0].OrderKey != want)) {
			t.Errorf("search %q found %+v, want %q", q, found, want)
		}
	}
	app.recover()
	var r struct{ Replayed int }
	apiCall(t, "POST", c.AdminURL+"/webhook_guard/inbox/replay?handler=kapso&status=dead&q=conversation:r1", &r)
	if r.Replayed != 1 {
		t.Fatalf("replay q=conversation:r1 replayed %d, want 1", r.Replayed)
	}
	waitFor(t, func() bool { return ta.delivered(t) == 1 && ta.lastAnswer("wamid.r1.001") == 200 })
	never(t, 300*time.Millisecond, func() bool { return ta.delivered(t) > 1 }, "a replay by filter delivered an event it does not select")

	app2 := &recovering{failWith: http.StatusInternalServerError}
	ta2 := newTally()
	up.setRespond(ta2.app(app2.decide))
	c2 := startCaddy(t, site("slow:", "1h"))
	body, h := conversationEvent("slow", 1)
	sendQueued(t, c2.URL, body, h)
	waitFor(t, func() bool { return failedOnce(t, c2) }) // its result recorded: no attempt holds it
	app2.recover()
	apiCall(t, "POST", c2.AdminURL+"/webhook_guard/inbox/replay?handler=kapso&status=failed", &r)
	if r.Replayed != 1 {
		t.Fatalf("status=failed replayed %d, want 1", r.Replayed)
	}
	waitFor(t, func() bool { return ta2.delivered(t) == 1 })
}
