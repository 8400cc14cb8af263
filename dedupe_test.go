package webhookguard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"
)

func keysOf(names ...string) []storeKey {
	out := make([]storeKey, len(names))
	for i, n := range names {
		out[i] = newStoreKey(n)
	}
	return out
}

// TestMemoryStoreClaims guards the claim protocol: one owner at a time,
// waiters woken on release, any committed key making a delivery a
// duplicate, and a release never dropping another delivery's claim.
func TestMemoryStoreClaims(t *testing.T) {
	t.Parallel()
	s := newMemoryStore("test", 10, time.Hour, time.Now)
	ctx := context.Background()
	first, _ := s.claim(ctx, keysOf("a", "b"))
	if first.state != claimOwned {
		t.Fatalf("first claim: %v", first.state)
	}
	second, _ := s.claim(ctx, keysOf("b"))
	if second.state != claimBusy || second.wait == nil {
		t.Fatalf("claim of a key in flight: %v", second.state)
	}
	_ = s.release(ctx, first.claim)
	select {
	case <-second.wait:
	default:
		t.Fatal("release did not wake the waiter")
	}
	third, _ := s.claim(ctx, keysOf("b", "c"))
	if third.state != claimOwned {
		t.Fatalf("claim after release: %v", third.state)
	}
	_ = s.release(ctx, first.claim) // stale release: must not drop third's claim
	if again, _ := s.claim(ctx, keysOf("c")); again.state != claimBusy {
		t.Fatalf("a stale release dropped another claim: %v", again.state)
	}
	_ = s.commit(ctx, third.claim)
	for _, k := range []string{"b", "c"} {
		if r, _ := s.claim(ctx, keysOf("zzz", k)); r.state != claimDuplicate {
			t.Fatalf("key %s committed but claim says %v", k, r.state)
		}
	}
	if r, _ := s.claim(ctx, keysOf("a")); r.state != claimOwned {
		t.Fatalf("released key a: %v", r.state)
	}
}

// TestMemoryStoreTTLAndCapacity guards expiry (a key is forgotten after
// its TTL, and not counted as evicted) and the capacity bound (the least
// recently used go first).
func TestMemoryStoreTTLAndCapacity(t *testing.T) {
	t.Parallel()
	clock := time.Unix(1_000_000, 0)
	ctx := context.Background()

	s := newMemoryStore("test", 3, time.Minute, func() time.Time { return clock })
	for _, k := range []string{"k1", "k2", "k3", "k4", "k5"} {
		r, _ := s.claim(ctx, keysOf(k))
		_ = s.commit(ctx, r.claim)
	}
	if entries, evictions := storeStats(s); entries != 3 || evictions != 2 {
		t.Fatalf("entries %d evictions %d, want 3 and 2", entries, evictions)
	}
	if r, _ := s.claim(ctx, keysOf("k1")); r.state != claimOwned {
		t.Fatalf("evicted key still known: %v", r.state)
	} else {
		_ = s.release(ctx, r.claim)
	}
	if r, _ := s.claim(ctx, keysOf("k5")); r.state != claimDuplicate {
		t.Fatalf("recent key forgotten: %v", r.state)
	}
	clock = clock.Add(time.Minute - time.Second)
	if r, _ := s.claim(ctx, keysOf("k5")); r.state != claimDuplicate {
		t.Fatalf("key forgotten before its TTL: %v", r.state)
	}
	clock = clock.Add(2 * time.Second)
	if r, _ := s.claim(ctx, keysOf("k5")); r.state != claimOwned {
		t.Fatalf("key remembered after its TTL: %v", r.state)
	}
	// An expired key is dropped, not evicted: the evictions metric counts
	// only keys forgotten to stay within capacity.
	if entries, evictions := storeStats(s); entries != 2 || evictions != 2 {
		t.Fatalf("after expiry: entries %d evictions %d, want 2 and 2", entries, evictions)
	}
}

func dedupeSite(up *upstream, options string) string {
	return `
	webhook_guard {
		verify kapso ` + kapsoSecret + `
		dedupe {
			` + options + `
		}
	}
	reverse_proxy ` + up.Addr() + ` {
		header_up X-Seen-Key {http.webhook.idempotency_key}
	}`
}

func isDuplicateAnswer(status int, hdr http.Header, body []byte) bool {
	var v struct{ Status string }
	_ = json.Unmarshal(body, &v)
	return status == http.StatusOK && hdr.Get("X-Webhook-Duplicate") == "true" && v.Status == "duplicate"
}

// TestDedupeForwardsOnce guards the basic promise: a redelivery with the
// same key, a Kapso redelivery of the same message under a new key, and a
// raw Meta redelivery (no key header: body hash) reach the upstream once.
func TestDedupeForwardsOnce(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, dedupeSite(up, ""))
	msg := compactFixture(t, "kapso/v2_message_received.json")
	const ev = "whatsapp.message.received"

	status, hdr, body := post(t, c.URL, msg, kapsoHeaders(kapsoSecret, msg, ev, "key-1"))
	if status != 200 || hdr.Get("X-Upstream") != "yes" {
		t.Fatalf("first delivery: %d %s", status, body)
	}
	if got := up.requests()[0].Header.Get("X-Seen-Key"); got != "key-1" {
		t.Errorf("{http.webhook.idempotency_key} = %q", got)
	}
	tests := []struct {
		name    string
		body    []byte
		event   string
		key     string
		forward bool
	}{
		{"same key", msg, ev, "key-1", false},
		{"same message, new key (Kapso fallback redelivery)", msg, ev, "key-2", false},
		{"same message, other event", msg, "whatsapp.message.delivered", "key-3", true},
		{"raw body, no key", []byte(`{"object":"whatsapp_business_account","entry":[{"id":"1"}]}`), "", "", true},
		{"same raw body again, no key", []byte(`{"object":"whatsapp_business_account","entry":[{"id":"1"}]}`), "", "", false},
		{"other raw body, no key", []byte(`{"object":"whatsapp_business_account","entry":[{"id":"2"}]}`), "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := up.count()
			status, hdr, body := post(t, c.URL, tc.body, kapsoHeaders(kapsoSecret, tc.body, tc.event, tc.key))
			forwarded := up.count() - before
			if tc.forward {
				if forwarded != 1 || status != 200 || hdr.Get("X-Webhook-Duplicate") != "" {
					t.Fatalf("want forwarded: %d forwards, status %d, %s", forwarded, status, body)
				}
				return
			}
			if forwarded != 0 || !isDuplicateAnswer(status, hdr, body) {
				t.Fatalf("want duplicate: %d forwards, status %d, dup header %q, %s",
					forwarded, status, hdr.Get("X-Webhook-Duplicate"), body)
			}
		})
	}
}

// TestDedupeConcurrentIdentical guards atomicity: 200 identical
// deliveries at once reach the upstream exactly once, and every sender
// gets a 200.
func TestDedupeConcurrentIdentical(t *testing.T) {
	up := newUpstream(t)
	up.setRespond(func(int, recorded) (int, time.Duration) { return 200, 300 * time.Millisecond })
	c := startCaddy(t, dedupeSite(up, ""))
	body := []byte(`{"message":{"id":"wamid.concurrent"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "same-key")
	statuses := runConcurrently(t, 200, func(int) (int, http.Header, []byte) { return post(t, c.URL, body, h) })
	if n := up.count(); n != 1 {
		t.Fatalf("upstream got %d requests, want exactly 1", n)
	}
	if statuses[200] != 200 {
		t.Fatalf("statuses %v, want 200 x200", statuses)
	}
}

// runConcurrently fires n requests at once and counts the statuses.
func runConcurrently(t *testing.T, n int, send func(i int) (int, http.Header, []byte)) map[int]int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			status, _, _ := send(i)
			mu.Lock()
			statuses[status]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return statuses
}

// TestDedupeReleasesOnFailure guards "nothing lost": when the upstream
// fails, its answer reaches the sender unchanged, no key stays committed,
// and the retry is forwarded.
func TestDedupeReleasesOnFailure(t *testing.T) {
	up := newUpstream(t)
	fail := map[int]int{0: 500, 1: 503, 2: 429}
	up.setRespond(func(n int, _ recorded) (int, time.Duration) {
		if s, ok := fail[n]; ok {
			return s, 0
		}
		return 200, 0
	})
	c := startCaddy(t, dedupeSite(up, ""))
	body := []byte(`{"message":{"id":"wamid.retry"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "retry-key")
	for i, want := range []int{500, 503, 429, 200} {
		status, _, resp := post(t, c.URL, body, h)
		if status != want || string(resp) != fmt.Sprintf("upstream %d", want) {
			t.Fatalf("attempt %d: got %d %q, want the upstream's %d", i, status, resp, want)
		}
	}
	status, hdr, resp := post(t, c.URL, body, h)
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 4 {
		t.Fatalf("after success: %d %s, upstream count %d", status, resp, up.count())
	}
}

// TestDedupeUnreachableUpstream guards transport errors: a refused
// connection is a 502 for the sender and leaves nothing committed.
func TestDedupeUnreachableUpstream(t *testing.T) {
	dead := freePort(t)
	up := newUpstream(t)
	site := func(addr string) string {
		return `
	webhook_guard {
		verify kapso ` + kapsoSecret + `
		dedupe
	}
	reverse_proxy ` + addr
	}
	c := startCaddy(t, site("127.0.0.1:"+strconv.Itoa(dead)))
	body := []byte(`{"message":{"id":"wamid.dead"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "dead-key")
	if status, _, _ := post(t, c.URL, body, h); status != http.StatusBadGateway {
		t.Fatalf("refused upstream: status %d, want 502", status)
	}
	c.reload(site(up.Addr()))
	if status, _, resp := post(t, c.URL, body, h); status != 200 || up.count() != 1 {
		t.Fatalf("retry after the upstream came back: %d %s, forwarded %d", status, resp, up.count())
	}
}

// TestDedupeInFlight guards the wait rules for a duplicate that arrives
// while the first copy is still being forwarded.
func TestDedupeInFlight(t *testing.T) {
	tests := []struct {
		name       string
		wait       string
		firstReply int
		wantSecond int
		wantFwd    int
	}{
		{"first succeeds: duplicate", "5s", 200, 200, 1},
		{"first fails: forwarded in its place", "5s", 500, 200, 2},
		{"still unresolved: 409", "300ms", 200, 409, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			up := newUpstream(t)
			up.setRespond(func(n int, _ recorded) (int, time.Duration) {
				if n == 0 {
					return tc.firstReply, 1500 * time.Millisecond
				}
				return 200, 0
			})
			c := startCaddy(t, dedupeSite(up, "wait "+tc.wait))
			body := []byte(`{"message":{"id":"wamid.inflight"}}`)
			h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "inflight-key")
			firstDone := make(chan int)
			go func() {
				s, _, _ := post(t, c.URL, body, h)
				firstDone <- s
			}()
			waitFor(t, func() bool { return up.count() == 1 })
			status, hdr, resp := post(t, c.URL, body, h)
			if status != tc.wantSecond {
				t.Fatalf("second: %d %s, want %d", status, resp, tc.wantSecond)
			}
			if status == 409 {
				if hdr.Get("Retry-After") == "" {
					t.Error("409 without Retry-After")
				}
				if code, _ := errorCode(t, resp); code != "in_flight" {
					t.Errorf("code %q", code)
				}
			}
			if first := <-firstDone; first != tc.firstReply {
				t.Fatalf("first: %d", first)
			}
			if n := up.count(); n != tc.wantFwd {
				t.Fatalf("upstream got %d, want %d", n, tc.wantFwd)
			}
		})
	}
}

// TestDedupeSurvivesReload guards reload-safe state: keys committed
// before a config change are still known after it, and scopes keep stores
// apart.
func TestDedupeSurvivesReload(t *testing.T) {
	up := newUpstream(t)
	site := func(maxBody string) string {
		return `
	handle /a {
		webhook_guard {
			verify kapso ` + kapsoSecret + `
			max_body ` + maxBody + `
			dedupe
		}
		reverse_proxy ` + up.Addr() + `
	}
	handle /b {
		webhook_guard {
			verify kapso ` + kapsoSecret + `
			dedupe {
				scope other
			}
		}
		reverse_proxy ` + up.Addr() + `
	}`
	}
	c := startCaddy(t, site("1MB"))
	body := []byte(`{"message":{"id":"wamid.reload"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "reload-key")
	if status, _, _ := post(t, c.URL+"/a", body, h); status != 200 || up.count() != 1 {
		t.Fatalf("first delivery: %d", status)
	}
	c.reload(site("2MB"))
	status, hdr, resp := post(t, c.URL+"/a", body, h)
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 1 {
		t.Fatalf("after reload: %d %s, upstream %d: the reload lost the keys", status, resp, up.count())
	}
	if status, _, _ := post(t, c.URL+"/b", body, h); status != 200 || up.count() != 2 {
		t.Fatalf("other scope must not share keys: %d, upstream %d", status, up.count())
	}
}

// TestDedupeRedisTwoInstances guards multi-instance dedupe: two Caddy
// processes sharing one Redis forward a duplicate pair once, whether the
// copies arrive one after the other or at the same time.
func TestDedupeRedisTwoInstances(t *testing.T) {
	rs := startRedis(t)
	up := newUpstream(t)
	up.setRespond(func(int, recorded) (int, time.Duration) { return 200, 100 * time.Millisecond })
	site := dedupeSite(up, "redis "+rs.URL())
	a, b := startCaddy(t, site), startCaddy(t, site)

	body := []byte(`{"message":{"id":"wamid.redis.seq"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "redis-seq")
	if status, _, _ := post(t, a.URL, body, h); status != 200 {
		t.Fatalf("instance A: %d", status)
	}
	status, hdr, resp := post(t, b.URL, body, h)
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 1 {
		t.Fatalf("instance B: %d %s, upstream %d", status, resp, up.count())
	}

	const pairs = 20
	before := up.count()
	statuses := runConcurrently(t, 2*pairs, func(i int) (int, http.Header, []byte) {
		body := []byte(`{"message":{"id":"wamid.pair.` + strconv.Itoa(i/2) + `"}}`)
		target := a
		if i%2 == 1 {
			target = b
		}
		return post(t, target.URL, body, kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "pair-"+strconv.Itoa(i/2)))
	})
	if got := up.count() - before; got != pairs || statuses[200] != 2*pairs {
		t.Fatalf("%d pairs across two instances: %d forwards, statuses %v", pairs, got, statuses)
	}
	if n := rs.dbsize(); n == 0 {
		t.Fatal("nothing was stored in Redis")
	}
}

// TestDedupeRedisDown guards on_store_error: with pass the delivery is
// forwarded without dedupe while Redis is down; with reject the sender
// gets 503 and nothing is forwarded; once Redis is back, dedupe works.
func TestDedupeRedisDown(t *testing.T) {
	rs := startRedis(t)
	up := newUpstream(t)
	site := `
	handle /pass {
		webhook_guard {
			verify kapso ` + kapsoSecret + `
			dedupe {
				redis ` + rs.URL() + `
			}
		}
		reverse_proxy ` + up.Addr() + `
	}
	handle /reject {
		webhook_guard {
			verify kapso ` + kapsoSecret + `
			dedupe {
				redis ` + rs.URL() + `
				on_store_error reject
			}
		}
		reverse_proxy ` + up.Addr() + `
	}`
	c := startCaddy(t, site)
	body := []byte(`{"message":{"id":"wamid.down"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "down-key")

	rs.stop()
	for i := range 2 {
		if status, _, resp := post(t, c.URL+"/pass", body, h); status != 200 {
			t.Fatalf("pass while down, attempt %d: %d %s", i, status, resp)
		}
	}
	if up.count() != 2 {
		t.Fatalf("pass: upstream got %d, want 2 (no dedupe while the store is down)", up.count())
	}
	status, hdr, resp := post(t, c.URL+"/reject", body, h)
	if status != http.StatusServiceUnavailable || up.count() != 2 {
		t.Fatalf("reject while down: %d %s, upstream %d", status, resp, up.count())
	}
	if code, _ := errorCode(t, resp); code != "store_unavailable" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("reject body %s", resp)
	}
	if !strings.Contains(c.Logs(), "dedupe store unreachable") {
		t.Error("store outage not logged")
	}

	rs.start()
	if status, _, _ := post(t, c.URL+"/reject", body, h); status != 200 || up.count() != 3 {
		t.Fatalf("after restart: %d, upstream %d", status, up.count())
	}
	status, hdr, resp = post(t, c.URL+"/reject", body, h)
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 3 {
		t.Fatalf("dedupe after restart: %d %s", status, resp)
	}
}

// TestRedisReleaseIsCompareAndDelete guards that a claim whose lease ran
// out, and was taken over by another instance, is not deleted by the slow
// instance's release.
func TestRedisReleaseIsCompareAndDelete(t *testing.T) {
	rs := startRedis(t)
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(rs.port)})
	defer client.Close()
	s := &redisStore{client: client, prefix: "t:", ttl: time.Hour, lease: 100 * time.Millisecond}
	ctx := context.Background()
	slow, err := s.claim(ctx, keysOf("k"))
	if err != nil || slow.state != claimOwned {
		t.Fatalf("claim: %v %v", slow.state, err)
	}
	if busy, _ := s.claim(ctx, keysOf("k")); busy.state != claimBusy {
		t.Fatalf("second claim during lease: %v", busy.state)
	}
	var other claimResult
	waitFor(t, func() bool { // the lease runs out
		other, _ = s.claim(ctx, keysOf("k"))
		return other.state == claimOwned
	})
	if err := s.release(ctx, slow.claim); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.claim(ctx, keysOf("k")); again.state != claimBusy {
		t.Fatalf("the slow instance's release deleted another's claim: %v", again.state)
	}
	_ = s.commit(ctx, other.claim)
	if dup, _ := s.claim(ctx, keysOf("x", "k")); dup.state != claimDuplicate {
		t.Fatalf("committed key: %v", dup.state)
	}
}

// BenchmarkMemoryStoreBytesPerKey reports the heap held per committed key
// with 1M keys in the in-memory store (budget: under 150 bytes).
func BenchmarkMemoryStoreBytesPerKey(b *testing.B) {
	const n = 1_000_000
	ctx := context.Background()
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s := newMemoryStore("bench", n, time.Hour, time.Now)
		for i := range n {
			r, _ := s.claim(ctx, keysOf("key-"+strconv.Itoa(i)))
			_ = s.commit(ctx, r.claim)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if entries, _ := storeStats(s); entries != n {
			b.Fatalf("entries %d", entries)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
		// What the keys cost every garbage collection: a full cycle's
		// time with them live, the median of three.
		var gc [3]time.Duration
		for i := range gc {
			start := time.Now()
			runtime.GC()
			gc[i] = time.Since(start)
		}
		slices.Sort(gc[:])
		b.ReportMetric(float64(gc[1].Microseconds())/1000, "gc-ms")
		runtime.KeepAlive(s)
	}
}

// BenchmarkMemoryStore measures claim+commit of new keys (miss) and claims
// of committed keys (hit) with 1M keys present.
func BenchmarkMemoryStore(b *testing.B) {
	const n = 1_000_000
	ctx := context.Background()
	s := newMemoryStore("bench", 2*n, time.Hour, time.Now)
	keys := make([][]storeKey, n)
	for i := range n {
		keys[i] = keysOf("key-" + strconv.Itoa(i))
		r, _ := s.claim(ctx, keys[i])
		_ = s.commit(ctx, r.claim)
	}
	b.Run("hit", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if r, _ := s.claim(ctx, keys[i%n]); r.state != claimDuplicate {
				b.Fatal("miss")
			}
			i++
		}
	})
	var seq atomic.Int64 // never repeats, even when the body runs again
	b.Run("miss+commit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, _ := s.claim(ctx, keysOf("new-"+strconv.FormatInt(seq.Add(1), 10)))
			if r.state != claimOwned {
				b.Fatalf("a new key was not owned: %v", r.state)
			}
			_ = s.commit(ctx, r.claim)
		}
	})
}

// TestConfiguredKeyMatchesReplacer guards the header fast path of the
// dedupe key: for every shape of key and of request, it must give exactly
// what Caddy's replacer gives for the same placeholder (repeated headers
// joined with commas, a missing one empty, a name in any case), or a
// delivery would be known by another key than before and a retry
// forwarded twice. Keys that are not a single header placeholder must
// still go through the replacer.
func TestConfiguredKeyMatchesReplacer(t *testing.T) {
	t.Parallel()
	headers := []http.Header{
		{},
		{"X-Idempotency-Key": {"abc-123"}},
		{"X-Idempotency-Key": {"first", "second"}},
		{"X-Idempotency-Key": {""}},
		{"X-Delivery": {"d-9"}, "X-Idempotency-Key": {"k"}},
	}
	for _, tc := range []struct {
		key      string
		fastPath bool
	}{
		{defaultKey, true},
		{"{http.request.header.x-idempotency-key}", true},
		{"{http.request.header.X-Delivery}", true},
		{"{http.request.header.X-Delivery}-{http.request.header.X-Idempotency-Key}", false},
		{"prefix-{http.request.header.X-Idempotency-Key}", false},
		{"{http.request.header.}", false},
		{"{http.request.uri}", false},
		{"constant", false},
	} {
		t.Run(tc.key, func(t *testing.T) {
			d := &Dedupe{Key: tc.key}
			d.keyHeader = headerOfPlaceholder(d.Key)
			if (d.keyHeader != "") != tc.fastPath {
				t.Fatalf("header fast path %q, want it %v", d.keyHeader, tc.fastPath)
			}
			for i, h := range headers {
				r := httptest.NewRequest(http.MethodPost, "/hook?x=1", nil)
				r.Header = h.Clone()
				repl := caddy.NewReplacer()
				r = caddyhttp.PrepareRequest(r, repl, httptest.NewRecorder(), nil)
				if got, want := d.configuredKey(r, repl), repl.ReplaceAll(tc.key, ""); got != want {
					t.Errorf("headers %d: key %q, the replacer gives %q", i, got, want)
				}
			}
		})
	}
}

// TestStoreKeyOf guards the digests of a delivery's keys: built without
// concatenating, they must stay those of "kind:key", for short keys and
// for keys too long for the stack buffer alike. Redis holds keys across
// versions, and a digest that changed would let a retry through.
func TestStoreKeyOf(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"", "a", "2f1c9a1e-6f0a-4c0e-9d8b-3a7e5b2c1d00", strings.Repeat("k", 122),
		strings.Repeat("k", 123), strings.Repeat("é", 200)} {
		for _, kind := range []string{"id", "content"} {
			if got, want := storeKeyOf(kind, key), newStoreKey(kind+":"+key); got != want {
				t.Errorf("storeKeyOf(%q, %d-byte key) = %x, want %x", kind, len(key), got, want)
			}
		}
	}
	if storeKeyOf("id", "x") == storeKeyOf("content", "x") {
		t.Error("the kinds of key share a digest")
	}
}

// TestSharedScopeSettingsWarn guards against the last handler silently
// winning: two handlers of one config that share a dedupe scope but ask
// for different capacities get a warning naming both, and two that agree
// (or a reload that changes the settings) get none.
func TestSharedScopeSettingsWarn(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	site := func(capA, capB int) string {
		return fmt.Sprintf(`
	handle /a {
		webhook_guard {
			name orders
			verify kapso %[1]s
			dedupe {
				scope shared
				capacity %[2]d
			}
		}
		reverse_proxy %[4]s
	}
	handle /b {
		webhook_guard {
			name billing
			verify kapso %[1]s
			dedupe {
				scope shared
				capacity %[3]d
			}
		}
		reverse_proxy %[4]s
	}`, kapsoSecret, capA, capB, up.Addr())
	}
	const warning = "handlers share a dedupe scope with different capacity or ttl"
	c := startCaddy(t, site(100, 100))
	c.reload(site(200, 200)) // a reload that changes both is not a conflict
	if strings.Contains(c.Logs(), warning) {
		t.Fatalf("warned about agreeing handlers:\n%s", c.Logs())
	}
	c.reload(site(100, 5000))
	waitFor(t, func() bool { return strings.Contains(c.Logs(), warning) })
	for _, line := range strings.Split(c.Logs(), "\n") {
		if strings.Contains(line, warning) {
			if !strings.Contains(line, `"orders"`) || !strings.Contains(line, `"billing"`) {
				t.Fatalf("the warning does not name both handlers: %s", line)
			}
			return
		}
	}
}

// storeStats reports the number of committed keys and evictions so far.
func storeStats(s *memoryStore) (entries int, evictions uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.committed.Len(), s.evictions
}
