package webhookguard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/webhookguard/webhookguard/internal/payload"
	"go.uber.org/zap"
)

// Dedupe defaults. The wait stays below Kapso's 10 s answer deadline so
// that a waiting duplicate is still answered in time.
const (
	defaultCapacity = 100000
	defaultTTL      = 24 * time.Hour
	defaultWait     = 8 * time.Second
	defaultLease    = 5 * time.Minute
	defaultScope    = "default"
	defaultKey      = "{http.request.header.X-Idempotency-Key}"
	defaultPrefix   = "webhookguard:"

	storeErrorPass   = "pass"
	storeErrorReject = "reject"
)

// Dedupe makes each delivery reach the upstream once. A delivery's keys
// are its idempotency key (the X-Idempotency-Key header by default, else
// the SHA-256 of the body) and, for Kapso message events, the content key
// "<event>:<message.id>", which also recognises Kapso's individual
// redelivery of an item that first arrived in a batch. A delivery is a
// duplicate when any of its keys is committed.
//
// Keys are claimed before forwarding and committed only once the upstream
// answered 2xx; on any other answer they are released, the upstream's
// answer goes back unchanged and the sender's retry is forwarded again.
// A duplicate of a committed delivery is answered 200
// {"status":"duplicate"} with X-Webhook-Duplicate: true. A duplicate of a
// delivery still in flight waits for it (up to Wait): if the first
// succeeds it is a duplicate, if the first fails it is forwarded in its
// place, and if it is still unresolved it is answered 409 with Retry-After.
type Dedupe struct {
	// Key is the idempotency key, usually a placeholder. When it evaluates
	// empty, the SHA-256 of the raw body is used instead.
	// Default: {http.request.header.X-Idempotency-Key}.
	Key string `json:"key,omitempty"`

	// Capacity bounds the number of committed keys kept in memory; the
	// least recently used are forgotten first. Ignored with Redis.
	// Default: 100000.
	Capacity int `json:"capacity,omitempty"`

	// TTL is how long a committed key is remembered. Default: 24h.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// Wait is how long a duplicate of a delivery still in flight waits for
	// the first one to finish before it is answered 409. Default: 8s.
	Wait caddy.Duration `json:"wait,omitempty"`

	// Lease is how long a claim on a key in Redis lasts if the instance
	// that made it dies before committing or releasing it. Default: 5m.
	Lease caddy.Duration `json:"lease,omitempty"`

	// Scope names the store. Handlers with the same scope share their
	// keys; handlers with different scopes never see each other's keys.
	// In memory, the store outlives config reloads. Default: "default".
	Scope string `json:"scope,omitempty"`

	// Redis is a redis:// or rediss:// URL. When set, keys are kept in
	// Redis, so several Caddy instances share them. Default: in memory.
	Redis string `json:"redis,omitempty"`

	// Prefix starts every Redis key; the scope follows it.
	// Default: "webhookguard:".
	Prefix string `json:"prefix,omitempty"`

	// OnStoreError says what happens when the store cannot be reached:
	// "pass" forwards the delivery without deduplication (and logs it),
	// "reject" answers 503 so that the sender retries later.
	// Default: pass.
	OnStoreError string `json:"on_store_error,omitempty"`

	store   store
	poolKey string
	// keyHeader is the canonical name of the request header Key is, when
	// Key is exactly one {http.request.header.*} placeholder (the usual
	// case, and the default); empty otherwise.
	keyHeader string
	ttl       time.Duration
	wait      time.Duration
	lease     time.Duration
	now       func() time.Time
	logger    *zap.Logger
}

// store is where claims and committed keys live.
type store interface {
	// claim takes every key for the caller unless one of them is committed
	// (duplicate) or claimed by another delivery (busy). A busy result may
	// come with a channel that is closed when that claim is resolved.
	claim(ctx context.Context, keys []storeKey) (claimResult, error)
	commit(ctx context.Context, c *claim) error
	release(ctx context.Context, c *claim) error
}

// storeKey is a fixed-size digest of a dedupe key: keys come from senders
// and may be long, and a fixed size keeps the memory per key bounded.
type storeKey [16]byte

func newStoreKey(s string) storeKey {
	sum := sha256.Sum256([]byte(s))
	var k storeKey
	copy(k[:], sum[:])
	return k
}

// claimResult is what a store answered a claim.
type claimResult struct {
	state claimState
	claim *claim
	wait  <-chan struct{}
}

// claim is one delivery's hold on its keys.
type claim struct {
	keys  []storeKey
	token string
	done  chan struct{}
}

// claimState is what became of a claim on a delivery's keys.
type claimState int

const (
	claimOwned     claimState = iota // the keys are this delivery's until it commits or releases them
	claimDuplicate                   // a key is committed: the event was delivered
	claimBusy                        // a key is claimed by a delivery still in flight
	claimStoreDown                   // the store could not be asked
)

func (d *Dedupe) provision(ctx caddy.Context, logger *zap.Logger, handler string, now func() time.Time) error {
	d.logger, d.now = logger, now
	if d.Key == "" {
		d.Key = defaultKey
	}
	d.keyHeader = headerOfPlaceholder(d.Key)
	if d.Capacity <= 0 {
		d.Capacity = defaultCapacity
	}
	d.ttl = durationOr(d.TTL, defaultTTL)
	d.wait = durationOr(d.Wait, defaultWait)
	d.lease = durationOr(d.Lease, defaultLease)
	if d.Scope == "" {
		d.Scope = defaultScope
	}
	if d.Prefix == "" {
		d.Prefix = defaultPrefix
	}
	if d.OnStoreError == "" {
		d.OnStoreError = storeErrorPass
	}
	if d.Redis != "" {
		return d.provisionRedis(ctx)
	}
	return d.provisionMemory(ctx, handler)
}

// provisionForInbox sets the defaults a handler with an inbox uses: its
// keys are kept by the inbox's own store, committed with the event, so
// no dedupe store is opened and the store's options are not used.
func (d *Dedupe) provisionForInbox(logger *zap.Logger, now func() time.Time) {
	d.logger, d.now = logger, now
	if d.Key == "" {
		d.Key = defaultKey
	}
	d.keyHeader = headerOfPlaceholder(d.Key)
	d.ttl = durationOr(d.TTL, defaultTTL)
	if d.Scope == "" {
		d.Scope = defaultScope
	}
	if unused := d.storeOptions(); len(unused) > 0 {
		logger.Warn("with an inbox, dedupe keys are kept in the inbox's store, committed with each event; "+
			"these dedupe options are not used", zap.Strings("options", unused))
	}
}

// storeOptions names the options set that only a dedupe store uses.
func (d *Dedupe) storeOptions() []string {
	var set []string
	for _, o := range []struct {
		name string
		set  bool
	}{
		{"capacity", d.Capacity != 0}, {"wait", d.Wait != 0}, {"lease", d.Lease != 0},
		{"redis", d.Redis != ""}, {"prefix", d.Prefix != ""},
		{"on_store_error", d.OnStoreError != ""},
	} {
		if o.set {
			set = append(set, o.name)
		}
	}
	return set
}

func durationOr(v caddy.Duration, def time.Duration) time.Duration {
	if v > 0 {
		return time.Duration(v)
	}
	return def
}

// checkOptions checks what can be checked of the options as given; the
// Caddyfile parser (with the file and line) and Validate both call it.
func (d *Dedupe) checkOptions() error {
	switch d.OnStoreError {
	case storeErrorPass, storeErrorReject, "": // "" until provisioned, and with an inbox
	default:
		return fmt.Errorf("on_store_error must be pass or reject, not %q", d.OnStoreError)
	}
	if d.Redis != "" {
		if err := checkRedisURL(d.Redis); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
	}
	return nil
}

// checkRedisURL refuses a URL of another scheme. A placeholder is
// checked once resolved, by the Redis client. The message names the
// scheme only: the URL may hold a password.
func checkRedisURL(url string) error {
	if strings.Contains(url, "{") {
		return nil
	}
	for _, scheme := range []string{"redis://", "rediss://", "unix://"} {
		if strings.HasPrefix(url, scheme) {
			return nil
		}
	}
	given := "no scheme"
	if i := strings.Index(url, "://"); i > 0 && i < 16 {
		given = "a " + url[:i+3] + " URL"
	}
	return fmt.Errorf("want a redis:// or rediss:// URL (or unix:// for a socket), got %s", given)
}

func (d *Dedupe) cleanup() error {
	if d.poolKey == "" {
		return nil
	}
	_, err := stores.Delete(d.poolKey)
	d.poolKey = ""
	return err
}

func (d *Dedupe) rejectOnStoreError() bool { return d.OnStoreError == storeErrorReject }

func (d *Dedupe) retryAfter() string {
	return strconv.Itoa(max(1, int(math.Ceil(d.wait.Seconds()))))
}

// deliveryKeyset is the set of keys one delivery is known by.
type deliveryKeyset struct {
	primary string
	content string
}

// storeKeys digests the keys for the store.
func (k deliveryKeyset) storeKeys() []storeKey {
	keys := make([]storeKey, 1, 2)
	keys[0] = storeKeyOf("id", k.primary)
	if k.content != "" {
		keys = append(keys, storeKeyOf("content", k.content))
	}
	return keys
}

// inboxKeys are keys as an inbox store holds them: scoped, so that
// handlers with different scopes never see each other's keys there
// either.
func (d *Dedupe) inboxKeys(keys []storeKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = d.Scope + "\x00" + string(k[:])
	}
	return out
}

// storeKeyOf is newStoreKey(kind + ":" + key), without building that
// string for the usual short key: every delivery works its keys out.
func storeKeyOf(kind, key string) storeKey {
	var buf [128]byte
	n := len(kind) + 1 + len(key)
	if n > len(buf) {
		return newStoreKey(kind + ":" + key)
	}
	copy(buf[copy(buf[:], kind)+1:], key)
	buf[len(kind)] = ':'
	sum := sha256.Sum256(buf[:n])
	var k storeKey
	copy(k[:], sum[:])
	return k
}

// deliveryKeys works out the keys of a single (non-batched) delivery.
func (d *Dedupe) deliveryKeys(r *http.Request, repl *caddy.Replacer, scheme, event string, body []byte) deliveryKeyset {
	return deliveryKeyset{primary: d.primaryKey(r, repl, scheme, body), content: payload.ContentKey(event, body)}
}

// primaryKey evaluates the configured key. When it is empty, a Standard
// Webhooks delivery is known by its webhook-id (the spec's dedupe key:
// retries keep it, and a replayed capture carries it), anything else by
// the SHA-256 of its body (raw Meta deliveries carry no key header).
func (d *Dedupe) primaryKey(r *http.Request, repl *caddy.Replacer, scheme string, body []byte) string {
	if k := d.configuredKey(r, repl); k != "" {
		return k
	}
	if scheme == schemeStandard {
		if id := standardID(r); id != "" {
			return "webhook-id:" + id
		}
	}
	sum := sha256.Sum256(body)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// configuredKey evaluates Key. A key that is one request header is read
// from the header map directly, as the replacer would give it (repeated
// values joined with commas): parsing the placeholder on every delivery
// cost more than the rest of working out its keys.
func (d *Dedupe) configuredKey(r *http.Request, repl *caddy.Replacer) string {
	if d.keyHeader != "" {
		return strings.Join(r.Header[d.keyHeader], ",")
	}
	return repl.ReplaceAll(d.Key, "")
}

// headerOfPlaceholder returns the canonical header name when key is
// exactly "{http.request.header.NAME}", else "".
func headerOfPlaceholder(key string) string {
	const open, end = "{http.request.header.", "}"
	name, ok := strings.CutPrefix(key, open)
	if !ok {
		return ""
	}
	name, ok = strings.CutSuffix(name, end)
	if !ok || name == "" || strings.ContainsAny(name, "{}") {
		return ""
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

// acquire claims keys for one delivery, waiting while another delivery
// with a shared key is in flight.
func (d *Dedupe) acquire(ctx context.Context, keys []storeKey) (*claim, claimState) {
	var deadline time.Time // set when first busy
	poll := 20 * time.Millisecond
	for {
		res, err := d.store.claim(ctx, keys)
		if err != nil {
			metrics.storeErrors.WithLabelValues(d.Scope).Inc()
			d.logger.Warn("dedupe store unreachable", zap.String("scope", d.Scope),
				zap.String("on_store_error", d.OnStoreError), zap.Error(err))
			return nil, claimStoreDown
		}
		if res.state != claimBusy {
			return res.claim, res.state
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(d.wait)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, claimBusy
		}
		if !waitForRelease(ctx, res.wait, min(remaining, poll)) {
			return nil, claimBusy
		}
		poll = min(poll*2, 250*time.Millisecond)
	}
}

// waitForRelease sleeps until the other claim is resolved (when the store
// can tell), the poll interval passes, or the request is cancelled.
func waitForRelease(ctx context.Context, resolved <-chan struct{}, poll time.Duration) bool {
	t := time.NewTimer(poll)
	defer t.Stop()
	if resolved == nil {
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	select {
	case <-resolved:
		return true
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// settleContext bounds a commit or release: it must not depend on the
// request, which may be gone, but must not hang on an unreachable store.
// The in-memory store never blocks, so it gets no timer.
func (d *Dedupe) settleContext() (context.Context, context.CancelFunc) {
	if _, inMemory := d.store.(*memoryStore); inMemory {
		return context.Background(), func() {}
	}
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// commit marks a delivered event's keys; it runs on a context of its own
// so that a sender hanging up after delivery cannot stop the commit.
func (d *Dedupe) commit(c *claim) {
	if c == nil {
		return
	}
	ctx, cancel := d.settleContext()
	defer cancel()
	if err := d.store.commit(ctx, c); err != nil {
		metrics.storeErrors.WithLabelValues(d.Scope).Inc()
		d.logger.Error("dedupe commit failed: a retry of this delivery may be forwarded again",
			zap.String("scope", d.Scope), zap.Error(err))
	}
}

// release lets go of a claim whose delivery did not go, so that the
// sender's retry is forwarded.
func (d *Dedupe) release(c *claim) {
	if c == nil {
		return
	}
	ctx, cancel := d.settleContext()
	defer cancel()
	if err := d.store.release(ctx, c); err != nil {
		metrics.storeErrors.WithLabelValues(d.Scope).Inc()
		d.logger.Warn("dedupe release failed: the claim lapses when its lease ends",
			zap.String("scope", d.Scope), zap.Error(err))
	}
}

// workOutKeys finds the keys the request and its items are known by. A
// single delivery's are its idempotency key and content key; a batch is
// known by its own idempotency key, and each item by its content key (or
// its place in the batch when it has none).
func (d *delivery) workOutKeys() {
	dd := d.h.Dedupe
	if dd == nil {
		return
	}
	if d.batch == nil {
		ks := dd.deliveryKeys(d.r, d.repl, d.scheme, d.event, d.body.bytes())
		d.key = ks.primary
		d.items[0].key, d.items[0].keys = ks.primary, ks.storeKeys()
	} else {
		d.key = dd.primaryKey(d.r, d.repl, d.scheme, d.body.bytes())
		d.shared = []storeKey{storeKeyOf("id", d.key)}
		for i := range d.items {
			it := &d.items[i]
			if it.key = payload.ContentKey(d.batch.Event, it.body); it.key == "" {
				it.key = d.key + "#" + strconv.Itoa(i)
			}
			it.keys = []storeKey{storeKeyOf("content", it.key)}
		}
	}
	d.repl.Set("http.webhook.idempotency_key", d.key)
	d.repl.Set("http.webhook.duplicate", "false")
}

// claimKeys claims the request's keys and each item's, for the direct
// sink. When the request goes no further (a duplicate, one still in
// flight elsewhere, the store down under on_store_error reject) it
// answers the sender and reports answered. A batch item whose claim
// cannot be taken is marked blocked: the items before it go on, and the
// rest wait for the sender's retry. An item that repeats an earlier item
// of the same request is its duplicate: a request never waits on a claim
// of its own.
func (d *delivery) claimKeys() (answered bool, err error) {
	dd := d.h.Dedupe
	if dd == nil {
		return false, nil
	}
	if len(d.shared) > 0 {
		c, state := dd.acquire(d.r.Context(), d.shared)
		switch state {
		case claimDuplicate:
			return true, d.answerDuplicate("")
		case claimBusy:
			return true, d.answerBusy()
		case claimStoreDown:
			if dd.rejectOnStoreError() {
				return true, d.answerStoreDown()
			}
			return false, nil // on without the store
		}
		d.claim = c
	}
	for i := range d.items {
		it := &d.items[i]
		if d.repeatsEarlierItem(i) {
			d.record(it, outcomeDuplicate, http.StatusOK, 0)
			continue
		}
		c, state := dd.acquire(d.r.Context(), it.keys)
		switch {
		case state == claimDuplicate && d.batch == nil:
			return true, d.answerDuplicate("")
		case state == claimDuplicate:
			d.record(it, outcomeDuplicate, http.StatusOK, 0)
		case state == claimBusy && d.batch == nil:
			return true, d.answerBusy()
		case state == claimBusy:
			it.blocked, it.status = "item still in flight", http.StatusConflict
			return false, nil
		case state == claimStoreDown && dd.rejectOnStoreError() && d.batch == nil:
			return true, d.answerStoreDown()
		case state == claimStoreDown && dd.rejectOnStoreError():
			it.blocked, it.status = "dedupe store unreachable", http.StatusServiceUnavailable
			return false, nil
		}
		it.claim = c
	}
	return false, nil
}

// repeatsEarlierItem reports whether item i shares a key with an earlier
// item of the request.
func (d *delivery) repeatsEarlierItem(i int) bool {
	for _, k := range d.items[i].keys {
		for _, earlier := range d.items[:i] {
			if slices.Contains(earlier.keys, k) {
				return true
			}
		}
	}
	return false
}

// answerDuplicate answers a delivery already delivered (or queued); of,
// when known, is the event that holds it.
// Each item not recorded yet is recorded as a duplicate here, once.
func (d *delivery) answerDuplicate(of string) error {
	for i := range d.items {
		if it := &d.items[i]; it.result == "" {
			d.record(it, outcomeDuplicate, http.StatusOK, 0)
		}
	}
	if d.batch != nil {
		d.h.countRequest(outcomeDuplicate)
	}
	d.repl.Set("http.webhook.duplicate", "true")
	d.w.Header().Set(headerDuplicate, "true")
	if of != "" {
		d.w.Header().Set(headerDeliveryID, of)
	}
	return writeJSON(d.w, http.StatusOK, map[string]any{"status": "duplicate"})
}

func (d *delivery) answerBusy() error {
	d.w.Header().Set("Retry-After", d.h.Dedupe.retryAfter())
	d.h.logRejection(d.r, d.event, outcomeInFlight, "an identical delivery is still being forwarded")
	return writeJSONError(d.w, http.StatusConflict, "in_flight",
		"an identical delivery is still being processed; retry later")
}

func (d *delivery) answerStoreDown() error {
	d.h.logRejection(d.r, d.event, outcomeStoreUnavailable, "dedupe store unreachable and on_store_error is reject")
	return writeJSONError(d.w, http.StatusServiceUnavailable, "store_unavailable",
		"the dedupe store is unreachable; retry later")
}
