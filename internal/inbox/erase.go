package inbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Erasure names the events to erase, for the personal data WhatsApp
// payloads carry: one event by id, every event of an order key (a
// conversation), or every event whose body holds a phone number or BSUID.
// Exactly one is set.
type Erasure struct {
	ID, OrderKey, Phone string
}

func (x Erasure) check() error {
	set := 0
	for _, v := range []string{x.ID, x.OrderKey, x.Phone} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return errors.New("inbox: erase one event id, one order key or one phone number at a time")
	}
	if x.Phone != "" && len(x.Phone) < 5 {
		return errors.New("inbox: a phone number or BSUID to erase by must have at least 5 characters")
	}
	return nil
}

// Erase deletes every event the erasure names, in any state (a pending
// one is then never delivered), with its body, headers, attempt log and
// dedupe keys, and then overwrites the file's free pages, where bbolt
// would otherwise keep the old bytes until it reuses them. It returns the
// number of events erased.
func (s *Store) Erase(x Erasure) (int, error) {
	if err := x.check(); err != nil {
		return 0, err
	}
	n := 0
	err := s.updateNow(func(tx *bolt.Tx) error {
		n = 0
		var seqs []uint64
		evb, bodies := tx.Bucket(bucketEvents), tx.Bucket(bucketBodies)
		if x.ID != "" {
			if v := tx.Bucket(bucketIDs).Get([]byte(x.ID)); len(v) == 8 {
				seqs = append(seqs, binary.BigEndian.Uint64(v))
			}
		} else {
			err := evb.ForEach(func(k, v []byte) error {
				seq := binary.BigEndian.Uint64(k)
				e := peekEvent(v)
				if full, err := decodeEvent(v); err == nil {
					e = full
				}
				if (x.OrderKey != "" && e.OrderKey == x.OrderKey) ||
					(x.Phone != "" && bytes.Contains(bodies.Get(k), []byte(x.Phone))) {
					seqs = append(seqs, seq)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		for _, seq := range seqs {
			if err := eraseEvent(tx, seq); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil || n == 0 {
		return n, err
	}
	return n, s.scrubFreePages()
}

// eraseEvent removes one event and everything that points at it.
func eraseEvent(tx *bolt.Tx, seq uint64) error {
	evb := tx.Bucket(bucketEvents)
	c := evb.Cursor()
	k, v := c.Seek(seqKey(seq))
	if k == nil || binary.BigEndian.Uint64(k) != seq {
		return nil
	}
	e, err := decodeEvent(v)
	if err != nil {
		e = unreadable(tx, seq, v, err)
	}
	if e.State == Pending && e.Queue != "" {
		if err := erasePending(tx, e.Queue, e.OrderKey, seq); err != nil {
			return err
		}
	}
	if e.Queue != "" {
		if err := tx.Bucket(bucketArrivals).Delete(arrivalKey(e.Queue, seq)); err != nil {
			return err
		}
	}
	if err := dropKeysOf(tx, seq); err != nil {
		return err
	}
	return forget(tx, c, seq, e)
}

// erasePending takes a pending event out of its order key's entries and,
// when it was a head, out of the due index, making the next event of its
// order key due.
func erasePending(tx *bolt.Tx, queue, order string, seq uint64) error {
	pend := tx.Bucket(bucketPending)
	prefix := pendingPrefix(queue, order)
	c := pend.Cursor()
	wasHead := false
	first := true
	for k, v := c.Seek(prefix); k != nil && hasPendingPrefix(k, prefix); k, v = c.Next() {
		at, s, err := splitPendingValue(v)
		if err == nil && s == seq {
			if first || order == "" {
				wasHead = true
				if err := tx.Bucket(bucketDue).Delete(dueKey(queue, at, seq)); err != nil {
					return err
				}
			}
			if err := c.Delete(); err != nil {
				return err
			}
			break
		}
		first = false
	}
	if !wasHead || order == "" {
		return nil
	}
	next, v := pend.Cursor().Seek(prefix)
	if next == nil || !hasPendingPrefix(next, prefix) {
		return nil
	}
	at, nseq, err := splitPendingValue(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketDue).Put(dueKey(queue, at, nseq), []byte(order))
}

// dropKeysOf deletes the dedupe keys the event holds: a redelivery of an
// erased event is a new event.
func dropKeysOf(tx *bolt.Tx, seq uint64) error {
	b := tx.Bucket(bucketKeys)
	var held [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if len(v) == 16 && binary.BigEndian.Uint64(v[8:]) == seq {
			held = append(held, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range held {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// scrubFreePages overwrites the pages bbolt freed (the erased events'
// bytes among them): it fills a scratch bucket with zeros until bbolt has
// handed it every free page, then deletes it, so the pages it frees again
// hold only zeros.
func (s *Store) scrubFreePages() error {
	scratch := []byte("scrub")
	pageSize := s.db.Info().PageSize
	zeros := make([]byte, pageSize/4)
	for round := 0; round < 1000; round++ {
		free := s.db.Stats().FreePageN + s.db.Stats().PendingPageN
		if free == 0 {
			break
		}
		err := s.updateNow(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists(scratch)
			if err != nil {
				return err
			}
			base := b.Stats().KeyN
			for i := range 4 * free {
				if err := b.Put(binary.BigEndian.AppendUint64(nil, uint64(base+i)), zeros); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("inbox: scrubbing freed pages: %w", err)
		}
		if s.db.Stats().FreePageN == 0 {
			break
		}
	}
	return s.updateNow(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(scratch); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
		return nil
	})
}
