package webhookguard

import (
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// mixedSite has the history page, a handler without an inbox (plain) and
// one with an inbox (kapso), both taking only message events, both in
// front of upstream; the inbox retries on schedule (retry 10ms 10ms
// when "").
func mixedSite(dir, upstream, schedule string) string {
	if schedule == "" {
		schedule = "retry 10ms 10ms"
	}
	return fmt.Sprintf(`
	handle /hist/* {
		webhook_guard_history
	}
	handle /plain {
		webhook_guard {
			name plain
			verify kapso %[1]s
			dedupe
			events whatsapp.message.*
		}
		reverse_proxy %[2]s
	}
	handle {
		webhook_guard {
			name kapso
			verify kapso %[1]s
			dedupe
			events whatsapp.message.*
			inbox {
				to %[2]s
				path %[3]s
				%[4]s
			}
		}
	}`, kapsoSecret, upstream, filepath.Join(dir, "inbox.db"), schedule)
}

// summaryOf is one handler's summary from the admin API.
func summaryOf(t *testing.T, c *caddyInstance, handler string) handlerSummary {
	t.Helper()
	var s struct{ Handlers []handlerSummary }
	apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox", &s)
	for _, h := range s.Handlers {
		if h.Handler == handler {
			return h
		}
	}
	t.Fatalf("no summary for %s in %+v", handler, s.Handlers)
	return handlerSummary{}
}

// eventsOf lists a handler's events under the query q (handler added).
func eventsOf(t *testing.T, c *caddyInstance, handler string, q url.Values) []eventView {
	t.Helper()
	if q == nil {
		q = url.Values{}
	}
	q.Set("handler", handler)
	var l struct{ Events []eventView }
	if status, body := apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox/events?"+q.Encode(), &l); status != 200 {
		t.Fatalf("events of %s (%s): %d %s", handler, q.Encode(), status, body)
	}
	return l.Events
}

// sendMix sends url one event of each outcome: two the app takes, one it
// fails (with an inbox: it goes dead), a duplicate, an event the route
// does not take, and two unsigned requests.
func sendMix(t *testing.T, url, tag string) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		body, h := conversationEvent(tag+"ok", i)
		post(t, url, body, h)
	}
	bad, hb := conversationEvent(tag+"bad", 1)
	post(t, url, bad, hb)
	again, ha := conversationEvent(tag+"ok", 1)
	post(t, url, again, ha) // the same key: a duplicate
	other := []byte(`{"conversation":{"id":"` + tag + `"}}`)
	post(t, url, other, kapsoHeaders(kapsoSecret, other, "whatsapp.conversation.created", tag+"-conv"))
	for range 2 {
		post(t, url, other, map[string]string{"X-Webhook-Signature": "00", "X-Webhook-Event": "whatsapp.message.received"})
	}
}

// badFailingUpstream is an app that fails every body with "bad" in it
// (500) and takes the rest.
func badFailingUpstream(t *testing.T) *upstream {
	up := newUpstream(t)
	up.setRespond(func(_ int, r recorded) (int, time.Duration) {
		if strings.Contains(string(r.Body), "bad") {
			return http.StatusInternalServerError, 0
		}
		return http.StatusOK, 0
	})
	return up
}

// TestHistoryCardsAddUp guards the summary's arithmetic, in the API and
// on the page in Chromium: for a mix of every outcome, with and without
// an inbox, Total is the sum of the outcome cards and each outcome that
// happened has its card; rows of a duplicate and a refusal say the app
// was not called; a delivered event of the in-memory history has its
// delivered_at. At 1280 px no cell of the table is clipped.
func TestHistoryCardsAddUp(t *testing.T) {
	browser := chromiumPath(t)
	up := badFailingUpstream(t)
	c := startCaddy(t, mixedSite(t.TempDir(), up.Addr(), ""))
	sendMix(t, c.URL+"/plain", "p")
	sendMix(t, c.URL, "k")
	waitFor(t, func() bool { s := summaryOf(t, c, "kapso"); return s.Dead == 1 && s.Delivered == 2 })

	want := map[string]map[string]int{
		"plain": {"total": 7, "delivered": 2, "failed": 1, "duplicate": 1, "ignored": 1, "refused": 2},
		"kapso": {"total": 7, "delivered": 2, "dead": 1, "pending": 0, "duplicate": 1, "ignored": 1, "refused": 2},
	}
	for handler, cards := range want {
		s := summaryOf(t, c, handler)
		got := map[string]int{"total": s.Total, "delivered": s.Delivered, "failed": s.Failed, "dead": s.Dead,
			"pending": s.Pending, "duplicate": s.Duplicate, "ignored": s.Ignored, "refused": s.Refused}
		for name, n := range cards {
			if got[name] != n {
				t.Errorf("%s: %s = %d, want %d (%+v)", handler, name, got[name], n, s)
			}
		}
	}
	for status, n := range map[string]int{"invalid_signature": 2, "duplicate": 1, "ignored": 1} {
		rows := eventsOf(t, c, "kapso", url.Values{"status": {status}})
		if len(rows) != n || rows[0].AppCalled || rows[0].Attempts != 0 {
			t.Errorf("kapso (inbox) rows of %s: %+v; want %d, app not called", status, rows, n)
		}
	}
	for _, e := range eventsOf(t, c, "plain", nil) {
		called := e.Status == "delivered" || e.Status == "failed"
		if e.AppCalled != called || (!called && (e.Attempts != 0 || e.LastStatus != 0)) {
			t.Errorf("plain row %s: app_called %v, attempts %d, answer %d", e.Status, e.AppCalled, e.Attempts, e.LastStatus)
		}
		if (e.Status == "delivered") != (e.DeliveredAt != nil) {
			t.Errorf("plain row %s: delivered_at %v", e.Status, e.DeliveredAt)
		}
	}

	ctx := newBrowserSized(t, browser, 1280, 1000)
	if err := chromedp.Do(ctx, chromedp.Navigate(c.URL+"/hist/"), chromedp.WaitVisible(chromedp.CSS(`[data-handler="plain"] [data-card="total"]`))); err != nil {
		t.Fatal(err)
	}
	// Every outcome card of a handler, and its total, as the page shows them.
	cards, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]map[string]string](`(() => {
		const out = {};
		for (const h of document.querySelectorAll("[data-handler]")) {
			const c = out[h.dataset.handler] = {};
			for (const card of h.querySelectorAll("[data-card]")) c[card.dataset.card] = card.querySelector(".value").textContent;
		}
		return out;
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	for handler, wantCards := range want {
		sum := 0
		for name, v := range cards[handler] {
			if name == "total" || name == "oldest" || name == "rate" {
				continue
			}
			n, _ := strconv.Atoi(v)
			sum += n
		}
		if total, _ := strconv.Atoi(cards[handler]["total"]); total != wantCards["total"] || sum != total {
			t.Errorf("page, %s: total %s, the outcome cards add up to %d: %v", handler, cards[handler]["total"], sum, cards[handler])
		}
		for name, n := range wantCards {
			if n > 0 && cards[handler][name] != strconv.Itoa(n) {
				t.Errorf("page, %s: card %s = %q, want %d", handler, name, cards[handler][name], n)
			}
		}
	}
	// The plain handler's table: a duplicate's row says not called.
	if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.CSS("#f-handler"), "plain"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("f-handler").dispatchEvent(new Event("change"))`),
		chromedp.WaitVisible(chromedp.CSS(`#events td.status.duplicate`))); err != nil {
		t.Fatal(err)
	}
	row, err := chromedp.Run(ctx, chromedp.Evaluate[string](`[...document.querySelector("#events td.status.duplicate").parentElement.children].map((td) => td.textContent).join("|")`))
	if err != nil || !strings.HasSuffix(strings.SplitN(row, "|req_", 2)[0], "|duplicate|–|not called") {
		t.Errorf("duplicate row: %q %v; want attempts – and not called", row, err)
	}
	clipped, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#events td, #events th, thead th")]
		.filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.textContent)`))
	if err != nil || len(clipped) > 0 {
		t.Errorf("cells clipped at 1280 px: %q %v", clipped, err)
	}
}

// TestHealthLineFollowsTheApp guards the health line in the API, the
// page and caddy webhook inbox: healthy while the app takes events,
// failing with the app's answer once it answers 503, unreachable (since
// when, and how many pending) once nothing listens, and healthy again
// once it is back and the pending event went through.
func TestHealthLineFollowsTheApp(t *testing.T) {
	browser := chromiumPath(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	first := newUnstartedUpstream(t)
	var mu sync.Mutex
	answer := http.StatusOK
	first.setRespond(func(int, recorded) (int, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		return answer, 0
	})
	first.startOn(t, addr)
	c := startCaddy(t, mixedSite(t.TempDir(), addr, ""))
	address := strings.TrimPrefix(c.AdminURL, "http://")
	health := func() health {
		s := summaryOf(t, c, "kapso")
		if s.Health == nil {
			t.Fatalf("no health in %+v", s)
		}
		return *s.Health
	}
	ctx := newBrowser(t, browser)
	if err := chromedp.Do(ctx, chromedp.Navigate(c.URL+"/hist/")); err != nil {
		t.Fatal(err)
	}
	pageSays := func(state, text string) {
		t.Helper()
		sel := `[data-handler="kapso"] .health[data-state="` + state + `"] .text`
		if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
			t.Fatalf("page: no %s health line: %v", state, err)
		}
		got, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if !strings.Contains(got, text) {
			t.Errorf("page's %s line %q lacks %q", state, got, text)
		}
	}

	body, h := conversationEvent("health", 1)
	sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool { return first.count() == 1 })
	if hl := health(); hl.State != "healthy" || hl.Message != "No recent delivery errors" {
		t.Errorf("at first: %+v", hl)
	}
	pageSays("healthy", "No recent delivery errors")

	mu.Lock()
	answer = http.StatusServiceUnavailable
	mu.Unlock()
	body, h = conversationEvent("health", 2)
	sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool { return health().State == "failing" })
	if hl := health(); hl.LastStatus != 503 || hl.FailedLastHour < 1 ||
		!regexpMatch(`^Failing: \d+ failed attempts? in the last hour, last at \d\d:\d\d \S+, the app answered 503`, hl.Message) {
		t.Errorf("failing: %+v", hl)
	}
	pageSays("failing", "the app answered 503")
	waitFor(t, func() bool { return summaryOf(t, c, "kapso").Dead == 1 }) // out of attempts before the app goes

	first.srv.Close()
	body, h = conversationEvent("health", 3)
	sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool { return health().State == "unreachable" })
	if hl := health(); hl.Since == nil || hl.Pending != 1 || !regexpMatch(`^App unreachable since \d\d:\d\d \S+ \(.+\), 1 pending$`, hl.Message) {
		t.Errorf("unreachable: %+v", hl)
	}
	pageSays("unreachable", "App unreachable since")
	post(t, c.URL+"/plain", body, h) // the handler without an inbox, forwarding to the same dead app
	if s := summaryOf(t, c, "plain"); s.Health == nil || s.Health.State != "unreachable" || !strings.Contains(s.Health.Message, "connection refused") {
		t.Errorf("plain, its app down: %+v", s.Health)
	}
	out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "--address", address, "--handler", "kapso")
	if !ok || !regexpMatch(`(?m)^kapso: App unreachable since \d\d:\d\d [A-Z+\-0-9]+ \(`, out) ||
		!regexpMatch(`(?m)^evt_\S+\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z+\-0-9]+\s`, out) {
		t.Errorf("caddy webhook inbox: no health line, or times without their zone:\n%s", out)
	}

	second := newUnstartedUpstream(t)
	second.startOn(t, addr)
	waitFor(t, func() bool { return second.count() == 1 && summaryOf(t, c, "kapso").Pending == 0 })
	if hl := health(); hl.State != "healthy" || !strings.HasPrefix(hl.Message, "No delivery errors since ") {
		t.Errorf("after the app came back: %+v", hl)
	}
	pageSays("healthy", "No delivery errors since")
}

// TestTimelineCountsEachMinute guards the per-minute counters, from the
// endpoint to the page's SVG: what a handler did shows in the bars of
// the minute it happened, each kind in its own, and the chart has one
// bar per minute of the hour.
func TestTimelineCountsEachMinute(t *testing.T) {
	browser := chromiumPath(t)
	up := badFailingUpstream(t)
	c := startCaddy(t, mixedSite(t.TempDir(), up.Addr(), ""))
	sendMix(t, c.URL+"/plain", "t")
	want := map[string]int{"delivered": 2, "failed": 1, "duplicate": 1, "ignored": 1, "refused": 2}

	var tl struct {
		Points []timelinePoint
	}
	apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox/timeline?handler=plain&minutes=5", &tl)
	if len(tl.Points) != 5 {
		t.Fatalf("minutes=5 gave %d points", len(tl.Points))
	}
	got := map[string]int{}
	for _, p := range tl.Points {
		for k, n := range p.Counts {
			got[k] += n
		}
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("timeline %s: %d, want %d (%v)", k, got[k], n, got)
		}
	}
	if status, _ := apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox/timeline?handler=plain&minutes=0", nil); status != 400 {
		t.Errorf("minutes=0 answered %d, want 400", status)
	}

	ctx := newBrowser(t, browser)
	bars := `[data-chart="plain"] svg g[data-minute]`
	if err := chromedp.Do(ctx, chromedp.Navigate(c.URL+"/hist/"), chromedp.WaitVisible(chromedp.CSS(bars))); err != nil {
		t.Fatal(err)
	}
	drawn, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int](`(() => {
		const out = { bars: document.querySelectorAll(`+strconv.Quote(bars)+`).length };
		for (const r of document.querySelectorAll(`+strconv.Quote(bars+" rect")+`)) out[r.dataset.kind] = (out[r.dataset.kind] || 0) + Number(r.dataset.count);
		const tallest = Math.max(...[...document.querySelectorAll(`+strconv.Quote(bars+` rect[data-kind="delivered"]`)+`)].map((r) => Number(r.getAttribute("height"))));
		out.tallest = Math.round(tallest);
		return out;
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if drawn["bars"] != 60 {
		t.Errorf("chart has %d bars, want 60 (one a minute)", drawn["bars"])
	}
	for k, n := range want {
		if k != "failed" && drawn[k] != n {
			t.Errorf("chart %s bars count %d, want %d", k, drawn[k], n)
		}
	}
	if drawn["failed"] != 1 || drawn["tallest"] <= 0 {
		t.Errorf("chart: failed %d, delivered bar height %d", drawn["failed"], drawn["tallest"])
	}
}

// TestSearchFindsAnEvent guards q= on the events list, with an inbox and
// without: an event is found by its id, its idempotency key, its
// conversation (order key) and a message id inside its body, and a
// value nobody sent finds nothing.
func TestSearchFindsAnEvent(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, mixedSite(t.TempDir(), up.Addr(), ""))
	var ids []string
	for i := 1; i <= 3; i++ {
		body, h := conversationEvent(fmt.Sprintf("find%d", i), i)
		ids = append(ids, sendQueued(t, c.URL, body, h))
	}
	body, h := conversationEvent("memory", 1)
	post(t, c.URL+"/plain", body, h)
	waitFor(t, func() bool { return up.count() == 4 })

	for _, tc := range []struct {
		handler, q, want string
	}{
		{"kapso", ids[1], ids[1]},
		{"kapso", "key-find3-3", ids[2]},
		{"kapso", "conversation:find1", ids[0]},
		{"kapso", "wamid.find2.002", ids[1]},
		{"kapso", "wamid.nobody", ""},
		{"plain", "key-memory-1", "req_"},
		{"plain", "key-nobody", ""},
	} {
		t.Run(tc.handler+" "+tc.q, func(t *testing.T) {
			found := eventsOf(t, c, tc.handler, url.Values{"q": {tc.q}})
			switch {
			case tc.want == "" && len(found) != 0:
				t.Fatalf("found %d events", len(found))
			case tc.want != "" && (len(found) != 1 || !strings.HasPrefix(found[0].ID, tc.want)):
				t.Fatalf("found %+v, want only %s", found, tc.want)
			}
		})
	}
}

// TestReplayByFilter guards replay by filter: of the dead events, only
// those of the filter's event, conversation (q) and time window are
// delivered again, its dry run counts them first, the CLI's flags say
// the same, and status=failed makes a failed event that waits an hour
// for its retry due now.
func TestReplayByFilter(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	app := &recovering{failWith: http.StatusInternalServerError}
	up.setRespond(ta.app(app.decide))
	c := startCaddy(t, mixedSite(t.TempDir(), up.Addr(), ""))
	address := strings.TrimPrefix(c.AdminURL, "http://")
	for _, conv := range []string{"a", "a", "b", "c"} {
		n := ta.seen() + 1
		body, _ := conversationEvent(conv, n)
		event := "whatsapp.message.received"
		if conv == "c" {
			event = "whatsapp.message.sent"
		}
		sendQueued(t, c.URL, body, kapsoHeaders(kapsoSecret, body, event, fmt.Sprintf("replay-%s-%d", conv, n)))
		waitFor(t, func() bool { return ta.seen() == n })
	}
	waitFor(t, func() bool { return summaryOf(t, c, "kapso").Dead == 4 })
	app.recover()
	replay := func(q url.Values) (int, string) {
		q.Set("handler", "kapso")
		var r struct{ Replayed, Matched int }
		status, body := apiCall(t, "POST", c.AdminURL+"/webhook_guard/inbox/replay?"+q.Encode(), &r)
		if status != 200 {
			t.Fatalf("replay %s: %d %s", q.Encode(), status, body)
		}
		return r.Replayed + r.Matched, body
	}
	tookOnly := func(ids ...string) {
		t.Helper()
		waitFor(t, func() bool { return ta.delivered(t) == len(ids) })
		for _, id := range ids {
			if got := ta.lastAnswer(id); got != 200 {
				t.Fatalf("%s not delivered by the replay: last answer %d", id, got)
			}
		}
	}

	if n, _ := replay(url.Values{"since": {"1h"}, "until": {"2000-01-01T00:00:00Z"}}); n != 0 {
		t.Fatalf("an empty window replayed %d", n)
	}
	for _, dry := range []string{"1", "true"} {
		if n, body := replay(url.Values{"event": {"whatsapp.message.sent"}, "dry_run": {dry}}); n != 1 || !strings.Contains(body, `"dry_run"`) {
			t.Fatalf("dry_run=%s of event=whatsapp.message.sent: %s, want 1 matched", dry, body)
		}
	}
	if status, body := apiCall(t, "POST", c.AdminURL+"/webhook_guard/inbox/replay?handler=kapso&dry_run=yes-please", nil); status != 400 {
		t.Fatalf("dry_run=yes-please answered %d %s; want 400, not a replay", status, body)
	}
	if ta.delivered(t) != 0 {
		t.Fatal("a dry run delivered something")
	}
	if n, _ := replay(url.Values{"event": {"whatsapp.message.sent"}}); n != 1 {
		t.Fatalf("event=whatsapp.message.sent replayed %d, want 1", n)
	}
	tookOnly("wamid.c.004")
	out, ok := runCaddyCmd(t, nil, "webhook", "replay", "--dead", "--handler", "kapso", "--since", "1h", "--q", "conversation:b", "--address", address)
	if !ok || !strings.Contains(out, "1 dead events of kapso queued again") {
		t.Fatalf("caddy webhook replay --dead --q:\n%s", out)
	}
	tookOnly("wamid.c.004", "wamid.b.003")
	if status, body := apiCall(t, "POST", c.AdminURL+"/webhook_guard/inbox/replay?handler=kapso&statuss=dead", nil); status != 400 ||
		!strings.Contains(body, "statuss") {
		t.Errorf("a misspelt filter answered %d %s; want 400 naming it (not a replay of everything)", status, body)
	}
	if s := summaryOf(t, c, "kapso"); s.Dead != 2 {
		t.Errorf("dead after the two replays: %d, want 2 (conversation a)", s.Dead)
	}

	// status=failed: an event that failed once and waits an hour is retried now.
	ta2 := newTally()
	up2 := newUpstream(t)
	app2 := &recovering{failWith: http.StatusInternalServerError}
	up2.setRespond(ta2.app(app2.decide))
	c2 := startCaddy(t, mixedSite(t.TempDir(), up2.Addr(), "retry 1h"))
	body, h := conversationEvent("slow", 1)
	sendQueued(t, c2.URL, body, h)
	waitFor(t, func() bool { return failedOnce(t, c2) }) // its result recorded: no attempt holds it
	app2.recover()
	var r struct{ Replayed int }
	apiCall(t, "POST", c2.AdminURL+"/webhook_guard/inbox/replay?handler=kapso&status=failed", &r)
	if r.Replayed != 1 {
		t.Fatalf("status=failed replayed %d, want 1", r.Replayed)
	}
	waitFor(t, func() bool { return ta2.delivered(t) == 1 })
	never(t, 300*time.Millisecond, func() bool { return ta2.seen() != 1 || ta2.answers("wamid.slow.001") != 2 },
		"the retried event reached the app again")
}

// failedOnce reports whether kapso's only event is pending after one
// failed attempt, its result recorded.
func failedOnce(t *testing.T, c *caddyInstance) bool {
	events := eventsOf(t, c, "kapso", url.Values{"status": {"failed"}})
	return len(events) == 1 && events[0].Attempts == 1
}

// seen counts the message ids the app was sent.
func (ta *tally) seen() int {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	return len(ta.answered)
}

// answers is how many times the app was sent id.
func (ta *tally) answers(id string) int {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	return len(ta.answered[id])
}

// lastAnswer is what the app last answered for id (0: never sent).
func (ta *tally) lastAnswer(id string) int {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if a := ta.answered[id]; len(a) > 0 {
		return a[len(a)-1]
	}
	return 0
}
