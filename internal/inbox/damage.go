package inbox

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// What the store does when its own data goes wrong. A damaged record
// (a byte changed on disk, a body that no longer matches its checksum,
// a Redis blob that is not an event) is set aside as Damaged, with the
// reason, when the dispatcher comes to it: it holds back nothing, and
// everything else keeps flowing. A damaged file makes bbolt panic, on
// open and on some reads; those panics, and the faults of reading a
// file that was cut short under its memory map, are turned into a
// *FileError that names the file and says what to do.

// Damage is a record the store could not read, set aside as Damaged.
type Damage struct {
	Queue    string
	Seq      uint64
	OrderKey string
	ID       string // "" when even the id could not be read
	Reason   string
	At       time.Time // when it was set aside

	dueAt time.Time
}

// FileError is a store file that cannot be used as it is: damaged, or
// locked by another process.
type FileError struct {
	Path   string
	Locked bool
	Cause  string
}

func (e *FileError) Error() string {
	if e.Locked {
		return fmt.Sprintf("inbox file %s is locked by another process (another Caddy, or a caddy webhook inbox "+
			"command, has it open): each Caddy instance needs a file of its own; to share a queue between instances, "+
			"use inbox { redis … }", e.Path)
	}
	return fmt.Sprintf("inbox file %s is damaged (%s): Caddy cannot use it as it is. Stop Caddy; "+
		"`caddy webhook inbox check %s` shows what is readable, and `caddy webhook inbox salvage %s --output %s.salvaged` "+
		"copies every readable event into a new file; move the damaged file aside and put the salvaged one in its place "+
		"(README, Inbox, Recovery)", e.Path, e.Cause, e.Path, e.Path, e.Path)
}

// ErrDamaged matches every *FileError that is about damage.
var ErrDamaged = errors.New("inbox: the file is damaged")

func (e *FileError) Is(target error) bool { return target == ErrDamaged && !e.Locked }

// contain turns a panic of bbolt on a damaged file into a *FileError in
// *err. Call it deferred, after safeFaults, in the goroutine that reads.
func contain(path string, err *error) {
	if p := recover(); p != nil {
		*err = &FileError{Path: path, Cause: strings.TrimPrefix(fmt.Sprint(p), "runtime error: ")}
	}
}

// safeFaults makes a memory fault in this goroutine (a read past the end
// of a file cut short under its memory map) a panic that contain can
// recover, instead of a crash of the whole process; the returned
// function restores the goroutine's setting.
func safeFaults() func() {
	old := debug.SetPanicOnFault(true)
	return func() { debug.SetPanicOnFault(old) }
}

// view is db.View with damage contained.
func (s *Store) view(fn func(*bolt.Tx) error) (err error) {
	defer safeFaults()()
	defer contain(s.path, &err)
	return s.db.View(fn)
}

// unreadable is what the history shows of a record that does not decode:
// what could still be read of it (its id, queue and name, say), as
// Damaged, with the reason.
func unreadable(tx *bolt.Tx, seq uint64, record []byte, cause error) *Event {
	e := peekEvent(record)
	e.Seq, e.State, e.LastError = seq, Damaged, cause.Error()
	if v := tx.Bucket(bucketDamaged).Get(seqKey(seq)); v != nil {
		if d, ok := decodeDamage(v); ok {
			e.Queue, e.OrderKey, e.LastError = d.Queue, d.OrderKey, d.Reason
			if d.ID != "" {
				e.ID = d.ID
			}
		}
	}
	if e.ReceivedAt.IsZero() {
		e.ReceivedAt = idTime(e.ID)
	}
	return e
}

// peekEvent reads what it can of a record that does not decode whole:
// the leading strings (id, queue, name, key, order key, …, state), up to
// the first that does not parse.
func peekEvent(b []byte) *Event {
	e := new(Event)
	if len(b) < 2 {
		return e
	}
	r := reader{b: b[1:]}
	var state string
	for _, s := range []*string{&e.ID, &e.Queue, &e.Name, &e.Key, &e.OrderKey, &e.Method, &e.URI, &e.Host, &e.RemoteAddr, &state} {
		v := r.string()
		if r.err != nil || !printable(v) {
			break
		}
		*s = v
	}
	e.State = State(state)
	if !strings.HasPrefix(e.ID, "evt_") {
		e.ID = ""
	}
	return e
}

// printable reports whether s looks like text a record holds (a flipped
// length byte makes the reader take binary for a string).
func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return false
		}
	}
	return true
}

// idTime is when an event with this id was received (NewID puts the time
// in it); zero when the id is not one.
func idTime(id string) time.Time {
	raw, err := hex.DecodeString(strings.TrimPrefix(id, "evt_"))
	if err != nil || len(raw) < 8 || !strings.HasPrefix(id, "evt_") {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(raw)))
}

const damageVersion = 1

func encodeDamage(d Damage) []byte {
	b := []byte{damageVersion}
	for _, s := range []string{d.Queue, d.OrderKey, d.ID, d.Reason} {
		b = appendString(b, s)
	}
	return binary.AppendVarint(b, unixNanos(d.At))
}

func decodeDamage(b []byte) (Damage, bool) {
	if len(b) == 0 || b[0] != damageVersion {
		return Damage{}, false
	}
	r := reader{b: b[1:]}
	var d Damage
	for _, s := range []*string{&d.Queue, &d.OrderKey, &d.ID, &d.Reason} {
		*s = r.string()
	}
	if n := r.varint(); n != 0 {
		d.At = time.Unix(0, n)
	}
	return d, r.err == nil
}

// Quarantine sets a damaged head aside: it leaves the pending indexes,
// the next event of its order key becomes due, and it is counted and
// listed as Damaged with d.Reason. A head that is no longer due (set
// aside already) is left alone.
func (s *Store) quarantine(d *Damage) error {
	return s.update(func(tx *bolt.Tx) error {
		due := tx.Bucket(bucketDue)
		if due.Get(dueKey(d.Queue, d.dueAt, d.Seq)) == nil {
			return nil
		}
		if err := due.Delete(dueKey(d.Queue, d.dueAt, d.Seq)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketArrivals).Delete(arrivalKey(d.Queue, d.Seq)); err != nil {
			return err
		}
		if v := tx.Bucket(bucketEvents).Get(seqKey(d.Seq)); v != nil {
			d.ID = peekEvent(v).ID
		}
		if err := dropPendingEntry(tx, d.Queue, d.OrderKey, d.Seq); err != nil {
			return err
		}
		if err := addCount(tx, d.Queue, Pending, -1); err != nil {
			return err
		}
		if err := addCount(tx, d.Queue, Damaged, 1); err != nil {
			return err
		}
		return tx.Bucket(bucketDamaged).Put(seqKey(d.Seq), encodeDamage(*d))
	})
}

// dropPendingEntry removes the pending entry of the event with sequence
// seq from its order key's (found by its value: the key holds a place
// that only the unreadable record knew), and makes the next event of the
// order key due.
func dropPendingEntry(tx *bolt.Tx, queue, order string, seq uint64) error {
	pend := tx.Bucket(bucketPending)
	prefix := pendingPrefix(queue, order)
	c := pend.Cursor()
	for k, v := c.Seek(prefix); k != nil && hasPendingPrefix(k, prefix); k, v = c.Next() {
		if _, s, err := splitPendingValue(v); err == nil && s == seq {
			if err := c.Delete(); err != nil {
				return err
			}
			break
		}
		if order != "" {
			break // only an order key's first entry is its head
		}
	}
	if order == "" {
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

// checkLength refuses a file shorter than its own pages before bbolt
// opens it: bbolt would panic reading its free list past the end, and a
// panic inside bolt.Open leaves the file mapped and locked for the rest
// of the process. bbolt's two meta pages (16-byte page header, then
// magic, version, page size, flags, root bucket, free list, high-water
// page, txid, checksum) say how many pages the file has; the newer meta
// whose checksum holds is believed. A file that is new, or whose metas
// are both unreadable, is left to bbolt, which says what is wrong.
func checkLength(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return nil // a new file, or an error bolt.Open reports better
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil || info.Size() == 0 {
		return nil
	}
	var best struct {
		txid, pages uint64
		pageSize    uint32
		ok          bool
	}
	for _, at := range []int64{0, -1} {
		buf := make([]byte, metaSize)
		off := at
		if at < 0 {
			if !best.ok {
				off = defaultPageSize
			} else {
				off = int64(best.pageSize)
			}
		}
		if _, err := f.ReadAt(buf, off); err != nil {
			continue
		}
		m := buf[pageHeaderSize:]
		h := fnv.New64a()
		_, _ = h.Write(m[:56])
		if binary.LittleEndian.Uint32(m) != boltMagic || h.Sum64() != binary.LittleEndian.Uint64(m[56:]) {
			continue
		}
		txid := binary.LittleEndian.Uint64(m[48:])
		if !best.ok || txid > best.txid {
			best.txid, best.pages, best.pageSize, best.ok = txid, binary.LittleEndian.Uint64(m[40:]), binary.LittleEndian.Uint32(m[8:]), true
		}
	}
	if best.ok && uint64(info.Size()) < best.pages*uint64(best.pageSize) {
		return &FileError{Path: path, Cause: fmt.Sprintf("it is %d bytes long, shorter than the %d pages of %d bytes its header counts: "+
			"it was cut short", info.Size(), best.pages, best.pageSize)}
	}
	return nil
}

const (
	boltMagic = 0xED0CDAED
	metaSize  = pageHeaderSize + 64
)
