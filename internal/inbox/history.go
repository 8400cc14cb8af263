package inbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrNotReplayable is returned for a replay of an event that is still
// pending.
var ErrNotReplayable = errors.New("inbox: only delivered and dead events can be replayed")

// Lookup returns the event with the given id, without its body.
func (s *Store) Lookup(id string) (*Event, error) {
	var e *Event
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIDs).Get([]byte(id))
		if len(v) != 8 {
			return ErrNotFound
		}
		var err error
		e, err = getEvent(tx.Bucket(bucketEvents), binary.BigEndian.Uint64(v))
		return err
	})
	return e, err
}

// Query selects events for List; empty fields select everything.
type Query struct {
	Queue  string
	State  State
	Name   string
	Limit  int    // at most this many; 0 means 50
	Before string // an event id: only events that arrived before it
	// Scan bounds how many events one List reads looking for matches
	// (0 means 100,000), so that a filter that matches nothing does not
	// read the whole file.
	Scan int
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
	err = s.db.View(func(tx *bolt.Tx) error {
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
		for read := 0; k != nil; k, v = c.Prev() {
			if read++; read > scan {
				return nil
			}
			e, err := decodeEvent(v)
			if err != nil {
				return err
			}
			if (q.Queue != "" && e.Queue != q.Queue) || (q.State != "" && e.State != q.State) || (q.Name != "" && e.Name != q.Name) {
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
		e, err := getEvent(tx.Bucket(bucketEvents), binary.BigEndian.Uint64(v))
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

// ReplayAll queues every event of queue in state again, as Replay does,
// and returns how many.
func (s *Store) ReplayAll(queue string, state State, now time.Time) (int, error) {
	if state != Dead && state != Delivered {
		return 0, ErrNotReplayable
	}
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		n = 0
		var matches []*Event
		err := tx.Bucket(bucketEvents).ForEach(func(_, v []byte) error {
			e, err := decodeEvent(v)
			if err != nil {
				return err
			}
			if e.Queue == queue && e.State == state {
				matches = append(matches, e)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, e := range matches { // not while iterating: requeue writes to the bucket
			if err := requeue(tx, e, now); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// requeue makes a settled event pending again at a new place.
func requeue(tx *bolt.Tx, e *Event, now time.Time) error {
	if e.State != Delivered && e.State != Dead {
		return fmt.Errorf("%w (event %s is %s)", ErrNotReplayable, e.ID, e.State)
	}
	if tx.Bucket(bucketBodies).Get(seqKey(e.Seq)) == nil {
		return fmt.Errorf("inbox: event %s has no body left to replay", e.ID)
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
