package inbox

import (
	"bytes"
	"encoding/binary"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The dedupe keys of stored events live in the store, written in the
// same transaction as their events: a sender's redelivery after a
// restart (or a kill between the fsync and the answer) finds them and
// is a duplicate, not a second event with an id the app cannot match.

// heldKey reports whether one of keys is held at now, and the id of the
// event that holds it ("" when it is gone or unreadable).
func heldKey(tx *bolt.Tx, keys []string, now time.Time) (holder string, held bool) {
	b := tx.Bucket(bucketKeys)
	for _, k := range keys {
		v := b.Get([]byte(k))
		if v == nil || !keyHeld(tx, v, now) {
			continue
		}
		seq := binary.BigEndian.Uint64(v[8:])
		if seq != 0 {
			if e, err := getEvent(tx.Bucket(bucketEvents), seq); err == nil {
				holder = e.ID
			}
		}
		return holder, true
	}
	return "", false
}

// keyHeld reports whether a key entry still counts: its time is not up,
// or its event is still pending.
func keyHeld(tx *bolt.Tx, v []byte, now time.Time) bool {
	if len(v) != 16 {
		return false
	}
	if until := int64(binary.BigEndian.Uint64(v)); until > now.UnixNano() {
		return true
	}
	seq := binary.BigEndian.Uint64(v[8:])
	if seq == 0 {
		return false
	}
	e, err := getEvent(tx.Bucket(bucketEvents), seq)
	return err == nil && e.State == Pending
}

// holdKeys records keys as held until until by the event with sequence
// seq (0: by no stored event).
func holdKeys(tx *bolt.Tx, keys []string, until time.Time, seq uint64) error {
	if len(keys) == 0 {
		return nil
	}
	v := binary.BigEndian.AppendUint64(timeValue(until), seq)
	b := tx.Bucket(bucketKeys)
	for _, k := range keys {
		if err := b.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return nil
}

// expireKeys lets go of the keys whose time is up and whose event is not
// pending: found in a read transaction, deleted in small write ones, so
// that senders never wait behind a long sweep.
func (s *Store) expireKeys(now time.Time) error {
	var stale [][]byte
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketKeys).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if !keyHeld(tx, v, now) {
				stale = append(stale, bytes.Clone(k))
			}
		}
		return nil
	})
	for err == nil && len(stale) > 0 {
		batch := stale[:min(len(stale), 1000)]
		stale = stale[len(batch):]
		err = s.update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketKeys)
			for _, k := range batch {
				if v := b.Get(k); v != nil && !keyHeld(tx, v, now) {
					if err := b.Delete(k); err != nil {
						return err
					}
				}
			}
			return nil
		})
	}
	return err
}
