package webhookguard

import (
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/webhookguard/webhookguard/internal/inbox"
	"go.uber.org/zap"
)

// The delivery history: a JSON API and a page over every handler's
// deliveries. Handlers with an inbox answer from their store (bodies,
// attempt logs, replay); handlers without one keep their last
// recentPerHandler deliveries in memory (metadata only). The admin module
// (admin.api.webhook_guard, under /webhook_guard/) and the
// webhook_guard_history handler both serve it; paths below are relative
// to where it is mounted.
//
//	GET  /                              the page
//	GET  /inbox                         a summary per handler
//	GET  /inbox/events?handler=&status=&event=&q=&since=&until=&limit=&before=
//	GET  /inbox/events/<id>             one event: attempt log, headers, body
//	POST /inbox/events/<id>/replay      deliver a delivered or dead event again
//	POST /inbox/replay?handler=&status=dead|failed&event=&q=&since=&until=[&dry_run=1]   replay what the filter selects (or count it)
//	POST /inbox/test?handler=           send a signed sample through the handler's route (Send Test Event)
//	GET  /inbox/timeline?handler=&minutes=   outcomes per minute
//	POST /inbox/move?from=&to=            give a queue's events to another handler
//	GET  /inbox/backup?handler=         a consistent copy of the handler's inbox file
//	DELETE /inbox/events/<id>           erase one event (body, headers, keys), free pages scrubbed
//	POST /inbox/erase {"handler","order_key"|"phone"|"id"}   erase a conversation's events, or a phone number's

// historyEndpoints are the API's fixed paths (events/<id> aside), most
// specific first: a history mounted under a prefix finds its own path by
// them.
var historyEndpoints = []string{"/inbox/events", "/inbox/replay", "/inbox/move", "/inbox/backup", "/inbox/erase",
	"/inbox/test", "/inbox/timeline", "/inbox"}

const (
	recentPerHandler = 1000
	recentRefusals   = 100
	defaultPageSize  = 50
	maxPageSize      = 500
)

// eventView is an event as the API lists it.
type eventView struct {
	seq         uint64     // order among a memory handler's views
	ID          string     `json:"id"`
	Handler     string     `json:"handler"`
	Event       string     `json:"event"`
	Key         string     `json:"key"`
	OrderKey    string     `json:"order_key"`
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	LastStatus  int        `json:"last_status"`
	LastError   string     `json:"last_error,omitempty"`
	ReceivedAt  time.Time  `json:"received_at"`
	DeliveredAt *time.Time `json:"delivered_at"`
	Stored      bool       `json:"stored"` // in an inbox: body, attempt log and replay available
	// AppCalled is false for a duplicate, an ignored event, a refusal or
	// a retry-later: the app never saw them (no attempt, no answer).
	AppCalled bool `json:"app_called"`
	Test      bool `json:"test,omitempty"` // sent by Send Test Event
}

// eventDetail is one event with what only the detail view shows.
type eventDetail struct {
	eventView
	AttemptLog []attemptView `json:"attempt_log"`
	Headers    http.Header   `json:"headers"`
	Body       *string       `json:"body,omitempty"`
	BodyBase64 *string       `json:"body_base64,omitempty"`
}

type attemptView struct {
	N  int       `json:"n"`
	At time.Time `json:"at"`
	// Trigger is auto, manual (a replay) or late: an attempt made after
	// its instance's lease had lapsed (a paused process, with Redis),
	// whose result was not taken; the app may have got the event twice.
	Trigger    string  `json:"trigger"`
	Instance   string  `json:"instance,omitempty"` // with Redis: the instance that made it
	Status     int     `json:"status"`
	DurationMS float64 `json:"duration_ms"`
	Error      string  `json:"error,omitempty"`
	Response   string  `json:"response"` // the start (1 KB) of the app's answer
}

func viewOf(e *inbox.Event) eventView {
	v := eventView{ID: e.ID, Handler: e.Queue, Event: e.Name, Key: e.Key, OrderKey: e.OrderKey, Status: string(e.State),
		Attempts: e.Attempts, LastStatus: e.LastStatus, LastError: e.LastError, ReceivedAt: e.ReceivedAt, Stored: true,
		AppCalled: e.Attempts > 0, Test: e.Header.Get(headerTest) != ""}
	if !e.DeliveredAt.IsZero() {
		t := e.DeliveredAt
		v.DeliveredAt = &t
	}
	return v
}

// serveHistory answers one history request; path is relative to where
// the history is mounted ("/", "/inbox", …).
func serveHistory(w http.ResponseWriter, r *http.Request, path string) error {
	path = "/" + strings.Trim(path, "/")
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	route := func(methods ...string) bool {
		if slices.Contains(methods, r.Method) {
			return true
		}
		w.Header().Set("Allow", strings.Join(methods, ", "))
		_ = writeJSONError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed here; use "+strings.Join(methods, " or "))
		return false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if why := notFromPage(r); why != "" {
			caddy.Log().Named("webhook_guard.history").Warn("history write refused: it may come from another site",
				zap.String("method", r.Method), zap.String("path", truncate(r.URL.Path, 256)),
				zap.String("origin", truncate(r.Header.Get("Origin"), 256)), zap.String("remote_addr", r.RemoteAddr),
				zap.String("sec_fetch_site", truncate(r.Header.Get("Sec-Fetch-Site"), 32)))
			return writeJSONError(w, http.StatusForbidden, "cross_site", why)
		}
	}
	switch {
	case path == "/":
		if route(http.MethodGet, http.MethodHead) {
			return servePage(w)
		}
	case path == "/inbox":
		if route(http.MethodGet) {
			return writeJSON(w, http.StatusOK, map[string]any{"handlers": summaries()})
		}
	case path == "/inbox/events":
		if route(http.MethodGet) {
			return listEvents(w, r.URL.Query())
		}
	case path == "/inbox/replay":
		if route(http.MethodPost) {
			return replayMatching(w, r.URL.Query())
		}
	case path == "/inbox/backup":
		if route(http.MethodGet) {
			return backupQueue(w, r.URL.Query())
		}
	case path == "/inbox/test":
		if route(http.MethodPost) {
			return sendTestEvent(w, r)
		}
	case path == "/inbox/timeline":
		if route(http.MethodGet) {
			return serveTimeline(w, r.URL.Query())
		}
	case path == "/inbox/move":
		if route(http.MethodPost) {
			return moveQueue(w, r.URL.Query())
		}
	case len(parts) == 3 && parts[0] == "inbox" && parts[1] == "events":
		if r.Method == http.MethodDelete {
			return eraseEvents(w, url.Values{"id": {parts[2]}})
		}
		if route(http.MethodGet, http.MethodDelete) {
			return showEvent(w, parts[2])
		}
	case path == "/inbox/erase":
		if route(http.MethodPost) {
			return eraseEvents(w, erasureOf(r))
		}
	case len(parts) == 4 && parts[0] == "inbox" && parts[1] == "events" && parts[3] == "replay":
		if route(http.MethodPost) {
			return replayOne(w, parts[2])
		}
	default:
		return writeJSONError(w, http.StatusNotFound, "not_found", "no such history endpoint: "+truncate(path, 128))
	}
	return nil
}

// headerFromPage is the header every write to the history must carry. A
// browser sends a header of a script's choosing only with a CORS request
// it preflights first, and the history answers no preflight; an HTML
// form and a no-cors fetch cannot send it at all. The page and the CLI
// send it.
const headerFromPage = "X-Webhook-Guard-History"

// notFromPage says why a state-changing request is refused as possibly
// made by another site ("" when it is not): the browser's own
// Sec-Fetch-Site and Origin say where it comes from, and the header says
// that a script of the page, or a tool, made it. Cookies and basic_auth
// credentials a browser sends along prove nothing.
func notFromPage(r *http.Request) string {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return "the request comes from another site (Sec-Fetch-Site: " + r.Header.Get("Sec-Fetch-Site") +
			"): the history's writes are made from its own page or the caddy webhook command"
	}
	if origin := r.Header.Get("Origin"); origin != "" && origin != ownOrigin(r) {
		return "the request's Origin is not the history's own: its writes are made from its own page or the " +
			"caddy webhook command"
	}
	if r.Header.Get(headerFromPage) == "" {
		return "a write to the history needs the " + headerFromPage + " header, which its page and the caddy " +
			"webhook command send (and which a form on another site cannot)"
	}
	return ""
}

// ownOrigin is the origin the request was made to.
func ownOrigin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// inboxStates are the statuses an inbox's events list by; failed is the
// pending events that failed at least one attempt and wait for the next.
var inboxStates = []string{string(inbox.Pending), "failed", string(inbox.Delivered), string(inbox.Dead), string(inbox.Damaged)}

// unstoredStates are the statuses of what an inbox handler never
// stores (the app was not called), which it remembers in memory.
var unstoredStates = []string{string(outcomeDuplicate), string(outcomeIgnored), string(outcomeInvalidSignature),
	string(outcomeTooLarge), string(outcomeBadRequest), string(outcomeHandshakeRefused), string(outcomeInFlight),
	string(outcomeStoreUnavailable)}

// listParams are the parameters of the events list; replay by filter
// takes the same but limit and before.
var listParams = []string{"handler", "status", "event", "q", "since", "until", "limit", "before"}

// eventFilter is what the list and replay by filter select events by.
type eventFilter struct {
	handler, status, event, text string
	since, until                 time.Time
}

// filterOf reads a filter from q, refusing unknown parameters: a
// misspelt one would otherwise select more than was meant (and replay
// it).
func filterOf(q url.Values, known []string) (eventFilter, string) {
	for name := range q {
		if !slices.Contains(known, name) {
			return eventFilter{}, "unknown parameter " + strconv.Quote(truncate(name, 64)) + "; known: " + strings.Join(known, ", ")
		}
	}
	f := eventFilter{handler: q.Get("handler"), status: q.Get("status"), event: q.Get("event"), text: q.Get("q")}
	if f.handler == "" {
		return f, "handler is required (GET …/inbox lists the handlers)"
	}
	var bad string
	if f.since, bad = parseWhen("since", q.Get("since")); bad != "" {
		return f, bad
	}
	if f.until, bad = parseWhen("until", q.Get("until")); bad != "" {
		return f, bad
	}
	if len(f.text) > 256 {
		return f, "q is longer than 256 bytes"
	}
	return f, ""
}

// parseWhen reads a point in time: RFC 3339, or a duration back from
// now ("2h", "90m").
func parseWhen(name, v string) (time.Time, string) {
	if v == "" {
		return time.Time{}, ""
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, ""
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return time.Now().Add(-d), ""
	}
	return time.Time{}, name + " must be an RFC 3339 time (2026-12-07T14:00:00Z) or a duration back from now (2h, 90m)"
}

// query is the filter as the store takes it.
func (f eventFilter) query() inbox.Query {
	q := inbox.Query{Queue: f.handler, State: inbox.State(f.status), Name: f.event, Text: f.text, Since: f.since, Until: f.until}
	if f.status == "failed" {
		q.State, q.Failed = inbox.Pending, true
	}
	return q
}

// selects reports whether an in-memory delivery passes the filter.
func (f eventFilter) selects(v eventView) bool {
	return (f.status == "" || v.Status == f.status) && (f.event == "" || v.Event == f.event) &&
		(f.since.IsZero() || !v.ReceivedAt.Before(f.since)) && (f.until.IsZero() || v.ReceivedAt.Before(f.until)) &&
		(f.text == "" || strings.Contains(v.ID, f.text) || strings.Contains(v.Key, f.text) || strings.Contains(v.OrderKey, f.text))
}

func listEvents(w http.ResponseWriter, q url.Values) error {
	f, bad := filterOf(q, listParams)
	if bad != "" {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", bad)
	}
	limit := defaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			return writeJSONError(w, http.StatusBadRequest, "bad_request", "limit must be a number from 1 to "+strconv.Itoa(maxPageSize))
		}
		limit = n
	}
	before := q.Get("before")
	queue, stored := findQueue(f.handler)
	if stored && slices.Contains(unstoredStates, f.status) {
		stored = false // what its handler did not store, it remembers in memory
	}
	if stored {
		if f.status != "" && !slices.Contains(inboxStates, f.status) {
			return writeJSONError(w, http.StatusBadRequest, "bad_request", "status must be one of "+
				strings.Join(slices.Concat(inboxStates, unstoredStates), ", "))
		}
		sq := f.query()
		sq.Limit, sq.Before = limit, before
		events, next, err := queue.rt.store.List(sq)
		if errors.Is(err, inbox.ErrNotFound) {
			return writeJSONError(w, http.StatusBadRequest, "bad_request", "before is not the id of a stored event")
		}
		if err != nil {
			return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the inbox could not be read")
		}
		views := make([]eventView, 0, len(events))
		for _, e := range events {
			views = append(views, viewOf(e))
		}
		return writeJSON(w, http.StatusOK, map[string]any{"events": views, "next": next})
	}
	rh := recentHandlerNamed(f.handler)
	if rh == nil {
		return writeJSONError(w, http.StatusNotFound, "not_found", "no webhook_guard handler named "+strconv.Quote(truncate(f.handler, 64)))
	}
	if f.status != "" && !slices.Contains(memoryStates, f.status) {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", "status must be one of "+strings.Join(memoryStates, ", "))
	}
	views, next, ok := rh.page(f, before, limit)
	if !ok {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", "before is not the id of a delivery still in memory")
	}
	return writeJSON(w, http.StatusOK, map[string]any{"events": views, "next": next})
}

// serveTimeline answers a handler's outcomes per minute, oldest first.
func serveTimeline(w http.ResponseWriter, q url.Values) error {
	minutes := 60
	if v := q.Get("minutes"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > timelineMinutes {
			return writeJSONError(w, http.StatusBadRequest, "bad_request", "minutes must be a number from 1 to "+strconv.Itoa(timelineMinutes))
		}
		minutes = n
	}
	rh := recentHandlerNamed(q.Get("handler"))
	if rh == nil {
		return writeJSONError(w, http.StatusNotFound, "not_found", "no running webhook_guard handler named "+
			strconv.Quote(truncate(q.Get("handler"), 64)))
	}
	since, _, _, _ := rh.tally.snapshot(time.Now())
	return writeJSON(w, http.StatusOK, map[string]any{"handler": rh.name, "minutes": minutes, "counted_since": since,
		"points": rh.tally.timeline(time.Now(), minutes)})
}

// lookup finds an event by id in the open inboxes.
func lookup(id string) (*inbox.Event, *inboxRuntime, error) {
	for _, rt := range openRuntimes() {
		e, err := rt.store.Lookup(id)
		if err == nil {
			return e, rt, nil
		}
		if !errors.Is(err, inbox.ErrNotFound) {
			return nil, nil, err
		}
	}
	return nil, nil, inbox.ErrNotFound
}

func showEvent(w http.ResponseWriter, id string) error {
	e, rt, err := lookup(id)
	if errors.Is(err, inbox.ErrNotFound) {
		if d, ok := findRecent(id); ok {
			return writeJSON(w, http.StatusOK, eventDetail{eventView: d, AttemptLog: []attemptView{}})
		}
		return writeJSONError(w, http.StatusNotFound, "not_found", "no event with id "+strconv.Quote(truncate(id, 64)))
	}
	if err != nil {
		return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the inbox could not be read")
	}
	detail := eventDetail{eventView: viewOf(e), AttemptLog: make([]attemptView, 0, len(e.Log)), Headers: redactHeaders(e.Header)}
	for _, a := range e.Log {
		trigger := "auto"
		switch {
		case a.Late:
			trigger = "late"
		case a.Manual:
			trigger = "manual"
		}
		detail.AttemptLog = append(detail.AttemptLog, attemptView{N: a.N, At: a.At, Trigger: trigger, Status: a.Status,
			DurationMS: float64(a.Duration.Microseconds()) / 1000, Error: a.Error, Response: a.Response, Instance: a.Instance})
	}
	if body, err := rt.store.Body(e.Seq); err == nil {
		if utf8.Valid(body) {
			s := string(body)
			detail.Body = &s
		} else {
			s := base64.StdEncoding.EncodeToString(body)
			detail.BodyBase64 = &s
		}
	}
	return writeJSON(w, http.StatusOK, detail)
}

func replayOne(w http.ResponseWriter, id string) error {
	found, rt, err := lookup(id)
	if err == nil && !served(rt, found.Queue) {
		return answerNotServed(w, found.Queue)
	}
	if errors.Is(err, inbox.ErrNotFound) {
		if _, ok := findRecent(id); ok {
			return writeJSONError(w, http.StatusConflict, "not_replayable", "this delivery went through a handler without an inbox: its body was not kept")
		}
		return writeJSONError(w, http.StatusNotFound, "not_found", "no event with id "+strconv.Quote(truncate(id, 64)))
	}
	if err != nil {
		return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the inbox could not be read")
	}
	e, err := rt.store.Replay(id, time.Now())
	switch {
	case errors.Is(err, inbox.ErrNotReplayable) && found.State == inbox.Damaged:
		return writeJSONError(w, http.StatusConflict, "not_replayable", "this event is damaged: its stored record cannot be "+
			"delivered as it was received (caddy webhook inbox salvage copies what is readable of a file)")
	case errors.Is(err, inbox.ErrNotReplayable):
		return writeJSONError(w, http.StatusConflict, "not_replayable", "only delivered and dead events can be replayed; this one is pending")
	case err != nil:
		return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the replay could not be stored")
	}
	rt.dispatcher.Wake()
	return writeJSON(w, http.StatusOK, map[string]any{"status": "queued", "event": viewOf(e)})
}

// served reports whether a handler of the running config delivers queue.
func served(rt *inboxRuntime, queue string) bool {
	return slices.ContainsFunc(rt.currentQueues(), func(q inbox.Queue) bool { return q.Name == queue })
}

func answerNotServed(w http.ResponseWriter, queue string) error {
	return writeJSONError(w, http.StatusConflict, "not_served", "no handler of the running config serves the queue "+
		strconv.Quote(truncate(queue, 64))+": move its events to a handler that does first "+
		"(POST …/inbox/move?from=OLD&to=NEW, or caddy webhook inbox move --from OLD --to NEW)")
}

// erasureOf reads what to erase from a request's JSON body: in the body,
// not the query, so that no access log or admin log line holds the phone
// number being erased.
func erasureOf(r *http.Request) url.Values {
	var v struct {
		Handler  string `json:"handler"`
		ID       string `json:"id"`
		OrderKey string `json:"order_key"`
		Phone    string `json:"phone"`
	}
	_ = json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&v)
	q := url.Values{}
	for k, val := range map[string]string{"handler": v.Handler, "id": v.ID, "order_key": v.OrderKey, "phone": v.Phone} {
		if val != "" {
			q.Set(k, val)
		}
	}
	return q
}

// eraseEvents erases what q names (id, or handler with order_key or
// phone) from the store, bytes and all. The log says how many were
// erased and by what, never the value.
func eraseEvents(w http.ResponseWriter, q url.Values) error {
	x := inbox.Erasure{ID: q.Get("id"), OrderKey: q.Get("order_key"), Phone: q.Get("phone")}
	var rt *inboxRuntime
	if x.ID != "" {
		_, found, err := lookup(x.ID)
		if errors.Is(err, inbox.ErrNotFound) {
			return writeJSONError(w, http.StatusNotFound, "not_found", "no stored event with id "+strconv.Quote(truncate(x.ID, 64)))
		}
		if err != nil {
			return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the inbox could not be read")
		}
		rt = found
	} else {
		queue, ok := findQueue(q.Get("handler"))
		if !ok {
			return writeJSONError(w, http.StatusNotFound, "not_found", "no inbox queue named "+strconv.Quote(truncate(q.Get("handler"), 64)))
		}
		rt = queue.rt
	}
	store, ok := rt.store.(*inbox.Store)
	if !ok {
		return writeJSONError(w, http.StatusConflict, "not_a_file", "erasure is for inbox files; with Redis, delete the "+
			"event's keys there and rewrite its AOF (BGREWRITEAOF) so that the old bytes go too")
	}
	n, err := store.Erase(x)
	if err != nil {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", strings.TrimPrefix(err.Error(), "inbox: "))
	}
	by := "id"
	if x.OrderKey != "" {
		by = "order_key"
	} else if x.Phone != "" {
		by = "phone"
	}
	caddy.Log().Named("webhook_guard.history").Info("inbox events erased", zap.String("store", rt.label),
		zap.String("by", by), zap.Int("erased", n))
	return writeJSON(w, http.StatusOK, map[string]any{"status": "erased", "erased": n})
}

// backupQueue writes a consistent copy of the bbolt file that holds
// handler's queue (every queue of that file), from one read transaction.
func backupQueue(w http.ResponseWriter, q url.Values) error {
	queue, ok := findQueue(q.Get("handler"))
	if !ok {
		return writeJSONError(w, http.StatusNotFound, "not_found", "no inbox queue named "+strconv.Quote(truncate(q.Get("handler"), 64)))
	}
	store, ok := queue.rt.store.(*inbox.Store)
	if !ok {
		return writeJSONError(w, http.StatusConflict, "not_a_file", "this inbox is in Redis: back it up with Redis's own "+
			"persistence (its AOF and RDB files)")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="inbox.db"`)
	w.Header().Set("Cache-Control", "no-store")
	_, err := store.Backup(w)
	return err
}

// moveQueue gives every event of one queue to another that a handler
// serves: the way to deliver what a renamed handler left behind.
func moveQueue(w http.ResponseWriter, q url.Values) error {
	from, to := q.Get("from"), q.Get("to")
	if from == "" || to == "" || from == to {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", "from and to are required, and must differ: "+
			"the queue to empty and the handler to give its events to")
	}
	src, ok := findQueue(from)
	if !ok {
		return writeJSONError(w, http.StatusNotFound, "not_found", "no inbox queue named "+strconv.Quote(truncate(from, 64)))
	}
	if src.served {
		return writeJSONError(w, http.StatusConflict, "served", "a handler of the running config serves "+
			strconv.Quote(truncate(from, 64))+": only a queue that no handler serves can be moved")
	}
	dst, ok := findQueue(to)
	if !ok || !dst.served || dst.rt != src.rt {
		return writeJSONError(w, http.StatusConflict, "not_served", "no handler with an inbox on the same store serves "+
			strconv.Quote(truncate(to, 64))+"; name a handler of the running config that uses "+src.rt.label)
	}
	n, err := src.rt.store.Move(from, to, time.Now())
	if err != nil {
		return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the events could not be moved")
	}
	src.rt.dispatcher.Wake()
	return writeJSON(w, http.StatusOK, map[string]any{"status": "moved", "moved": n, "from": from, "to": to})
}

// replayMatching replays the dead events (status=dead, the default) the
// filter selects, or makes the failed ones waiting for a retry
// (status=failed) due now, and says how many.
func replayMatching(w http.ResponseWriter, q url.Values) error {
	dryRun := false
	if v, ok := q["dry_run"]; ok {
		var err error
		if dryRun, err = strconv.ParseBool(v[0]); err != nil || len(v) > 1 {
			return writeJSONError(w, http.StatusBadRequest, "bad_request", "dry_run must be true or false (1 or 0)")
		}
		q.Del("dry_run")
	}
	f, bad := filterOf(q, []string{"handler", "status", "event", "q", "since", "until"})
	if bad != "" {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", bad)
	}
	if f.status == "" {
		f.status = string(inbox.Dead)
	}
	if f.status != string(inbox.Dead) && f.status != "failed" {
		return writeJSONError(w, http.StatusBadRequest, "bad_request", "status must be dead (replay them) or failed "+
			"(retry now those waiting for their next attempt): replaying everything delivered at once is not offered")
	}
	queue, ok := findQueue(f.handler)
	if !ok {
		return writeJSONError(w, http.StatusNotFound, "not_found", "no webhook_guard handler with an inbox named "+strconv.Quote(truncate(f.handler, 64)))
	}
	if !queue.served {
		return answerNotServed(w, f.handler)
	}
	if dryRun {
		n, err := countMatching(queue.rt.store, f.query())
		if err != nil {
			return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the inbox could not be read")
		}
		return writeJSON(w, http.StatusOK, map[string]any{"status": "dry_run", "matched": n, "as_of": time.Now()})
	}
	n, err := replayStore(queue.rt, f)
	if err != nil {
		return writeJSONError(w, http.StatusServiceUnavailable, "store_unavailable", "the replay could not be stored")
	}
	queue.rt.dispatcher.Wake()
	caddy.Log().Named("webhook_guard.history").Info("events replayed by filter", zap.String("handler", f.handler),
		zap.String("status", f.status), zap.Int("replayed", n))
	return writeJSON(w, http.StatusOK, map[string]any{"status": "queued", "replayed": n})
}

// replayStore has the store replay what f selects. Retrying failed events
// of a file moves due times, so it runs while the dispatcher takes
// nothing and leaves out the events in flight; Redis's leases already
// keep it from an event in flight, and dead events are never in flight.
func replayStore(rt *inboxRuntime, f eventFilter) (n int, err error) {
	if _, file := rt.store.(*inbox.Store); !file || f.status != "failed" {
		return rt.store.ReplayMatching(f.query(), time.Now(), nil)
	}
	err = rt.dispatcher.Quiet(func(busy func(string, string, uint64) bool) (err error) {
		n, err = rt.store.ReplayMatching(f.query(), time.Now(), busy)
		return err
	})
	return n, err
}

// countMatching counts the events q selects, a page at a time: what a
// replay by filter would act on, for the page to confirm.
func countMatching(store inbox.Backend, q inbox.Query) (int, error) {
	n := 0
	for q.Limit = maxPageSize; ; {
		events, next, err := store.List(q)
		if err != nil {
			return n, err
		}
		n += len(events)
		if next == "" {
			return n, nil
		}
		q.Before = next
	}
}

//go:embed page/index.html
var historyPage []byte

// servePage writes the history page: one self-contained file (no CDN, no
// build step), which reads the API relative to where it is mounted.
func servePage(w http.ResponseWriter) error {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// The page loads nothing from elsewhere; say so, so that a payload
	// shown in it can never pull anything in.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:")
	h.Set("X-Content-Type-Options", "nosniff")
	_, err := w.Write(historyPage)
	return err
}
