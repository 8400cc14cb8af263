package webhookguard

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// loadPlan sends copies of unique deliveries from many goroutines, in a
// shuffled order, and reports the statuses the senders got.
type loadPlan struct {
	unique, copies, workers int
	targets                 []*caddyInstance
	prefix                  string
}

func (p loadPlan) run(t *testing.T, during func(sent *atomic.Int64)) map[int]int {
	t.Helper()
	total := p.unique * p.copies
	jobs := make(chan int, total)
	// Interleave copies so that duplicates often meet in flight.
	for c := range p.copies {
		for u := range p.unique {
			jobs <- (u*7+c*13)%p.unique + c*p.unique
		}
	}
	close(jobs)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: p.workers}, Timeout: 30 * time.Second}
	var mu sync.Mutex
	statuses := map[int]int{}
	var sent, retried atomic.Int64
	var wg sync.WaitGroup
	for w := range p.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				u := j % p.unique
				key := p.prefix + strconv.Itoa(u)
				body := []byte(`{"message":{"id":"wamid.` + key + `"}}`)
				target := p.targets[(j+w)%len(p.targets)]
				req, _ := http.NewRequest(http.MethodPost, target.URL, strings.NewReader(string(body)))
				for k, v := range kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", key) {
					req.Header.Set(k, v)
				}
				// Like a webhook sender, retry a delivery whose connection
				// failed (a reload closes keep-alive connections that race
				// with the old server's shutdown).
				status := 0
				for attempt := 0; attempt < 3 && status == 0; attempt++ {
					if attempt > 0 {
						retried.Add(1)
						time.Sleep(20 * time.Millisecond)
						req.Body, _ = req.GetBody()
					}
					if resp, err := client.Do(req); err == nil {
						status = resp.StatusCode
						resp.Body.Close()
					}
				}
				sent.Add(1)
				mu.Lock()
				statuses[status]++
				mu.Unlock()
			}
		}()
	}
	if during != nil {
		during(&sent)
	}
	wg.Wait()
	t.Logf("%d deliveries, %d connection-level retries", total, retried.Load())
	return statuses
}

// forwardsPerKey counts how often each idempotency key reached the
// upstream.
func forwardsPerKey(up *upstream) map[string]int {
	counts := map[string]int{}
	for _, r := range up.requests() {
		counts[r.Header.Get("X-Idempotency-Key")]++
	}
	return counts
}

func checkExactlyOnce(t *testing.T, up *upstream, prefix string, unique int) {
	t.Helper()
	counts := forwardsPerKey(up)
	for u := range unique {
		if n := counts[prefix+strconv.Itoa(u)]; n != 1 {
			t.Fatalf("key %s%d reached the upstream %d times, want exactly 1", prefix, u, n)
		}
	}
	if len(counts) != unique {
		t.Fatalf("upstream saw %d distinct keys, want %d", len(counts), unique)
	}
}

// TestLoadMixedDuplicates guards exactly-once under load: 10,000
// deliveries (2,500 events, 4 copies each, interleaved) from 50
// goroutines reach the upstream once per event, and every sender gets 200.
func TestLoadMixedDuplicates(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, dedupeSite(up, ""))
	p := loadPlan{unique: 2500, copies: 4, workers: 50, targets: []*caddyInstance{c}, prefix: "mixed-"}
	statuses := p.run(t, nil)
	if statuses[200] != 10000 {
		t.Fatalf("statuses %v, want 10000 x 200", statuses)
	}
	checkExactlyOnce(t, up, p.prefix, p.unique)
}

// TestLoadTwoInstancesOneRedis guards the same across two Caddy processes
// sharing Redis: 10,000 deliveries, each copy of an event landing on either
// instance.
func TestLoadTwoInstancesOneRedis(t *testing.T) {
	rs := startRedis(t)
	up := newUpstream(t)
	site := dedupeSite(up, "redis "+rs.URL())
	a, b := startCaddy(t, site), startCaddy(t, site)
	p := loadPlan{unique: 2500, copies: 4, workers: 50, targets: []*caddyInstance{a, b}, prefix: "redis-load-"}
	statuses := p.run(t, nil)
	if statuses[200] != 10000 {
		t.Fatalf("statuses %v, want 10000 x 200", statuses)
	}
	checkExactlyOnce(t, up, p.prefix, p.unique)
}

// TestLoadReloadMidway guards reload safety under load: config reloads
// in the middle of a run drop no request and lose no dedupe key.
func TestLoadReloadMidway(t *testing.T) {
	up := newUpstream(t)
	site := func(maxBody string) string {
		return `
	webhook_guard {
		verify kapso ` + kapsoSecret + `
		max_body ` + maxBody + `
		dedupe
	}
	reverse_proxy ` + up.Addr()
	}
	c := startCaddy(t, site("1MB"))
	p := loadPlan{unique: 1000, copies: 4, workers: 30, targets: []*caddyInstance{c}, prefix: "reload-"}
	reloads := 0
	statuses := p.run(t, func(sent *atomic.Int64) {
		for i, mark := range []int64{800, 1800, 2800} {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			for sent.Load() < mark && ctx.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
			cancel()
			c.reload(site(fmt.Sprintf("%dMB", i+2)))
			reloads++
		}
	})
	if reloads != 3 || statuses[200] != 4000 {
		t.Fatalf("%d reloads, statuses %v, want 3 and 4000 x 200", reloads, statuses)
	}
	checkExactlyOnce(t, up, p.prefix, p.unique)
}

// TestMemoryBoundedByCapacity guards the memory bound: a flood of 1M
// unique keys into a store of capacity 10,000 keeps 10,000 keys and the
// heap stays near what 10,000 keys need.
func TestMemoryBoundedByCapacity(t *testing.T) {
	const flood, capacity = 1_000_000, 10_000
	s := newMemoryStore("flood", capacity, time.Hour, time.Now)
	ctx := context.Background()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rssBefore := rssKB()
	for i := range flood {
		r, _ := s.claim(ctx, keysOf("flood-"+strconv.Itoa(i)))
		_ = s.commit(ctx, r.claim)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	entries, evictions := storeStats(s)
	if entries != capacity || evictions != flood-capacity {
		t.Fatalf("entries %d evictions %d, want %d and %d", entries, evictions, capacity, flood-capacity)
	}
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	// 10,000 keys at about 77 bytes each, with generous slack for the
	// runtime: a store that kept every key would hold over 100 MB.
	if grown > 8<<20 {
		t.Fatalf("heap grew by %d bytes for a store capped at %d keys", grown, capacity)
	}
	t.Logf("1M unique keys into capacity %d: heap +%d KB, RSS %d KB -> %d KB", capacity, grown>>10, rssBefore, rssKB())
	runtime.KeepAlive(s)
}

// rssKB reads this process's resident set size from /proc.
func rssKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return n
		}
	}
	return -1
}
