package webhookguard

import (
	"cmp"
	"strconv"
	"sync"
	"time"
)

// What each handler did, minute by minute, and the health of its app:
// the history's chart, the cards a store cannot count (duplicates,
// ignored events, refusals) and its health line come from here. The
// counters are in memory, held with the handler's in-memory history in
// the recent pool: they survive reloads, not restarts, and with a Redis
// inbox each instance counts what it did itself.

// timelineMinutes is how far back the per-minute counters go.
const timelineMinutes = 24 * 60

// outcomeClass is what the cards and the chart count an outcome as.
type outcomeClass int

const (
	classNone      outcomeClass = iota // a handshake: not a delivery
	classDelivered                     // the app took it
	classFailed                        // the app did not take it (an attempt, or a direct forward)
	classDead                          // an inbox event whose last attempt failed
	classDuplicate                     // the app was not called: delivered before
	classIgnored                       // the app was not called: the route does not subscribe to it
	classRefused                       // the app was not called: not signed, too large or malformed
	classDeferred                      // the app was not called: the sender was told to retry later
	classQueued                        // stored in the inbox, the sender answered
	classCount
)

// classNames name the classes in the API, in the order of outcomeClass.
var classNames = [classCount]string{"", "delivered", "failed", "dead", "duplicate", "ignored", "refused", "deferred", "queued"}

func classOf(result outcome, status int) outcomeClass {
	switch result {
	case outcomeForwarded:
		if status >= 200 && status < 300 {
			return classDelivered
		}
		return classFailed
	case outcomeDelivered:
		return classDelivered
	case outcomeFailed, outcomeUpstreamError:
		return classFailed
	case outcomeDead:
		return classDead
	case outcomeDuplicate:
		return classDuplicate
	case outcomeIgnored:
		return classIgnored
	case outcomeInvalidSignature, outcomeTooLarge, outcomeBadRequest, outcomeHandshakeRefused:
		return classRefused
	case outcomeInFlight, outcomeStoreUnavailable:
		return classDeferred
	case outcomeQueued:
		return classQueued
	}
	return classNone
}

// neverStored reports whether an outcome of the class never becomes an
// inbox event: the app is not called for it.
func (c outcomeClass) neverStored() bool {
	return c == classDuplicate || c == classIgnored || c == classRefused || c == classDeferred
}

// classCounts counts outcomes by class.
type classCounts [classCount]int

func (c classCounts) named() map[string]int {
	out := make(map[string]int, classCount-1)
	for i := classDelivered; i < classCount; i++ {
		out[classNames[i]] = c[i]
	}
	return out
}

// handlerTally is one handler's counters.
type handlerTally struct {
	mu      sync.Mutex
	since   time.Time // when counting began: the handler's first provisioning in this process
	totals  classCounts
	minutes [timelineMinutes]minuteCounts // by unix minute, modulo timelineMinutes
	app     appHealth
}

type minuteCounts struct {
	minute int64 // unix minute these counts are of
	counts classCounts
}

// appHealth is what the last attempts to reach the app said.
type appHealth struct {
	lastSuccess      time.Time
	lastFailure      time.Time
	lastStatus       int
	lastError        string
	unreachableSince time.Time // the first of the failed attempts in a row that found no app; zero once one reached it
}

func newHandlerTally(now time.Time) *handlerTally { return &handlerTally{since: now} }

// count adds one outcome at t.
func (t *handlerTally) count(c outcomeClass, at time.Time) {
	if c == classNone {
		return
	}
	m := at.Unix() / 60
	t.mu.Lock()
	defer t.mu.Unlock()
	t.totals[c]++
	slot := &t.minutes[m%timelineMinutes]
	if slot.minute != m {
		*slot = minuteCounts{minute: m}
	}
	slot.counts[c]++
}

// attempted records what an attempt to reach the app found: taken, an
// answer that was not a success, or no app at all (unreachable).
func (t *handlerTally) attempted(at time.Time, ok bool, status int, errText string, unreachable bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := &t.app
	if ok {
		h.lastSuccess, h.unreachableSince = at, time.Time{}
		return
	}
	h.lastFailure, h.lastStatus, h.lastError = at, status, errText
	switch {
	case !unreachable:
		h.unreachableSince = time.Time{}
	case h.unreachableSince.IsZero():
		h.unreachableSince = at
	}
}

// timelinePoint is one minute of the chart.
type timelinePoint struct {
	At     time.Time      `json:"at"`
	Counts map[string]int `json:"counts"`
}

// timeline is the last n minutes up to now, oldest first, one point per
// minute (zero counts included, so that the chart's bars line up).
func (t *handlerTally) timeline(now time.Time, n int) []timelinePoint {
	end := now.Unix() / 60
	out := make([]timelinePoint, 0, n)
	t.mu.Lock()
	defer t.mu.Unlock()
	for m := end - int64(n) + 1; m <= end; m++ {
		var c classCounts
		if slot := t.minutes[m%timelineMinutes]; slot.minute == m {
			c = slot.counts
		}
		out = append(out, timelinePoint{At: time.Unix(m*60, 0).UTC(), Counts: c.named()})
	}
	return out
}

// snapshot is the totals and the app's health, read together.
func (t *handlerTally) snapshot(now time.Time) (since time.Time, totals classCounts, failedLastHour int, app appHealth) {
	end := now.Unix() / 60
	t.mu.Lock()
	defer t.mu.Unlock()
	for m := end - 59; m <= end; m++ {
		if slot := t.minutes[m%timelineMinutes]; slot.minute == m {
			failedLastHour += slot.counts[classFailed] + slot.counts[classDead]
		}
	}
	return t.since, t.totals, failedLastHour, t.app
}

// health is a handler's status line, as seed 003's endpoint screen has
// one: its app takes deliveries, fails them, or cannot be reached.
type health struct {
	State          string     `json:"state"` // healthy, failing or unreachable
	Message        string     `json:"message"`
	FailedLastHour int        `json:"failed_last_hour"`
	LastFailureAt  *time.Time `json:"last_failure_at,omitempty"`
	LastSuccessAt  *time.Time `json:"last_success_at,omitempty"`
	LastStatus     int        `json:"last_status,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	Since          *time.Time `json:"since,omitempty"` // unreachable: since when
	Pending        int        `json:"pending"`
}

// healthOf says how the app behind a handler is doing; its message
// gives times in the zone loc.
func healthOf(failedLastHour int, app appHealth, pending int, now time.Time, loc *time.Location) health {
	h := health{State: "healthy", FailedLastHour: failedLastHour, Pending: pending, LastStatus: app.lastStatus, LastError: app.lastError}
	if !app.lastFailure.IsZero() {
		at := app.lastFailure
		h.LastFailureAt = &at
	}
	if !app.lastSuccess.IsZero() {
		at := app.lastSuccess
		h.LastSuccessAt = &at
	}
	switch {
	case !app.unreachableSince.IsZero():
		since := app.unreachableSince
		h.State, h.Since = "unreachable", &since
	case !app.lastFailure.IsZero() && app.lastFailure.After(app.lastSuccess) && now.Sub(app.lastFailure) < time.Hour:
		h.State = "failing"
	}
	h.Message = h.describe(loc)
	return h
}

// describe is the status line, with times in the zone loc: the API's
// message in the server's, the CLI's in the operator's.
func (h health) describe(loc *time.Location) string {
	switch {
	case h.State == "unreachable" && h.Since != nil:
		return "App unreachable since " + clock(*h.Since, loc) + " (" + cmp.Or(h.LastError, "no answer") + ")" + pendingText(h.Pending)
	case h.State == "failing" && h.LastFailureAt != nil:
		return "Failing: " + plural(h.FailedLastHour, "failed attempt") + " in the last hour, last at " +
			clock(*h.LastFailureAt, loc) + ", " + answerText(h.LastStatus, h.LastError) + pendingText(h.Pending)
	case h.FailedLastHour > 0 && h.LastSuccessAt != nil:
		return "No delivery errors since " + clock(*h.LastSuccessAt, loc) + " (" +
			plural(h.FailedLastHour, "failed attempt") + " in the last hour before that)"
	}
	return "No recent delivery errors"
}

func answerText(status int, errText string) string {
	if status > 0 {
		return "the app answered " + strconv.Itoa(status)
	}
	return cmp.Or(errText, "no answer")
}

func pendingText(pending int) string {
	if pending == 0 {
		return ""
	}
	return ", " + strconv.Itoa(pending) + " pending"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// clock is a time of day with its zone, as an operator reads it.
func clock(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("15:04 MST")
}
