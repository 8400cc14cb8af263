package webhookguard

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/webhookguard/webhookguard/internal/inbox"
	"github.com/webhookguard/webhookguard/internal/payload"
	"go.uber.org/zap"
)

// Inbox defaults. The schedule starts soon (a deploy or a restart of the
// app lasts seconds to minutes), then spreads out as Svix's does, about
// 45 hours in all: well inside the retention, so a dead event can still
// be replayed for days.
var defaultRetry = []time.Duration{
	10 * time.Second, time.Minute, 5 * time.Minute, 30 * time.Minute,
	2 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
}

const (
	defaultInboxConcurrency = 4
	defaultInboxTimeout     = 30 * time.Second
	defaultRetention        = 7 * 24 * time.Hour
	orderByNone             = "none"

	// keptResponse is how much of the app's answer to each attempt the
	// history keeps: enough to see the error the app gave.
	keptResponse = 1024

	// inboxOpenWait bounds how long a request waits for the store to be
	// opened when it arrives while Caddy is still starting.
	inboxOpenWait = 5 * time.Second

	headerDeliveryID = "X-Webhook-Delivery-Id"
	headerAttempt    = "X-Webhook-Attempt"
)

// Inbox makes the handler answer the sender as soon as an accepted event
// is stored on disk (fsynced), and deliver it to the app from there until
// the app answers 2xx, retrying on a schedule, one event at a time per
// conversation. A handler with an inbox is terminal for the events it
// accepts: the rest of the route is not called for them.
type Inbox struct {
	// Deliver is the handler that delivers an event to the app, normally
	// reverse_proxy (the Caddyfile's "to <upstreams...>" is shorthand for
	// it) or a subroute ("deliver { … }"). It must answer: an event that
	// falls through it is retried. Required.
	DeliverRaw json.RawMessage `json:"deliver,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	// Path is the bbolt file. Handlers may share one. Default:
	// webhookguard/inbox.db in Caddy's data directory.
	Path string `json:"path,omitempty"`

	// Redis, when set, keeps the queue, its attempt logs and its history
	// in Redis instead of a file, so that several Caddy instances share
	// it: any instance accepts, any delivers, order per conversation
	// holds across them, and a dead instance's conversations are taken
	// over once its leases expire. A redis:// or rediss:// URL; it may be
	// an {env.*} placeholder. Run Redis with appendonly yes. Default: none
	// (the file at Path).
	Redis string `json:"redis,omitempty"`

	// Prefix starts every Redis key of the queue. Default:
	// "webhookguard:inbox:".
	Prefix string `json:"prefix,omitempty"`

	// Lease is, with Redis, how long an instance holds a conversation
	// without renewing its hold (it renews every third of it while it
	// delivers): how long the conversations of an instance that died wait
	// before another instance takes them over. Default: 15s.
	Lease caddy.Duration `json:"lease,omitempty"`

	// Retry lists the delays before attempts 2, 3, …; when the attempt
	// after the last delay fails, the event is dead (kept for replay).
	// Each delay is spread by ±20%, and a 429 or 503's Retry-After is
	// honoured. Default: 10s 1m 5m 30m 2h 6h 12h 24h.
	Retry []caddy.Duration `json:"retry,omitempty"`

	// OrderBy is the order key: events with the same key are delivered
	// one at a time in arrival order. A placeholder, or "none" for no
	// ordering. Default: the conversation (Kapso's conversation.id or a
	// batch's batch_info.conversation_id; for a raw Meta payload, the
	// phone number id and the customer's wa_id or user id); events
	// without one wait for no other.
	OrderBy string `json:"order_by,omitempty"`

	// Concurrency bounds the attempts in flight at once, across order
	// keys. Default: 4.
	Concurrency int `json:"concurrency,omitempty"`

	// Rate is the most attempts started per interval, written
	// "<n>/<s|m|h>" such as "10/s": attempts are spaced evenly (a tenth of
	// a second apart for "10/s"), so an app that just came back is not hit
	// by its whole backlog at once. Default: no limit beyond Concurrency.
	Rate string `json:"rate,omitempty"`

	// Timeout bounds one attempt. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Retention is how long delivered and dead events, with their
	// bodies, are kept; pending events are kept until they are delivered
	// or dead. Default: 7 days.
	Retention caddy.Duration `json:"retention,omitempty"`

	deliver     caddyhttp.MiddlewareHandler
	h           *Handler
	path        string // the store's key in the pool: the file, or the Redis URL and prefix
	storeLabel  string // the store as log lines name it
	openStore   func() (inbox.Backend, error)
	opened      chan struct{} // closed once rt is set
	retry       []time.Duration
	timeout     time.Duration
	keep        time.Duration
	rateN       int
	ratePer     time.Duration
	warnedOrder atomic.Bool
	failing     atomic.Bool // an attempt failed and none was delivered since
	events      *caddyevents.App
	ctx         caddy.Context                    // the one that emits its events
	rt          atomic.Pointer[inboxRuntime]     // set by the app's Start
	server      atomic.Pointer[caddyhttp.Server] // the server the handler is in
}

func (in *Inbox) provision(ctx caddy.Context, h *Handler) error {
	in.h = h
	if err := in.checkOptions(); err != nil {
		return err
	}
	mod, err := ctx.LoadModule(in, "DeliverRaw")
	if err != nil {
		return fmt.Errorf("deliver: %w", err)
	}
	in.deliver = mod.(caddyhttp.MiddlewareHandler)
	in.opened = make(chan struct{})
	if err := in.provisionStore(); err != nil {
		return err
	}
	in.retry = defaultRetry
	if len(in.Retry) > 0 {
		in.retry = make([]time.Duration, len(in.Retry))
		for i, d := range in.Retry {
			in.retry[i] = time.Duration(d)
		}
	}
	if in.Concurrency <= 0 {
		in.Concurrency = defaultInboxConcurrency
	}
	in.timeout = durationOr(in.Timeout, defaultInboxTimeout)
	in.keep = durationOr(in.Retention, defaultRetention)
	if in.Rate != "" {
		if in.rateN, in.ratePer, err = parseRate(in.Rate); err != nil {
			return err
		}
	}
	return nil
}

// parseRate reads "<n>/<s|m|h>".
func parseRate(s string) (int, time.Duration, error) {
	num, unit, ok := strings.Cut(s, "/")
	n, err := strconv.Atoi(num)
	per, known := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}[unit]
	if !ok || err != nil || n <= 0 || !known {
		return 0, 0, fmt.Errorf("rate %q is not <n>/<s|m|h> with n above zero, such as 10/s", s)
	}
	if per/time.Duration(n) < time.Microsecond {
		return 0, 0, fmt.Errorf("rate %q is more than a million a second: leave rate out for no limit", s)
	}
	return n, per, nil
}

// checkOptions checks what can be checked of the options as given; the
// Caddyfile parser (with the file and line), Provision and Validate all
// call it.
func (in *Inbox) checkOptions() error {
	if in.DeliverRaw == nil && in.deliver == nil { // Provision loads DeliverRaw into deliver
		return errors.New("needs to <upstreams...> or a deliver block: where events are delivered")
	}
	if in.Redis != "" && in.Path != "" {
		return errors.New("path and redis given together: the queue is in one or the other")
	}
	if in.Redis == "" && (in.Prefix != "" || in.Lease != 0) {
		return errors.New("prefix and lease are for redis; without redis the queue is the file at path")
	}
	if in.Redis != "" && in.Lease != 0 && time.Duration(in.Lease) < minInboxLease {
		return fmt.Errorf("lease must be at least %v (it is renewed every third of it)", minInboxLease)
	}
	for _, d := range in.Retry {
		if d <= 0 {
			return fmt.Errorf("retry: %v is not a positive duration", time.Duration(d))
		}
	}
	if in.Concurrency < 0 {
		return errors.New("concurrency must not be negative")
	}
	if in.Rate != "" {
		if _, _, err := parseRate(in.Rate); err != nil {
			return err
		}
	}
	return nil
}

// queue is the dispatcher's view of this inbox.
func (in *Inbox) queue() inbox.Queue {
	return inbox.Queue{
		Name:        in.h.name,
		Deliver:     in.deliverEvent,
		Retry:       in.retry,
		Concurrency: in.Concurrency,
		Timeout:     in.timeout,
		Retention:   in.keep,
		Rate:        in.rateN,
		Per:         in.ratePer,
		OnAttempt:   in.observeAttempt,
		OnDamaged:   in.observeDamaged,
	}
}

// observeDamaged logs (once: a record is set aside once) and counts a
// record the store could not read.
func (in *Inbox) observeDamaged(d inbox.Damage) {
	metrics.inboxDamaged.WithLabelValues(in.h.name).Inc()
	in.h.logger.Error("inbox event damaged: set aside, and the rest of its conversation goes on without it; "+
		"the history lists it as damaged with the reason",
		zap.String("handler", in.h.name), zap.String("store", in.storeLabel), zap.String("event_id", d.ID),
		zap.Uint64("seq", d.Seq), zap.String("order_key", truncate(d.OrderKey, 256)), zap.String("reason", d.Reason))
}

// orderKey is the event's order key (see OrderBy).
func (in *Inbox) orderKey(repl *caddy.Replacer, body []byte) string {
	switch in.OrderBy {
	case orderByNone:
		return ""
	case "":
		return payload.ConversationKey(body)
	}
	key := repl.ReplaceAll(in.OrderBy, "")
	if key == "" {
		in.warnEmptyOrderKey()
	}
	return key
}

// warnEmptyOrderKey says, once per handler, that order_by gave nothing
// (a misspelt placeholder leaves every event unordered), and counts
// every time it does.
func (in *Inbox) warnEmptyOrderKey() {
	metrics.inboxOrderKeyEmpty.WithLabelValues(in.h.name).Inc()
	if in.warnedOrder.CompareAndSwap(false, true) {
		in.h.logger.Warn("inbox: order_by evaluated empty, so this event waits for no other; if every event does, "+
			"check the placeholder (caddy_webhook_guard_inbox_order_key_empty_total counts them)",
			zap.String("handler", in.h.name), zap.String("order_by", in.OrderBy))
	}
}

// newEvent captures r as it would be forwarded, with body, minus the
// signature headers (never stored; forward_secret re-signs at delivery).
func (d *delivery) newEvent(r *http.Request, body []byte, orderKey, name, key string) *inbox.Event {
	hdr := r.Header.Clone()
	d.h.dropSignatures(hdr)
	hdr.Del("Content-Length")
	now := d.h.now()
	var keysUntil time.Time
	if d.h.Dedupe != nil {
		keysUntil = now.Add(d.h.Dedupe.ttl)
	}
	return &inbox.Event{
		KeysUntil:  keysUntil,
		ID:         inbox.NewID(now),
		Queue:      d.h.name,
		Name:       name,
		Key:        key,
		OrderKey:   orderKey,
		Method:     r.Method,
		URI:        r.URL.RequestURI(),
		Host:       r.Host,
		RemoteAddr: r.RemoteAddr,
		Header:     hdr,
		Body:       body,
		ReceivedAt: now,
	}
}

// inboxSink stages each item as an event and stores them all in one
// commit, with their dedupe keys (the keys are committed with the
// events, in the inbox's own store: a redelivery is a duplicate after a
// restart too). The sender is answered once they are on disk.
type inboxSink struct{}

func (inboxSink) claims() bool { return false }

func (inboxSink) take(d *delivery, it *item) (stop bool) {
	e, err := d.newItemEvent(it)
	if err != nil {
		d.stageErr = err
		return true
	}
	d.events = append(d.events, e)
	return false
}

func (inboxSink) answer(d *delivery) error {
	if d.stageErr != nil {
		return writeJSONError(d.w, http.StatusInternalServerError, "internal", "the body could not be queued")
	}
	if err := d.h.Inbox.append(d.events, d.inboxKeys(d.shared)...); err != nil {
		return d.answerInboxDown(err)
	}
	ids, duplicates := []string{}, 0
	for i, e := range d.events {
		it := &d.items[i]
		if e.Duplicate {
			duplicates++
			it.eventID = e.DuplicateOf
			d.record(it, outcomeDuplicate, http.StatusOK, 0)
			continue
		}
		ids = append(ids, e.ID)
		it.eventID = e.ID
		d.record(it, outcomeQueued, http.StatusOK, 0, zap.String("event_id", e.ID))
	}
	switch {
	case d.batch == nil && duplicates == 1:
		return d.answerDuplicate(d.items[0].eventID)
	case d.batch == nil:
		return writeJSON(d.w, http.StatusOK, map[string]any{"status": "queued", "id": ids[0]})
	case duplicates == len(d.events):
		return d.answerDuplicate("")
	}
	d.h.countRequest(outcomeQueued)
	return writeJSON(d.w, http.StatusOK, map[string]any{"status": "queued", "items": len(ids), "ids": ids,
		"duplicates": duplicates, "ignored": 0})
}

// newItemEvent is an item as the inbox stores it: the request as it
// would be forwarded (a batch item as its own request), with its keys.
func (d *delivery) newItemEvent(it *item) (*inbox.Event, error) {
	if d.batch == nil {
		orderKey := d.h.Inbox.orderKey(d.repl, it.body)
		d.attachBody()
		body, err := io.ReadAll(d.r.Body)
		if err != nil {
			return nil, err
		}
		e := d.newEvent(d.r, body, orderKey, strings.Join(payload.EventNames(d.event, body), ","), it.key)
		e.Keys = d.inboxKeys(it.keys)
		return e, nil
	}
	sub := d.itemRequest(d.r.Context(), it)
	orderKey := d.h.Inbox.orderKey(d.repl, it.body)
	if orderKey == "" && d.batch.ConversationID != "" && d.h.Inbox.OrderBy == "" {
		orderKey = "conversation:" + d.batch.ConversationID
	}
	e := d.newEvent(sub, bytes.Clone(it.body), orderKey, d.batch.Event, it.key)
	e.Keys = d.inboxKeys(it.keys)
	return e, nil
}

// inboxKeys are keys as the inbox store holds them (none without dedupe).
func (d *delivery) inboxKeys(keys []storeKey) []string {
	if d.h.Dedupe == nil {
		return nil
	}
	return d.h.Dedupe.inboxKeys(keys)
}

// append stores events durably (deduplicated on their keys and shared)
// and wakes the dispatcher.
func (in *Inbox) append(events []*inbox.Event, shared ...string) error {
	rt := in.rt.Load()
	if rt == nil {
		// Caddy starts its apps in no set order: the HTTP server may take
		// requests a moment before the webhook_guard app has opened the
		// store. Wait for it rather than turn the first senders away.
		select {
		case <-in.opened:
			rt = in.rt.Load()
		case <-time.After(inboxOpenWait):
			return errors.New("the inbox is not open yet")
		}
	}
	if err := rt.store.Append(events, shared...); err != nil {
		return err
	}
	rt.dispatcher.Wake()
	return nil
}

func (d *delivery) answerInboxDown(err error) error {
	d.h.logger.Error("inbox write failed: the sender is asked to retry", zap.String("handler", d.h.name), zap.Error(err))
	d.h.logRejection(d.r, d.event, outcomeStoreUnavailable, "inbox write failed")
	return writeJSONError(d.w, http.StatusServiceUnavailable, "store_unavailable",
		"the event could not be stored; retry later")
}

// deliverEvent sends a stored event through the deliver handler, as its
// own request with a fresh replacer and vars (as batch items are).
func (in *Inbox) deliverEvent(ctx context.Context, e *inbox.Event, attempt int) (res inbox.Result) {
	req, err := http.NewRequestWithContext(ctx, e.Method, e.URI, bytes.NewReader(e.Body))
	if err != nil {
		return inbox.Result{Err: err}
	}
	req.Host, req.RemoteAddr, req.RequestURI = e.Host, e.RemoteAddr, e.URI
	req.Header = e.Header.Clone()
	req.ContentLength = int64(len(e.Body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(e.Body)), nil }
	req.Header.Set(headerDeliveryID, e.ID)
	req.Header.Set(headerAttempt, strconv.Itoa(attempt))
	if in.h.forwardKey != nil {
		req.Header.Set(headerKapsoSignature, in.h.forwardKey.sign(e.Body))
	}
	srv := in.server.Load()
	if srv == nil {
		srv = new(caddyhttp.Server)
	}
	deliver := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return in.deliver.ServeHTTP(w, r, noAnswer)
	})
	start := time.Now()
	a := serveSub(deliver, req, nil, srv, keptResponse, func(repl *caddy.Replacer) {
		repl.Set("http.webhook.verified", req.Header.Get(headerVerified))
		repl.Set("http.webhook.event", req.Header.Get(headerEvent))
		repl.Set("http.webhook.idempotency_key", req.Header.Get(headerIdempotencyKey))
		repl.Set("http.webhook.duplicate", "false")
	})
	res = inbox.Result{Status: a.status, Took: time.Since(start), Response: strings.ToValidUTF8(string(a.body), "\uFFFD")}
	if _, broken := errors.AsType[brokenAnswer](a.err); broken {
		res.Err = a.err
		return res
	}
	if a.err != nil {
		res.Err = describeAttemptError(a.err, in.timeout)
		// The app could not be reached at all (reverse_proxy wraps every
		// dial failure, a refused connection included, in a DialError).
		_, unreachable := errors.AsType[reverseproxy.DialError](a.err)
		res.Refused = unreachable || errors.Is(a.err, syscall.ECONNREFUSED)
		return res
	}
	if res.Status == http.StatusTooManyRequests || res.Status == http.StatusServiceUnavailable {
		if s, err := strconv.Atoi(a.header.Get("Retry-After")); err == nil && s > 0 {
			res.RetryAfter = time.Duration(s) * time.Second
		}
	}
	return res
}

// noAnswer ends a deliver handler that did not answer: the attempt fails.
var noAnswer = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
	return caddyhttp.Error(http.StatusBadGateway, errNoAnswer)
})

var errNoAnswer = errors.New("the inbox's deliver handler did not answer (it should end in reverse_proxy)")

// attemptFailure is an attempt's error said in the operator's terms
// (the attempt log and the history show it), keeping the cause for
// errors.Is.
type attemptFailure struct {
	msg   string
	cause error
}

func (f attemptFailure) Error() string { return f.msg }
func (f attemptFailure) Unwrap() error { return f.cause }

// describeAttemptError says what happened to an attempt that got no
// answer from the app: "connection refused", "timed out after 30s",
// rather than reverse_proxy's error with its trace.
func describeAttemptError(err error, timeout time.Duration) error {
	var msg string
	_, dial := errors.AsType[reverseproxy.DialError](err)
	dns, isDNS := errors.AsType[*net.DNSError](err)
	netErr, isNet := errors.AsType[net.Error](err)
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (isNet && netErr.Timeout()):
		msg = "timed out"
		if timeout > 0 { // a direct forward's deadline is reverse_proxy's, not known here
			msg += " after " + timeout.String()
		}
	case errors.Is(err, syscall.ECONNREFUSED):
		msg = "connection refused"
	case isDNS:
		msg = "the app's host name " + strconv.Quote(dns.Name) + " did not resolve"
	case errors.Is(err, syscall.ECONNRESET):
		msg = "the app reset the connection"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		msg = "the app closed the connection without answering"
	case errors.Is(err, errNoAnswer):
		msg = errNoAnswer.Error()
	case dial:
		msg = "could not connect to the app: " + innermost(err).Error()
	default:
		msg = innermost(err).Error()
	}
	return attemptFailure{msg, err}
}

// innermost is the error a chain of wrappers ends in.
func innermost(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

// observeAttempt logs every attempt and counts it.
func (in *Inbox) observeAttempt(e *inbox.Event, attempt int, res inbox.Result) {
	result := outcomeDelivered
	if !res.Delivered() {
		result = outcomeFailed
	}
	metrics.inboxAttempts.WithLabelValues(in.h.name, string(result)).Inc()
	fields := []zap.Field{zap.String("event_id", e.ID), zap.Int("attempt", attempt)}
	if res.Refused {
		fields = append(fields, zap.Bool("refused", true))
	}
	if res.Err != nil {
		fields = append(fields, zap.String("error", res.Err.Error()))
	}
	dead := !res.Delivered() && !res.Refused && (e.Manual || attempt > len(in.retry))
	logged := result
	if dead {
		logged = outcomeDead
	}
	in.h.logDelivery(cmp.Or(e.Name, e.Header.Get(headerEvent)), e.Header.Get(headerIdempotencyKey), e.Header.Get(headerVerified),
		logged, res.Status, res.Took, e.Header.Get(headerTest) != "", fields...)
	errText := ""
	if res.Err != nil {
		errText = res.Err.Error()
	}
	in.h.recent.tally.attempted(in.h.now(), res.Delivered(), res.Status, errText, res.Refused)
	in.emitHealth(e, attempt, res)
	if al := in.h.Alert; al != nil {
		if res.Delivered() {
			al.delivered()
			return
		}
		what := "the app answered " + strconv.Itoa(res.Status)
		if res.Err != nil {
			what = res.Err.Error()
		}
		al.failed(dead, what, map[string]any{"event_id": e.ID, "attempt": attempt, "status": res.Status})
	}
}

// emitHealth emits, through Caddy's events app, webhook_guard.event_dead
// when an event's last attempt failed and webhook_guard.app_recovered
// when the app takes an event after failures, so that event handler
// plugins can act on them.
func (in *Inbox) emitHealth(e *inbox.Event, attempt int, res inbox.Result) {
	if in.events == nil {
		return
	}
	if res.Delivered() {
		if in.failing.Swap(false) {
			in.events.Emit(in.ctx, "webhook_guard.app_recovered", map[string]any{"handler": in.h.name, "event_id": e.ID})
		}
		return
	}
	in.failing.Store(true)
	if !res.Refused && (e.Manual || attempt > len(in.retry)) {
		in.events.Emit(in.ctx, "webhook_guard.event_dead", map[string]any{"handler": in.h.name, "event_id": e.ID,
			"attempts": attempt, "status": res.Status})
	}
}

// inboxRuntime is one open store and its dispatcher, shared by every
// config that uses the file: a reload reuses it (no second open of the
// locked file, no second dispatcher).
type inboxRuntime struct {
	store      inbox.Backend
	dispatcher *inbox.Dispatcher
	label      string // the store as log lines name it

	mu     sync.Mutex
	owners []inboxOwner // the configs using the file, oldest first
}

// inboxOwner is one config's queues on a file.
type inboxOwner struct {
	app    *App
	queues []inbox.Queue
}

// use gives the dispatcher app's queues: the newest config's are the ones
// delivered through.
func (rt *inboxRuntime) use(app *App, queues []inbox.Queue) {
	rt.mu.Lock()
	rt.owners = append(rt.owners, inboxOwner{app, queues})
	rt.mu.Unlock()
	rt.dispatcher.SetQueues(queues)
}

// release forgets app's queues. When app was the newest (a config that
// failed to start, say), the config before it gets its queues back.
func (rt *inboxRuntime) release(app *App) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	i := slices.IndexFunc(rt.owners, func(o inboxOwner) bool { return o.app == app })
	if i < 0 {
		return
	}
	newest := i == len(rt.owners)-1
	rt.owners = slices.Delete(rt.owners, i, i+1)
	if newest && len(rt.owners) > 0 {
		rt.dispatcher.SetQueues(rt.owners[len(rt.owners)-1].queues)
	}
}

// currentQueues are the queues of the newest config using the file.
func (rt *inboxRuntime) currentQueues() []inbox.Queue {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.owners) == 0 {
		return nil
	}
	return rt.owners[len(rt.owners)-1].queues
}

// inboxes holds the open stores by path.
var inboxes = caddy.NewUsagePool()

// openInbox opens the store known by key with open, or takes another
// reference on it; label names it in log lines (never a Redis URL, which
// may hold a password).
func openInbox(key, label string, open func() (inbox.Backend, error), logger *zap.Logger) (*inboxRuntime, error) {
	v, _, err := inboxes.LoadOrNew(key, func() (caddy.Destructor, error) {
		store, err := open()
		if err != nil {
			return nil, err
		}
		d := inbox.NewDispatcher(store, func(err error) { logger.Error("inbox", zap.String("store", label), zap.Error(err)) })
		return &inboxRuntime{store: store, dispatcher: d, label: label}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*inboxRuntime), nil
}

// Destruct stops the dispatcher (an attempt still running after a few
// seconds is left pending, to be delivered again) and closes the file.
func (rt *inboxRuntime) Destruct() error {
	rt.dispatcher.Stop(5 * time.Second)
	return rt.store.Close()
}
