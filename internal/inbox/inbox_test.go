package inbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// recorder is a Deliverer whose answers a test scripts per event id.
type recorder struct {
	mu       sync.Mutex
	got      []string // "id#attempt", in delivery order
	inFlight map[string]int
	overlap  bool
	answer   func(e *Event, attempt int) Result
}

func (r *recorder) deliver(_ context.Context, e *Event, attempt int) Result {
	r.mu.Lock()
	r.inFlight[e.OrderKey]++
	if e.OrderKey != "" && r.inFlight[e.OrderKey] > 1 {
		r.overlap = true
	}
	r.got = append(r.got, fmt.Sprintf("%s#%d", e.ID, attempt))
	r.mu.Unlock()
	time.Sleep(time.Millisecond)
	res := r.answer(e, attempt)
	r.mu.Lock()
	r.inFlight[e.OrderKey]--
	r.mu.Unlock()
	return res
}

func (r *recorder) deliveries() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func newEvents(queue string, keys ...string) []*Event {
	var out []*Event
	for i, k := range keys {
		out = append(out, &Event{ID: fmt.Sprintf("%s-%d", k, i), Queue: queue, OrderKey: k, Method: "POST", URI: "/",
			Body: []byte("{}"), ReceivedAt: time.Now()})
	}
	return out
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// TestDispatcherOrderRetriesAndDead guards the dispatcher's promises on a
// real bbolt file: events of one order key are delivered one at a time in
// arrival order, a failing head holds back its own key and no other, an
// event that always fails is dead after exactly its schedule's attempts,
// and refused connections use up no attempt.
func TestDispatcherOrderRetriesAndDead(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkDispatcherPromises(t, s)
}

func checkDispatcherPromises(t *testing.T, s Backend) {
	refusals := 3
	rec := &recorder{inFlight: map[string]int{}}
	rec.answer = func(e *Event, attempt int) Result {
		switch {
		case e.ID == "a-0" && attempt < 3: // a's head fails twice, then succeeds
			return Result{Status: 503}
		case e.ID == "d-4": // always fails: dead after 1 + 2 retries
			return Result{Status: 500}
		case e.ID == "r-5" && refusals > 0:
			refusals--
			return Result{Refused: true, Err: errors.New("connection refused")}
		}
		return Result{Status: 200}
	}
	d := NewDispatcher(s, func(err error) { t.Error(err) })
	d.SetQueues([]Queue{{Name: "q", Deliver: rec.deliver, Retry: []time.Duration{20 * time.Millisecond, 20 * time.Millisecond},
		Concurrency: 4, Timeout: time.Second}})
	events := newEvents("q", "a", "a", "b", "b", "d", "r", "a")
	if err := s.Append(events); err != nil {
		t.Fatal(err)
	}
	d.Start()
	defer d.Stop(time.Second)
	waitUntil(t, "every event settled", func() bool {
		c, _ := s.Counts()
		return c["q"][Pending] == 0 && c["q"][Delivered] == 6 && c["q"][Dead] == 1
	})
	got := rec.deliveries()
	// Every attempt number is used once, except by the event whose
	// connections were refused: those tries do not count as attempts.
	seen := map[string]int{}
	for _, g := range got {
		seen[g]++
	}
	for g, n := range seen {
		if want := map[bool]int{true: 4, false: 1}[g == "r-5#1"]; n != want {
			t.Fatalf("%s was tried %d times, want %d: %v", g, n, want, got)
		}
	}
	if rec.overlap {
		t.Fatal("two events of one order key were in flight at once")
	}
	// a: its head three times, then the rest in order.
	var a []string
	for _, g := range got {
		if g[0] == 'a' {
			a = append(a, g)
		}
	}
	if want := []string{"a-0#1", "a-0#2", "a-0#3", "a-1#1", "a-6#1"}; !slices.Equal(a, want) {
		t.Fatalf("order key a: %v, want %v", a, want)
	}
	// b was not held back by a's failures.
	if i, j := slices.Index(got, "b-3#1"), slices.Index(got, "a-0#3"); i < 0 || i > j {
		t.Fatalf("b waited for a: %v", got)
	}
	if n := slices.Index(got, "d-4#3"); n < 0 || slices.Contains(got, "d-4#4") {
		t.Fatalf("the failing event was not tried exactly 3 times: %v", got)
	}
	dead, _ := s.Lookup(events[4].ID)
	if dead.State != Dead || dead.Attempts != 3 || dead.LastStatus != 500 {
		t.Fatalf("dead event: %+v", dead)
	}
	r, _ := s.Lookup(events[5].ID)
	if r.State != Delivered || r.Attempts != 1 {
		t.Fatalf("refused connections used up attempts: %+v", r)
	}
}

// TestStoreSurvivesReopen guards durability across a restart: what Append
// acknowledged is there after the file is closed and opened again, still
// pending and in order, and a second open of a locked file fails instead
// of sharing it.
func TestStoreSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "inbox.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(newEvents("q", "x", "x", "y")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, 50*time.Millisecond); err == nil {
		t.Fatal("a second open of a locked store succeeded")
	}
	s.Close()
	s, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ids := dueIDs(t, s, "q", time.Now()); !slices.Equal(ids, []string{"x-0", "y-2"}) {
		t.Fatalf("heads after reopening: %v", ids)
	}
}

func dueIDs(t *testing.T, s *Store, queue string, now time.Time) []string {
	t.Helper()
	due, _, _, err := s.Due(queue, now, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range due {
		ids = append(ids, e.ID)
	}
	return ids
}

// TestDueIndexFollowsSettles guards the index a dispatcher pass reads
// instead of the whole backlog: only each order key's first pending event
// (and every event without an order key) is due, a retried head leaves
// the due list until its time while its key's later events stay behind
// it, a settled head hands over to the next event of its key, and a file
// written without the index gets it rebuilt on open.
func TestDueIndexFollowsSettles(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "inbox.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	evs := newEvents("q", "x", "x", "y", "", "x", "")
	other := newEvents("r", "x")
	if err := s.Append(append(evs, other...)); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	check := func(step string, want ...string) {
		t.Helper()
		if got := dueIDs(t, s, "q", now); !slices.Equal(got, want) {
			t.Fatalf("%s: due %v, want %v", step, got, want)
		}
	}
	check("appended", "x-0", "y-2", "-3", "-5")

	evs[0].Attempts, evs[0].NextAt = 1, now.Add(time.Hour) // x-0 failed once
	if err := s.Settle(evs[0]); err != nil {
		t.Fatal(err)
	}
	check("x's head waits for its retry", "y-2", "-3", "-5")
	if _, _, next, _ := s.Due("q", now, 100, nil); !next.Equal(evs[0].NextAt.Round(0)) && next.UnixNano() != evs[0].NextAt.UnixNano() {
		t.Fatalf("next due %v, want %v", next, evs[0].NextAt)
	}

	evs[0].State, evs[0].Attempts = Delivered, 2
	evs[3].State = Dead
	for _, e := range []*Event{evs[0], evs[3]} {
		if err := s.Settle(e); err != nil {
			t.Fatal(err)
		}
	}
	check("x's head delivered, an unordered event dead", "x-1", "y-2", "-5")
	if err := s.Settle(evs[3]); err == nil {
		t.Fatal("settling a dead event again succeeded")
	}
	if at, ok, err := s.OldestPending("q"); err != nil || !ok || !at.Equal(evs[1].ReceivedAt) {
		t.Fatalf("oldest pending %v %v %v, want x-1's arrival", at, ok, err)
	}
	busy := func(order string, _ uint64) bool { return order == "x" }
	if due, _, _, _ := s.Due("q", now, 1, busy); len(due) != 1 || due[0].ID != "y-2" {
		t.Fatalf("with x in flight and one slot: %v", due)
	}

	// A file from before the index: drop it, reopen, same answer.
	err = s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketDue) })
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(path, time.Second); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("index rebuilt", "x-1", "y-2", "-5")
	if got := dueIDs(t, s, "r", now); !slices.Equal(got, []string{"x-0"}) {
		t.Fatalf("queue r: %v", got)
	}
}

// TestRateSpacesAttempts guards the rate option: with a rate, one pass
// starts a single attempt however many slots are free, and the next waits
// until the interval divided by the rate has passed on the dispatcher's
// clock.
func TestRateSpacesAttempts(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := make(chan struct{})
	var started sync.WaitGroup
	d := NewDispatcher(s, func(err error) { t.Error(err) })
	var clock time.Time
	d.now = func() time.Time { return clock }
	d.SetQueues([]Queue{{Name: "q", Concurrency: 8, Timeout: time.Second, Rate: 4, Per: time.Second,
		Deliver: func(context.Context, *Event, int) Result { started.Done(); <-release; return Result{Status: 200} }}})
	if err := s.Append(newEvents("q", "", "", "", "")); err != nil {
		t.Fatal(err)
	}
	clock = time.Now()
	ctx := context.Background()
	for i, step := range []struct {
		advance time.Duration
		starts  int
	}{{0, 1}, {0, 0}, {200 * time.Millisecond, 0}, {50 * time.Millisecond, 1}, {100 * time.Millisecond, 0}, {150 * time.Millisecond, 1}} {
		clock = clock.Add(step.advance)
		started.Add(step.starts)
		before := d.inFlightCount()
		next := d.dispatchDue(ctx)
		if got := d.inFlightCount() - before; got != step.starts {
			t.Fatalf("step %d: %d attempts started, want %d", i, got, step.starts)
		}
		if step.starts == 1 && !next.Equal(clock.Add(250*time.Millisecond)) {
			t.Fatalf("step %d: next pass at %v, want %v", i, next.Sub(clock), 250*time.Millisecond)
		}
		started.Wait()
	}
	close(release)
	d.attempts.Wait()
}

// TestExpireKeepsPending guards retention: delivered and dead events older
// than the cutoff go, bodies included (a history must not keep them past
// retention); pending ones stay whatever their age.
func TestExpireKeepsPending(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	old := newEvents("q", "a", "b", "c")
	for _, e := range old {
		e.ReceivedAt = time.Now().Add(-time.Hour)
	}
	if err := s.Append(old); err != nil {
		t.Fatal(err)
	}
	old[0].State, old[1].State = Delivered, Dead
	_ = s.Settle(old[0])
	_ = s.Settle(old[1])
	if n, err := s.Expire(time.Now().Add(-time.Minute)); err != nil || n != 2 {
		t.Fatalf("expired %d, %v; want 2", n, err)
	}
	c, _ := s.Counts()
	if c["q"][Pending] != 1 || c["q"][Delivered]+c["q"][Dead] != 0 {
		t.Fatalf("after expiry: %v", c)
	}
	for i, want := range []error{ErrNotFound, ErrNotFound, nil} {
		if _, err := s.Body(old[i].Seq); !errors.Is(err, want) {
			t.Errorf("body of event %d after expiry: %v, want %v", i, err, want)
		}
	}
}

// TestSettleSchedule guards the retry arithmetic: a 2xx delivers, each
// failure waits its schedule's delay spread by at most ±20% (never less
// than the app's Retry-After), and the failure after the last delay is
// dead.
func TestSettleSchedule(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	retry := []time.Duration{10 * time.Second, time.Minute}
	for range 200 {
		e := &Event{State: Pending}
		settle(e, retry, 1, Result{Status: 503}, now)
		if d := e.NextAt.Sub(now); e.State != Pending || d < 8*time.Second || d > 12*time.Second {
			t.Fatalf("after attempt 1: %v, next in %v", e.State, d)
		}
		settle(e, retry, 2, Result{Status: 429, RetryAfter: 5 * time.Minute}, now)
		if d := e.NextAt.Sub(now); d != 5*time.Minute {
			t.Fatalf("Retry-After 5m was not honoured: next in %v", d)
		}
		settle(e, retry, 3, Result{Err: errors.New("timeout")}, now)
		if e.State != Dead || e.Attempts != 3 || e.LastError != "timeout" {
			t.Fatalf("after the last delay: %+v", e)
		}
	}
	e := &Event{State: Pending}
	settle(e, retry, 1, Result{Status: 204}, now)
	if e.State != Delivered || !e.DeliveredAt.Equal(now) {
		t.Fatalf("a 204: %+v", e)
	}
}

// TestGatherLetsEagerWritesThrough guards the commit grouping: a group
// that starts with lazy writes (attempt results) takes the writes queued
// behind them, and ends as soon as an eager write (an acknowledgement a
// sender waits for) has joined, without waiting out the lazy delay; an
// eager group takes only what is already queued.
func TestGatherLetsEagerWritesThrough(t *testing.T) {
	t.Parallel()
	s := &Store{writes: newCallQueue[write](8)}
	lazy, eager := write{lazy: true}, write{}
	for _, w := range []write{lazy, eager, lazy} {
		s.writes.send(w)
	}
	if g := s.gather([]write{lazy}); len(g) != 4 {
		t.Fatalf("lazy group took %d writes, want all 4 queued", len(g))
	}
	s.writes.send(lazy)
	if g := s.gather([]write{eager}); len(g) != 2 {
		t.Fatalf("eager group took %d writes, want the 2 queued", len(g))
	}
	s.writes.close()
	if g := s.gather([]write{lazy}); len(g) != 1 {
		t.Fatalf("lazy group on a closed queue: %d writes", len(g))
	}
}
