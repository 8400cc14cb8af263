package webhookguard

import (
	"slices"
	"strings"
	"time"

	"github.com/webhookguard/webhookguard/internal/inbox"
)

// The summary per handler (GET …/inbox): each queue of the open inbox
// stores and each handler without one, its cards and its health.

// handlerSummary is one handler's cards: Total is the sum of the
// outcomes (Pending … Deferred), each counted once. For an inbox the
// stored states come from the store; what never became an event
// (duplicates, ignored, refused, deferred) is counted in memory since
// CountedSince. A handler without an inbox counts its in-memory history.
type handlerSummary struct {
	Handler string `json:"handler"`
	Inbox   bool   `json:"inbox"`
	// Served: a handler of the running config delivers this queue. An
	// inbox queue that is not served was left by a handler that was
	// renamed or removed; Orphaned when events of it are still pending.
	Served    bool   `json:"served"`
	Orphaned  bool   `json:"orphaned,omitempty"`
	Error     string `json:"error,omitempty"`
	Total     int    `json:"total"`
	Pending   int    `json:"pending"`
	Delivered int    `json:"delivered"`
	Dead      int    `json:"dead"`
	Damaged   int    `json:"damaged"`
	Failed    int    `json:"failed"`
	Duplicate int    `json:"duplicate"`
	Ignored   int    `json:"ignored"`
	// Refused: unsigned, too large or malformed requests. A handler
	// without an inbox remembers the last 100 of them, apart from its
	// deliveries.
	Refused int `json:"refused"`
	// Deferred: requests answered "retry later" (an identical delivery
	// in flight, a store down); the sender sends them again.
	Deferred       int       `json:"deferred"`
	CountedSince   time.Time `json:"counted_since"` // since when Duplicate … Deferred and the timeline count
	OldestPendingS float64   `json:"oldest_pending_seconds"`
	SuccessRate    *float64  `json:"success_rate"` // delivered over delivered and dead (or failed); null before any
	Health         *health   `json:"health,omitempty"`
}

// storedQueue is one queue of an open inbox store, as the history and
// the metrics see it: served by a handler of the running config, or left
// over from a handler that was renamed or removed (orphaned when events
// of it are still pending).
type storedQueue struct {
	name   string
	rt     *inboxRuntime
	served bool
	counts map[inbox.State]int
	err    error // the store could not be read
}

// oldestPending is the age of the queue's oldest pending event; zero
// when none is pending.
func (q storedQueue) oldestPending() time.Duration {
	if q.counts[inbox.Pending] == 0 {
		return 0
	}
	if at, ok, err := q.rt.store.OldestPending(q.name); err == nil && ok {
		return time.Since(at)
	}
	return 0
}

// storedQueues lists every queue of the open inbox stores, by name: the
// ones the running config serves, and any other the store holds events
// of.
func storedQueues() []storedQueue {
	var out []storedQueue
	for _, rt := range openRuntimes() {
		counts, err := rt.store.Counts()
		served := map[string]bool{}
		for _, q := range rt.currentQueues() {
			served[q.Name] = true
			out = append(out, storedQueue{name: q.Name, rt: rt, served: true, counts: counts[q.Name], err: err})
		}
		for name, c := range counts {
			if !served[name] {
				out = append(out, storedQueue{name: name, rt: rt, counts: c})
			}
		}
	}
	slices.SortFunc(out, func(a, b storedQueue) int { return strings.Compare(a.name, b.name) })
	return out
}

// findQueue is the stored queue named name, served or not.
func findQueue(name string) (storedQueue, bool) {
	for _, q := range storedQueues() {
		if q.name == name {
			return q, true
		}
	}
	return storedQueue{}, false
}

func summaries() []handlerSummary {
	out := []handlerSummary{}
	seen := map[string]bool{}
	now := time.Now()
	for _, q := range storedQueues() {
		c := q.counts
		s := handlerSummary{Handler: q.name, Inbox: true, Served: q.served, Pending: c[inbox.Pending],
			Delivered: c[inbox.Delivered], Dead: c[inbox.Dead], Damaged: c[inbox.Damaged]}
		s.Orphaned = !q.served && s.Pending > 0
		s.OldestPendingS = q.oldestPending().Seconds()
		s.SuccessRate = rate(s.Delivered, s.Dead)
		if q.err != nil {
			s.Error = "the inbox could not be read"
		}
		if rh := recentHandlerNamed(q.name); rh != nil {
			s.addTally(rh.tally, now)
		}
		s.Total = s.Pending + s.Delivered + s.Dead + s.Damaged + s.Duplicate + s.Ignored + s.Refused + s.Deferred
		out = append(out, s)
		seen[q.name] = true
	}
	for _, rh := range recentHandlers() {
		if seen[rh.name] {
			continue
		}
		s := handlerSummary{Handler: rh.name, Served: true}
		s.addTally(rh.tally, now)
		s.Total = s.Delivered + s.Failed + s.Duplicate + s.Ignored + s.Refused + s.Deferred
		s.SuccessRate = rate(s.Delivered, s.Failed)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b handlerSummary) int { return strings.Compare(a.Handler, b.Handler) })
	return out
}

// addTally adds to a summary what its handler counted in memory since
// it started: for an inbox what never became an event (its store counts
// the rest), for a handler without one everything; and the app's health.
func (s *handlerSummary) addTally(t *handlerTally, now time.Time) {
	since, totals, failed, app := t.snapshot(now)
	s.Duplicate, s.Ignored, s.Refused, s.Deferred = totals[classDuplicate], totals[classIgnored], totals[classRefused], totals[classDeferred]
	if !s.Inbox {
		s.Delivered, s.Failed = totals[classDelivered], totals[classFailed]
	}
	hl := healthOf(failed, app, s.Pending, now, time.Local)
	s.CountedSince, s.Health = since, &hl
}

func rate(ok, bad int) *float64 {
	if ok+bad == 0 {
		return nil
	}
	r := float64(ok) / float64(ok+bad)
	return &r
}

// openRuntimes are the open inbox stores (the inboxes pool's), for the
// history and the metrics.
func openRuntimes() []*inboxRuntime {
	var out []*inboxRuntime
	inboxes.Range(func(_, v any) bool {
		out = append(out, v.(*inboxRuntime))
		return true
	})
	return out
}
