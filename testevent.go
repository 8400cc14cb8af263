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

// reachedAt records, when the config starts, where a request reaches h.
// The newest config's handler of a name is the one a test goes to.
func (h *Handler) reachedAt(srv *caddyhttp.Server, at testTarget) {
	at.h, at.srv = h, srv
	if h.Inbox != nil {
		h.Inbox.server.Store(srv)
	}
	if h.recent != nil {
		h.recent.target.Store(&at)
	}
}

type testEventKey struct{}

// isTest reports whether r is a Send Test Event delivery (marked once
// its gateway headers were stripped).
func isTest(r *http.Request) bool { return r.Header.Get(headerTest) != "" }

// markTestEvent marks the request as a test when Send Test Event made it.
func markTestEvent(r *http.Request) {
	if r.Context().Value(testEventKey{}) != nil {
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
	kapso := []string{"whatsapp.message.received", "whatsapp.message.delivered", "whatsapp.conversation.created", "whatsapp.phone_number.created"}
	candidates := append(append([]string{}, kapso...), platformEvents...)
	switch scheme {
	case schemeMeta:
		candidates = []string{"messages"}
	case schemeHMAC, schemeStandard:
		candidates = append(append([]string{}, platformEvents...), kapso...)
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
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), testEventKey{}, true), testTimeout)
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
	at.srv.ServeHTTP(mw, req)
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
