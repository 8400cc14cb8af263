package webhookguard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webhookguard/webhookguard/internal/inbox"
)

// inboxSite is a site whose webhook_guard queues Kapso events in a bbolt
// file under dir and delivers them to upstream (host:port).
func inboxSite(dir, upstream, options string) string {
	return fmt.Sprintf(`
	webhook_guard {
		name kapso
		verify kapso %s
		dedupe
		unbatch
		inbox {
			to %s
			path %s
			%s
		}
	}`, kapsoSecret, upstream, filepath.Join(dir, "inbox.db"), options)
}

// conversationEvent is a signed Kapso message event of conversation conv.
func conversationEvent(conv string, n int) ([]byte, map[string]string) {
	body := []byte(fmt.Sprintf(`{"message":{"id":"wamid.%s.%03d","type":"text","text":{"body":"hi"}},`+
		`"conversation":{"id":"%s"},"phone_number_id":"123"}`, conv, n, conv))
	return body, kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", fmt.Sprintf("key-%s-%d", conv, n))
}

// tally records, per message id, what the app answered each time.
type tally struct {
	mu       sync.Mutex
	answered map[string][]int
	order    map[string][]string // per conversation, message ids taken (2xx), in order
	attempts map[string][]string // X-Webhook-Attempt values per message id
}

func newTally() *tally {
	return &tally{answered: map[string][]int{}, order: map[string][]string{}, attempts: map[string][]string{}}
}

// app answers with decide(message id, attempt) and records it.
func (ta *tally) app(decide func(id string, seen int) int) func(n int, r recorded) (int, time.Duration) {
	return func(_ int, r recorded) (int, time.Duration) {
		var v struct {
			Message      struct{ ID string }
			Conversation struct{ ID string }
		}
		_ = json.Unmarshal(r.Body, &v)
		ta.mu.Lock()
		defer ta.mu.Unlock()
		status := decide(v.Message.ID, len(ta.answered[v.Message.ID]))
		ta.answered[v.Message.ID] = append(ta.answered[v.Message.ID], status)
		ta.attempts[v.Message.ID] = append(ta.attempts[v.Message.ID], r.Header.Get("X-Webhook-Attempt"))
		if status < 300 {
			ta.order[v.Conversation.ID] = append(ta.order[v.Conversation.ID], v.Message.ID)
		}
		return status, 0
	}
}

// delivered counts the message ids the app took, and fails on one taken twice.
func (ta *tally) delivered(t *testing.T) int {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	n := 0
	for id, statuses := range ta.answered {
		ok := 0
		for _, s := range statuses {
			if s < 300 {
				ok++
			}
		}
		if ok > 1 {
			t.Fatalf("%s was delivered %d times", id, ok)
		}
		n += ok
	}
	return n
}

// checkOrder fails unless every conversation's messages were taken in
// the order they were sent (their ids count up).
func (ta *tally) checkOrder(t *testing.T) {
	t.Helper()
	ta.mu.Lock()
	defer ta.mu.Unlock()
	for conv, ids := range ta.order {
		for i := 1; i < len(ids); i++ {
			if ids[i] < ids[i-1] {
				t.Fatalf("conversation %s delivered out of order: %v", conv, ids)
			}
		}
	}
}

func sendQueued(t *testing.T, url string, body []byte, headers map[string]string) string {
	t.Helper()
	id, err := queue(url, body, headers)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// queue sends one event and returns its id, or why it was not queued; it
// may be called from any goroutine.
func queue(url string, body []byte, headers map[string]string) (string, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v struct{ Status, ID string }
	_ = json.Unmarshal(b, &v)
	if resp.StatusCode != http.StatusOK || v.Status != "queued" || !strings.HasPrefix(v.ID, "evt_") {
		return "", fmt.Errorf("want 200 queued with an id, got %d %s", resp.StatusCode, b)
	}
	return v.ID, nil
}

// TestInboxRidesOutAnAppThatIsDown guards the inbox's first promise:
// while the app answers 503, and while it refuses connections altogether,
// deliveries are answered 200 queued at once; once the app is back each
// event reaches it exactly once, in order per conversation, and a
// redelivery of a queued event is a duplicate.
func TestInboxRidesOutAnAppThatIsDown(t *testing.T) {
	for _, mode := range []string{"answers 503", "refuses connections"} {
		t.Run(mode, func(t *testing.T) {
			ta := newTally()
			var down sync.Map // while set, the app answers 503
			down.Store("down", true)
			decide := func(string, int) int {
				if _, ok := down.Load("down"); ok {
					return http.StatusServiceUnavailable
				}
				return http.StatusOK
			}
			up := newUnstartedUpstream(t)
			up.setRespond(ta.app(decide))
			addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
			if mode == "answers 503" {
				up.startOn(t, addr)
			}
			c := startCaddy(t, inboxSite(t.TempDir(), addr, "retry 100ms 100ms 100ms 100ms 100ms 100ms 100ms 100ms 100ms 100ms"))
			const convs, per = 3, 5
			for n := range per {
				for k := range convs {
					body, h := conversationEvent("conv"+strconv.Itoa(k), n)
					sendQueued(t, c.URL, body, h)
				}
			}
			body, h := conversationEvent("conv0", 0)
			if code, _, resp := post(t, c.URL, body, h); code != 200 || !strings.Contains(string(resp), "duplicate") {
				t.Fatalf("a queued event sent again: %d %s", code, resp)
			}
			if mode == "refuses connections" {
				never(t, 300*time.Millisecond, func() bool { return up.count() > 0 }, "something reached a closed port")
				up.startOn(t, addr)
			} else {
				waitFor(t, func() bool { return up.count() >= convs }) // it is being tried
			}
			down.Delete("down")
			waitFor(t, func() bool { return ta.delivered(t) == convs*per })
			never(t, 300*time.Millisecond, func() bool { return ta.delivered(t) > convs*per }, "an event was delivered twice")
			ta.checkOrder(t)
			if got := up.requests()[0].Header.Get("X-Webhook-Delivery-Id"); !strings.HasPrefix(got, "evt_") {
				t.Errorf("X-Webhook-Delivery-Id %q", got)
			}
			if sig := up.requests()[0].Header.Get("X-Webhook-Signature"); sig != "" {
				t.Errorf("a stored event kept the sender's signature header %q", sig)
			}
		})
	}
}

// TestInboxSurvivesKill9 guards durability: events acknowledged to the
// sender are on disk, so after kill -9 of Caddy with all of them pending,
// a new Caddy on the same file delivers every one, once, in order per
// conversation, without any new request.
func TestInboxSurvivesKill9(t *testing.T) {
	ta := newTally()
	up := newUnstartedUpstream(t)
	up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	site := inboxSite(t.TempDir(), addr, "retry 100ms")
	c := startCaddy(t, site)
	const convs, per = 4, 10
	for n := range per {
		for k := range convs {
			body, h := conversationEvent("c"+strconv.Itoa(k), n)
			sendQueued(t, c.URL, body, h)
		}
	}
	c.kill()
	up.startOn(t, addr)
	c.restart(site)
	waitFor(t, func() bool { return ta.delivered(t) == convs*per })
	never(t, 300*time.Millisecond, func() bool { return ta.delivered(t) > convs*per }, "an event was delivered twice")
	ta.checkOrder(t)
}

// TestInboxHoldsBackOnlyItsConversation guards per-conversation order: a
// conversation whose first event keeps failing holds back its own later
// events, and other conversations keep flowing meanwhile.
func TestInboxHoldsBackOnlyItsConversation(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(id string, seen int) int {
		if id == "wamid.stuck.000" && seen < 3 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}))
	c := startCaddy(t, inboxSite(t.TempDir(), up.Addr(), "retry 300ms 300ms 300ms"))
	for n := range 3 {
		for _, conv := range []string{"stuck", "free"} {
			body, h := conversationEvent(conv, n)
			sendQueued(t, c.URL, body, h)
		}
	}
	waitFor(t, func() bool { return ta.delivered(t) == 6 })
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if got := strings.Join(ta.order["stuck"], " "); got != "wamid.stuck.000 wamid.stuck.001 wamid.stuck.002" {
		t.Fatalf("stuck conversation: %s", got)
	}
	if n := len(ta.answered["wamid.stuck.001"]); n != 1 {
		t.Fatalf("a later event of the stuck conversation was tried %d times (it must wait)", n)
	}
	// "free" finished while "stuck" was still failing: its last event was
	// answered before stuck's head got its 2xx.
	if got := ta.attempts["wamid.stuck.000"]; strings.Join(got, ",") != "1,2,3,4" {
		t.Fatalf("attempt numbers of the failing head: %v", got)
	}
}

// TestInboxDeadAfterSchedule guards the end of the schedule: an event the
// app always refuses gets exactly 1 + len(retry) attempts, numbered by
// X-Webhook-Attempt, then is dead; the metrics say so.
func TestInboxDeadAfterSchedule(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(string, int) int { return http.StatusInternalServerError }))
	c := startCaddy(t, inboxSite(t.TempDir(), up.Addr(), "retry 50ms 50ms"))
	body, h := conversationEvent("doomed", 0)
	sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool {
		return metricValue(t, c, "caddy_webhook_guard_inbox_events", `handler="kapso",state="dead"`) == 1
	})
	never(t, 300*time.Millisecond, func() bool { return up.count() > 3 }, "a dead event was tried again")
	ta.mu.Lock()
	got := strings.Join(ta.attempts["wamid.doomed.000"], ",")
	ta.mu.Unlock()
	if got != "1,2,3" {
		t.Fatalf("attempts %q, want 1,2,3", got)
	}
	for labels, want := range map[string]float64{
		`handler="kapso",outcome="failed"`:    3,
		`handler="kapso",outcome="delivered"`: 0,
	} {
		if v := metricValue(t, c, "caddy_webhook_guard_inbox_attempts_total", labels); v != want {
			t.Errorf("inbox_attempts_total{%s} = %v, want %v", labels, v, want)
		}
	}
	if v := metricValue(t, c, "caddy_webhook_guard_inbox_events", `handler="kapso",state="pending"`); v != 0 {
		t.Errorf("pending = %v", v)
	}
}

// TestInboxReloadMidBacklog guards reloads: config reloads (with a
// changed option) in the middle of a backlog of thousands reuse the open file and its
// one dispatcher, so nothing is lost and nothing delivered twice; and
// caddy validate on the running config succeeds (it opens no file).
func TestInboxReloadMidBacklog(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	var mu sync.Mutex
	slow := true
	up.setRespond(func(n int, r recorded) (int, time.Duration) {
		status, _ := ta.app(func(string, int) int { return http.StatusOK })(n, r)
		mu.Lock()
		defer mu.Unlock()
		if slow {
			return status, 2 * time.Millisecond
		}
		return status, 0
	})
	dir := t.TempDir()
	c := startCaddy(t, inboxSite(dir, up.Addr(), "concurrency 2"))
	const total, conversations, senders = 3000, 50, 5
	// Each sender owns whole conversations, so each conversation's events
	// arrive in the order of their numbers.
	send := func(from, to int) {
		errs := make(chan error, senders)
		for s := range senders {
			go func() {
				for n := from; n < to; n++ {
					if n%conversations%senders == s {
						body, h := conversationEvent("r"+strconv.Itoa(n%conversations), n/conversations)
						if _, err := queue(c.URL, body, h); err != nil {
							errs <- err
							return
						}
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
	send(0, total/2)
	c.reload(inboxSite(dir, up.Addr(), "concurrency 8"))
	send(total/2, total)
	c.reload(inboxSite(dir, up.Addr(), "concurrency 16"))
	mu.Lock()
	slow = false
	mu.Unlock()
	exe, _ := os.Executable()
	validate := exec.Command(exe, "validate", "--config", filepath.Join(c.dir, "Caddyfile"), "--adapter", "caddyfile")
	validate.Env = append(os.Environ(), asCaddyEnv+"=1", "HOME="+c.dir, "XDG_DATA_HOME="+filepath.Join(c.dir, "data"))
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate on the running config: %v\n%s", err, out)
	}
	waitFor(t, func() bool { return ta.delivered(t) == total })
	never(t, 300*time.Millisecond, func() bool { return ta.delivered(t) > total }, "an event was delivered twice")
	ta.checkOrder(t)
}

// TestInboxConfigErrors guards the inbox's load errors: no destination,
// two inbox handlers sharing a name (which names the queue), and an inbox
// handler without a name, refused with its file and line (a name worked
// out from its schemes would change when verify is edited, stranding its
// pending events).
func TestInboxConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct{ name, site, want string }{
		{"no destination", `webhook_guard {
		name q
		verify kapso s
		inbox {
			path ` + filepath.Join(dir, "a.db") + `
		}
	}`, "inbox: needs to <upstreams...> or a deliver block"},
		{"two queues named alike", `handle /a {
		webhook_guard {
			name kapso
			verify kapso s
			inbox {
				to 127.0.0.1:9
				path ` + filepath.Join(dir, "b.db") + `
			}
		}
	}
	handle /b {
		webhook_guard {
			name kapso
			verify kapso t
			inbox {
				to 127.0.0.1:9
				path ` + filepath.Join(dir, "b.db") + `
			}
		}
	}`, `two webhook_guard handlers with an inbox are named \"kapso\"`},
		{"rate per day", `webhook_guard {
		name q
		verify kapso s
		inbox {
			to 127.0.0.1:9
			rate 10/d
		}
	}`, `rate \"10/d\" is not <n>/<s|m|h>`},
		{"file and redis", `webhook_guard {
		name q
		verify kapso s
		inbox {
			to 127.0.0.1:9
			path ` + filepath.Join(dir, "c.db") + `
			redis redis://127.0.0.1:1
		}
	}`, "path and redis given together"},
		{"lease without redis", `webhook_guard {
		name q
		verify kapso s
		inbox {
			to 127.0.0.1:9
			lease 5s
		}
	}`, "prefix and lease are for redis"},
		{"inbox without a name", `webhook_guard {
		verify kapso s
		inbox {
			to 127.0.0.1:9
		}
	}`, "a webhook_guard handler with an inbox needs a name (name …): it names the queue in the inbox's store, and must not change when verify lines are edited, or pending events stay behind, at /"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out := startCaddyErr(t, tc.site); !strings.Contains(out, tc.want) {
				t.Fatalf("want %q in:\n%s", tc.want, out)
			}
		})
	}
}

// TestInboxStoreFullAnswers503 guards the write path's failure: when the
// store cannot write (here the file may not grow: Caddy's file size limit
// is lowered to the file's size, so bbolt's writes fail with EFBIG as on
// a full disk), the sender gets 503 and nothing is committed, neither the
// event nor its dedupe key; once the store can write again, the sender's
// retry is queued (not a duplicate) and delivered once.
func TestInboxStoreFullAnswers503(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatalf("prlimit (util-linux) is needed to limit the file size: %v", err)
	}
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
	dir := t.TempDir()
	c := startCaddy(t, inboxSite(dir, up.Addr(), ""))
	small, h := conversationEvent("full", 0)
	sendQueued(t, c.URL, small, h)
	waitFor(t, func() bool { return ta.delivered(t) == 1 })

	info, err := os.Stat(filepath.Join(dir, "inbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(c.cmd.Process.Pid)
	limit := func(v string) {
		if out, err := exec.Command(prlimit, "--pid", pid, "--fsize="+v+":").CombinedOutput(); err != nil {
			t.Fatalf("prlimit: %v %s", err, out)
		}
	}
	limit(strconv.FormatInt(info.Size(), 10))
	pad := strings.Repeat("x", 512<<10)
	big := []byte(`{"message":{"id":"wamid.full.001","type":"text","text":{"body":"` + pad + `"}},"conversation":{"id":"full"}}`)
	bh := kapsoHeaders(kapsoSecret, big, "whatsapp.message.received", "key-full-big")
	code, _, resp := post(t, c.URL, big, bh)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(resp), "store_unavailable") {
		t.Fatalf("a write the store could not make: %d %s, want 503 store_unavailable", code, resp)
	}
	never(t, 300*time.Millisecond, func() bool { return up.count() > 1 }, "an event that was not stored reached the app")
	if !strings.Contains(c.Logs(), "file too large") {
		t.Fatalf("the store did not fail on the file size limit:\n%s", c.Logs())
	}

	limit("unlimited")
	sendQueued(t, c.URL, big, bh) // not a duplicate: nothing was committed
	waitFor(t, func() bool { return ta.delivered(t) == 2 })
	never(t, 300*time.Millisecond, func() bool { return ta.delivered(t) > 2 }, "an event was delivered twice")
}

// TestInboxFailedReloadKeepsDelivering guards a reload that fails to
// start after the inbox took the new config's queues: Caddy keeps the old
// config, and its queues must deliver again, not the failed config's
// (whose handlers Caddy cleans up, and which send elsewhere here).
func TestInboxFailedReloadKeepsDelivering(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
	dir := t.TempDir()
	c := startCaddy(t, inboxSite(dir, up.Addr(), ""))
	// The new config sends elsewhere, and its second inbox's file cannot
	// be created (its directory is a file): the app's Start fails after it
	// opened the first file, which sorts first.
	elsewhere := "127.0.0.1:" + strconv.Itoa(freePort(t))
	if err := os.WriteFile(filepath.Join(dir, "zz"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	broken := `
	handle /other {
		webhook_guard {
			name other
			verify kapso ` + kapsoSecret + `
			inbox {
				to ` + elsewhere + `
				path ` + filepath.Join(dir, "zz", "inbox.db") + `
			}
		}
	}
	handle {
		` + inboxSite(dir, elsewhere, "") + `
	}`
	if status, _ := c.tryReload(broken); status == http.StatusOK {
		t.Fatal("the broken config loaded")
	}
	for n := range 5 {
		body, h := conversationEvent("after", n)
		sendQueued(t, c.URL, body, h)
	}
	waitFor(t, func() bool { return ta.delivered(t) == 5 })
}

// TestInboxRateSpacesDeliveries guards the rate option through a real
// Caddy: a backlog that the app could take at once reaches it no faster
// than the rate, each event once. At 4/s, six events need at least five
// gaps of 250 ms between the first delivery and the last; without the
// rate they would all arrive within milliseconds.
func TestInboxRateSpacesDeliveries(t *testing.T) {
	t.Parallel()
	ta := newTally()
	up := newUpstream(t)
	var mu sync.Mutex
	var arrivals []time.Time
	app := ta.app(func(string, int) int { return http.StatusOK })
	up.setRespond(func(n int, r recorded) (int, time.Duration) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		return app(n, r)
	})
	c := startCaddy(t, inboxSite(t.TempDir(), up.Addr(), "rate 4/s\n\t\t\tconcurrency 8\n\t\t\torder_by none"))
	for i := range 6 {
		body, h := conversationEvent(fmt.Sprintf("rate%d", i), i)
		sendQueued(t, c.URL, body, h)
	}
	waitFor(t, func() bool { return ta.delivered(t) == 6 })
	mu.Lock()
	defer mu.Unlock()
	if span := arrivals[len(arrivals)-1].Sub(arrivals[0]); span < 1100*time.Millisecond {
		t.Fatalf("six deliveries at 4/s arrived within %v; want at least 5 × 250 ms (less a little scheduling slack)", span)
	}
}

// TestExampleCaddyfileValidates guards README's first set-up command:
// Caddyfile.example, as shipped, adapts and provisions (caddy validate),
// so an option renamed or a default changed cannot leave it broken.
func TestExampleCaddyfileValidates(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	validate := exec.Command(exe, "validate", "--config", "Caddyfile.example", "--adapter", "caddyfile")
	validate.Env = append(os.Environ(), asCaddyEnv+"=1", "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate Caddyfile.example: %v\n%s", err, out)
	}
}

// TestDeployCaddyfileValidates guards the container recipe's config:
// deploy/Caddyfile, with its secrets as files (as compose mounts them),
// adapts and provisions (caddy validate), so that the recipe CI cannot
// run (no Docker here) is checked all the same.
func TestDeployCaddyfileValidates(t *testing.T) {
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	secrets := filepath.Join(dir, "secrets")
	if err := os.Mkdir(secrets, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"kapso_webhook_secret", "meta_app_secret", "meta_verify_token", "forward_secret"} {
		if err := os.WriteFile(filepath.Join(secrets, name), []byte("s3cret-"+name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := os.ReadFile(filepath.Join("deploy", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(cfg, []byte("{file./run/secrets/")) {
		t.Fatal("deploy/Caddyfile no longer reads its secrets from /run/secrets")
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, bytes.ReplaceAll(cfg, []byte("/run/secrets/"), []byte(secrets+"/")), 0o600); err != nil {
		t.Fatal(err)
	}
	validate := exec.Command(exe, "validate", "--config", path, "--adapter", "caddyfile")
	validate.Env = append(os.Environ(), asCaddyEnv+"=1", "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("caddy validate deploy/Caddyfile: %v\n%s", err, out)
	}
}

// TestInboxWaitsForItsStoreAtStart guards the start-up window: Caddy
// starts its apps in no set order, so a request can reach an inbox
// handler before the webhook_guard app has opened the store; it waits for
// the store (here opened 50 ms later) instead of answering 503.
func TestInboxWaitsForItsStoreAtStart(t *testing.T) {
	t.Parallel()
	store, err := inbox.Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	in := &Inbox{opened: make(chan struct{})}
	go func() {
		time.Sleep(50 * time.Millisecond)
		in.rt.Store(&inboxRuntime{store: store, dispatcher: inbox.NewDispatcher(store, func(error) {})})
		close(in.opened)
	}()
	e := &inbox.Event{ID: "evt_start", Queue: "q", Method: "POST", URI: "/", Body: []byte("{}"), ReceivedAt: time.Now()}
	if err := in.append([]*inbox.Event{e}); err != nil {
		t.Fatalf("a request during start-up was refused: %v", err)
	}
	if got, err := store.Lookup("evt_start"); err != nil || got.State != inbox.Pending {
		t.Fatalf("the event was not stored: %v", err)
	}
}

// TestInboxWarnsOfAFileToCompact guards the start-up warning of a file
// that a drained backlog left with many free pages (bbolt rewrites their
// list with every commit): Caddy started on it says so and how to
// compact it; on the compacted file it does not.
func TestInboxWarnsOfAFileToCompact(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "inbox.db")
	s, err := inbox.Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), 1024)
	const total = 40000
	for i := 0; i < total; i += 5000 {
		events := make([]*inbox.Event, 0, 5000)
		for j := i; j < i+5000; j++ {
			events = append(events, &inbox.Event{ID: fmt.Sprintf("evt_%08d", j), Queue: "kapso", OrderKey: "backlog",
				Method: "POST", URI: "/", Body: body, ReceivedAt: time.Now()})
		}
		if err := s.Append(events); err != nil {
			t.Fatal(err)
		}
	}
	// A backlog gone at once (erased: one transaction, where delivering
	// and expiring it would take one per event) leaves its pages free.
	if n, err := s.Erase(inbox.Erasure{OrderKey: "backlog"}); err != nil || n != total {
		t.Fatalf("erasing the backlog: %d %v", n, err)
	}
	if _, err := s.Expire(time.Now()); err != nil { // a later write: bbolt frees a transaction's pages then
		t.Fatal(err)
	}
	if free := s.FreePages(); free <= compactAbove {
		t.Fatalf("the drained file has %d free pages; the test needs more than %d", free, compactAbove)
	}
	_ = s.Close()
	up := newUpstream(t)
	const warning = "the inbox file has many free pages"
	c := startCaddy(t, inboxSite(dir, up.Addr(), ""))
	waitFor(t, func() bool {
		return strings.Contains(c.Logs(), warning) && strings.Contains(c.Logs(), "caddy webhook inbox compact")
	})
	c.stop()
	if _, _, err := inbox.Compact(path); err != nil {
		t.Fatal(err)
	}
	c = startCaddy(t, inboxSite(dir, up.Addr(), ""))
	waitFor(t, func() bool { return strings.Contains(c.Logs(), "inbox queue open") })
	if strings.Contains(c.Logs(), warning) {
		t.Fatal("the compacted file is still warned about")
	}
}
