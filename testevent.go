package webhookguard

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Send Test Event (seed 003's button, POST …/inbox/test?handler=H and
// caddy webhook test): a realistic sample for the handler's scheme and
// format, signed with its own first secret, sent through the server and
// route the handler is in, so that verification, dedupe, the event
// filter, normalization and the inbox all run on it as on a delivery.
// It is marked as a test (X-Webhook-Test: true, to the app and in the
// history) by a context value only this endpoint sets: the header a
// sender sends is stripped like every gateway header.

// testTarget is where a request reaches a handler: the server it is in,
// and a host and path that its routes match.
type testTarget struct {
	h          *Handler
	srv        *caddyhttp.Server
	host, path string
}

// published is a target Start gave Send Test Event, and the one it
// replaced.
type published struct {
	rh       *recentHandler
	ours     *testTarget
	replaced *testTarget
}

// publishTargets makes this config's handlers the ones Send Test Event
// reaches, once the config has started.
func (a *App) publishTargets() {
	for i := range a.reached {
		at := &a.reached[i]
		if rh := at.h.recent; rh != nil {
			a.published = append(a.published, published{rh: rh, ours: at, replaced: rh.target.Swap(at)})
		}
	}
}

// withdrawTargets gives back the targets this config replaced, where
// they are still its own: a config that stops because a later app of its
// reload failed to start leaves the running config's handlers in place.
func (a *App) withdrawTargets() {
	for _, p := range slices.Backward(a.published) { // undone in reverse: two handlers of one name in this config
		p.rh.target.CompareAndSwap(p.ours, p.replaced)
	}
	a.published = nil
}

type testEventKey struct{}

// testMark travels in a test request's context; the handler that sees
// the request notes itself in it.
type testMark struct{ reached atomic.Pointer[Handler] }

// isTest reports whether r is a Send Test Event delivery (marked once
// its gateway headers were stripped).
func isTest(r *http.Request) bool { return r.Header.Get(headerTest) != "" }

// markTestEvent marks the request as a test when Send Test Event made
// it, and notes that h saw it.
func (h *Handler) markTestEvent(r *http.Request) {
	if m, ok := r.Context().Value(testEventKey{}).(*testMark); ok {
		m.reached.CompareAndSwap(nil, h)
		r.Header.Set(headerTest, "true")
	}
}

// testSample is the delivery a test sends to h: a Kapso v2 message, a
// raw Meta message, or the second platform's message.incoming, in the
// format the handler's scheme suggests (the second platform's for hmac
// and Standard Webhooks), of an event its filter takes: the first
// sample of that format it takes, else of another, else the first.
func testSample(h *Handler, now time.Time) (event string, body []byte, hdr http.Header) {
	scheme := schemeKapso
	if len(h.Verify) > 0 {
		scheme = h.Verify[0].Scheme
	}
	candidates := slices.Concat(kapsoEvents, platformEvents)
	switch scheme {
	case schemeMeta:
		candidates = []string{"messages"}
	case schemeHMAC, schemeStandard:
		candidates = slices.Concat(platformEvents, kapsoEvents)
	}
	event = candidates[0]
	if i := slices.IndexFunc(candidates, func(c string) bool { return h.subscribed([]string{c}) }); i >= 0 {
		event = candidates[i]
	}
	hdr = http.Header{"Content-Type": {"application/json"}, "User-Agent": {"webhookguard-test-event"}}
	switch {
	case scheme == schemeMeta:
		body = metaSample("message", now)
	case slices.Contains(platformEvents, event):
		body = platformSample(event, now)
	default:
		body = kapsoSample(event, now)
		hdr.Set(headerEvent, event)
		hdr.Set("X-Webhook-Payload-Version", "v2")
		hdr.Set(headerIdempotencyKey, randomUUID())
	}
	if len(h.Verify) > 0 {
		maps.Copy(hdr, h.Verify[0].signTest(body, now))
	}
	return event, body, hdr
}

// serveTest runs the test request through the server. reverse_proxy
// aborts an answer that broke after its headers with a panic
// (http.ErrAbortHandler), which a real connection absorbs; here it says
// so instead.
func serveTest(srv *caddyhttp.Server, w http.ResponseWriter, r *http.Request) (broke bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				panic(p)
			}
			broke = true
		}
	}()
	srv.ServeHTTP(w, r)
	return false
}

// testTimeout bounds how long a test waits for the route's answer.
const testTimeout = 30 * time.Second

// sendTestEvent sends a test event to the handler q names and answers
// with what the route answered the "sender".
func sendTestEvent(w http.ResponseWriter, r *http.Request) error {
	name := r.URL.Query().Get("handler")
	if name == "" {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", "handler is required (GET …/inbox lists the handlers)")
	}
	rh := recentHandlerNamed(name)
	var at *testTarget
	if rh != nil {
		at = rh.target.Load()
	}
	if at == nil {
		return writeJSONError(w, http.StatusNotFound, "not_found", "no running webhook_guard handler named "+
			strconv.Quote(truncate(name, 64)))
	}
	event, body, hdr := testSample(at.h, time.Now())
	mark := &testMark{}
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), testEventKey{}, mark), testTimeout)
	defer cancel()
	path := at.path
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
	if err != nil {
		return writeJSONError(w, http.StatusInternalServerError, "internal", "the test request could not be built")
	}
	req.Header, req.RequestURI, req.RemoteAddr = hdr, path, "127.0.0.1:0"
	req.Host = at.host
	if req.Host == "" {
		req.Host = "localhost"
	}
	mw := &memWriter{hdr: make(http.Header), keep: 4096}
	if broke := serveTest(at.srv, mw, req); broke {
		return writeJSONError(w, http.StatusBadGateway, "answer_broken", "the test event went through "+
			strconv.Quote(truncate(name, 64))+", and the app's answer broke off after its headers")
	}
	if got := mark.reached.Load(); got != at.h {
		went := "no webhook_guard handler"
		if got != nil {
			went = "handler " + strconv.Quote(truncate(got.name, 64)) + " (as a test)"
		}
		return writeJSONError(w, http.StatusBadGateway, "not_reached", "the test request (host "+req.Host+", path "+path+
			") did not reach "+strconv.Quote(truncate(name, 64))+" but "+went+": its route matches on more than a host "+
			"and a path; send a delivery to its URL with caddy webhook send instead")
	}
	status := mw.status
	if status == 0 {
		status = http.StatusOK
	}
	at.h.logger.Info("test event sent", zap.String("handler", name), zap.String("event", event), zap.Int("status", status))
	res := map[string]any{"status": "sent", "handler": name, "event": event, "answer_status": status}
	if json.Valid(mw.body) {
		res["answer"] = json.RawMessage(mw.body)
	} else {
		res["answer"] = strings.ToValidUTF8(string(mw.body), "\uFFFD")
	}
	return writeJSON(w, http.StatusOK, res)
}
