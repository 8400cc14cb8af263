package inbox

import (
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrClosed is returned for a write to a store that was closed.
var ErrClosed = errors.New("inbox: the store is closed")

// maxGroup bounds how many writes share one commit.
const maxGroup = 1000

// write is one caller's part of a commit group.
type write struct {
	fn   func(*bolt.Tx) error
	done chan error
	// lazy writes may wait up to lazyDelay for company: nobody waits on
	// their answer but the dispatcher, and losing one to a crash only
	// repeats a delivery.
	lazy bool
}

// lazyDelay is how long a group of lazy writes waits for more writes.
const lazyDelay = 2 * time.Millisecond

// update runs fn in a read-write transaction and returns once it is on
// disk. Writes that arrive while a commit is in progress share the next
// one: a group is whatever queued during the previous fsync, so an idle
// store commits at once and a busy one makes its groups as large as the
// disk's latency requires. (bbolt's DB.Batch instead holds every write
// for a fixed delay, and its groups then queue behind the writer lock in
// slices of that delay.) As with DB.Batch, fn may run twice, once in a
// group that failed and again alone: it must set everything it writes
// afresh on each run.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	return s.enqueue(write{fn: fn, done: make(chan error, 1)})
}

// updateLazy is update for a write that may wait a little to share a
// commit with others (recording an attempt's result).
func (s *Store) updateLazy(fn func(*bolt.Tx) error) error {
	return s.enqueue(write{fn: fn, done: make(chan error, 1), lazy: true})
}

func (s *Store) enqueue(w write) error {
	if !s.writes.send(w) {
		return ErrClosed
	}
	return <-w.done
}

// callQueue hands calls to the one goroutine that serves them (ranging
// over ch), and refuses them once closed: a call queued after that
// would wait for an answer forever.
type callQueue[T any] struct {
	mu     sync.RWMutex
	closed bool
	ch     chan T
}

func newCallQueue[T any](size int) *callQueue[T] { return &callQueue[T]{ch: make(chan T, size)} }

// send queues v, or reports false once the queue is closed.
func (q *callQueue[T]) send(v T) bool {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return false
	}
	q.ch <- v
	return true
}

// close refuses further calls; the serving goroutine's range ends once
// it took those queued.
func (q *callQueue[T]) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
}

// commitGroups is the store's one writer: it runs until Close closes the
// queue, and answers every write it took.
func (s *Store) commitGroups() {
	defer close(s.writerDone)
	// A write that trips over a damaged page fails alone (commit turns
	// the panic or the fault into an error); the writer goes on.
	defer safeFaults()()
	for first := range s.writes.ch {
		group := s.gather([]write{first})
		s.commitGroup(group)
		s.commits.Add(1)
	}
}

// gather adds to group whatever is queued; a group of lazy writes only
// also waits up to lazyDelay for more, until a write that is not lazy
// arrives.
func (s *Store) gather(group []write) []write {
	lazy := group[0].lazy
	var timeout <-chan time.Time
	if lazy {
		timeout = time.After(lazyDelay)
	}
	for len(group) < maxGroup {
		if !lazy {
			select {
			case w, ok := <-s.writes.ch:
				if !ok {
					return group
				}
				group = append(group, w)
				continue
			default:
				return group
			}
		}
		select {
		case w, ok := <-s.writes.ch:
			if !ok {
				return group
			}
			group = append(group, w)
			lazy = w.lazy
		case <-timeout:
			return group
		}
	}
	return group
}

// commitGroup commits group in one transaction; when that fails, each
// write is tried alone, so one bad write does not fail the others.
func (s *Store) commitGroup(group []write) {
	err := s.commit(func(tx *bolt.Tx) error {
		for _, w := range group {
			if err := w.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(group) == 1 {
		for _, w := range group {
			w.done <- err
		}
		return
	}
	for _, w := range group {
		w.done <- s.commit(w.fn)
	}
}

// commit runs fn in one write transaction; a panic of bbolt on a damaged
// page becomes the write's error.
func (s *Store) commit(fn func(*bolt.Tx) error) (err error) {
	defer contain(s.path, &err)
	return s.db.Update(fn)
}
