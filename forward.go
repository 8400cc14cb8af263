package webhookguard

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// directSink forwards each item through the rest of the route, in order.
// A single delivery goes on as the request itself, and the upstream's
// answer goes back to the sender unchanged. A batch's items go on as
// sub-requests; the first that fails stops the batch, so that later
// items never overtake it, and the sender gets one answer for all.
type directSink struct{}

func (directSink) claims() bool { return true }

func (directSink) take(d *delivery, it *item) (stop bool) {
	switch {
	case it.result != "": // a duplicate, recorded when claimed
		return false
	case it.blocked != "": // its claim could not be taken: it and the rest wait for a retry
		d.stopped = true
		return true
	case d.batch == nil:
		d.forwardSingle(it)
		return false
	}
	return !d.forwardItem(it)
}

func (directSink) answer(d *delivery) error {
	if d.batch == nil {
		return d.upstreamErr // the upstream answered the sender already
	}
	res := batchResult{Status: "ok", Items: len(d.items)}
	var failed *item
	for i := range d.items {
		switch it := &d.items[i]; {
		case it.result == outcomeForwarded:
			res.Forwarded++
		case it.result == outcomeDuplicate:
			res.Duplicates++
		case failed == nil && (it.result == outcomeFailed || it.blocked != ""):
			failed = it
		}
	}
	if failed != nil {
		return d.answerPartial(res, failed)
	}
	d.h.countRequest(outcomeForwarded)
	return writeJSON(d.w, http.StatusOK, res)
}

// forwardSingle sends the delivery on as it is (its body normalized when
// normalize is on), through the sender's own response writer.
func (d *delivery) forwardSingle(it *item) {
	d.attachBody()
	rec := d.recorder()
	d.inFlight = it
	start := time.Now()
	err := d.next.ServeHTTP(rec, d.r)
	took := time.Since(start)
	d.h.observeUpstream(took)
	status := rec.Status()
	if err != nil {
		if _, ok := errors.AsType[caddyhttp.HandlerError](err); !ok {
			err = caddyhttp.Error(http.StatusBadGateway, err)
		}
		status = errorStatus(err)
	} else if status == 0 {
		status = http.StatusOK
	}
	result := outcomeForwarded
	if err != nil || status < 200 || status > 299 {
		result = outcomeUpstreamError
	}
	d.observeApp(status, err)
	d.record(it, result, status, took)
	d.upstreamErr = err
}

// forwardItem sends one batch item through the rest of the route as a
// sub-request and reports whether the upstream took it.
func (d *delivery) forwardItem(it *item) bool {
	// Items run to completion even if the sender hangs up: stopping
	// between a forward and its commit would deliver that item twice.
	sub := d.itemRequest(context.WithoutCancel(d.r.Context()), it)
	srv, _ := d.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	start := time.Now()
	a := serveSub(d.next, sub, d.r, srv, 0, func(repl *caddy.Replacer) {
		repl.Set("http.webhook.verified", d.scheme)
		repl.Set("http.webhook.event", d.batch.Event)
		repl.Set("http.webhook.idempotency_key", it.key)
		repl.Set("http.webhook.duplicate", "false")
		repl.Set("http.webhook.batch_index", it.index)
		repl.Set("http.webhook.batch_count", len(d.items))
	})
	took := time.Since(start)
	d.h.observeUpstream(took)
	d.observeApp(a.status, a.err)
	if !a.ok() {
		d.record(it, outcomeFailed, a.status, took)
		d.stopped = true
		it.blocked = "upstream answered " + strconv.Itoa(a.status)
		if a.err != nil {
			it.blocked = "forward failed"
		}
		return false
	}
	d.record(it, outcomeForwarded, a.status, took)
	return true
}

// batchResult is the aggregate answer to the sender of a batch.
type batchResult struct {
	Status         string `json:"status"`
	FailedIndex    *int   `json:"failed_index,omitempty"`
	UpstreamStatus *int   `json:"upstream_status,omitempty"`
	Forwarded      int    `json:"forwarded"`
	Duplicates     int    `json:"duplicates"`
	Ignored        int    `json:"ignored,omitempty"` // items whose event the route does not subscribe to
	Items          int    `json:"items"`
}

// answerPartial tells the sender which item failed. 502 makes Kapso retry
// the whole batch; the retry skips the items delivered already.
func (d *delivery) answerPartial(res batchResult, failed *item) error {
	res.Status = "partial"
	index, upstream := failed.index, failed.status
	res.FailedIndex, res.UpstreamStatus = &index, &upstream
	d.h.countRequest(outcomeUpstreamError)
	d.h.logger.Warn("batch item not delivered; the batch stops here so later items cannot overtake it",
		zap.String("event", truncate(d.batch.Event, 128)), zap.Int("failed_index", index),
		zap.Int("items", res.Items), zap.Int("upstream_status", upstream), zap.String("reason", failed.blocked))
	return writeJSON(d.w, http.StatusBadGateway, res)
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
