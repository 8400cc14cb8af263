package inbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrNotReplayable is returned for a replay of an event that is still
// pending.
var ErrNotReplayable = errors.New("inbox: only delivered and dead events can be replayed")

// Lookup returns the event with the given id, without its body.
func (s *Store) Lookup(id string) (*Event, error) {
	var e *Event
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIDs).Get([]byte(id))
		if len(v) != 8 {
			return ErrNotFound
		}
		var err error
		e, err = readEvent(tx, binary.BigEndian.Uint64(v))
		return err
	})
	return e, err
}

// readEvent is the event with sequence seq as the history shows it: a
// record that does not decode is shown Damaged, with what could be read
// of it and why.
func readEvent(tx *bolt.Tx, seq uint64) (*Event, error) {
	v := tx.Bucket(bucketEvents).Get(seqKey(seq))
	if v == nil {
		return nil, ErrNotFound
	}
	return recordView(tx, seq, v), nil
}

// recordView is readEvent of the record v, read already.
func recordView(tx *bolt.Tx, seq uint64, v []byte) *Event {
	e, err := decodeEvent(v)
	if err != nil {
		return unreadable(tx, seq, v, err)
	}
	if tx.Bucket(bucketDamaged).Get(seqKey(seq)) != nil {
		// A record that decodes but was set aside: its body was damaged.
		d := unreadable(tx, seq, nil, errCorrupt)
		e.State, e.LastError = Damaged, d.LastError
	}
	return e
}

// Query selects events for List; empty fields select everything.
type Query struct {
	Queue string
	State State
	Name  string
	// Text selects events whose id, idempotency key or order key
	// contains it, or whose body does (a message id, wamid.…): a scan
	// within the other filters, bounded by Scan.
	Text   string
	Failed bool      // only events that failed at least one attempt
	Since  time.Time // received at or after; zero: no bound
	Until  time.Time // received before; zero: no bound
	Limit  int       // at most this many; 0 means 50
	Before string    // an event id: only events that arrived before it
	// Scan bounds how many events one List reads looking for matches
	// (0 means 100,000), so that a filter that matches nothing does not
	// read the whole file at once; a page that stopped there has a next
	// page all the same, which goes on from where it stopped.
	Scan int
}

// selects reports whether e passes q's filters other than its queue and
// its text.
func (q Query) selects(e *Event) bool {
	return (q.State == "" || e.State == q.State) && (q.Name == "" || e.Name == q.Name) && (!q.Failed || e.Attempts > 0) &&
		(q.Since.IsZero() || !e.ReceivedAt.Before(q.Since)) && (q.Until.IsZero() || e.ReceivedAt.Before(q.Until))
}

// textIn reports whether q's text is in e's id, idempotency key or order
// key (the body is the store's to search).
func (q Query) textIn(e *Event) bool {
	return strings.Contains(e.ID, q.Text) || strings.Contains(e.Key, q.Text) || strings.Contains(e.OrderKey, q.Text)
}

// List returns events matching q, newest first, without their bodies,
// and the id to pass as Before for the next page ("" when there is none).
func (s *Store) List(q Query) (events []*Event, next string, err error) {
	limit, scan := q.Limit, q.Scan
	if limit <= 0 {
		limit = 50
	}
	if scan <= 0 {
		scan = 100000
	}
	err = s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		k, v := c.Last()
		if q.Before != "" {
			seq := tx.Bucket(bucketIDs).Get([]byte(q.Before))
			if len(seq) != 8 {
				return ErrNotFound
			}
			c.Seek(seq)
			k, v = c.Prev()
		}
		text, bodies := []byte(q.Text), tx.Bucket(bucketBodies)
		var lastK, lastV []byte
		for read := 0; k != nil; k, v = c.Prev() {
			if read++; read > scan {
				// Read as far as one page may: the next page goes on from
				// the last event read, matched or not.
				next = recordView(tx, binary.BigEndian.Uint64(lastK), lastV).ID
				return nil
			}
			lastK, lastV = k, v
			if len(text) > 0 && !bytes.Contains(v, text) && !bytes.Contains(bodies.Get(k), text) {
				continue // a record holds its id and keys as they are: neither has the text
			}
			e := recordView(tx, binary.BigEndian.Uint64(k), v)
			if e.Queue == "" && q.Queue != "" {
				e.Queue = q.Queue // unreadable, its queue unknown: listed everywhere rather than nowhere
			}
			if (q.Queue != "" && e.Queue != q.Queue) || !q.selects(e) {
				continue
			}
			if len(text) > 0 && !q.textIn(e) && !bytes.Contains(bodies.Get(k), text) {
				continue
			}
			if len(events) == limit {
				next = events[len(events)-1].ID
				return nil
			}
			events = append(events, e)
		}
		return nil
	})
	return events, next, err
}

// Replay queues a delivered or dead event again, behind the pending
// events of its order key, for one manual attempt now. Its attempt count
// goes on from where it was.
func (s *Store) Replay(id string, now time.Time) (*Event, error) {
	var out *Event
	err := s.update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIDs).Get([]byte(id))
		if len(v) != 8 {
			return ErrNotFound
		}
		e, err := readEvent(tx, binary.BigEndian.Uint64(v))
		if err != nil {
			return err
		}
		if err := requeue(tx, e, now); err != nil {
			return err
		}
		out = e
		return nil
	})
	return out, err
}

// ReplayMatching acts on every event of q.Queue that q selects: a dead
// (or delivered) one is queued again, as Replay does; a pending one that
// failed and waits for its next attempt (q.Failed) is made due now,
// unless busy says an attempt holds it. It returns how many; one that
// cannot be replayed (damaged, its body erased) is left as it is. One
// transaction.
func (s *Store) ReplayMatching(q Query, now time.Time, busy func(queue, order string, seq uint64) bool) (int, error) {
	if err := q.replayable(); err != nil {
		return 0, err
	}
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		n = 0
		var matches []*Event
		bodies := tx.Bucket(bucketBodies)
		text := []byte(q.Text)
		err := tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			if len(text) > 0 && !bytes.Contains(v, text) && !bytes.Contains(bodies.Get(k), text) {
				return nil // as in List: neither its record nor its body has the text
			}
			e, err := decodeEvent(v)
			if err != nil || e.Queue != q.Queue || !q.selects(e) {
				return nil // a damaged record is not replayable
			}
			if len(text) > 0 && !q.textIn(e) && !bytes.Contains(bodies.Get(k), text) {
				return nil
			}
			matches = append(matches, e)
			return nil
		})
		if err != nil {
			return err
		}
		for _, e := range matches { // not while iterating: both write to the bucket
			done := false
			switch {
			case e.State != Pending:
				err = requeue(tx, e, now)
				done = err == nil
			case busy == nil || !busy(e.Queue, e.OrderKey, e.Seq):
				done, err = retryNow(tx, e, now)
			}
			if errors.Is(err, ErrNotReplayable) {
				continue
			}
			if err != nil {
				return err
			}
			if done {
				n++
			}
		}
		return nil
	})
	return n, err
}

// replayable checks that q selects what ReplayMatching can act on.
func (q Query) replayable() error {
	switch {
	case q.Queue == "":
		return errors.New("inbox: a queue is required to replay events")
	case q.State == Dead, q.State == Delivered, q.State == Pending && q.Failed:
		return nil
	}
	return ErrNotReplayable
}

// retryNow makes a head that failed and waits for its next attempt due
// now, in the due index, its pending entry and its record alike. One
// that is due already is left alone: an attempt may hold it (the caller
// also leaves out those it knows are in flight), and that attempt's
// result must find it where it was.
func retryNow(tx *bolt.Tx, e *Event, now time.Time) (bool, error) {
	due := tx.Bucket(bucketDue)
	if !e.NextAt.After(now) || due.Get(dueKey(e.Queue, e.NextAt, e.Seq)) == nil {
		return false, nil
	}
	if err := due.Delete(dueKey(e.Queue, e.NextAt, e.Seq)); err != nil {
		return false, err
	}
	e.NextAt, e.dueAt = now, now
	if err := due.Put(dueKey(e.Queue, now, e.Seq), []byte(e.OrderKey)); err != nil {
		return false, err
	}
	if err := tx.Bucket(bucketPending).Put(pendingKey(e), pendingValue(e)); err != nil {
		return false, err
	}
	return true, putEvent(tx.Bucket(bucketEvents), e)
}

// requeue makes a settled event pending again at a new place.
func requeue(tx *bolt.Tx, e *Event, now time.Time) error {
	if e.State != Delivered && e.State != Dead {
		return fmt.Errorf("%w (event %s is %s)", ErrNotReplayable, e.ID, e.State)
	}
	if tx.Bucket(bucketDamaged).Get(seqKey(e.Seq)) != nil {
		return fmt.Errorf("%w (event %s is damaged)", ErrNotReplayable, e.ID)
	}
	if tx.Bucket(bucketBodies).Get(seqKey(e.Seq)) == nil {
		return fmt.Errorf("%w (event %s has no body left to replay)", ErrNotReplayable, e.ID)
	}
	pos, err := tx.Bucket(bucketEvents).NextSequence()
	if err != nil {
		return err
	}
	if err := addCount(tx, e.Queue, e.State, -1); err != nil {
		return err
	}
	e.State, e.Pos, e.Manual, e.NextAt, e.DeliveredAt = Pending, pos, true, now, time.Time{}
	if err := putEvent(tx.Bucket(bucketEvents), e); err != nil {
		return err
	}
	if err := addCount(tx, e.Queue, Pending, 1); err != nil {
		return err
	}
	return addPending(tx, e)
}

// Move gives every event of queue from to queue to, and returns how many
// it moved: the way to deliver what a renamed handler's queue holds.
// Settled events keep their place in the history; pending ones go
// behind the events already pending in to, conversation by
// conversation, in their own order.
func (s *Store) Move(from, to string, now time.Time) (int, error) {
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		n = 0
		var moving []*Event
		damaged := map[uint64]Damage{}
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k)
			if e, err := decodeEvent(v); err == nil && e.Queue == from {
				if d, ok := decodeDamage(tx.Bucket(bucketDamaged).Get(k)); ok {
					damaged[seq] = d
				}
				moving = append(moving, e)
			} else if d, ok := decodeDamage(tx.Bucket(bucketDamaged).Get(k)); ok && d.Queue == from {
				damaged[seq] = d
			}
		}
		for _, e := range moving { // not while iterating: this writes to the bucket
			if err := moveEvent(tx, e, to, damaged[e.Seq].Queue != ""); err != nil {
				return err
			}
			n++
		}
		for seq, d := range damaged {
			d.Queue = to
			if err := tx.Bucket(bucketDamaged).Put(seqKey(seq), encodeDamage(d)); err != nil {
				return err
			}
		}
		return moveCounts(tx, from, to)
	})
	return n, err
}

// moveEvent rewrites one event into queue to; a pending one leaves its
// old queue's indexes and joins to's behind what is pending there.
func moveEvent(tx *bolt.Tx, e *Event, to string, setAside bool) error {
	if e.State != Pending || setAside {
		e.Queue = to
		return putEvent(tx.Bucket(bucketEvents), e)
	}
	if err := tx.Bucket(bucketArrivals).Delete(arrivalKey(e.Queue, e.Seq)); err != nil {
		return err
	}
	pend := tx.Bucket(bucketPending)
	if v := pend.Get(pendingKey(e)); v != nil {
		if at, seq, err := splitPendingValue(v); err == nil {
			if err := tx.Bucket(bucketDue).Delete(dueKey(e.Queue, at, seq)); err != nil {
				return err
			}
		}
		if err := pend.Delete(pendingKey(e)); err != nil {
			return err
		}
	}
	pos, err := tx.Bucket(bucketEvents).NextSequence()
	if err != nil {
		return err
	}
	e.Queue, e.Pos = to, pos
	if err := putEvent(tx.Bucket(bucketEvents), e); err != nil {
		return err
	}
	return addPending(tx, e)
}

// moveCounts adds from's counts to to's and clears from's.
func moveCounts(tx *bolt.Tx, from, to string) error {
	b := tx.Bucket(bucketCounts)
	for _, state := range States {
		k := append(append([]byte(from), 0), state...)
		v := b.Get(k)
		if len(v) != 8 {
			continue
		}
		if err := addCount(tx, to, state, int(binary.BigEndian.Uint64(v))); err != nil {
			return err
		}
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
