package inbox

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startRedis runs a real redis-server on a unix socket of its own for one
// test. Without redis-server the test is skipped with how to run it, or
// fails under WEBHOOKGUARD_REQUIRE_REDIS=1 (scripts/test.sh and CI).
func startRedis(t *testing.T) *redis.Client {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("WEBHOOKGUARD_REQUIRE_REDIS") == "1" {
			t.Fatalf("redis-server is not installed and WEBHOOKGUARD_REQUIRE_REDIS=1: %v", err)
		}
		t.Skip("redis-server is not installed: install it (apt-get install redis-server) or run scripts/test.sh to run this test")
	}
	// A unix socket of its own: no TCP port to race other tests for.
	dir := t.TempDir()
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no", "--dir", dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	client := redis.NewClient(&redis.Options{Network: "unix", Addr: sock})
	t.Cleanup(func() { client.Close() })
	for deadline := time.Now().Add(10 * time.Second); client.Ping(context.Background()).Err() != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 10s")
		}
	}
	return client
}

// TestRedisDispatcherOrderRetriesAndDead runs the dispatcher's promises
// (order per key, retries, dead, refusals) on the Redis store.
func TestRedisDispatcherOrderRetriesAndDead(t *testing.T) {
	t.Parallel()
	s := OpenRedis(startRedis(t), "t:", 5*time.Second)
	defer s.Close()
	checkDispatcherPromises(t, s)
}

// TestRedisLeaseHandsOverADeadInstancesHead guards the shared store's
// promise across instances: a head leased by one instance is not given
// to another while the lease lives; the next event of its conversation is
// not due before it is settled; when the instance dies (its lease no
// longer renewed) another takes the head over, and the dead instance's
// late result is refused rather than recorded twice.
func TestRedisLeaseHandsOverADeadInstancesHead(t *testing.T) {
	t.Parallel()
	client := startRedis(t)
	a := OpenRedis(client, "t:", 300*time.Millisecond)
	b := OpenRedis(client, "t:", 300*time.Millisecond)
	defer b.Close()
	evs := newEvents("q", "x", "x", "y")
	if err := a.Append(evs); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	got, _, _, err := a.Due("q", now, 1, nil)
	if err != nil || len(got) != 1 || got[0].ID != "x-0" || string(got[0].Body) != "{}" {
		t.Fatalf("a took %v, %v", got, err)
	}
	other, _, _, _ := b.Due("q", now, 10, nil)
	if len(other) != 1 || other[0].ID != "y-2" {
		t.Fatalf("b took %v; want only y-2 (x-0 is leased, x-1 waits behind it)", idsOf(other))
	}
	a.Close() // a dies: its lease is no longer renewed
	var taken []*Event
	for deadline := time.Now().Add(5 * time.Second); len(taken) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("b never took over x-0 after a's lease expired")
		}
		taken, _, _, _ = b.Due("q", time.Now(), 10, nil)
	}
	if len(taken) != 1 || taken[0].ID != "x-0" {
		t.Fatalf("b took over %v, want x-0", idsOf(taken))
	}
	taken[0].State, taken[0].Attempts = Delivered, 1
	if err := b.Settle(taken[0]); err != nil {
		t.Fatal(err)
	}
	got[0].State, got[0].Attempts = Delivered, 1
	if err := a.Settle(got[0]); err == nil {
		t.Fatal("the dead instance's late result was recorded over b's")
	}
	next, _, _, _ := b.Due("q", time.Now(), 10, nil)
	if len(next) != 1 || next[0].ID != "x-1" {
		t.Fatalf("after x-0: %v, want x-1", idsOf(next))
	}
	c, _ := b.Counts()
	if c["q"][Delivered] != 1 || c["q"][Pending] != 2 {
		t.Fatalf("counts %v", c["q"])
	}
}

func idsOf(es []*Event) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

// TestRedisHistory guards the history on the Redis store: a replayed
// event goes behind its conversation's pending events and comes back as
// a manual attempt; listing is newest first and paged by id; retention
// removes settled events and keeps pending ones.
func TestRedisHistory(t *testing.T) {
	t.Parallel()
	s := OpenRedis(startRedis(t), "t:", 5*time.Second)
	defer s.Close()
	evs := newEvents("q", "x", "x", "y")
	if err := s.Append(evs); err != nil {
		t.Fatal(err)
	}
	due, _, _, _ := s.Due("q", time.Now(), 1, nil)
	if len(due) != 1 || due[0].ID != "x-0" {
		t.Fatalf("first head %v", idsOf(due))
	}
	due[0].State, due[0].Attempts = Dead, 3
	if err := s.Settle(due[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Replay("x-1", time.Now()); err == nil {
		t.Fatal("a pending event was replayed")
	}
	r, err := s.Replay("x-0", time.Now())
	if err != nil || !r.Manual || r.Attempts != 3 {
		t.Fatalf("replay: %+v %v", r, err)
	}
	heads, _, _, _ := s.Due("q", time.Now(), 10, nil)
	if got := idsOf(heads); len(got) != 2 || !slices.Contains(got, "x-1") || !slices.Contains(got, "y-2") {
		t.Fatalf("heads after the replay %v; x-0 must wait behind x-1", got)
	}
	for _, h := range heads {
		h.State, h.Attempts = Delivered, 1
		if err := s.Settle(h); err != nil {
			t.Fatal(err)
		}
	}
	heads, _, _, _ = s.Due("q", time.Now(), 10, nil)
	if len(heads) != 1 || heads[0].ID != "x-0" || !heads[0].Manual {
		t.Fatalf("after x-1: %v", idsOf(heads))
	}
	page, next, err := s.List(Query{Queue: "q", Limit: 2})
	if err != nil || !slices.Equal(idsOf(page), []string{"y-2", "x-1"}) || next != "x-1" {
		t.Fatalf("first page %v next %q %v", idsOf(page), next, err)
	}
	page, next, _ = s.List(Query{Queue: "q", Limit: 2, Before: next})
	if !slices.Equal(idsOf(page), []string{"x-0"}) || next != "" {
		t.Fatalf("second page %v next %q", idsOf(page), next)
	}
	if n, err := s.Expire(time.Now().Add(time.Hour)); err != nil || n != 2 {
		t.Fatalf("expired %d %v; want the 2 delivered, not the pending replay", n, err)
	}
	if _, err := s.Lookup("y-2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired event still found: %v", err)
	}
	if _, err := s.Body(evs[2].Seq); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired body still there: %v", err)
	}
	c, _ := s.Counts()
	if c["q"][Pending] != 1 || c["q"][Delivered] != 0 {
		t.Fatalf("counts %v", c["q"])
	}
}

// TestRedisSettleOutlastsAStall guards a settle sent while Redis does
// not answer: Redis holds every write for 2 s (CLIENT PAUSE) while the
// client gives up after 300 ms; the settle is sent again until it lands,
// its lease renewed meanwhile, and the copy that Redis ran once the
// pause ended (the first try's, or a resent pipeline's) is taken as the
// same result: the event is delivered, with one attempt, none late.
func TestRedisSettleOutlastsAStall(t *testing.T) {
	t.Parallel()
	admin := startRedis(t)
	client := redis.NewClient(&redis.Options{Network: "unix", Addr: admin.Options().Addr, ReadTimeout: 300 * time.Millisecond})
	defer client.Close()
	s := OpenRedis(client, "t:", 5*time.Second)
	defer s.Close()
	if err := s.Append(newEvents("q", "x")); err != nil {
		t.Fatal(err)
	}
	due, _, _, err := s.Due("q", time.Now(), 1, nil)
	if err != nil || len(due) != 1 {
		t.Fatalf("due: %v %v", due, err)
	}
	e := due[0]
	e.State, e.Attempts = Delivered, 1
	e.Log = append(e.Log, Attempt{N: 1, At: time.Now(), Status: 200})
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", "2000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Settle(e); err != nil {
		t.Fatalf("settle across a 2 s stall: %v", err)
	}
	got, err := s.Lookup(e.ID)
	if err != nil || got.State != Delivered || len(got.Log) != 1 || got.Log[0].Late {
		t.Fatalf("after the stall: %+v %v; want delivered, one attempt, not late", got, err)
	}
}
