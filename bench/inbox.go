package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/webhookguard/webhookguard/internal/inbox"
)

// The inbox suite (-inbox) measures what the durable inbox promises, each
// against plain reverse_proxy to the same app in the same run:
//
//	acceptance  verify + dedupe + inbox, 1 KB events of 256 conversations,
//	            -inbox-connections senders, while the dispatcher delivers
//	            to the app on the same cores; reported both as answers per
//	            second and end to end (accepted events over the window plus
//	            the time the app needed to receive the rest)
//	drain       -backlog events queued while the app refuses connections,
//	            then the app comes back: deliveries per second, concurrency
//	            16, from the first delivery to the last
//	heap        a file holding -heap-backlog pending events (written
//	            directly through the store), Caddy started on it: the most
//	            heap in use while the app is down and while it drains
var (
	inboxSuite  = flag.Bool("inbox", false, "run the inbox suite (acceptance, drain, heap) instead of the cases")
	backlogSize = flag.Int("backlog", 100000, "events in the drain measurement of -inbox")
	heapBacklog = flag.Int("heap-backlog", 1000000, "pending events in the heap measurement of -inbox; 0 skips it")
	inboxConns  = flag.Int("inbox-connections", 16, "concurrent senders in -inbox's acceptance")
	profileTo   = flag.String("inbox-profile", "", "write CPU profiles of Caddy during the first inbox acceptance window and the drain to this path plus .accept and .drain")
	inboxStore  = flag.String("inbox-store", "file", "where -inbox keeps the queue: file (bbolt) or redis (a redis-server started here, appendonly yes, appendfsync always)")
	heapWatch   = flag.Duration("heap-watch", 20*time.Second, "how long -inbox watches the heap in each phase")
)

const (
	inboxName     = "bench_inbox"
	heapName      = "bench_heap"
	conversations = 256
)

// app is the upstream of the inbox suite: it can be taken down (its port
// then refuses connections) and brought back on the same port, and it
// counts what it receives.
type app struct {
	addr  string
	mu    sync.Mutex
	srv   *http.Server
	count atomic.Int64
	first atomic.Int64 // unix nanos of the first request since reset
	last  atomic.Int64
}

func newApp() (*app, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return &app{addr: "127.0.0.1:" + strconv.Itoa(port)}, nil
}

func (a *app) up() error {
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		now := time.Now().UnixNano()
		a.first.CompareAndSwap(0, now)
		a.last.Store(now)
		a.count.Add(1)
		_, _ = w.Write([]byte("ok"))
	})}
	go func() { _ = srv.Serve(ln) }()
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	return nil
}

func (a *app) down() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.srv != nil {
		_ = a.srv.Close()
		a.srv = nil
	}
}

func (a *app) reset() {
	a.count.Store(0)
	a.first.Store(0)
	a.last.Store(0)
}

// conversationVariants are 1 KB Kapso events of n conversations, each
// signed, sent in turn.
func conversationVariants(n int) []variant {
	out := make([]variant, n)
	for i := range out {
		b := []byte(fmt.Sprintf(`{"conversation":{"id":"conv_%04d","phone_number":"+15551234567","status":"active",`+
			`"phone_number_id":"123456789012345"},"phone_number_id":"123456789012345","note":"`, i))
		for len(b) < 1022 {
			b = append(b, 'x')
		}
		b = append(b, `"}`...)
		out[i] = variant{body: b, headers: map[string]string{"X-Webhook-Signature": signHex(kapsoSecret, b),
			"X-Webhook-Event": "whatsapp.message.received"}}
	}
	return out
}

// inboxSite is the inbox case; where is "path <file>" or "redis <url>".
func inboxSite(name, upstream, where string) string {
	return "webhook_guard {\n\t\tname " + name + "\n\t\tverify kapso " + kapsoSecret + "\n\t\tdedupe {\n\t\t\tscope " + name + "\n\t\t}\n" +
		"\t\tinbox {\n\t\t\tto " + upstream + "\n\t\t\t" + where + "\n\t\t\tconcurrency 16\n\t\t\tretention 1h\n\t\t}\n\t}"
}

// startRedisForBench runs a redis-server on a free loopback port that
// persists every write as the inbox should have it (appendonly yes,
// appendfsync always), and returns its URL and how to stop it.
func startRedisForBench(work string) (string, func(), error) {
	port, err := freePort()
	if err != nil {
		return "", nil, err
	}
	dir := filepath.Join(work, "redis")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "yes", "--appendfsync", "always", "--dir", dir)
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("redis-server (apt-get install redis-server): %w", err)
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, errors.New("redis-server did not start")
		}
	}
	return "redis://127.0.0.1:" + strconv.Itoa(port), stop, nil
}

type acceptRound struct {
	base, accept result
	appDown      result  // the inbox's answers while the app refuses connections
	endToEnd     float64 // accepted events over the window plus the drain of the rest
	during       float64 // share of accepted events the app received within the window
}

func runInboxSuite(work, caddyBin string) error {
	a, err := newApp()
	if err != nil {
		return err
	}
	if err := a.up(); err != nil {
		return err
	}
	defer a.down()
	vs := conversationVariants(conversations)
	base := &benchCase{name: "baseline", site: "reverse_proxy " + a.addr, variants: vs, unique: true}
	where := "path " + filepath.Join(work, "inbox.db")
	if *inboxStore == "redis" {
		url, stop, err := startRedisForBench(work)
		if err != nil {
			return err
		}
		defer stop()
		where = "redis " + url
		*heapBacklog = 0 // the events live in Redis, not in Caddy's heap or a file
	}
	fmt.Printf("== inbox store: %s\n", *inboxStore)
	acc := &benchCase{name: "inbox", site: inboxSite(inboxName, a.addr, where), variants: vs, unique: true}
	for _, c := range []*benchCase{base, acc} {
		if c.port, err = freePort(); err != nil {
			return err
		}
	}
	proc, err := startCaddy(caddyBin, work, []*benchCase{base, acc})
	if err != nil {
		return err
	}
	defer proc.stop()

	fmt.Println("== warming up")
	if _, err := drive(work, acc, proc.pid, *inboxConns, time.Second, true); err != nil {
		return err
	}
	if err := waitDrained(proc.admin, inboxName, 5*time.Minute); err != nil {
		return err
	}
	var done []acceptRound
	for round := 1; round <= *rounds; round++ {
		fmt.Printf("== acceptance round %d/%d\n", round, *rounds)
		r, err := measureAcceptance(work, proc, a, base, acc, round%2 == 0)
		if err != nil {
			return err
		}
		done = append(done, r)
	}
	baseRPS := make([]float64, len(done))
	for i, r := range done {
		baseRPS[i] = r.base.RPS
	}
	ratio := func(f func(acceptRound) float64) (float64, float64, float64) {
		vals := make([]float64, len(done))
		for i, r := range done {
			vals[i] = f(r)
		}
		return median(vals), quantile(vals, 0), quantile(vals, 1)
	}
	am, alo, ahi := ratio(func(r acceptRound) float64 { return r.accept.RPS / r.base.RPS })
	em, elo, ehi := ratio(func(r acceptRound) float64 { return r.endToEnd / r.base.RPS })
	dm, _, _ := ratio(func(r acceptRound) float64 { return r.during })
	pm, _, _ := ratio(func(r acceptRound) float64 { return r.accept.P99Micros })
	xm, xlo, xhi := ratio(func(r acceptRound) float64 { return r.appDown.RPS / r.base.RPS })
	bp, _, _ := ratio(func(r acceptRound) float64 { return r.base.P99Micros })
	fmt.Printf("\nacceptance, %d senders, %d rounds of %s: baseline %.0f req/s (p99 %.0fµs); inbox answers %.2fx (range %.2f-%.2fx, p99 %.0fµs), "+
		"end to end %.2fx (range %.2f-%.2fx); the app received %.0f%% within the window\n",
		*inboxConns, len(done), wrkSeconds(*duration), median(baseRPS), bp, am, alo, ahi, pm, em, elo, ehi, 100*dm)
	fmt.Printf("acceptance while the app refuses connections (nothing delivered meanwhile): %.2fx (range %.2f-%.2fx)\n", xm, xlo, xhi)

	if *backlogSize > 0 {
		if err := measureDrain(work, proc, a, base, acc); err != nil {
			return err
		}
	}
	proc.stop()
	if *heapBacklog > 0 {
		return measureHeap(work, caddyBin, a)
	}
	return nil
}

// measureAcceptance drives the baseline and the inbox for one window each
// (inboxFirst picks which goes first), and waits after the inbox window
// until the app has every event, so no delivery overlaps the next window.
func measureAcceptance(work string, proc *caddyProc, a *app, base, acc *benchCase, inboxFirst bool) (acceptRound, error) {
	var out acceptRound
	runBase := func() error {
		r, err := drive(work, base, proc.pid, *inboxConns, *duration, true)
		out.base = r
		return err
	}
	runInbox := func() error {
		a.reset()
		if *profileTo != "" && profileOnce.CompareAndSwap(false, true) {
			go saveProfile(proc.admin, *profileTo+".accept", *duration)
		}
		r, err := drive(work, acc, proc.pid, *inboxConns, *duration, false)
		if err != nil {
			return err
		}
		windowEnd := time.Now()
		receivedInWindow := a.count.Load()
		if err := waitDrained(proc.admin, inboxName, 5*time.Minute); err != nil {
			return err
		}
		accepted := float64(r.Requests - r.Errors)
		tail := time.Since(windowEnd)
		// The last delivery happened before the poll saw pending at 0;
		// take its time from the app.
		if last := time.Unix(0, a.last.Load()); last.After(windowEnd) {
			tail = last.Sub(windowEnd)
		} else {
			tail = 0
		}
		out.accept = r
		out.endToEnd = accepted / (r.DurationS + tail.Seconds())
		out.during = float64(receivedInWindow) / accepted
		return nil
	}
	runDown := func() error {
		a.down()
		r, err := drive(work, acc, proc.pid, *inboxConns, *duration, false)
		if err != nil {
			return err
		}
		out.appDown = r
		if err := a.up(); err != nil {
			return err
		}
		return waitDrained(proc.admin, inboxName, 5*time.Minute)
	}
	steps := []func() error{runBase, runInbox, runDown}
	if inboxFirst {
		steps = []func() error{runDown, runInbox, runBase}
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return out, err
		}
	}
	return out, nil
}

// measureDrain queues -backlog events while the app refuses connections,
// brings it back and times the deliveries. The baseline is measured just
// before the backlog is queued and just after it drained (the mean of the
// two), with as many connections as the inbox's concurrency.
func measureDrain(work string, proc *caddyProc, a *app, base, acc *benchCase) error {
	before, err := drive(work, base, proc.pid, 16, *duration, true)
	if err != nil {
		return err
	}
	fmt.Printf("== drain: queueing %d events while the app is down\n", *backlogSize)
	a.down()
	start := time.Now()
	if err := sendEvents(acc, *backlogSize, *inboxConns); err != nil {
		return err
	}
	took := time.Since(start)
	pending, err := pendingEvents(proc.admin, inboxName)
	if err != nil {
		return err
	}
	fmt.Printf("   accepted %d events in %s (%.0f/s, Go client) with the app down; %d pending\n",
		*backlogSize, took.Round(time.Millisecond), float64(*backlogSize)/took.Seconds(), pending)
	a.reset()
	if err := a.up(); err != nil {
		return err
	}
	stopHeap := watchHeap(proc.admin)
	if *profileTo != "" {
		go func() {
			for deadline := time.Now().Add(30 * time.Second); a.count.Load() == 0 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			saveProfile(proc.admin, *profileTo+".drain", 4*time.Second)
		}()
	}
	if err := waitDrained(proc.admin, inboxName, 30*time.Minute); err != nil {
		return err
	}
	heap := stopHeap()
	got := a.count.Load()
	took = time.Duration(a.last.Load() - a.first.Load())
	rate := float64(got-1) / took.Seconds()
	after, err := drive(work, base, proc.pid, 16, *duration, true)
	if err != nil {
		return err
	}
	baseRPS := (before.RPS + after.RPS) / 2
	fmt.Printf("\ndrain of %d events, concurrency 16: %.0f deliveries/s over %s (%d received), %.2fx baseline's %.0f req/s (before %.0f, after %.0f); heap in use at most %.1f MB\n",
		pending, rate, took.Round(time.Millisecond), got, rate/baseRPS, baseRPS, before.RPS, after.RPS, float64(heap)/1e6)
	return nil
}

// sendEvents sends n events of c's variants over conns connections and
// fails on any answer but 200 (wrk cannot stop after a count).
func sendEvents(c *benchCase, n, conns int) error {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	url := "http://127.0.0.1:" + strconv.Itoa(c.port) + "/"
	var next atomic.Int64
	errs := make(chan error, conns)
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	for range conns {
		go func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					errs <- nil
					return
				}
				v := c.variants[i%int64(len(c.variants))]
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(v.body))
				req.Header.Set("Content-Type", "application/json")
				for k, val := range v.headers {
					req.Header.Set(k, val)
				}
				req.Header.Set("X-Idempotency-Key", "fill-"+runID+"-"+strconv.FormatInt(i, 10))
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("event %d: status %d", i, resp.StatusCode)
					return
				}
			}
		}()
	}
	var first error
	for range conns {
		if err := <-errs; err != nil && first == nil {
			first = err
			next.Store(int64(n)) // stop the others
		}
	}
	return first
}

// measureHeap writes -heap-backlog pending events into a file through the
// store, starts Caddy on it and watches the heap, first with the app
// down, then while it drains.
func measureHeap(work, caddyBin string, a *app) error {
	path := filepath.Join(work, "heap.db")
	fmt.Printf("== heap: writing %d pending events to %s\n", *heapBacklog, path)
	start := time.Now()
	if err := fillStore(path, *heapBacklog); err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	fmt.Printf("   written in %s, file %.0f MB\n", time.Since(start).Round(time.Second), float64(info.Size())/1e6)
	a.down()
	a.reset()
	c := &benchCase{name: "heap", site: inboxSite(heapName, a.addr, "path "+path)}
	if c.port, err = freePort(); err != nil {
		return err
	}
	startAt := time.Now()
	proc, err := startCaddy(caddyBin, work, []*benchCase{c})
	if err != nil {
		return err
	}
	defer proc.stop()
	fmt.Printf("   caddy serving %s after start\n", time.Since(startAt).Round(time.Millisecond))
	stop := watchHeap(proc.admin)
	time.Sleep(*heapWatch)
	down := stop()
	if err := a.up(); err != nil {
		return err
	}
	stop = watchHeap(proc.admin)
	time.Sleep(*heapWatch)
	draining := stop()
	pending, err := pendingEvents(proc.admin, heapName)
	if err != nil {
		return err
	}
	fmt.Printf("\nheap with %d events pending: at most %.1f MB in use with the app down, %.1f MB while draining "+
		"(%d delivered in %s, %d still pending)\n", *heapBacklog, float64(down)/1e6, float64(draining)/1e6,
		a.count.Load(), *heapWatch, pending)
	return nil
}

// fillStore appends n pending events of the heap queue, 1 KB each, over
// the suite's conversations, in commits of 5,000.
func fillStore(path string, n int) error {
	s, err := inbox.Open(path, time.Second)
	if err != nil {
		return err
	}
	defer s.Close()
	vs := conversationVariants(conversations)
	const group = 5000
	for i := 0; i < n; i += group {
		events := make([]*inbox.Event, 0, group)
		for j := i; j < min(n, i+group); j++ {
			v := vs[j%len(vs)]
			now := time.Now()
			events = append(events, &inbox.Event{ID: inbox.NewID(now), Queue: heapName, OrderKey: fmt.Sprintf("conv_%04d", j%len(vs)),
				Method: "POST", URI: "/", Host: "127.0.0.1", Header: http.Header{"Content-Type": {"application/json"},
					"X-Webhook-Event": {"whatsapp.message.received"}}, Body: v.body, ReceivedAt: now})
		}
		if err := s.Append(events); err != nil {
			return err
		}
	}
	return nil
}

// metric reads one sample from Caddy's admin /metrics: the line that
// starts with name (labels included, as Prometheus writes them).
func metric(admin, name string) (float64, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s/metrics", name, admin)
}

func pendingEvents(admin, handler string) (int, error) {
	v, err := metric(admin, `caddy_webhook_guard_inbox_events{handler="`+handler+`",state="pending"}`)
	return int(v), err
}

// waitDrained polls until handler has nothing pending, for at most limit.
func waitDrained(admin, handler string, limit time.Duration) error {
	for deadline := time.Now().Add(limit); ; time.Sleep(50 * time.Millisecond) {
		n, err := pendingEvents(admin, handler)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d events of %s still pending after %s", n, handler, limit)
		}
	}
}

// watchHeap samples Caddy's heap in use every 250 ms until the returned
// function is called, which returns the most seen.
func watchHeap(admin string) func() int64 {
	var most atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			if v, err := metric(admin, "go_memstats_heap_inuse_bytes"); err == nil && int64(v) > most.Load() {
				most.Store(int64(v))
			}
			select {
			case <-done:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	return func() int64 {
		close(done)
		<-finished
		return most.Load()
	}
}

// saveProfile fetches a CPU profile of Caddy over d from its admin
// listener.
func saveProfile(admin, path string, d time.Duration) {
	client := http.Client{Timeout: d + 10*time.Second}
	resp, err := client.Get("http://" + admin + "/debug/pprof/profile?seconds=" + strconv.Itoa(max(1, int(d.Seconds())-1)))
	if err != nil {
		fmt.Println("   profile:", err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		fmt.Println("   profile:", err)
	}
}

var profileOnce atomic.Bool
