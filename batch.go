package webhookguard

import (
	"context"
	"net/http"
	"strconv"

	"github.com/webhookguard/webhookguard/internal/payload"
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

// split makes the request's items: the request itself, or each item of
// a Kapso batch when unbatch is on. A batch's envelope is checked whole
// first, so that a malformed batch is refused rather than half delivered.
func (d *delivery) split() *payload.InputError {
	if d.h.Unbatch == nil || !payload.IsBatch(d.r.Header.Get(headerBatch), d.body.bytes()) {
		d.one[0] = item{body: d.body.bytes()}
		d.items = d.one[:]
		return nil
	}
	env, bad := payload.ParseBatch(d.body.bytes(), d.h.Unbatch.maxItems)
	if bad != nil {
		return bad
	}
	if size := d.r.Header.Get(headerBatchSize); size != "" && size != strconv.Itoa(len(env.Items)) {
		d.h.logger.Warn("X-Batch-Size differs from the number of items; delivering the items present",
			zap.String("x_batch_size", truncate(size, 16)), zap.Int("items", len(env.Items)))
	}
	if env.Event == "" {
		env.Event = d.event
	}
	d.repl.Set("http.webhook.event", env.Event)
	d.batch = env
	d.items = make([]item, len(env.Items))
	for i, sp := range env.Items {
		d.items[i] = item{index: i, body: d.body.bytes()[sp.Start:sp.End]}
	}
	return nil
}

// refuseBatch answers a batch whose envelope is malformed or too large.
func (d *delivery) refuseBatch(bad *payload.InputError) error {
	if bad.TooLarge {
		d.h.logRejection(d.r, d.event, outcomeTooLarge, bad.Message)
		return writeJSONError(d.w, http.StatusRequestEntityTooLarge, "too_large", bad.Message)
	}
	d.h.logRejection(d.r, d.event, outcomeBadRequest, bad.Message)
	return writeJSONError(d.w, http.StatusBadRequest, "bad_request", bad.Message)
}

// itemRequest is one batch item as its own request, on ctx: the batch's
// headers less the batch markers and the envelope's signature, plus the
// item's position and key, and its body; re-signed with forward_secret.
func (d *delivery) itemRequest(ctx context.Context, it *item) *http.Request {
	sub := d.r.Clone(ctx)
	hdr := sub.Header
	hdr.Del(headerBatch)
	hdr.Del(headerBatchSize)
	d.h.dropSignatures(hdr)
	hdr.Set(headerEvent, d.batch.Event)
	// An upstream that dedupes on X-Idempotency-Key would otherwise drop
	// every item after the first, as they would all carry the batch's key.
	hdr.Set(headerIdempotencyKey, it.key)
	hdr.Set(headerBatchID, d.key)
	hdr.Set(headerBatchIndex, strconv.Itoa(it.index))
	hdr.Set(headerBatchCount, strconv.Itoa(len(d.items)))
	if d.batch.ConversationID != "" {
		hdr.Set(headerConversationID, d.batch.ConversationID)
	}
	if seq := d.batch.Sequence(it.index); seq != "" {
		hdr.Set(headerSequence, seq)
	}
	if d.h.forwardKey != nil {
		hdr.Set(headerKapsoSignature, d.h.forwardKey.sign(it.body))
	}
	setBody(sub, it.body, d.body, nil)
	return sub
}

// batchFields place a batch item in its delivery log line.
func batchFields(index, count int) []zap.Field {
	return []zap.Field{zap.Int("batch_index", index), zap.Int("batch_count", count)}
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
