// Package webhookguard is a Caddy HTTP middleware that sits in front of any
// app receiving signed webhooks (Kapso, Meta WhatsApp, generic HMAC,
// Standard Webhooks). It verifies the signature over the exact bytes
// received, deduplicates deliveries so each event reaches the app once,
// splits Kapso batched deliveries into ordered individual requests and can
// answer Meta's subscription handshake, all before the request reaches the
// next handler (normally reverse_proxy).
package webhookguard

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Headers the gateway sets on what it forwards. A client could send any of
// them to fool the upstream, so every one is removed from the incoming
// request before anything else happens.
const (
	headerVerified       = "X-Webhook-Verified"
	headerDuplicate      = "X-Webhook-Duplicate"
	headerNormalized     = "X-Webhook-Normalized"
	headerBatchID        = "X-Webhook-Batch-Id"
	headerBatchIndex     = "X-Webhook-Batch-Index"
	headerBatchCount     = "X-Webhook-Batch-Count"
	headerConversationID = "X-Webhook-Conversation-Id"
	headerSequence       = "X-Webhook-Sequence"

	headerEvent          = "X-Webhook-Event"
	headerIdempotencyKey = "X-Idempotency-Key"
	headerKapsoSignature = "X-Webhook-Signature"
)

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

// defaultMaxBody is above Meta's documented 3 MB payload limit.
const defaultMaxBody = 5 * 1000 * 1000

// Handler verifies, deduplicates and unbatches webhook deliveries before they
// reach the next handler.
//
// A request whose signature is missing or wrong is answered 401 with a JSON
// body {"error":"invalid_signature","message":"..."}; a body over max_body is
// answered 413. Neither reaches the next handler. An accepted request is
// passed on with its body byte-for-byte unchanged and the header
// X-Webhook-Verified set to the scheme that accepted it.
//
// Placeholders set for later handlers and logs:
//
//	{http.webhook.verified}         the scheme that accepted the request
//	{http.webhook.event}            the X-Webhook-Event header (or a batch's type)
//	{http.webhook.idempotency_key}  the delivery's dedupe key
//	{http.webhook.duplicate}        "true" when answered as a duplicate
//	{http.webhook.batch_index}      0-based index of a batch item
//	{http.webhook.batch_count}      number of items in the batch
type Handler struct {
	// Name labels this handler's metrics and log lines. Default: the
	// schemes of its verifiers joined by "+", such as "kapso" or
	// "kapso+meta".
	Name string `json:"name,omitempty"`

	// Verify lists the signature verifiers. A request passes when any one
	// of them accepts it. At least one is required: a handler without
	// verifiers fails validation rather than running open.
	Verify []*Verifier `json:"verify,omitempty"`

	// MaxBody is the largest request body, in bytes, that is read and
	// verified. Larger bodies are answered 413, before reading when the
	// Content-Length says so. Default: 5MB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Dedupe turns on deduplication of deliveries when set. Default: off
	// (but see Unbatch).
	Dedupe *Dedupe `json:"dedupe,omitempty"`

	// Unbatch turns a Kapso batched delivery into ordered individual
	// forwards when set. It needs a dedupe store to deliver each item
	// exactly once, so it turns on Dedupe with its defaults when Dedupe is
	// not set. Default: off.
	Unbatch *Unbatch `json:"unbatch,omitempty"`

	// Normalize, when "meta", rewrites a raw Meta WhatsApp payload into the
	// JSON that Kapso's SDK normalizeWebhook() (0.3.0) returns for it,
	// forwarded with X-Webhook-Normalized: true. A verified body that is
	// not a JSON object, or one the SDK itself rejects, is forwarded
	// unchanged with X-Webhook-Normalized: false. Default: off.
	Normalize string `json:"normalize,omitempty"`

	// VerifyTokens answers Meta's subscription handshake: a GET with
	// hub.mode=subscribe and one of these tokens as hub.verify_token is
	// answered 200 with hub.challenge as plain text, any other handshake
	// 403; handshakes are never forwarded. Accepts {env.*} and {file.*}
	// placeholders. Default: none (a handshake is refused like any
	// unsigned request).
	VerifyTokens []string `json:"verify_tokens,omitempty"`

	// ForwardSecret, when set, re-signs every body the gateway rewrote or
	// split with X-Webhook-Signature: hex(HMAC-SHA256(forward_secret,
	// body)), so an upstream that verifies Kapso signatures keeps working.
	// Accepts {env.*} and {file.*} placeholders. Default: none (rewritten
	// bodies carry no signature).
	ForwardSecret string `json:"forward_secret,omitempty"`

	forwardKey   *macKey
	verifyTokens [][32]byte
	maxBody      int64
	name         string
	metrics      handlerMetrics
	logger       *zap.Logger
	// now is the clock of the Standard Webhooks tolerance and of dedupe
	// expiry; tests set their own before provisioning.
	now func() time.Time
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_guard",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets, sets defaults and attaches the dedupe store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	h.name = h.Name
	if h.name == "" {
		h.name = h.defaultName()
	}
	registerMetrics(ctx, h.logger)
	h.metrics = newHandlerMetrics(h.name)
	h.maxBody = h.MaxBody
	if h.maxBody <= 0 {
		h.maxBody = defaultMaxBody
	}
	repl := caddy.NewReplacer()
	for i, v := range h.Verify {
		if v == nil {
			return fmt.Errorf("verify[%d]: empty verifier", i)
		}
		if err := v.provision(repl, h.now); err != nil {
			return fmt.Errorf("verify[%d] (%s): %w", i, v.Scheme, err)
		}
	}
	if h.ForwardSecret != "" {
		secret, err := resolveSecret(repl, h.ForwardSecret)
		if err != nil {
			return fmt.Errorf("forward_secret: %w", err)
		}
		h.forwardKey = newMacKey(hashSHA256, []byte(secret))
	}
	for i, tok := range h.VerifyTokens {
		resolved, err := resolveSecret(repl, tok)
		if err != nil {
			return fmt.Errorf("verify_token %d: %w", i+1, err)
		}
		h.verifyTokens = append(h.verifyTokens, sha256.Sum256([]byte(resolved)))
	}
	if h.Unbatch != nil {
		h.Unbatch.provision()
		if h.Dedupe == nil {
			h.logger.Info("unbatch needs a dedupe store to deliver each item once; using an in-memory store with defaults")
			h.Dedupe = new(Dedupe)
		}
	}
	if h.Dedupe != nil {
		if err := h.Dedupe.provision(ctx, h.logger, h.name, h.now); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
	}
	return nil
}

// Validate checks the provisioned configuration without changing it.
func (h *Handler) Validate() error {
	if len(h.Verify) == 0 {
		return errors.New("webhook_guard needs at least one verify: it never forwards unverified requests")
	}
	for i, v := range h.Verify {
		if err := v.validate(); err != nil {
			return fmt.Errorf("verify[%d] (%s): %w", i, v.Scheme, err)
		}
	}
	if h.Dedupe != nil {
		if err := h.Dedupe.validate(); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
	}
	if h.Normalize != "" && h.Normalize != normalizeFormatMeta {
		return fmt.Errorf("normalize: unknown format %q (want meta)", h.Normalize)
	}
	if h.Unbatch != nil && h.Unbatch.MaxItems < 0 {
		return errors.New("unbatch: max_items must not be negative")
	}
	return nil
}

// Cleanup releases the dedupe store. It is safe on a handler whose
// provisioning failed half-way.
func (h *Handler) Cleanup() error {
	if h.Dedupe != nil {
		return h.Dedupe.cleanup()
	}
	return nil
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

// defaultName labels a handler by its schemes, which stay the same across
// reloads.
func (h *Handler) defaultName() string {
	var names []string
	for _, v := range h.Verify {
		if v != nil && !slices.Contains(names, strings.ToLower(v.Scheme)) {
			names = append(names, strings.ToLower(v.Scheme))
		}
	}
	if len(names) == 0 {
		return "webhook_guard"
	}
	return strings.Join(names, "+")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ io.ReaderFrom               = (*statusRecorder)(nil)
)
