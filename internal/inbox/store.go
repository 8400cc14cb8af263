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
	"sync"
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
)

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

	// dueAt is the NextAt the store holds for the event (in its due and
	// pending entries), so that Settle can find them without reading the
	// event back.
	dueAt time.Time
}

// Attempt is one delivery attempt, as the history shows it.
type Attempt struct {
	N        int
	At       time.Time
	Manual   bool          // a replay asked for it
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
)

// ErrNotFound is returned for an event that is not in the store.
var ErrNotFound = errors.New("inbox: no such event")

// Store is the bbolt file of one or more queues.
type Store struct {
	db *bolt.DB

	mu         sync.RWMutex // closed, against writes queued after Close
	closed     bool
	writes     chan write
	writerDone chan struct{}
	commits    atomic.Int64 // commit groups so far
}

// Open opens (creating it and its directory when missing) the store at
// path. The file is locked: a second Open of the same path waits up to
// lockTimeout, then fails.
func Open(path string, lockTimeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("inbox: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, NoSync: os.Getenv("XNOSYNC") != "", NoFreelistSync: os.Getenv("XNFS") != "", FreelistType: bolt.FreelistType(os.Getenv("XFLT"))})
	if err != nil {
		return nil, fmt.Errorf("inbox: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketEvents, bucketIDs, bucketBodies, bucketPending, bucketCounts} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return ensureIndexes(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("inbox: preparing %s: %w", path, err)
	}
	s := &Store{db: db, writes: make(chan write, maxGroup), writerDone: make(chan struct{})}
	go s.commitGroups()
	return s, nil
}

// Close finishes the writes queued so far and closes the file; later
// writes fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.writes)
	}
	s.mu.Unlock()
	<-s.writerDone
	return s.db.Close()
}

// NewID returns a new event id: time-ordered, unique.
func NewID(now time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixNano()))
	_, _ = rand.Read(b[8:])
	return "evt_" + hex.EncodeToString(b[:])
}

// Append stores events as pending, all or none, and returns once they are
// on disk (fsynced). Concurrent calls share one commit. Each event gets its
// Seq and State here.
func (s *Store) Append(events []*Event) error {
	// The function may run again (alone) when the group it was committed
	// with failed: every value is set afresh on each run.
	return s.update(func(tx *bolt.Tx) error {
		evb := tx.Bucket(bucketEvents)
		for _, e := range events {
			seq, err := evb.NextSequence()
			if err != nil {
				return err
			}
			e.Seq, e.Pos, e.State = seq, seq, Pending
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
			if err := addCount(tx, e.Queue, Pending, 1); err != nil {
				return err
			}
		}
		return nil
	})
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
// there is none.
func (s *Store) Due(queue string, now time.Time, limit int, busy func(orderKey string, seq uint64) bool) (due []*Event, next time.Time, err error) {
	if limit <= 0 {
		return nil, time.Time{}, nil
	}
	prefix := append([]byte(queue), 0)
	err = s.db.View(func(tx *bolt.Tx) error {
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
			e, err := getEvent(evb, seq)
			if err != nil {
				return err
			}
			e.dueAt = at
			body := tx.Bucket(bucketBodies).Get(seqKey(seq))
			if body == nil {
				return fmt.Errorf("inbox: event %d has no body", seq)
			}
			e.Body = bytes.Clone(body) // bbolt's bytes live only as long as the transaction
			if due = append(due, e); len(due) == limit {
				return nil
			}
		}
		return nil
	})
	return due, next, err
}

// OldestPending returns when queue's oldest pending event arrived; false
// when it has none.
func (s *Store) OldestPending(queue string) (time.Time, bool, error) {
	var at time.Time
	var found bool
	prefix := append([]byte(queue), 0)
	err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketArrivals).Cursor().Seek(prefix)
		if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 {
			return nil
		}
		e, err := getEvent(tx.Bucket(bucketEvents), binary.BigEndian.Uint64(k[len(prefix):]))
		if err != nil {
			return err
		}
		at, found = e.ReceivedAt, true
		return nil
	})
	return at, found, err
}

// Body returns the body of the event with sequence seq.
func (s *Store) Body(seq uint64) ([]byte, error) {
	var body []byte
	err := s.db.View(func(tx *bolt.Tx) error {
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
	err := s.db.View(func(tx *bolt.Tx) error {
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

// Expire deletes delivered and dead events received before cutoff, and
// their bodies with them; pending events are kept whatever their age.
// bbolt reuses the freed pages for new events; the file does not shrink.
func (s *Store) Expire(cutoff time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			e, err := decodeEvent(v)
			if err != nil {
				return err
			}
			if !e.ReceivedAt.Before(cutoff) {
				break // events are in arrival order
			}
			if e.State == Pending {
				continue
			}
			if err := tx.Bucket(bucketBodies).Delete(bytes.Clone(k)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketIDs).Delete([]byte(e.ID)); err != nil {
				return err
			}
			if err := c.Delete(); err != nil {
				return err
			}
			if err := addCount(tx, e.Queue, e.State, -1); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
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
