package webhookguard

import (
	"net/http"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/webhookguard/webhookguard/internal/inbox"
	"github.com/webhookguard/webhookguard/internal/payload"
)

// The request path, as one pipeline. Every request is stripped of
// spoofable headers and, unless it is Meta's handshake, read and
// verified; then it is split into items (a single delivery is one item
// with no envelope, a Kapso batch one item per element of its data),
// filtered by event, and its dedupe keys are worked out and, for the
// direct sink, claimed. Each item is then transformed (its headers, its
// body normalized and re-signed) and handed to the sink: the direct one
// forwards it through the rest of the route, the inbox stages it as an
// event. The claims are settled once, also when reverse_proxy panics, and
// the sender is answered.
//
// Refusals are written here, with their JSON body, rather than returned
// as errors for handle_errors: the sender is a machine that reads the
// status and the error code, and a site's error pages must not turn a 401
// into something it cannot read. Only a sender that hung up mid-body gets
// caddyhttp.Error(499): nobody is listening for an answer, and Caddy logs
// it as the client's doing.

// ServeHTTP runs the pipeline, stage after stage.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	stripGatewayHeaders(r.Header)
	h.markTestEvent(r)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	event := r.Header.Get(headerEvent)
	repl.Set("http.webhook.event", event)
	if h.isHandshake(r) {
		return h.answerHandshake(w, r)
	}

	body, err := h.readBody(w, r)
	if err != nil {
		return h.rejectBody(w, r, event, err)
	}
	defer body.release()
	v, verr := h.verify(r, body.bytes())
	if verr != nil {
		h.logRejection(r, event, outcomeInvalidSignature, verr.reason)
		return writeJSONError(w, http.StatusUnauthorized, "invalid_signature", verr.message)
	}
	d := &delivery{h: h, w: w, r: r, next: next, repl: repl, body: body, event: event, scheme: v.Scheme}
	d.markVerified(v)

	if bad := d.split(); bad != nil {
		return d.refuseBatch(bad)
	}
	if names, subscribed := d.filter(); !subscribed {
		return d.answerIgnored(names)
	}
	d.workOutKeys()
	s := d.sink()
	if s.claims() {
		defer d.settle() // also when reverse_proxy panics mid-forward
		if answered, err := d.claimKeys(); answered {
			return err
		}
	}
	for i := range d.items {
		if stop := s.take(d, &d.items[i]); stop {
			break
		}
	}
	d.settle()
	return s.answer(d)
}

// delivery carries one verified request through the pipeline.
type delivery struct {
	h      *Handler
	w      http.ResponseWriter
	r      *http.Request
	next   caddyhttp.Handler
	repl   *caddy.Replacer
	body   *pooledBody
	event  string // X-Webhook-Event
	names  string // the body's event names, when it has no X-Webhook-Event (see eventName)
	scheme string
	key    string // the request's idempotency key ("" without dedupe)

	batch *payload.Envelope // nil for a single delivery
	items []item
	// shared are the keys the whole request is known by (a batch's own
	// key), claimed in claim and, with an inbox, held with the events.
	shared   []storeKey
	claim    *claim
	stopped  bool // an item was not delivered: the items after it were not tried
	settled  bool
	inFlight *item // the single delivery being forwarded, for settle after a panic
	// upstreamErr is the rest of the route's error for a single delivery
	// forwarded directly: the upstream's answer is the sender's.
	upstreamErr error
	events      []*inbox.Event // staged by the inbox sink
	stageErr    error

	// Held here so that a single delivery allocates less: its item, the
	// response wrapper, the body's first reader and X-Webhook-Verified's
	// value.
	one         [1]item
	rec         statusRecorder
	reader      bodyReader
	readerUsed  bool
	verifiedHdr [1]string
}

// item is one delivery of the request: the request itself, or one item
// of a batch.
type item struct {
	index int    // in the batch; 0 for a single delivery
	body  []byte // as received
	key   string // the idempotency key it goes on under
	keys  []storeKey
	claim *claim
	// blocked says why the item was not tried (its claim was busy, the
	// store down, the upstream refused it); the batch stops there.
	blocked string

	result  outcome // what became of it; "" until then
	status  int
	eventID string // with an inbox: the event that holds it
}

var gatewayHeaders = []string{
	headerVerified, headerDuplicate, headerNormalized, headerBatchID,
	headerBatchIndex, headerBatchCount, headerConversationID, headerSequence, headerTest,
}

// stripGatewayHeaders removes any copy of the headers the gateway sets, so
// that a sender cannot spoof them. A request has a few headers and the
// gateway's are several: walking the request's once costs less than
// looking each of ours up.
func stripGatewayHeaders(hdr http.Header) {
	const prefix = "X-Webhook-" // every gateway header's, canonical
	for name := range hdr {
		if len(name) > len(prefix) && name[:len(prefix)] == prefix && slices.Contains(gatewayHeaders, name) {
			delete(hdr, name)
		}
	}
}

// markVerified says, to the rest of the route and its placeholders, which
// scheme verified the request.
func (d *delivery) markVerified(v *Verifier) {
	d.verifiedHdr[0] = v.Scheme
	d.r.Header[headerVerified] = d.verifiedHdr[:]
	d.repl.Set("http.webhook.verified", v.schemeValue)
}

// sink is where items go once verified, filtered and (for the direct
// sink) claimed.
type sink interface {
	// claims reports whether the sink needs the dedupe keys claimed
	// before it takes items; the inbox holds them with its events.
	claims() bool
	// take transforms one item and hands it over; stop ends the request's
	// items there (a batch stops at its first failed item).
	take(d *delivery, it *item) (stop bool)
	// answer answers the sender once every item was taken.
	answer(d *delivery) error
}

func (d *delivery) sink() sink {
	if d.h.Inbox != nil {
		return inboxSink{}
	}
	return directSink{}
}

// settle commits the claims of the items delivered and releases the
// rest, the request's own claim included unless every item went; it runs
// once, also after a panic of the rest of the route.
func (d *delivery) settle() {
	if d.settled {
		return
	}
	d.settled = true
	if it := d.inFlight; it != nil && it.result == "" {
		// reverse_proxy aborts a response that broke after its headers
		// by panicking: a 2xx already received means the upstream took
		// it, and it is recorded so.
		if status := d.rec.Status(); status >= 200 && status < 300 {
			d.record(it, outcomeForwarded, status, 0)
		}
	}
	if d.h.Dedupe == nil {
		return
	}
	for i := range d.items {
		if it := &d.items[i]; it.result == outcomeForwarded {
			d.h.Dedupe.commit(it.claim)
		} else {
			d.h.Dedupe.release(it.claim)
		}
	}
	if d.stopped {
		d.h.Dedupe.release(d.claim)
	} else {
		d.h.Dedupe.commit(d.claim)
	}
}
