// Package inbox keeps webhook events durably until the app behind the
// gateway took them: a bbolt store (one file, every acknowledged write
// fsynced) and a dispatcher that delivers each event, retries it on a
// schedule and keeps the order of events that share an order key (a
// conversation). The Caddy glue (configuration, the app, the delivery
// through reverse_proxy) lives in the root package.
package inbox

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// State is where an event stands.
type State string

const (
	Pending   State = "pending"   // waiting for its turn or its next attempt
	Delivered State = "delivered" // the app answered 2xx
	Dead      State = "dead"      // every attempt of its schedule failed
	// Damaged is a record that could not be read back (a byte changed on
	// disk, a body that no longer matches its checksum): it is set aside
	// with the reason, and the rest of its conversation goes on without
	// it, as after a dead event.
	Damaged State = "damaged"
)

// States lists every state, in the order summaries show them.
var States = []State{Pending, Delivered, Dead, Damaged}

// Event is one webhook event as it will be delivered: the request the
// gateway would have forwarded (signature headers removed), and its
// delivery state.
type Event struct {
	ID       string
	Queue    string
	Name     string // the event type (whatsapp.message.received, messages), "" when unknown
	Key      string // the idempotency key it was accepted under, "" without dedupe
	OrderKey string // "" for an event that waits for no other
	Seq      uint64 // arrival order in the store
	// Pos is the event's place among the pending events of its order key:
	// its Seq, or a later sequence once replayed, so that a replay goes
	// behind what is already pending.
	Pos uint64

	Method     string
	URI        string // path and query
	Host       string
	RemoteAddr string
	Header     http.Header
	Body       []byte

	ReceivedAt  time.Time
	State       State
	Attempts    int
	NextAt      time.Time
	LastStatus  int
	LastError   string
	DeliveredAt time.Time
	// Manual marks a replay: its next attempt is one try, and a failure
	// makes the event dead again rather than waiting for the schedule.
	Manual bool
	Log    []Attempt // the attempts so far, the latest maxLog

	// Keys are the dedupe keys the event is known by (opaque to the
	// store); while one is held, an Append of an event with the same key
	// is a duplicate. They are held until KeysUntil, and for as long as the
	// event is pending.
	Keys      []string
	KeysUntil time.Time
	// BodySum is the checksum of Body, set by Append.
	BodySum uint32

	// DuplicateOf is set by Append on an event it did not store because a
	// key of it is held: the id of the event that holds it ("" when that
	// event is gone or unreadable, the key still being held).
	Duplicate   bool
	DuplicateOf string

	// summed: BodySum was read from the record (older records have none).
	summed bool
	// dueAt is the NextAt the store holds for the event (in its due and
	// pending entries), so that Settle can find them without reading the
	// event back.
	dueAt time.Time
}

// Attempt is one delivery attempt, as the history shows it.
type Attempt struct {
	N      int
	At     time.Time
	Manual bool // a replay asked for it
	// Late is an attempt that ran after its instance's lease had lapsed
	// (a paused process, with Redis): another instance may have delivered
	// the event meanwhile, and its result was not taken.
	Late     bool
	Instance string        // the instance that made it, when several share the queue
	Status   int           // the app's status; 0 when it did not answer
	Duration time.Duration // until the answer or the error
	Error    string
	Response string // the start of the app's answer (kept as long as the event)
}

// maxLog bounds an event's attempt log (a schedule has 9 attempts by
// default; replays add one each).
const maxLog = 50

var (
	bucketEvents  = []byte("events")  // seq → Event without its body (codec.go)
	bucketIDs     = []byte("ids")     // event id → seq
	bucketBodies  = []byte("bodies")  // seq → body
	bucketPending = []byte("pending") // queue \x00 order \x00 pos → nextAt seq: each order key's head is its first key
	bucketCounts  = []byte("counts")  // queue \x00 state → number of events (uint64)
	// bucketDue holds only the heads (each order key's first pending
	// event, and every pending event without an order key), sorted by when
	// they are due, so that a dispatcher pass reads what it will start
	// and little else, however large the backlog.
	bucketDue = []byte("due") // queue \x00 nextAt seq → order key
	// bucketArrivals finds a queue's oldest pending event.
	bucketArrivals = []byte("arrivals") // queue \x00 seq → nothing
	// bucketKeys holds the dedupe keys of stored events, so that a
	// sender's redelivery is a duplicate after a restart too.
	bucketKeys = []byte("keys") // key → until (ns) seq
	// bucketDamaged holds what is known of each record set aside.
	bucketDamaged = []byte("damaged") // seq → Damage (encodeDamage)

	allBuckets = [][]byte{bucketEvents, bucketIDs, bucketBodies, bucketPending, bucketCounts, bucketKeys, bucketDamaged}
)

// ErrNotFound is returned for an event that is not in the store.
var ErrNotFound = errors.New("inbox: no such event")

// Store is the bbolt file of one or more queues.
type Store struct {
	db   *bolt.DB
	path string

	writes     *callQueue[write] // to the one writer, commitGroups
	writerDone chan struct{}
	commits    atomic.Int64 // commit groups so far
}

// Open opens (creating it and its directory when missing) the store at
// path. The file is locked: a second Open of the same path waits up to
// lockTimeout, then fails with a *FileError that says so; a damaged file
// fails with a *FileError that says what to do, never with a panic.
//
// Every commit is fsynced, with bbolt's default options: that is what
// acknowledged means, and no setting or environment changes it. The
// freelist is written with each commit: without it (NoFreelistSync),
// bbolt rebuilds it by walking the whole file on every rolled-back write
// and at every open after a crash, in a goroutine of its own where a
// damaged page panics past any recover. Its cost after a large backlog
// drained (BENCHMARKS.md) is what compacting the file removes.
func Open(path string, lockTimeout time.Duration) (s *Store, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("inbox: %w", err)
	}
	db, err := openFile(path, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return nil, err
	}
	s = &Store{db: db, path: path, writes: newCallQueue[write](maxGroup), writerDone: make(chan struct{})}
	err = s.prepare()
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	go s.commitGroups()
	return s, nil
}

// openFile opens the bbolt file with its panics and faults contained,
// and its errors said in the user's terms.
func openFile(path string, opts *bolt.Options) (db *bolt.DB, err error) {
	// A panic inside bolt.Open leaves the file open and locked: keep it
	// to close, so that check and salvage can open it next.
	var file *os.File
	opts.OpenFile = func(name string, flag int, mode os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, mode)
		file = f
		return f, err
	}
	defer func() {
		if _, ok := err.(*FileError); ok && db == nil && file != nil {
			_ = file.Close()
		}
	}()
	if err := checkLength(path); err != nil {
		return nil, err
	}
	defer safeFaults()()
	defer contain(path, &err)
	db, err = bolt.Open(path, 0o600, opts)
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return nil, &FileError{Path: path, Locked: true}
	case errors.Is(err, bolt.ErrInvalid), errors.Is(err, bolt.ErrVersionMismatch), errors.Is(err, bolt.ErrChecksum),
		err != nil && strings.Contains(err.Error(), "file size too small"):
		return nil, &FileError{Path: path, Cause: err.Error()}
	case err != nil:
		return nil, fmt.Errorf("inbox: opening %s: %w", path, err)
	}
	return db, nil
}

// prepare creates the buckets a new file lacks and the indexes an older
// one lacks, and reads the root of every bucket, so that a file damaged
// where every pass would trip over it is refused at once.
func (s *Store) prepare() (err error) {
	defer safeFaults()()
	defer contain(s.path, &err)
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := ensureIndexes(tx); err != nil {
			return err
		}
		for _, b := range append(allBuckets, bucketDue, bucketArrivals) {
			tx.Bucket(b).Cursor().First()
		}
		return nil
	})
	if err != nil {
		if _, ok := errors.AsType[*FileError](err); ok {
			return err
		}
		return &FileError{Path: s.path, Cause: err.Error()}
	}
	return nil
}

// Path is the store's file.
func (s *Store) Path() string { return s.path }

// Close finishes the writes queued so far and closes the file; later
// writes fail with ErrClosed.
func (s *Store) Close() error {
	s.writes.close()
	<-s.writerDone
	return s.db.Close()
}

// FreePages is how many pages of the file are free: bbolt writes their
// list with every commit, so a file a large backlog left with many
// wants compacting.
func (s *Store) FreePages() int { return s.db.Stats().FreePageN }

// NewID returns a new event id: time-ordered, unique.
func NewID(now time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	_, _ = rand.Read(b[8:])
	return "evt_" + hex.EncodeToString(b[:])
}

// Append stores the events of one request as pending, all or none, and
// returns once they are on disk (fsynced). Concurrent calls share one
// commit. Each stored event gets its Seq, State and BodySum here.
//
// Deduplication happens in the same transaction: an event is not stored,
// and is marked Duplicate, when one of its Keys is held (by an event
// stored earlier, in this call or before); every event is a duplicate
// when one of shared (the request's own keys, such as a batch's
// idempotency key) is held. The keys of what is stored, and shared, are
// held until the events' KeysUntil, and while their event is pending.
func (s *Store) Append(events []*Event, shared ...string) error {
	// The function may run again (alone) when the group it was committed
	// with failed: every value is set afresh on each run.
	return s.update(func(tx *bolt.Tx) error {
		now, until := time.Now(), time.Time{}
		if len(events) > 0 && !events[0].ReceivedAt.IsZero() {
			now = events[0].ReceivedAt // the clock the keys' times were set by
		}
		for _, e := range events {
			e.Duplicate, e.DuplicateOf = false, ""
			until = maxTime(until, e.KeysUntil)
		}
		if holder, held := heldKey(tx, shared, now); held {
			for _, e := range events {
				e.Duplicate, e.DuplicateOf = true, holder
			}
			return nil
		}
		var first uint64
		for _, e := range events {
			if holder, held := heldKey(tx, e.Keys, now); held {
				e.Duplicate, e.DuplicateOf = true, holder
				continue
			}
			if err := s.store(tx, e); err != nil {
				return err
			}
			if first == 0 {
				first = e.Seq
			}
		}
		return holdKeys(tx, shared, until, first)
	})
}

// store writes one new event and its indexes.
func (s *Store) store(tx *bolt.Tx, e *Event) error {
	evb := tx.Bucket(bucketEvents)
	seq, err := evb.NextSequence()
	if err != nil {
		return err
	}
	e.Seq, e.Pos, e.State, e.BodySum = seq, seq, Pending, bodySum(e.Body)
	if e.NextAt.IsZero() {
		e.NextAt = e.ReceivedAt
	}
	if err := putEvent(evb, e); err != nil {
		return err
	}
	if err := tx.Bucket(bucketBodies).Put(seqKey(seq), e.Body); err != nil {
		return err
	}
	if err := tx.Bucket(bucketIDs).Put([]byte(e.ID), seqKey(seq)); err != nil {
		return err
	}
	if err := addPending(tx, e); err != nil {
		return err
	}
	if err := holdKeys(tx, e.Keys, e.KeysUntil, seq); err != nil {
		return err
	}
	return addCount(tx, e.Queue, Pending, 1)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// addPending puts a pending event into the indexes: the pending order,
// the arrivals, and the due heads when nothing of its order key is ahead.
func addPending(tx *bolt.Tx, e *Event) error {
	pend := tx.Bucket(bucketPending)
	k := pendingKey(e)
	e.dueAt = e.NextAt
	if err := pend.Put(k, pendingValue(e)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketArrivals).Put(arrivalKey(e.Queue, e.Seq), nil); err != nil {
		return err
	}
	if e.OrderKey != "" {
		if first, _ := pend.Cursor().Seek(k[:len(k)-8]); !bytes.Equal(first, k) {
			return nil // an earlier event of its order key goes first
		}
	}
	return tx.Bucket(bucketDue).Put(dueKey(e.Queue, e.NextAt, e.Seq), []byte(e.OrderKey))
}

// Settle records an attempt's result on a pending event: e (its State,
// Attempts, NextAt, LastStatus, LastError, DeliveredAt already updated by
// the caller) is written back; a delivered or dead event leaves the
// pending indexes and the next event of its order key becomes due.
// Concurrent settles share one commit.
func (s *Store) Settle(e *Event) error {
	// As in Append, this may run twice: it changes nothing outside the
	// transaction until the commit succeeded.
	was := e.dueAt
	err := s.updateLazy(func(tx *bolt.Tx) error {
		pend, due := tx.Bucket(bucketPending), tx.Bucket(bucketDue)
		if pend.Get(pendingKey(e)) == nil || due.Get(dueKey(e.Queue, was, e.Seq)) == nil {
			return fmt.Errorf("inbox: event %s is not a pending head: it cannot be settled", e.ID)
		}
		if err := due.Delete(dueKey(e.Queue, was, e.Seq)); err != nil {
			return err
		}
		if err := putEvent(tx.Bucket(bucketEvents), e); err != nil {
			return err
		}
		if e.State == Pending {
			if err := pend.Put(pendingKey(e), pendingValue(e)); err != nil {
				return err
			}
			return due.Put(dueKey(e.Queue, e.NextAt, e.Seq), []byte(e.OrderKey))
		}
		if err := addCount(tx, e.Queue, Pending, -1); err != nil {
			return err
		}
		if err := addCount(tx, e.Queue, e.State, 1); err != nil {
			return err
		}
		return removePending(tx, e)
	})
	if err == nil {
		e.dueAt = e.NextAt
	}
	return err
}

// removePending takes a settled event out of the pending indexes and makes
// the next event of its order key due.
func removePending(tx *bolt.Tx, e *Event) error {
	pend := tx.Bucket(bucketPending)
	k := pendingKey(e)
	if err := pend.Delete(k); err != nil {
		return err
	}
	if err := tx.Bucket(bucketArrivals).Delete(arrivalKey(e.Queue, e.Seq)); err != nil {
		return err
	}
	if e.OrderKey == "" {
		return nil
	}
	prefix := k[:len(k)-8]
	next, v := pend.Cursor().Seek(prefix)
	if next == nil || !bytes.HasPrefix(next, prefix) || len(next) != len(k) {
		return nil
	}
	at, seq, err := splitPendingValue(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketDue).Put(dueKey(e.Queue, at, seq), []byte(e.OrderKey))
}

// pendingValue is what a pending entry holds: when the event is due, and
// its sequence (the key holds its place, which a replay changes).
func pendingValue(e *Event) []byte {
	return binary.BigEndian.AppendUint64(timeValue(e.NextAt), e.Seq)
}

func splitPendingValue(v []byte) (time.Time, uint64, error) {
	if len(v) != 16 {
		return time.Time{}, 0, errors.New("inbox: pending entry in an unknown form (a file from a development build?)")
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))), binary.BigEndian.Uint64(v[8:]), nil
}

// timeValue is t as stored in keys and values: nanoseconds since 1970.
func timeValue(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(max(t.UnixNano(), 0)))
}

// Due returns up to limit heads of queue that are due at now (each order
// key's first pending event, and pending events without one), the longest
// due first, with their bodies, skipping those busy reports (already in
// flight). next is when the first head not yet due will be; zero when
// there is none. A head that cannot be read (its record or its body
// damaged) is set aside as Damaged and returned in damaged, so that it
// holds back nothing; the others are returned even when setting one
// aside failed (err then says why).
func (s *Store) Due(queue string, now time.Time, limit int, busy func(orderKey string, seq uint64) bool) (due []*Event, damaged []Damage, next time.Time, err error) {
	if limit <= 0 {
		return nil, nil, time.Time{}, nil
	}
	prefix := append([]byte(queue), 0)
	err = s.view(func(tx *bolt.Tx) error {
		evb, c := tx.Bucket(bucketEvents), tx.Bucket(bucketDue).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+16; k, v = c.Next() {
			at := time.Unix(0, int64(binary.BigEndian.Uint64(k[len(prefix):])))
			if at.After(now) {
				next = at
				return nil
			}
			seq := binary.BigEndian.Uint64(k[len(prefix)+8:])
			if busy != nil && busy(string(v), seq) {
				continue
			}
			e, err := readHead(tx, evb, seq)
			if err != nil {
				damaged = append(damaged, Damage{Queue: queue, Seq: seq, OrderKey: string(v), Reason: err.Error(), dueAt: at})
				continue
			}
			e.dueAt = at
			if due = append(due, e); len(due) == limit {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	for i := range damaged {
		damaged[i].At = now
		if qerr := s.quarantine(&damaged[i]); qerr != nil {
			err = errors.Join(err, fmt.Errorf("inbox: setting aside damaged event %d: %w", damaged[i].Seq, qerr))
		}
	}
	return due, damaged, next, err
}

// readHead reads a head's record and body, checking the body against its
// checksum.
func readHead(tx *bolt.Tx, evb *bolt.Bucket, seq uint64) (*Event, error) {
	e, err := getEvent(evb, seq)
	if err != nil {
		return nil, err
	}
	body := tx.Bucket(bucketBodies).Get(seqKey(seq))
	if body == nil {
		return nil, errors.New("inbox: the event's body is missing")
	}
	if e.summed && bodySum(body) != e.BodySum {
		return nil, errBodyDamaged
	}
	e.Body = bytes.Clone(body) // bbolt's bytes live only as long as the transaction
	return e, nil
}

// OldestPending returns when queue's oldest pending event arrived; false
// when it has none. An unreadable record is passed over (the dispatcher
// sets it aside when it comes to it), so that the age is that of what is
// really pending.
func (s *Store) OldestPending(queue string) (time.Time, bool, error) {
	var at time.Time
	var found bool
	prefix := append([]byte(queue), 0)
	err := s.view(func(tx *bolt.Tx) error {
		evb, c := tx.Bucket(bucketEvents), tx.Bucket(bucketArrivals).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Next() {
			if e, err := getEvent(evb, binary.BigEndian.Uint64(k[len(prefix):])); err == nil {
				at, found = e.ReceivedAt, true
				return nil
			}
		}
		return nil
	})
	return at, found, err
}

// Body returns the body of the event with sequence seq.
func (s *Store) Body(seq uint64) ([]byte, error) {
	var body []byte
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBodies).Get(seqKey(seq))
		if v == nil {
			return ErrNotFound
		}
		body = bytes.Clone(v) // bbolt's bytes live only as long as the transaction
		return nil
	})
	return body, err
}

// Counts returns how many events of each queue are in each state.
func (s *Store) Counts() (map[string]map[State]int, error) {
	counts := map[string]map[State]int{}
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCounts).ForEach(func(k, v []byte) error {
			queue, state, ok := bytes.Cut(k, []byte{0})
			if !ok || len(v) != 8 {
				return nil
			}
			if counts[string(queue)] == nil {
				counts[string(queue)] = map[State]int{}
			}
			counts[string(queue)][State(state)] = int(binary.BigEndian.Uint64(v))
			return nil
		})
	})
	return counts, err
}

// addCount moves the number of queue's events in state by delta.
func addCount(tx *bolt.Tx, queue string, state State, delta int) error {
	b := tx.Bucket(bucketCounts)
	k := append(append([]byte(queue), 0), state...)
	var n uint64
	if v := b.Get(k); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	n = uint64(max(int64(n)+int64(delta), 0))
	return b.Put(k, seqKey(n))
}

// Expire deletes delivered, dead and damaged events received before
// cutoff, and their bodies with them; pending events are kept whatever
// their age. It also lets go of the dedupe keys whose time is up. bbolt
// reuses the freed pages for new events; the file does not shrink.
func (s *Store) Expire(cutoff time.Time) (int, error) {
	n := 0
	err := s.updateNow(func(tx *bolt.Tx) error {
		n = 0
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k)
			e, err := decodeEvent(v)
			if err != nil {
				// An unreadable record has no reliable arrival time but its
				// id's; it goes when that is past and it is not pending.
				e = unreadable(tx, seq, v, err)
				if e.ReceivedAt.IsZero() || !e.ReceivedAt.Before(cutoff) || e.Queue == "" ||
					tx.Bucket(bucketArrivals).Get(arrivalKey(e.Queue, seq)) != nil {
					continue
				}
			} else if !e.ReceivedAt.Before(cutoff) {
				break // events are in arrival order
			} else if tx.Bucket(bucketDamaged).Get(k) != nil {
				e.State = Damaged // set aside for its body
			}
			if e.State == Pending {
				continue
			}
			if err := forget(tx, c, seq, e); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return n, err
	}
	return n, s.expireKeys(time.Now())
}

// forget deletes a settled event under the cursor, with its body, id and
// count.
func forget(tx *bolt.Tx, c *bolt.Cursor, seq uint64, e *Event) error {
	if err := tx.Bucket(bucketBodies).Delete(seqKey(seq)); err != nil {
		return err
	}
	if e.ID != "" {
		if err := tx.Bucket(bucketIDs).Delete([]byte(e.ID)); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bucketDamaged).Delete(seqKey(seq)); err != nil {
		return err
	}
	if err := c.Delete(); err != nil {
		return err
	}
	if e.Queue == "" || !slices.Contains(States, e.State) {
		return nil // an unreadable record's state: counted nowhere that can be told
	}
	return addCount(tx, e.Queue, e.State, -1)
}

// updateNow runs fn in a write transaction of its own, outside the
// commit groups (retention, which may take a while and must not hold up
// a group), with damage contained.
func (s *Store) updateNow(fn func(*bolt.Tx) error) (err error) {
	defer safeFaults()()
	defer contain(s.path, &err)
	return s.db.Update(fn)
}

func putEvent(b *bolt.Bucket, e *Event) error {
	return b.Put(seqKey(e.Seq), encodeEvent(e))
}

func getEvent(b *bolt.Bucket, seq uint64) (*Event, error) {
	v := b.Get(seqKey(seq))
	if v == nil {
		return nil, ErrNotFound
	}
	e, err := decodeEvent(v)
	if err != nil {
		return nil, fmt.Errorf("inbox: event %d: %w", seq, err)
	}
	return e, nil
}

// pendingPrefix is where an order key's entries start in bucketPending.
func pendingPrefix(queue, order string) []byte {
	k := make([]byte, 0, len(queue)+len(order)+2)
	k = append(k, queue...)
	k = append(k, 0)
	k = append(k, order...)
	return append(k, 0)
}

// hasPendingPrefix reports whether k is an entry of the order key whose
// entries start with prefix.
func hasPendingPrefix(k, prefix []byte) bool {
	return len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix)
}

// ensureIndexes creates the due and arrivals indexes, filling them from the
// pending index when the file was written before they existed.
func ensureIndexes(tx *bolt.Tx) error {
	if tx.Bucket(bucketDue) != nil && tx.Bucket(bucketArrivals) != nil {
		return nil
	}
	for _, name := range [][]byte{bucketDue, bucketArrivals} {
		if err := tx.DeleteBucket(name); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
		if _, err := tx.CreateBucket(name); err != nil {
			return err
		}
	}
	due, arr := tx.Bucket(bucketDue), tx.Bucket(bucketArrivals)
	var lastPrefix []byte
	return tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
		queue, order, ok := splitPendingKey(k)
		if !ok {
			return nil
		}
		at, seq, err := splitPendingValue(v)
		if err != nil {
			return err
		}
		if err := arr.Put(arrivalKey(queue, seq), nil); err != nil {
			return err
		}
		prefix := k[:len(k)-8]
		if order != "" && bytes.Equal(prefix, lastPrefix) {
			return nil // not the head of its order key
		}
		lastPrefix = append(lastPrefix[:0], prefix...)
		return due.Put(dueKey(queue, at, seq), []byte(order))
	})
}

// dueKey sorts a queue's heads by when they are due, then by arrival.
func dueKey(queue string, at time.Time, seq uint64) []byte {
	k := make([]byte, 0, len(queue)+17)
	k = append(k, queue...)
	k = append(k, 0)
	k = append(k, timeValue(at)...)
	return binary.BigEndian.AppendUint64(k, seq)
}

func arrivalKey(queue string, seq uint64) []byte {
	k := make([]byte, 0, len(queue)+9)
	k = append(k, queue...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// pendingKey sorts by queue, then order key, then place (arrival, or the
// replay). Events without an order key share the empty one, and each is
// a head of its own.
func pendingKey(e *Event) []byte {
	order := e.OrderKey
	k := make([]byte, 0, len(e.Queue)+len(order)+10)
	k = append(k, e.Queue...)
	k = append(k, 0)
	k = append(k, order...)
	k = append(k, 0)
	return append(k, seqKey(e.place())...)
}

// place is Pos, or Seq for an event stored before places were kept apart.
func (e *Event) place() uint64 {
	if e.Pos == 0 {
		return e.Seq
	}
	return e.Pos
}

func splitPendingKey(k []byte) (queue, order string, ok bool) {
	if len(k) < 10 {
		return "", "", false
	}
	rest := k[:len(k)-8]
	q, o, found := bytes.Cut(rest[:len(rest)-1], []byte{0})
	if !found || rest[len(rest)-1] != 0 {
		return "", "", false
	}
	return string(q), string(o), true
}
