package webhookguard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"
)

// The request path: every request is stripped of spoofable headers, read
// and verified, then answered (handshake, refusal, duplicate) or passed
// on, as one delivery or as the items of a batch.
//
// Refusals are written here, with their JSON body, rather than returned
// as errors for handle_errors: the sender is a machine that reads the
// status and the error code, and a site's error pages must not turn a 401
// into something it cannot read. Only a sender that hung up mid-body gets
// caddyhttp.Error(499): nobody is listening for an answer, and Caddy logs
// it as the client's doing.

var gatewayHeaders = []string{
	headerVerified, headerDuplicate, headerNormalized, headerBatchID,
	headerBatchIndex, headerBatchCount, headerConversationID, headerSequence,
}

// stripGatewayHeaders removes any copy of the headers the gateway sets, so
// that a sender cannot spoof them. A request has a few headers and the
// gateway's are several: walking the request's once costs less than
// looking each of ours up.
func stripGatewayHeaders(h http.Header) {
	const prefix = "X-Webhook-" // every gateway header's, canonical
	for name := range h {
		if len(name) > len(prefix) && name[:len(prefix)] == prefix && slices.Contains(gatewayHeaders, name) {
			delete(h, name)
		}
	}
}

// ServeHTTP runs the pipeline: strip spoofable headers, read and verify the
// body, then unbatch or deduplicate and forward.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	stripGatewayHeaders(r.Header)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	event := r.Header.Get(headerEvent)
	repl.Set("http.webhook.event", event)

	if len(h.verifyTokens) > 0 && r.Method == http.MethodGet && r.URL.Query().Has("hub.mode") {
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
	d.verifiedHdr[0] = v.Scheme
	r.Header[headerVerified] = d.verifiedHdr[:]
	repl.Set("http.webhook.verified", v.schemeValue)

	if h.Unbatch != nil && isBatch(r, body.bytes()) {
		return d.serveBatch()
	}
	if len(h.Events) > 0 {
		if names := eventNames(event, body.bytes()); !h.subscribed(names) {
			return d.answerIgnored(names)
		}
	}
	if h.Inbox != nil {
		return d.queueSingle()
	}
	return d.serveSingle()
}

// delivery carries one verified request through dedupe and forwarding.
type delivery struct {
	h      *Handler
	w      http.ResponseWriter
	r      *http.Request
	next   caddyhttp.Handler
	repl   *caddy.Replacer
	body   *pooledBody
	event  string
	scheme string
	key    string
	// Held here so that forwarding allocates less: the response wrapper,
	// the body's first reader and X-Webhook-Verified's value.
	rec         statusRecorder
	reader      bodyReader
	readerUsed  bool
	verifiedHdr [1]string

	batchKey string
}

// serveSingle forwards one delivery, deduplicated when dedupe is on. The
// dedupe keys are committed only after the upstream answered 2xx, so a
// failed delivery can be retried by the sender.
func (d *delivery) serveSingle() error {
	if d.h.Dedupe == nil {
		_, err := d.forward()
		return err
	}
	keys := d.h.Dedupe.deliveryKeys(d.r, d.repl, d.scheme, d.event, d.body.bytes())
	d.key = keys.primary
	d.repl.Set("http.webhook.idempotency_key", keys.primary)
	d.repl.Set("http.webhook.duplicate", "false")

	claim, proceed, err := d.claimOrAnswer(keys.storeKeys())
	if !proceed {
		return err
	}
	if claim == nil { // the store is down and on_store_error is pass
		_, err := d.forward()
		return err
	}
	// reverse_proxy aborts a response that breaks after its headers went
	// out by panicking; the claim must be settled all the same, or every
	// retry would wait on it. A 2xx already received means the upstream
	// took the event.
	settled := false
	rec := d.recorder()
	defer func() {
		if !settled {
			if isSuccess(rec.Status()) && rec.Status() != 0 {
				d.h.Dedupe.commit(claim)
			} else {
				d.h.Dedupe.release(claim)
			}
		}
	}()
	ok, err := d.forwardTo(rec)
	settled = true
	if ok {
		d.h.Dedupe.commit(claim)
	} else {
		d.h.Dedupe.release(claim)
	}
	return err
}

// forward sends the delivery on and reports whether the upstream took it
// (2xx). Its answer goes to the sender as it is.
func (d *delivery) forward() (bool, error) {
	return d.forwardTo(d.recorder())
}

// bodyReader is the delivery's own reader for its first forward, nil
// after that.
func (d *delivery) bodyReader() *bodyReader {
	if d.readerUsed {
		return nil
	}
	d.readerUsed = true
	return &d.reader
}

// recorder wraps the sender's response writer to learn the upstream's
// status; it lives in the delivery, so that wrapping allocates nothing.
func (d *delivery) recorder() *statusRecorder {
	d.rec = statusRecorder{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: d.w}}
	return &d.rec
}

// statusRecorder passes a response through, noting its final status.
type statusRecorder struct {
	caddyhttp.ResponseWriterWrapper
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 && code >= 200 {
		s.status = code // an informational 1xx is not the answer
	}
	s.ResponseWriterWrapper.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriterWrapper.Write(p)
}

func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriterWrapper.ReadFrom(r)
}

// Status is the status written so far, 0 when none was.
func (s *statusRecorder) Status() int { return s.status }

func (d *delivery) forwardTo(rec *statusRecorder) (bool, error) {
	d.attachBody()
	start := time.Now()
	err := d.next.ServeHTTP(rec, d.r)
	took := time.Since(start)
	d.h.observeUpstream(took)
	status := rec.Status()
	if err != nil {
		status = errorStatus(err)
	} else if status == 0 {
		status = http.StatusOK
	}
	ok := err == nil && isSuccess(status)
	result := outcomeForwarded
	if !ok {
		result = outcomeUpstreamError
	}
	d.h.countRequest(result)
	d.h.logDelivery(d.event, d.key, d.scheme, result, status, took)
	return ok, err
}

// errorStatus is the status Caddy will answer for a handler error.
func errorStatus(err error) int {
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok && he.StatusCode != 0 {
		return he.StatusCode
	}
	return http.StatusInternalServerError
}

// claimOrAnswer claims a delivery's keys. When the delivery is not to be
// forwarded (a duplicate, one still in flight elsewhere, or the store
// down under on_store_error reject) it answers the sender and reports
// proceed false, with the answer's error. A nil claim with proceed true
// means the store is down and the delivery goes on without it.
func (d *delivery) claimOrAnswer(keys []storeKey) (c *claim, proceed bool, err error) {
	c, state := d.h.Dedupe.acquire(d.r.Context(), keys)
	switch state {
	case claimDuplicate:
		return nil, false, d.answerDuplicate()
	case claimBusy:
		return nil, false, d.answerBusy()
	case claimStoreDown:
		if d.h.Dedupe.rejectOnStoreError() {
			return nil, false, d.answerStoreDown()
		}
		return nil, true, nil
	}
	return c, true, nil
}

func (d *delivery) answerStoreDown() error {
	d.h.logRejection(d.r, d.event, outcomeStoreUnavailable, "dedupe store unreachable and on_store_error is reject")
	return writeJSONError(d.w, http.StatusServiceUnavailable, "store_unavailable",
		"the dedupe store is unreachable; retry later")
}

func (d *delivery) answerDuplicate() error {
	d.h.countRequest(outcomeDuplicate)
	d.h.logDelivery(d.event, d.key, d.scheme, outcomeDuplicate, http.StatusOK, 0)
	d.repl.Set("http.webhook.duplicate", "true")
	d.w.Header().Set(headerDuplicate, "true")
	return writeJSON(d.w, http.StatusOK, map[string]any{"status": "duplicate"})
}

func (d *delivery) answerBusy() error {
	d.w.Header().Set("Retry-After", d.h.Dedupe.retryAfter())
	d.h.logRejection(d.r, d.event, outcomeInFlight, "an identical delivery is still being forwarded")
	return writeJSONError(d.w, http.StatusConflict, "in_flight",
		"an identical delivery is still being processed; retry later")
}

// isSuccess treats a handler that wrote nothing as 200, as net/http does.
func isSuccess(status int) bool {
	return status == 0 || (status >= 200 && status < 300)
}

// rejectBody answers a body that could not be read: 413 when too large,
// 400 otherwise (for example a client that disconnected mid-body).
func (h *Handler) rejectBody(w http.ResponseWriter, r *http.Request, event string, err error) error {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		h.logRejection(r, event, outcomeTooLarge, "body over max_body")
		return writeJSONError(w, http.StatusRequestEntityTooLarge, "too_large",
			fmt.Sprintf("request body is larger than the %s limit", humanize.Bytes(uint64(h.maxBody))))
	}
	if errors.Is(err, context.Canceled) {
		return caddyhttp.Error(499, err)
	}
	h.logRejection(r, event, outcomeBadRequest, "body could not be read")
	return writeJSONError(w, http.StatusBadRequest, "bad_request", "request body could not be read")
}

// logRejection records why a request was refused. Only the reason, the
// remote address, the path and the (truncated) event name are logged:
// never a body, a query string, a signature or a secret.
func (h *Handler) logRejection(r *http.Request, event string, result outcome, reason string) {
	h.countRequest(result)
	h.remember(event, "", result, 0, 0, true)
	if c := h.logger.Check(zap.InfoLevel, "webhook rejected"); c != nil {
		c.Write(
			zap.String("outcome", string(result)),
			zap.String("reason", reason),
			zap.String("remote_addr", r.RemoteAddr),
			zap.String("event", truncate(event, 128)),
			// The path only: a query string can carry secrets (Meta's
			// handshake sends its verify token there).
			zap.String("path", truncate(r.URL.Path, 256)),
		)
	}
}

// logDelivery writes the one line each delivery (or batch item) gets:
// what it was, what became of it and how long the upstream took. Keys and
// event names are logged; bodies and signatures never are.
func (h *Handler) logDelivery(event, key, scheme string, result outcome, status int, took time.Duration, extra ...zap.Field) {
	h.remember(event, key, result, status, took, false)
	if c := h.logger.Check(zap.InfoLevel, "webhook delivery"); c != nil {
		fields := append([]zap.Field{
			zap.String("handler", h.name),
			zap.String("event", truncate(event, 128)),
			zap.String("idempotency_key", truncate(key, 256)),
			zap.String("scheme", scheme),
			zap.String("outcome", string(result)),
			zap.Int("upstream_status", status),
			zap.Duration("duration", took),
		}, extra...)
		c.Write(fields...)
	}
}
