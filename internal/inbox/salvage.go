package inbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Check and Salvage are the way out of a damaged file: what can be read
// of it, and a copy of every readable event into a new file. The file is
// read in two ways. Through bbolt, read-only (its free list, which a
// file cut short may have lost, is not needed), bucket by bucket, with
// bbolt's panics and the faults of reading past the end of the file
// contained. And, when that did not read everything, page by page: every
// leaf of the file is scanned for event records, which carry their own
// checksum, so that a record is taken only when it is whole. The two are
// merged by the most advanced copy of each event (bbolt writes pages
// anew, so a page walk may also find older copies).

// Report is what Check or Salvage found in a file.
type Report struct {
	Path string
	// OpenError is why bbolt could not open the file ("" when it could).
	OpenError string
	// Walked is true when bbolt read every bucket to its end.
	Walked bool
	// PageScan is true when the file was also read page by page.
	PageScan bool
	// Events counts the readable events, by queue and state.
	Events map[string]map[State]int
	// Unreadable counts event records that bbolt found but that could not
	// be read; NoBody counts events whose body was lost or damaged
	// (Salvage keeps them, Damaged, so that the history says so).
	Unreadable, NoBody int
	// Written is how many events Salvage wrote to the new file.
	Written int
}

// Readable is the number of events found whole.
func (r *Report) Readable() int {
	n := 0
	for _, byState := range r.Events {
		for _, c := range byState {
			n += c
		}
	}
	return n
}

// Check reads path without changing it and reports what is readable.
func Check(path string) (*Report, error) {
	r, _, err := readFile(path)
	return r, err
}

// Salvage copies every readable event of path into a new file at out,
// which must not exist yet; path is only read.
func Salvage(path, out string) (*Report, error) {
	if _, err := os.Stat(out); err == nil {
		return nil, fmt.Errorf("inbox: %s exists already: salvage writes a new file", out)
	}
	r, events, err := readFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Open(out, time.Second)
	if err != nil {
		return nil, err
	}
	if err := s.importEvents(events); err != nil {
		_ = s.Close()
		return nil, err
	}
	r.Written = len(events)
	return r, s.Close()
}

// recovered is one event found in the file, with its body when that was
// found whole.
type recovered struct {
	e    *Event
	body []byte
	ok   bool // body found and matching the record's checksum
}

// readFile reads every event of path it can, in both ways when needed.
func readFile(path string) (*Report, []*recovered, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, nil, fmt.Errorf("inbox: %w", err)
	}
	r := &Report{Path: path, Events: map[string]map[State]int{}}
	found := map[uint64]*recovered{}
	bodies := map[uint64][]byte{}
	db, err := openFile(path, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if fe, ok := errors.AsType[*FileError](err); ok && fe.Locked {
		return nil, nil, err
	}
	if err != nil {
		r.OpenError = err.Error()
	} else {
		r.Walked = walkBuckets(db, found, bodies, &r.Unreadable)
		_ = db.Close()
	}
	if !r.Walked {
		r.PageScan = true
		if err := scanPages(path, found, bodies); err != nil {
			return nil, nil, err
		}
	}
	events := make([]*recovered, 0, len(found))
	for _, seq := range slices.Sorted(maps.Keys(found)) {
		rec := found[seq]
		if b, ok := bodies[seq]; ok && (!rec.e.summed || bodySum(b) == rec.e.BodySum) {
			rec.body, rec.ok = b, true
		} else {
			r.NoBody++
		}
		if r.Events[rec.e.Queue] == nil {
			r.Events[rec.e.Queue] = map[State]int{}
		}
		r.Events[rec.e.Queue][rec.e.State]++
		events = append(events, rec)
	}
	return r, events, nil
}

// walkBuckets reads the events and bodies buckets through bbolt; it
// reports whether both were read to their end.
func walkBuckets(db *bolt.DB, found map[uint64]*recovered, bodies map[uint64][]byte, unreadable *int) (whole bool) {
	defer safeFaults()()
	defer func() {
		if recover() != nil {
			whole = false
		}
	}()
	err := db.View(func(tx *bolt.Tx) error {
		evb, bb := tx.Bucket(bucketEvents), tx.Bucket(bucketBodies)
		if evb == nil || bb == nil {
			return errors.New("no events bucket")
		}
		err := evb.ForEach(func(k, v []byte) error {
			e, err := decodeEvent(v)
			if err != nil || len(k) != 8 {
				*unreadable++
				return nil
			}
			keep(found, &recovered{e: e})
			return nil
		})
		if err != nil {
			return err
		}
		return bb.ForEach(func(k, v []byte) error {
			if len(k) == 8 {
				bodies[binary.BigEndian.Uint64(k)] = slices.Clone(v)
			}
			return nil
		})
	})
	return err == nil
}

// keep records rec unless a more advanced copy of its event is known.
func keep(found map[uint64]*recovered, rec *recovered) {
	if old, ok := found[rec.e.Seq]; ok && !moreAdvanced(rec.e, old.e) {
		return
	}
	found[rec.e.Seq] = rec
}

// moreAdvanced reports whether a is a later copy of an event than b: an
// event only ever gains attempts, and leaves pending once.
func moreAdvanced(a, b *Event) bool {
	if a.Attempts != b.Attempts {
		return a.Attempts > b.Attempts
	}
	return a.State != Pending && b.State == Pending
}

// bbolt's page layout, as its file format documents it: a 16-byte header
// (id, flags, count, overflow), then count elements; a leaf element is
// flags, pos, ksize, vsize (4 bytes each), its key and value found pos
// bytes after the element. A bucket stored inline is a page inside its
// parent's value, after a 16-byte bucket header whose root is 0.
const (
	pageHeaderSize  = 16
	leafElementSize = 16
	leafPageFlag    = 0x02
	bucketLeafFlag  = 0x01
	bucketHeader    = 16
	metaPageSizeAt  = pageHeaderSize + 8 // magic, version, then page size
	defaultPageSize = 4096
)

// scanPages reads every leaf page of the file for event records (taken
// when their checksum holds) and for values that may be bodies (taken
// when an event's body checksum matches them).
func scanPages(path string, found map[uint64]*recovered, bodies map[uint64][]byte) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	pageSize := defaultPageSize
	if len(data) >= metaPageSizeAt+4 {
		if ps := int(binary.LittleEndian.Uint32(data[metaPageSizeAt:])); ps >= 512 && ps <= 1<<16 && ps&(ps-1) == 0 {
			pageSize = ps
		}
	}
	candidates := map[uint64][][]byte{}
	for off := 0; off+pageHeaderSize <= len(data); off += pageSize {
		flags := binary.LittleEndian.Uint16(data[off+8:])
		overflow := int(binary.LittleEndian.Uint32(data[off+12:]))
		end := min(len(data), off+(overflow+1)*pageSize)
		if flags == leafPageFlag {
			scanLeaf(data[off:end], found, candidates, 0)
		}
		if overflow > 0 && end > off+pageSize {
			off = end - pageSize
		}
	}
	for seq, vs := range candidates {
		rec, ok := found[seq]
		if _, have := bodies[seq]; have || !ok {
			continue
		}
		for _, v := range vs {
			if rec.e.summed && bodySum(v) == rec.e.BodySum {
				bodies[seq] = v
				break
			}
		}
	}
	return nil
}

// scanLeaf reads one leaf page (or inline bucket); every bound is
// checked, since the page may be anything.
func scanLeaf(p []byte, found map[uint64]*recovered, candidates map[uint64][][]byte, depth int) {
	if len(p) < pageHeaderSize || depth > 4 {
		return
	}
	count := int(binary.LittleEndian.Uint16(p[10:]))
	for i := range count {
		el := pageHeaderSize + i*leafElementSize
		if el+leafElementSize > len(p) {
			return
		}
		flags := binary.LittleEndian.Uint32(p[el:])
		pos := int(binary.LittleEndian.Uint32(p[el+4:]))
		ksize := int(binary.LittleEndian.Uint32(p[el+8:]))
		vsize := int(binary.LittleEndian.Uint32(p[el+12:]))
		start := el + pos
		if pos < 0 || ksize < 0 || vsize < 0 || start < 0 || start+ksize+vsize > len(p) || start+ksize+vsize < start {
			continue
		}
		k, v := p[start:start+ksize], p[start+ksize:start+ksize+vsize]
		if flags&bucketLeafFlag != 0 {
			if len(v) > bucketHeader && binary.LittleEndian.Uint64(v) == 0 {
				scanLeaf(v[bucketHeader:], found, candidates, depth+1)
			}
			continue
		}
		if len(k) != 8 {
			continue
		}
		seq := binary.BigEndian.Uint64(k)
		if e, err := decodeEvent(v); err == nil && e.summed && e.Seq == seq {
			keep(found, &recovered{e: e})
			continue
		}
		candidates[seq] = append(candidates[seq], slices.Clone(v))
	}
}

// importEvents writes recovered events, with their sequence numbers,
// states and keys, into a new store, and builds its indexes from them.
// An event whose body was lost is kept as Damaged, so that the history
// shows what was there.
func (s *Store) importEvents(events []*recovered) error {
	return s.updateNow(func(tx *bolt.Tx) error {
		evb := tx.Bucket(bucketEvents)
		var last uint64
		for _, rec := range events {
			e := rec.e
			if !rec.ok {
				if e.State == Pending {
					e.State = Damaged
				}
				rec.body = nil
			}
			if err := putEvent(evb, e); err != nil {
				return err
			}
			if rec.ok {
				if err := tx.Bucket(bucketBodies).Put(seqKey(e.Seq), rec.body); err != nil {
					return err
				}
			} else {
				d := Damage{Queue: e.Queue, Seq: e.Seq, OrderKey: e.OrderKey, ID: e.ID, At: time.Now(),
					Reason: "salvage: its body was lost with the damaged file"}
				if err := tx.Bucket(bucketDamaged).Put(seqKey(e.Seq), encodeDamage(d)); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bucketIDs).Put([]byte(e.ID), seqKey(e.Seq)); err != nil {
				return err
			}
			if e.State == Pending {
				if err := tx.Bucket(bucketPending).Put(pendingKey(e), pendingValue(e)); err != nil {
					return err
				}
			}
			if err := holdKeys(tx, e.Keys, e.KeysUntil, e.Seq); err != nil {
				return err
			}
			if err := addCount(tx, e.Queue, e.State, 1); err != nil {
				return err
			}
			last = max(last, e.Seq)
		}
		if err := evb.SetSequence(last); err != nil {
			return err
		}
		// The due heads and arrivals are rebuilt from the pending index.
		for _, b := range [][]byte{bucketDue, bucketArrivals} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return ensureIndexes(tx)
	})
}

// Backup writes a consistent copy of the store's file to w, from one read
// transaction, while the store keeps working; it returns the bytes
// written.
func (s *Store) Backup(w io.Writer) (n int64, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// Compact rewrites the file at path (no process may have it open) into a
// new file holding only its live data, then puts it in the file's place;
// it returns the sizes before and after. bbolt never shrinks a file by
// itself: after a large backlog drained, the file keeps its size.
func Compact(path string) (before, after int64, err error) {
	info, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("inbox: %w", err)
	}
	src, err := openFile(path, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return 0, 0, err
	}
	defer src.Close()
	tmp := path + ".compacting"
	_ = os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return 0, 0, fmt.Errorf("inbox: %w", err)
	}
	err = func() (err error) {
		defer safeFaults()()
		defer contain(path, &err)
		return bolt.Compact(dst, src, 64<<20)
	}()
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, 0, err
	}
	out, err := os.Stat(tmp)
	if err != nil {
		return 0, 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, 0, fmt.Errorf("inbox: %w", err)
	}
	return info.Size(), out.Size(), nil
}
