package inbox

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
)

// Result is what one delivery attempt came to.
type Result struct {
	Status int   // the app's status; 0 when it did not answer
	Err    error // a transport error or a timeout
	// Refused: the app could not be reached at all (connection refused).
	// Such an attempt does not count: the whole queue backs off and
	// probes the app instead, so that a deploy does not use up events'
	// schedules.
	Refused bool
	// RetryAfter is the app's Retry-After on a 429 or 503, zero otherwise.
	RetryAfter time.Duration
	Took       time.Duration
	// Response is the start of the app's answer, for the history.
	Response string
}

// Delivered reports whether the app took the event (2xx).
func (r Result) Delivered() bool { return r.Err == nil && r.Status >= 200 && r.Status < 300 }

// failure says what went wrong, as the history shows it: the error, or
// the app's status; "" for an attempt that delivered.
func (r Result) failure() string {
	switch {
	case r.Err != nil:
		return r.Err.Error()
	case !r.Delivered():
		return "the app answered " + strconv.Itoa(r.Status)
	}
	return ""
}

// Deliverer sends one event to the app; attempt counts from 1.
type Deliverer func(ctx context.Context, e *Event, attempt int) Result

// Queue is one handler's delivery settings.
type Queue struct {
	Name        string
	Deliver     Deliverer
	Retry       []time.Duration // delays before attempts 2, 3, …; the attempt after the last fails makes the event dead
	Concurrency int             // attempts in flight at once, across order keys
	Timeout     time.Duration   // per attempt
	Retention   time.Duration   // how long delivered and dead events are kept
	// Rate, when above zero, is the most attempts started per Per: they
	// are spaced Per/Rate apart, so the app never sees a burst.
	Rate int
	Per  time.Duration
	// OnAttempt, when set, is told of every attempt (for metrics and logs).
	OnAttempt func(e *Event, attempt int, r Result)
	// OnDamaged, when set, is told of each head the store set aside as
	// Damaged, once.
	OnDamaged func(d Damage)
}

// gap is the least time between two attempts' starts; zero without a rate.
func (q Queue) gap() time.Duration {
	if q.Rate <= 0 || q.Per <= 0 {
		return 0
	}
	return q.Per / time.Duration(q.Rate)
}

// queueState is a queue's settings with what the dispatcher tracks for it.
type queueState struct {
	Queue
	inFlight    int
	pausedUntil time.Time     // while the app refuses connections
	backoff     time.Duration // the next pause, doubling up to maxBackoff
	nextStart   time.Time     // with a rate, when the next attempt may start
}

const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 10 * time.Second
	// idlePoll is how often the dispatcher looks even when nothing
	// woke it (a missed wake-up costs at most this much delay).
	idlePoll = time.Second
)

// Dispatcher delivers the pending events of its queues: one at a time per
// order key, in arrival order, the next waiting until the previous one is
// delivered or dead; events of other order keys flow meanwhile.
type Dispatcher struct {
	store Backend
	now   func() time.Time
	onErr func(error)

	mu       sync.Mutex
	queues   map[string]*queueState
	inFlight map[flight]bool // order keys (and unordered events) being attempted

	wake     chan struct{}
	stop     context.CancelFunc
	done     chan struct{}
	attempts sync.WaitGroup
	started  bool
}

// NewDispatcher returns a dispatcher over store; onErr is told of store
// errors (the events stay pending and are tried again).
func NewDispatcher(store Backend, onErr func(error)) *Dispatcher {
	return &Dispatcher{
		store:    store,
		now:      time.Now,
		onErr:    onErr,
		queues:   map[string]*queueState{},
		inFlight: map[flight]bool{},
		wake:     make(chan struct{}, 1),
	}
}

// SetQueues replaces the queues' settings (a config reload), keeping what
// is in flight. Pending events of a queue no longer listed stay stored and
// wait until it is configured again.
func (d *Dispatcher) SetQueues(qs []Queue) {
	d.mu.Lock()
	next := make(map[string]*queueState, len(qs))
	for _, q := range qs {
		st := &queueState{Queue: q}
		if old, ok := d.queues[q.Name]; ok {
			st.inFlight, st.pausedUntil, st.backoff, st.nextStart = old.inFlight, old.pausedUntil, old.backoff, old.nextStart
		}
		if st.Concurrency <= 0 {
			st.Concurrency = 1
		}
		next[q.Name] = st
	}
	d.queues = next
	d.mu.Unlock()
	d.Wake()
}

// Start runs the dispatcher until Stop; pending events are picked up at
// once, without waiting for a new one. Starting twice does nothing.
func (d *Dispatcher) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.started {
		return
	}
	d.started = true
	ctx, cancel := context.WithCancel(context.Background())
	d.stop, d.done = cancel, make(chan struct{})
	go d.run(ctx)
}

// Stop ends the loop and waits up to wait for the attempts in flight; an
// attempt still running then is not recorded, so its event stays pending
// and is delivered again later (at least once).
func (d *Dispatcher) Stop(wait time.Duration) {
	d.mu.Lock()
	started := d.started
	d.mu.Unlock()
	if !started {
		return
	}
	d.stop()
	<-d.done
	finished := make(chan struct{})
	go func() { d.attempts.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(wait):
	}
}

// inFlightCount is how many attempts are running.
func (d *Dispatcher) inFlightCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.inFlight)
}

// Quiet runs fn while no pass takes due events, with busy saying which
// events an attempt holds: a change to due times made in fn (retry now)
// can then never move an event from under its attempt.
func (d *Dispatcher) Quiet(fn func(busy func(queue, order string, seq uint64) bool) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return fn(func(queue, order string, seq uint64) bool { return d.inFlight[flightKey(queue, order, seq)] })
}

// Wake makes the dispatcher look for due events now (a new event was
// stored, say).
func (d *Dispatcher) Wake() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *Dispatcher) run(ctx context.Context) {
	defer close(d.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	lastExpire := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-timer.C:
		}
		if d.now().Sub(lastExpire) > d.expireEvery() {
			d.expire()
			lastExpire = d.now()
		}
		next := d.dispatchDue(ctx)
		wait := min(max(time.Until(next), time.Millisecond), idlePoll)
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// dispatchDue starts an attempt for every head that is due and has a free
// slot, and returns when the next one will be due. It holds the lock while
// it reads the heads: an attempt settles its event before it leaves the
// in-flight set, under the same lock, so a head read here is either still
// in flight or already settled, never a stale copy of a delivered event.
func (d *Dispatcher) dispatchDue(ctx context.Context) time.Time {
	now := d.now()
	next := now.Add(idlePoll)
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, q := range d.queues {
		if now.Before(q.pausedUntil) {
			next = minTime(next, q.pausedUntil)
			continue
		}
		if now.Before(q.nextStart) {
			next = minTime(next, q.nextStart)
			continue
		}
		free := q.Concurrency - q.inFlight
		if q.gap() > 0 {
			free = min(free, 1) // the next start is spaced after this one
		}
		due, damaged, at, err := d.store.Due(name, now, free, func(order string, seq uint64) bool {
			return d.inFlight[flightKey(name, order, seq)]
		})
		if err != nil {
			d.onErr(err) // what was read is still started below
		}
		if q.OnDamaged != nil {
			for _, dm := range damaged {
				q.OnDamaged(dm)
			}
		}
		if len(damaged) > 0 {
			next = now // the heads behind them may be due
		}
		if !at.IsZero() {
			next = minTime(next, at)
		}
		for _, e := range due {
			q.inFlight++
			d.inFlight[flightKey(e.Queue, e.OrderKey, e.Seq)] = true
			d.attempts.Add(1)
			go d.attempt(ctx, q.Queue, e)
		}
		if gap := q.gap(); gap > 0 && len(due) > 0 {
			q.nextStart = now.Add(gap)
			next = minTime(next, q.nextStart)
		}
	}
	return next
}

// attempt delivers e once and records the result. The attempt itself is
// not cancelled by Stop: it finishes (or times out) and is recorded.
func (d *Dispatcher) attempt(ctx context.Context, q Queue, e *Event) {
	defer d.attempts.Done()
	n := e.Attempts + 1
	started := d.now()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.Timeout)
	res := q.Deliver(actx, e, n)
	cancel()
	if res.Took == 0 {
		res.Took = d.now().Sub(started)
	}
	e.Body = nil // held for this attempt only
	now := d.now()
	if q.OnAttempt != nil {
		q.OnAttempt(e, n, res)
	}
	// The app is done with this attempt, so its slot is free for another
	// order key while the result is committed; its own order key stays in
	// flight until then, so its next event cannot overtake it.
	d.mu.Lock()
	if st := d.queues[q.Name]; st != nil {
		st.inFlight--
		if res.Refused {
			st.backoff = min(max(2*st.backoff, minBackoff), maxBackoff)
			st.pausedUntil = now.Add(st.backoff)
		} else {
			st.backoff, st.pausedUntil = 0, time.Time{}
		}
	}
	d.mu.Unlock()
	d.Wake()

	logAttempt(e, n, started, res)
	if !res.Refused {
		settle(e, q.Retry, n, res, now)
	} else {
		e.LastError = res.failure()
	}
	if err := d.store.Settle(e); err != nil {
		d.onErr(err)
	}

	d.mu.Lock()
	delete(d.inFlight, flightKey(e.Queue, e.OrderKey, e.Seq))
	d.mu.Unlock()
	d.Wake()
}

// settle applies attempt n's result to e: delivered, dead after the last
// delay of the schedule, or pending until the next delay (±20%, and never
// before the app's Retry-After).
func settle(e *Event, retry []time.Duration, n int, res Result, now time.Time) {
	manual := e.Manual
	e.Attempts, e.Manual = n, false
	e.LastStatus, e.LastError = res.Status, res.failure()
	switch {
	case res.Delivered():
		e.State, e.DeliveredAt = Delivered, now
	case manual || n > len(retry): // a replay is one try
		e.State = Dead
	default:
		delay := jitter(retry[n-1])
		e.NextAt = now.Add(max(delay, res.RetryAfter))
	}
}

// logAttempt adds attempt n to e's log, which keeps the latest maxLog.
// An attempt refused at the door is logged too, with the refusal: it is
// what the app's operator wants to see during a deploy.
func logAttempt(e *Event, n int, at time.Time, res Result) {
	a := Attempt{N: n, At: at, Manual: e.Manual, Status: res.Status, Duration: res.Took, Response: res.Response, Error: res.failure()}
	e.Log = append(e.Log, a)
	if len(e.Log) > maxLog {
		e.Log = append(e.Log[:0], e.Log[len(e.Log)-maxLog:]...)
	}
}

// jitter spreads a delay by ±20%, so that events that failed together are
// not all retried at once.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// expireEvery is how often retention runs: a tenth of the longest
// retention, between a second and a minute, so that a short retention
// (a privacy setting) is kept to within a tenth.
func (d *Dispatcher) expireEvery() time.Duration {
	return min(max(d.retention()/10, time.Second), time.Minute)
}

// retention is the longest of the queues' retentions: a file shared by
// handlers keeps every event as long as the most patient of them wants.
func (d *Dispatcher) retention() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var keep time.Duration
	for _, q := range d.queues {
		keep = max(keep, q.Retention)
	}
	return keep
}

func (d *Dispatcher) expire() {
	keep := d.retention()
	if keep <= 0 {
		return
	}
	if _, err := d.store.Expire(d.now().Add(-keep)); err != nil {
		d.onErr(err)
	}
}

// flight is what may have one attempt in flight: an order key, or an
// event without one.
type flight struct {
	queue, order string
	seq          uint64 // 0 for an order key
}

func flightKey(queue, order string, seq uint64) flight {
	if order != "" {
		seq = 0
	}
	return flight{queue, order, seq}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
