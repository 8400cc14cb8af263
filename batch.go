package webhookguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/webhookguard/webhookguard/internal/jsonscan"
	"go.uber.org/zap"
)

const defaultMaxItems = 1000

const (
	headerBatch     = "X-Webhook-Batch"
	headerBatchSize = "X-Batch-Size"
)

// Unbatch splits a Kapso batched delivery (X-Webhook-Batch: true, or a
// body with "batch": true and a data array) into one request per item,
// sent in order through the rest of the route. Each item's body is the
// exact bytes it had inside data. The first item whose forward fails stops
// the batch, so that later items never overtake it; the sender gets 502
// with {"status":"partial",...} and its retry resumes at that item, the
// items already delivered being skipped as duplicates.
type Unbatch struct {
	// MaxItems is the largest number of items accepted in one batch; a
	// larger batch is answered 413. Default: 1000.
	MaxItems int `json:"max_items,omitempty"`

	maxItems int
}

func (u *Unbatch) provision() {
	u.maxItems = u.MaxItems
	if u.maxItems <= 0 {
		u.maxItems = defaultMaxItems
	}
}

// isBatch tells a batched delivery by its header or, when the header was
// lost on the way, by its body.
func isBatch(r *http.Request, body []byte) bool {
	if strings.EqualFold(strings.TrimSpace(r.Header.Get(headerBatch)), "true") {
		return true
	}
	flag, hasData := false, false
	_ = jsonscan.EachField(body, 0, func(key []byte, v jsonscan.Span) error {
		switch {
		case jsonscan.KeyEquals(key, "batch"):
			flag = string(body[v.Start:v.End]) == "true"
		case jsonscan.KeyEquals(key, "data"):
			hasData = body[v.Start] == '['
		}
		return nil
	})
	return flag && hasData
}

// batchEnvelope is what the gateway needs from a batch: item positions
// and the fields that become per-item headers.
type batchEnvelope struct {
	event          string
	items          []jsonscan.Span
	conversationID string
	firstSequence  string
}

// inputError is a request the gateway refuses before forwarding anything.
type inputError struct {
	status  int
	code    string
	message string
}

func badRequest(format string, args ...any) *inputError {
	return &inputError{status: http.StatusBadRequest, code: "bad_request", message: fmt.Sprintf(format, args...)}
}

// parseBatch checks the whole envelope before any item is forwarded, so
// that a malformed batch is refused whole rather than half delivered.
func parseBatch(body []byte, maxItems int) (*batchEnvelope, *inputError) {
	if !utf8.Valid(body) {
		// JSON must be UTF-8 (RFC 8259); splitting would forward bytes
		// the app cannot decode.
		return nil, badRequest("batch body is not valid UTF-8")
	}
	if !json.Valid(body) {
		return nil, badRequest("batch body is not valid JSON")
	}
	env := &batchEnvelope{}
	var data, info jsonscan.Span
	hasData, hasInfo := false, false
	err := jsonscan.EachField(body, 0, func(key []byte, v jsonscan.Span) error {
		switch {
		case jsonscan.KeyEquals(key, "type"):
			env.event, _ = jsonscan.StringValue(body, v)
		case jsonscan.KeyEquals(key, "data"):
			data, hasData = v, true
		case jsonscan.KeyEquals(key, "batch_info"):
			info, hasInfo = v, true
		}
		return nil
	})
	if errors.Is(err, jsonscan.ErrNotObject) {
		return nil, badRequest("batch body must be a JSON object")
	}
	if err != nil {
		return nil, badRequest("batch body is not valid JSON or is nested more than %d levels deep", jsonscan.MaxDepth)
	}
	if !hasData {
		return nil, badRequest("batch has no data array")
	}
	items, err := jsonscan.ArrayItems(body, data.Start)
	if err != nil {
		return nil, badRequest("batch data must be an array")
	}
	if len(items) == 0 {
		return nil, badRequest("batch data has no items")
	}
	if len(items) > maxItems {
		return nil, &inputError{status: http.StatusRequestEntityTooLarge, code: "too_large",
			message: fmt.Sprintf("batch has %d items, more than the limit of %d", len(items), maxItems)}
	}
	for i, it := range items {
		if body[it.Start] != '{' {
			return nil, badRequest("batch item %d is not a JSON object", i)
		}
	}
	env.items = items
	if hasInfo {
		env.readInfo(body, info)
	}
	return env, nil
}

func (env *batchEnvelope) readInfo(body []byte, info jsonscan.Span) {
	_ = jsonscan.EachField(body, info.Start, func(key []byte, v jsonscan.Span) error {
		switch {
		case jsonscan.KeyEquals(key, "conversation_id"):
			env.conversationID, _ = jsonscan.StringValue(body, v)
		case jsonscan.KeyEquals(key, "first_sequence"):
			raw := string(body[v.Start:v.End])
			if _, err := strconv.ParseInt(raw, 10, 64); err == nil {
				env.firstSequence = raw
			}
		}
		return nil
	})
}

// sequence is the per-conversation sequence number of item i: the batch's
// items are consecutive from first_sequence.
func (env *batchEnvelope) sequence(i int) string {
	if env.firstSequence == "" {
		return ""
	}
	first, _ := strconv.ParseInt(env.firstSequence, 10, 64)
	return strconv.FormatInt(first+int64(i), 10)
}

// batchResult is the aggregate answer to the sender.
type batchResult struct {
	Status         string `json:"status"`
	FailedIndex    *int   `json:"failed_index,omitempty"`
	UpstreamStatus *int   `json:"upstream_status,omitempty"`
	Forwarded      int    `json:"forwarded"`
	Duplicates     int    `json:"duplicates"`
	Ignored        int    `json:"ignored,omitempty"` // items whose event the route does not subscribe to
	Items          int    `json:"items"`
}

func (d *delivery) serveBatch() error {
	env, bad := parseBatch(d.body.bytes(), d.h.Unbatch.maxItems)
	if bad != nil {
		refusal := outcomeBadRequest
		if bad.status == http.StatusRequestEntityTooLarge {
			refusal = outcomeTooLarge
		}
		d.h.logRejection(d.r, d.event, refusal, bad.message)
		return writeJSONError(d.w, bad.status, bad.code, bad.message)
	}
	if size := d.r.Header.Get(headerBatchSize); size != "" && size != strconv.Itoa(len(env.items)) {
		d.h.logger.Warn("X-Batch-Size differs from the number of items; delivering the items present",
			zap.String("x_batch_size", truncate(size, 16)), zap.Int("items", len(env.items)))
	}
	if env.event == "" {
		env.event = d.event
	}
	d.repl.Set("http.webhook.event", env.event)
	if d.h.Inbox != nil {
		return d.queueBatch(env)
	}

	dd := d.h.Dedupe
	batchKey := dd.primaryKey(d.r, d.repl, d.scheme, d.body.bytes())
	d.batchKey, d.key = batchKey, batchKey
	d.repl.Set("http.webhook.idempotency_key", batchKey)
	d.repl.Set("http.webhook.duplicate", "false")
	batchClaim, proceed, err := d.claimOrAnswer([]storeKey{storeKeyOf("id", batchKey)})
	if !proceed {
		return err
	}
	useStore := batchClaim != nil

	// Items run to completion even if the sender hangs up: stopping
	// between a forward and its commit would deliver that item twice.
	ctx := context.WithoutCancel(d.r.Context())
	res := batchResult{Status: "ok", Items: len(env.items)}
	// A Kapso batch carries one type for all its items.
	itemSubscribed := d.h.subscribed(eventNames(env.event, nil))
	for i, it := range env.items {
		item := d.body.bytes()[it.Start:it.End]
		key := contentKey(env.event, item)
		if key == "" {
			key = batchKey + "#" + strconv.Itoa(i)
		}
		if !itemSubscribed {
			res.Ignored++
			d.h.countBatchItem(outcomeIgnored)
			d.h.logDelivery(env.event, key, d.scheme, outcomeIgnored, http.StatusOK, 0,
				zap.Int("batch_index", i), zap.Int("batch_count", len(env.items)))
			continue
		}
		var itemClaim *claim
		if useStore {
			c, o := dd.acquire(ctx, []storeKey{storeKeyOf("content", key)})
			switch o {
			case claimDuplicate:
				res.Duplicates++
				d.h.countBatchItem(outcomeDuplicate)
				d.h.logDelivery(env.event, key, d.scheme, outcomeDuplicate, http.StatusOK, 0,
					zap.Int("batch_index", i), zap.Int("batch_count", len(env.items)))
				continue
			case claimBusy:
				dd.release(batchClaim)
				return d.answerPartial(res, i, http.StatusConflict, "item still in flight")
			case claimStoreDown:
				if dd.rejectOnStoreError() {
					dd.release(batchClaim)
					return d.answerPartial(res, i, http.StatusServiceUnavailable, "dedupe store unreachable")
				}
			}
			itemClaim = c
		}
		start := time.Now()
		status, err := d.forwardItem(ctx, env, i, item, key)
		took := time.Since(start)
		d.h.observeUpstream(took)
		ok := err == nil && isSuccess(status)
		itemOutcome := outcomeForwarded
		if !ok {
			itemOutcome = outcomeFailed
		}
		d.h.countBatchItem(itemOutcome)
		d.h.logDelivery(env.event, key, d.scheme, itemOutcome, status, took,
			zap.Int("batch_index", i), zap.Int("batch_count", len(env.items)))
		if ok {
			dd.commit(itemClaim)
			res.Forwarded++
			continue
		}
		dd.release(itemClaim)
		dd.release(batchClaim)
		reason := "upstream answered " + strconv.Itoa(status)
		if err != nil {
			reason = "forward failed"
		}
		return d.answerPartial(res, i, status, reason)
	}
	dd.commit(batchClaim)
	if res.Ignored == res.Items {
		res.Status = string(outcomeIgnored)
		d.h.countRequest(outcomeIgnored)
	} else {
		d.h.countRequest(outcomeForwarded)
	}
	return writeJSON(d.w, http.StatusOK, res)
}

// answerPartial tells the sender which item failed. 502 makes Kapso retry
// the whole batch; the retry skips the items delivered already.
func (d *delivery) answerPartial(res batchResult, index, upstream int, reason string) error {
	res.Status = "partial"
	res.FailedIndex, res.UpstreamStatus = &index, &upstream
	d.h.countRequest(outcomeUpstreamError)
	d.h.logger.Warn("batch item not delivered; the batch stops here so later items cannot overtake it",
		zap.String("event", truncate(d.event, 128)), zap.Int("failed_index", index),
		zap.Int("items", res.Items), zap.Int("upstream_status", upstream), zap.String("reason", reason))
	return writeJSON(d.w, http.StatusBadGateway, res)
}

// forwardItem sends one item through the rest of the route as its own
// request. It follows the sub-request rules in caddy-module-notes.md §7:
// a fresh replacer, vars and route-group state per item (through
// PrepareRequest), a private response writer that never touches the
// sender's, and panics recovered.
func (d *delivery) forwardItem(ctx context.Context, env *batchEnvelope, i int, item []byte, key string) (status int, err error) {
	sub := d.r.Clone(ctx)
	d.itemHeaders(sub.Header, env, i, item, key)
	setBody(sub, item, d.body, nil)

	mw := &memWriter{hdr: make(http.Header)}
	srv, _ := d.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	repl := caddy.NewReplacer()
	sub = caddyhttp.PrepareRequest(sub, repl, mw, srv)
	copyVars(d.r, sub)
	repl.Set("http.webhook.verified", d.scheme)
	repl.Set("http.webhook.event", env.event)
	repl.Set("http.webhook.idempotency_key", key)
	repl.Set("http.webhook.duplicate", "false")
	repl.Set("http.webhook.batch_index", i)
	repl.Set("http.webhook.batch_count", len(env.items))

	defer func() {
		if p := recover(); p != nil {
			// reverse_proxy panics to abort a response that broke after
			// its headers: a 2xx already received means the upstream took
			// the item.
			if mw.status >= 200 && mw.status < 300 {
				status, err = mw.status, nil
				return
			}
			status, err = http.StatusBadGateway, fmt.Errorf("batch item %d: handler panicked: %v", i, p)
		}
	}()
	err = d.next.ServeHTTP(mw, sub)
	if err != nil {
		if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok && he.StatusCode != 0 {
			return he.StatusCode, err
		}
		return http.StatusBadGateway, err
	}
	if mw.status == 0 {
		return http.StatusOK, nil
	}
	return mw.status, nil
}

// itemHeaders turns the batch's headers into one item's: the batch
// markers and the envelope's signature go, the item's position and key
// come in.
func (d *delivery) itemHeaders(h http.Header, env *batchEnvelope, i int, item []byte, key string) {
	h.Del(headerBatch)
	h.Del(headerBatchSize)
	d.h.dropSignatures(h)
	h.Set(headerEvent, env.event)
	// An upstream that dedupes on X-Idempotency-Key would otherwise drop
	// every item after the first, as they would all carry the batch's key.
	h.Set(headerIdempotencyKey, key)
	h.Set(headerBatchID, d.batchKey)
	h.Set(headerBatchIndex, strconv.Itoa(i))
	h.Set(headerBatchCount, strconv.Itoa(len(env.items)))
	if env.conversationID != "" {
		h.Set(headerConversationID, env.conversationID)
	}
	if seq := env.sequence(i); seq != "" {
		h.Set(headerSequence, seq)
	}
	if d.h.forwardKey != nil {
		h.Set(headerKapsoSignature, d.h.forwardKey.sign(item))
	}
}

// dropSignatures removes every configured verifier's signature header:
// they covered the body as received, not a rewritten one.
func (h *Handler) dropSignatures(hdr http.Header) {
	for _, v := range h.Verify {
		for _, name := range v.signatureHeaders() {
			hdr.Del(name)
		}
	}
}

// signatureHeaders lists the headers that carry this verifier's signature;
// they cover the original body only and must not travel with a rewrite.
func (v *Verifier) signatureHeaders() []string {
	switch v.Scheme {
	case schemeStandard:
		return []string{"Webhook-Signature", "Svix-Signature"}
	default:
		return []string{v.header}
	}
}

// copyVars carries variables set by earlier handlers (vars, map) into a
// sub-request, whose PrepareRequest started an empty map.
func copyVars(from, to *http.Request) {
	parent, ok := from.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return
	}
	child, ok := to.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return
	}
	maps.Copy(child, parent)
}

// memWriter receives one item's response. It keeps only the status: the
// sender gets one aggregate answer for the whole batch.
type memWriter struct {
	hdr    http.Header
	status int
	keep   int    // how much of the body to keep (0: none)
	body   []byte // the first keep bytes
}

func (m *memWriter) Header() http.Header { return m.hdr }

func (m *memWriter) WriteHeader(status int) {
	if m.status == 0 && status >= 200 {
		m.status = status
	}
}

func (m *memWriter) Write(p []byte) (int, error) {
	if m.status == 0 {
		m.status = http.StatusOK
	}
	if room := m.keep - len(m.body); room > 0 {
		m.body = append(m.body, p[:min(room, len(p))]...)
	}
	return len(p), nil
}
