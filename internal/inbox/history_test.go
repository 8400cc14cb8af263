package inbox

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestListPagesNewestFirst guards the history's listing: newest first,
// filtered by queue, state and event name, paged by the last id of a page
// until next comes back empty, and an unknown id is ErrNotFound.
func TestListPagesNewestFirst(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs := newEvents("q", "a", "b", "c", "d", "e")
	for i, e := range evs {
		e.Name = []string{"message", "status"}[i%2]
	}
	other := newEvents("r", "z")
	if err := s.Append(append(evs, other...)); err != nil {
		t.Fatal(err)
	}
	evs[1].State = Dead
	if err := s.Settle(evs[1]); err != nil {
		t.Fatal(err)
	}
	ids := func(es []*Event) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.ID)
		}
		return out
	}
	var pages [][]string
	for before := ""; ; {
		page, next, err := s.List(Query{Queue: "q", Limit: 2, Before: before})
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, ids(page))
		if next == "" {
			break
		}
		before = next
	}
	if want := [][]string{{"e-4", "d-3"}, {"c-2", "b-1"}, {"a-0"}}; !slices.EqualFunc(pages, want, slices.Equal) {
		t.Fatalf("pages %v, want %v", pages, want)
	}
	for _, tc := range []struct {
		q    Query
		want []string
	}{
		{Query{Queue: "q", State: Dead}, []string{"b-1"}},
		{Query{Queue: "q", Name: "status"}, []string{"d-3", "b-1"}},
		{Query{State: Pending, Name: "message"}, []string{"e-4", "c-2", "a-0"}},
		{Query{State: Pending}, []string{"z-0", "e-4", "d-3", "c-2", "a-0"}},
	} {
		got, next, err := s.List(tc.q)
		if err != nil || next != "" || !slices.Equal(ids(got), tc.want) {
			t.Errorf("%+v: %v next=%q %v, want %v", tc.q, ids(got), next, err, tc.want)
		}
	}
	if _, _, err := s.List(Query{Before: "evt_nope"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("paging from an unknown id: %v", err)
	}
	if e, err := s.Lookup("c-2"); err != nil || e.Seq != evs[2].Seq {
		t.Errorf("lookup: %+v %v", e, err)
	}
	if _, err := s.Lookup("evt_nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("lookup of an unknown id: %v", err)
	}
}

// TestReplayGoesBehindItsConversation guards replay: only settled events
// can be replayed; a replayed event is pending again, marked manual, with
// its attempt count kept, and it waits behind the events of its order key
// that were already pending; ReplayMatching requeues every dead event of a
// queue and says how many.
func TestReplayGoesBehindItsConversation(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs := newEvents("q", "x", "x", "y", "y")
	if err := s.Append(evs); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Replay(evs[0].ID, time.Now()); !errors.Is(err, ErrNotReplayable) {
		t.Fatalf("replay of a pending event: %v", err)
	}
	evs[0].State, evs[0].Attempts = Dead, 3
	evs[2].State, evs[2].Attempts = Dead, 3
	for _, e := range []*Event{evs[0], evs[2]} {
		if err := s.Settle(e); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	r, err := s.Replay(evs[0].ID, now)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != Pending || !r.Manual || r.Attempts != 3 {
		t.Fatalf("replayed: %+v", r)
	}
	if got := dueIDs(t, s, "q", now); !slices.Equal(got, []string{"x-1", "y-3"}) {
		t.Fatalf("due after the replay: %v; the replay must wait behind x-1", got)
	}
	due, _, _, _ := s.Due("q", now, 10, nil)
	for _, e := range due {
		if e.ID == "x-1" {
			e.State = Delivered
			if err := s.Settle(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := dueIDs(t, s, "q", now); !slices.Equal(got, []string{"y-3", "x-0"}) { // by due time: the replay is due now
		t.Fatalf("due once x-1 was delivered: %v", got)
	}
	if n, err := s.ReplayMatching(Query{Queue: "q", State: Dead}, now, nil); err != nil || n != 1 {
		t.Fatalf("replay all dead: %d %v, want 1 (y-2)", n, err)
	}
	c, _ := s.Counts()
	if c["q"][Pending] != 3 || c["q"][Dead] != 0 || c["q"][Delivered] != 1 {
		t.Fatalf("counts: %v", c["q"])
	}
}

// TestManualAttemptIsOneTry guards what a replay's attempt does with the
// schedule: a failure makes the event dead at once, whatever delays are
// left; the log records the attempt as manual with its number going on
// from the earlier attempts.
func TestManualAttemptIsOneTry(t *testing.T) {
	t.Parallel()
	now := time.Now()
	e := &Event{State: Pending, Attempts: 3, Manual: true}
	logAttempt(e, 4, now, Result{Status: 500, Took: time.Millisecond})
	settle(e, []time.Duration{time.Minute, time.Minute, time.Minute, time.Minute}, 4, Result{Status: 500}, now)
	if e.State != Dead || e.Manual || e.Attempts != 4 {
		t.Fatalf("after a failed manual attempt: %+v", e)
	}
	if len(e.Log) != 1 || !e.Log[0].Manual || e.Log[0].N != 4 || e.Log[0].Status != 500 {
		t.Fatalf("log: %+v", e.Log)
	}
	for i := range maxLog + 5 {
		logAttempt(e, 5+i, now, Result{Status: 503})
	}
	if len(e.Log) != maxLog || e.Log[len(e.Log)-1].N != maxLog+9 {
		t.Fatalf("log not bounded to the latest %d: %d entries, last %d", maxLog, len(e.Log), e.Log[len(e.Log)-1].N)
	}
}

// TestRetryNowMovesEveryIndex guards replay by filter of failed events
// (retry now) on the file: the event is due now in the due index, its
// pending entry and its record alike, so that an erasure or a move
// afterwards finds it where it is (no stale due entry turning into a
// phantom damaged event holding the erased order key); an event an
// attempt holds (busy) is left alone; one already due is too.
func TestRetryNowMovesEveryIndex(t *testing.T) {
	t.Parallel()
	for _, then := range []string{"erase", "move"} {
		t.Run(then, func(t *testing.T) {
			s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			evs := newEvents("q", "phone:+1555", "other")
			if err := s.Append(evs); err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			due, _, _, _ := s.Due("q", now, 10, nil)
			for _, e := range due { // both failed once, their next attempt in an hour
				e.Attempts, e.NextAt = 1, now.Add(time.Hour)
				if err := s.Settle(e); err != nil {
					t.Fatal(err)
				}
			}
			busy := func(_, order string, _ uint64) bool { return order == "other" }
			if n, err := s.ReplayMatching(Query{Queue: "q", State: Pending, Failed: true}, now, busy); err != nil || n != 1 {
				t.Fatalf("retry now: %d %v, want 1 (the other is busy)", n, err)
			}
			if got := dueIDs(t, s, "q", now); !slices.Equal(got, []string{"phone:+1555-0"}) {
				t.Fatalf("due now: %v", got)
			}
			if n, err := s.ReplayMatching(Query{Queue: "q", State: Pending, Failed: true}, now.Add(time.Second), nil); err != nil || n != 1 {
				t.Fatalf("retry now again: %d %v, want 1 (only the other: the first is due already)", n, err)
			}
			switch then {
			case "erase":
				if n, err := s.Erase(Erasure{OrderKey: "phone:+1555"}); err != nil || n != 1 {
					t.Fatalf("erase: %d %v", n, err)
				}
				_, damaged, _, err := s.Due("q", now.Add(time.Minute), 10, nil)
				if c, _ := s.Counts(); err != nil || len(damaged) != 0 || c["q"][Damaged] != 0 || c["q"][Pending] != 1 {
					t.Fatalf("after the erasure: damaged %v, counts %v, %v", damaged, c["q"], err)
				}
			case "move":
				if _, err := s.Move("q", "r", now); err != nil {
					t.Fatal(err)
				}
				if got := dueIDs(t, s, "q", now.Add(time.Minute)); len(got) != 0 {
					t.Fatalf("still due in the old queue after the move: %v", got)
				}
				if got := dueIDs(t, s, "r", now.Add(time.Minute)); len(got) != 2 {
					t.Fatalf("due in the new queue: %v, want both", got)
				}
			}
		})
	}
}
