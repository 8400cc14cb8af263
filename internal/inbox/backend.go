package inbox

import "time"

// Backend is where a queue's events live: the bbolt Store (one file, one
// Caddy) or the RedisStore (shared by several instances). The
// dispatcher, the history and the glue work the same on both.
//
// The contract the dispatcher relies on: Append is durable when it
// returns, and dedupes on the events' keys in the same write; Due
// returns the due heads (each order key's first pending event, and
// events without an order key) that busy does not report as in flight
// in this process (a shared backend also keeps other instances from
// taking the same heads, with a lease), and sets aside as Damaged, and
// reports, the heads it cannot read; Settle records an attempt's result
// on such a head and makes the next event of its order key due.
type Backend interface {
	Append(events []*Event, shared ...string) error
	Due(queue string, now time.Time, limit int, busy func(orderKey string, seq uint64) bool) (due []*Event, damaged []Damage, next time.Time, err error)
	Settle(e *Event) error
	Expire(cutoff time.Time) (int, error)

	Counts() (map[string]map[State]int, error)
	OldestPending(queue string) (time.Time, bool, error)
	Lookup(id string) (*Event, error)
	List(q Query) (events []*Event, next string, err error)
	Body(seq uint64) ([]byte, error)
	Replay(id string, now time.Time) (*Event, error)
	ReplayMatching(q Query, now time.Time, busy func(queue, order string, seq uint64) bool) (int, error)
	Move(from, to string, now time.Time) (int, error)

	Close() error
}

var _ Backend = (*Store)(nil)
