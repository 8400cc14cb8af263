package webhookguard

import (
	"cmp"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/webhookguard/webhookguard/internal/payload"
	"go.uber.org/zap"
)

// What happened to each delivery is recorded in one place: its metrics,
// its delivery log line and, for a handler without an inbox, its
// in-memory history. A refusal (a request that was never a delivery) is
// recorded apart, by logRejection.

// record is the one place that says what became of an item: its
// metrics, its delivery log line and the in-memory history.
func (d *delivery) record(it *item, result outcome, status int, took time.Duration, extra ...zap.Field) {
	it.result, it.status = result, status
	event := d.eventName()
	if d.batch != nil {
		event = d.batch.Event
		d.h.countBatchItem(result)
		extra = append(extra, batchFields(it.index, len(d.items))...)
	} else {
		d.h.countRequest(result)
	}
	d.h.logDelivery(event, it.key, d.scheme, result, status, took, isTest(d.r), extra...)
	if al := d.h.Alert; al != nil {
		switch result {
		case outcomeForwarded:
			al.delivered()
		case outcomeUpstreamError, outcomeFailed:
			al.failed(false, "the app answered "+strconv.Itoa(status), map[string]any{"status": status})
		}
	}
}

// observeApp tells the handler's health what a forward found: the app
// took it, answered something else, or could not be reached at all
// (reverse_proxy wraps every dial failure in a DialError).
func (d *delivery) observeApp(status int, err error) {
	ok, text := err == nil && status >= 200 && status < 300, ""
	_, unreachable := errors.AsType[reverseproxy.DialError](err)
	if err != nil {
		text = describeAttemptError(err, 0).Error()
	}
	d.h.recent.tally.attempted(d.h.now(), ok, status, text, unreachable)
}

// eventName is the event a single delivery is logged and shown as: its
// X-Webhook-Event, else the names its body gives (a raw Meta payload's
// fields), worked out once.
func (d *delivery) eventName() string {
	if d.event == "" && d.names == "" && d.batch == nil {
		d.names = strings.Join(payload.EventNames("", d.body.bytes()), ",")
	}
	return cmp.Or(d.event, d.names)
}

// logRejection records why a request was refused. Only the reason, the
// remote address, the path and the (truncated) event name are logged:
// never a body, a query string, a signature or a secret.
func (h *Handler) logRejection(r *http.Request, event string, result outcome, reason string) {
	h.countRequest(result)
	h.remember(event, "", result, 0, 0, true, isTest(r))
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
func (h *Handler) logDelivery(event, key, scheme string, result outcome, status int, took time.Duration, test bool, extra ...zap.Field) {
	h.remember(event, key, result, status, took, false, test)
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
		if test {
			fields = append(fields, zap.Bool("test", true))
		}
		c.Write(fields...)
	}
}

// historyStatus is how a delivery through a handler without an inbox
// shows in the history.
func historyStatus(result outcome, status int) string {
	switch {
	case result == outcomeForwarded && status >= 200 && status < 300:
		return "delivered"
	case result == outcomeForwarded, result == outcomeFailed, result == outcomeUpstreamError:
		return "failed"
	}
	return string(result)
}

// remember counts an outcome in the handler's timeline and adds it to
// the in-memory history: every outcome of a handler without an inbox,
// and of one with an inbox what never became a stored event (a
// duplicate, an ignored event, a refusal, a retry later). An item the
// app was never called for shows no attempt and no answer.
func (h *Handler) remember(event, key string, result outcome, status int, took time.Duration, refused, test bool) {
	if h.recent == nil {
		return
	}
	now := h.now()
	class := classOf(result, status)
	h.recent.tally.count(class, now)
	if h.Inbox != nil && !class.neverStored() {
		return // its store holds it
	}
	v := eventView{Handler: h.name, Event: truncate(event, 128), Key: truncate(key, 256),
		Status: historyStatus(result, status), ReceivedAt: now.Add(-took), Test: test}
	if class == classDelivered || class == classFailed {
		v.Attempts, v.LastStatus, v.AppCalled = 1, status, true
	}
	if class == classDelivered {
		v.DeliveredAt = &now
	}
	h.recent.add(v, refused)
}

// truncate bounds what a sender wrote where it is logged or shown.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
