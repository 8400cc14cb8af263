package webhookguard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// historySite is an inbox handler named kapso (retries 10 ms apart, dead
// after three attempts), a handler without an inbox named plain on
// /plain, and the history mounted on the site under /hist/.
func historySite(dir, upstream, options string) string {
	return fmt.Sprintf(`
	handle /hist/* {
		webhook_guard_history
	}
	handle /plain {
		webhook_guard {
			name plain
			verify kapso %s
		}
		reverse_proxy %s
	}
	handle {
		webhook_guard {
			name kapso
			verify kapso %s
			dedupe
			inbox {
				to %s
				path %s
				retry 10ms 10ms
				%s
			}
		}
	}`, kapsoSecret, upstream, kapsoSecret, upstream, filepath.Join(dir, "inbox.db"), options)
}

// apiCall makes one request and decodes the JSON answer into out (when
// not nil); it returns the status and the raw body.
func apiCall(t *testing.T, method, url string, out any) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if method != http.MethodGet {
		req.Header.Set(headerFromPage, "test") // as the page and the CLI do
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, url, err, b)
		}
	}
	if resp.StatusCode >= 300 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("%s %s answered %d without JSON: %s", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, string(b)
}

type apiEvent struct {
	ID, Handler, Event, Key, Status string
	OrderKey                        string `json:"order_key"`
	Attempts                        int
	LastStatus                      int `json:"last_status"`
	Stored                          bool
	AttemptLog                      []struct {
		N        int
		Trigger  string
		Status   int
		Response string
	} `json:"attempt_log"`
	Headers http.Header
	Body    *string
}

type apiList struct {
	Events []apiEvent
	Next   string
}

// TestHistoryAPI guards every endpoint of the delivery history through a
// real Caddy with a real inbox and reverse_proxy: the summary's counts,
// newest-first paging, filters, one event with its attempt log, headers
// (no signature) and body, the same answers on a site through
// webhook_guard_history, 404/400/405 as JSON, a replay of a dead event
// that waits behind its conversation's pending event and continues its
// attempt count, a replay of all dead events, and the in-memory history
// of a handler without an inbox.
func TestHistoryAPI(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	gate := make(chan struct{})
	var mu sync.Mutex
	var order []string // message ids taken, in order
	app := ta.app(func(id string, _ int) int {
		if strings.Contains(id, ".bad.") {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	up.setRespond(func(n int, r recorded) (int, time.Duration) {
		if bytes.Contains(r.Body, []byte("wamid.held.")) {
			<-gate
		}
		mu.Lock()
		answer := app
		mu.Unlock()
		status, d := answer(n, r)
		var v struct{ Message struct{ ID string } }
		_ = json.Unmarshal(r.Body, &v)
		mu.Lock()
		if status == http.StatusOK && r.Header.Get("X-Webhook-Attempt") != "" { // not the plain route's forwards
			order = append(order, v.Message.ID+"#"+r.Header.Get("X-Webhook-Attempt"))
		}
		mu.Unlock()
		return status, d
	})
	c := startCaddy(t, historySite(t.TempDir(), up.Addr(), ""))
	admin := c.AdminURL + "/webhook_guard"

	ok1, h1 := conversationEvent("ok", 1)
	sendQueued(t, c.URL, ok1, h1)
	bad, hb := conversationEvent("bad", 1)
	hb["Authorization"] = "Basic c2VjcmV0OnBhc3M=" // basic auth on the webhook URL
	badID := sendQueued(t, c.URL, bad, hb)
	waitFor(t, func() bool {
		var e apiEvent
		code, _ := apiCall(t, "GET", admin+"/inbox/events/"+badID, &e)
		return code == 200 && e.Status == "dead"
	})
	waitFor(t, func() bool { return ta.delivered(t) == 1 })
	if code, _, body := post(t, c.URL+"/plain", ok1, h1); code != http.StatusOK {
		t.Fatalf("plain handler: %d %s", code, body)
	}

	t.Run("summary", func(t *testing.T) {
		var s struct {
			Handlers []struct {
				Handler                         string
				Inbox                           bool
				Total, Pending, Delivered, Dead int
				SuccessRate                     *float64 `json:"success_rate"`
			}
		}
		if code, body := apiCall(t, "GET", admin+"/inbox", &s); code != 200 || len(s.Handlers) != 2 {
			t.Fatalf("%d %s", code, body)
		}
		k, p := s.Handlers[0], s.Handlers[1]
		if k.Handler != "kapso" || !k.Inbox || k.Total != 2 || k.Delivered != 1 || k.Dead != 1 || k.Pending != 0 || k.SuccessRate == nil || *k.SuccessRate != 0.5 {
			t.Errorf("kapso: %+v", k)
		}
		if p.Handler != "plain" || p.Inbox || p.Total != 1 || p.Delivered != 1 {
			t.Errorf("plain: %+v", p)
		}
	})

	t.Run("event detail", func(t *testing.T) {
		for _, url := range []string{admin + "/inbox/events/" + badID, c.URL + "/hist/inbox/events/" + badID} {
			var e apiEvent
			code, raw := apiCall(t, "GET", url, &e)
			if code != 200 || e.ID != badID || e.Status != "dead" || e.Attempts != 3 || e.Event != "whatsapp.message.received" ||
				e.OrderKey == "" || e.Key == "" || e.Body == nil || *e.Body != string(bad) || len(e.AttemptLog) != 3 {
				t.Fatalf("%s: %d %s", url, code, raw)
			}
			for i, a := range e.AttemptLog {
				if a.N != i+1 || a.Trigger != "auto" || a.Status != 500 || a.Response != "upstream 500" {
					t.Errorf("attempt %d: %+v", i, a)
				}
			}
			if e.Headers.Get("Content-Type") == "" || e.Headers.Get("X-Webhook-Signature") != "" || strings.Contains(raw, kapsoSecret) ||
				e.Headers.Get("Authorization") != "[redacted]" || strings.Contains(raw, "c2VjcmV0OnBhc3M=") {
				t.Errorf("headers shown: %v", e.Headers)
			}
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			method, path string
			want         int
		}{
			{"GET", "/inbox/events/evt_000000000000000000000000", 404},
			{"GET", "/inbox/nothing", 404},
			{"GET", "/inbox/events?handler=kapso&limit=0", 400},
			{"GET", "/inbox/events?handler=kapso&status=lost", 400},
			{"GET", "/inbox/events?handler=kapso&colour=red", 400},
			{"GET", "/inbox/events", 400},
			{"GET", "/inbox/events?handler=nobody", 404},
			{"GET", "/inbox/events?handler=kapso&before=evt_nope", 400},
			{"POST", "/inbox/replay?handler=kapso&status=delivered", 400},
			{"POST", "/inbox/events/evt_000000000000000000000000/replay", 404},
			{"PUT", "/inbox/events/" + badID, 405},
			{"GET", "/inbox/events/" + badID + "/replay", 405},
			{"POST", "/inbox", 405},
		} {
			code, body := apiCall(t, tc.method, admin+tc.path, nil)
			if code != tc.want || !strings.Contains(body, `"error"`) {
				t.Errorf("%s %s: %d %s, want %d with a JSON error", tc.method, tc.path, code, body, tc.want)
			}
		}
	})

	t.Run("replay waits behind its conversation", func(t *testing.T) {
		held, hh := conversationEvent("bad", 2) // same conversation as the dead event
		held = bytes.Replace(held, []byte("wamid.bad."), []byte("wamid.held."), 1)
		hh = kapsoHeaders(kapsoSecret, held, "whatsapp.message.received", "key-held")
		sendQueued(t, c.URL, held, hh)
		waitFor(t, func() bool {
			return len(up.requests()) > 0 && bytes.Contains(up.requests()[len(up.requests())-1].Body, []byte("wamid.held."))
		})
		// The app now answers the dead event (its id no longer fails).
		mu.Lock()
		app = ta.app(func(string, int) int { return http.StatusOK })
		mu.Unlock()
		var r struct{ Status string }
		if code, body := apiCall(t, "POST", admin+"/inbox/events/"+badID+"/replay", &r); code != 200 || r.Status != "queued" {
			t.Fatalf("replay: %d %s", code, body)
		}
		never(t, 300*time.Millisecond, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return slices.ContainsFunc(order, func(s string) bool { return strings.HasPrefix(s, "wamid.bad.001") })
		}, "the replay overtook the pending event of its conversation")
		close(gate)
		waitFor(t, func() bool {
			var e apiEvent
			apiCall(t, "GET", admin+"/inbox/events/"+badID, &e)
			return e.Status == "delivered"
		})
		mu.Lock()
		got := slices.Clone(order)
		mu.Unlock()
		if want := []string{"wamid.ok.001#1", "wamid.held.002#1", "wamid.bad.001#4"}; !slices.Equal(got, want) {
			t.Fatalf("deliveries %v, want %v", got, want)
		}
		var e apiEvent
		apiCall(t, "GET", admin+"/inbox/events/"+badID, &e)
		if last := e.AttemptLog[len(e.AttemptLog)-1]; last.N != 4 || last.Trigger != "manual" || last.Status != 200 {
			t.Fatalf("the replay's attempt: %+v", last)
		}
		if code, _ := apiCall(t, "POST", admin+"/inbox/events/"+badID+"/replay", nil); code != 200 {
			t.Fatalf("a delivered event could not be replayed: %d", code)
		}
	})

	t.Run("paging and filters", func(t *testing.T) {
		var pages [][]string
		for before := ""; ; {
			var l apiList
			apiCall(t, "GET", admin+"/inbox/events?handler=kapso&limit=2&before="+before, &l)
			var ids []string
			for _, e := range l.Events {
				ids = append(ids, e.ID)
			}
			pages = append(pages, ids)
			if before = l.Next; before == "" || len(pages) > 5 {
				break
			}
		}
		if len(pages) != 2 || len(pages[0]) != 2 || len(pages[1]) != 1 || pages[0][1] != badID {
			t.Fatalf("pages: %v (newest first, the replayed event %s keeps its place: the second of three)", pages, badID)
		}
		var l apiList
		apiCall(t, "GET", admin+"/inbox/events?handler=kapso&event=whatsapp.status.updated", &l)
		if len(l.Events) != 0 {
			t.Errorf("event filter: %v", l.Events)
		}
		apiCall(t, "GET", admin+"/inbox/events?handler=plain", &l)
		if len(l.Events) != 1 || l.Events[0].Stored || l.Events[0].Status != "delivered" {
			t.Fatalf("plain history: %+v", l.Events)
		}
		if code, _ := apiCall(t, "POST", admin+"/inbox/events/"+l.Events[0].ID+"/replay", nil); code != http.StatusConflict {
			t.Errorf("replay of a delivery without an inbox: %d, want 409", code)
		}
	})

	t.Run("replay all dead", func(t *testing.T) {
		mu.Lock()
		app = ta.app(func(string, int) int { return http.StatusInternalServerError })
		mu.Unlock()
		dead, hd := conversationEvent("gone", 1)
		id := sendQueued(t, c.URL, dead, hd)
		waitFor(t, func() bool {
			var e apiEvent
			apiCall(t, "GET", admin+"/inbox/events/"+id, &e)
			return e.Status == "dead" && e.Attempts == 3
		})
		var r struct{ Replayed int }
		if code, body := apiCall(t, "POST", admin+"/inbox/replay?handler=kapso&status=dead", &r); code != 200 || r.Replayed != 1 {
			t.Fatalf("replay all: %d %s", code, body)
		}
		// A replay is one try: it fails and the event is dead again, with
		// one more attempt.
		waitFor(t, func() bool {
			var e apiEvent
			apiCall(t, "GET", admin+"/inbox/events/"+id, &e)
			return e.Status == "dead" && e.Attempts == 4
		})
	})
}

// TestHistoryForgetsAfterRetention guards the history's privacy promise:
// an event and its body leave the API once retention has passed, and the
// summary stops counting it.
func TestHistoryForgetsAfterRetention(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	c := startCaddy(t, historySite(t.TempDir(), up.Addr(), "retention 2s"))
	body, h := conversationEvent("brief", 1)
	id := sendQueued(t, c.URL, body, h)
	var e apiEvent
	waitFor(t, func() bool {
		code, _ := apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox/events/"+id, &e)
		return code == 200 && e.Status == "delivered"
	})
	if e.Body == nil || *e.Body != string(body) {
		t.Fatalf("body before retention: %v", e.Body)
	}
	waitFor(t, func() bool {
		code, _ := apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox/events/"+id, nil)
		return code == http.StatusNotFound
	})
}

// TestHistoryCommands guards `caddy webhook inbox` and `caddy webhook
// replay` against a running Caddy's admin API: the summary and the
// latest events as tables, a replay of every dead event that the app
// then receives, and an unknown id as a failing exit with the API's
// reason.
func TestHistoryCommands(t *testing.T) {
	t.Parallel()
	ta := newTally()
	up := newUpstream(t)
	app := &recovering{failWith: http.StatusInternalServerError}
	up.setRespond(ta.app(app.decide))
	c := startCaddy(t, historySite(t.TempDir(), up.Addr(), ""))
	body, h := conversationEvent("cli", 1)
	id := sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool {
		var e apiEvent
		apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox/events/"+id, &e)
		return e.Status == "dead"
	})
	address := strings.TrimPrefix(c.AdminURL, "http://")

	out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "--address", address, "--handler", "kapso")
	if !ok || !strings.Contains(out, "HANDLER") || !regexpMatch(`(?m)^kapso\s+inbox\s+1\s+0\s+0\s+1\s`, out) ||
		!regexpMatch(`(?m)^`+id+`\s.*\sdead\s+3\s+500$`, out) {
		t.Fatalf("webhook inbox:\n%s", out)
	}
	app.recover()
	out, ok = runCaddyCmd(t, nil, "webhook", "replay", "--dead", "--handler", "kapso", "--address", address)
	if !ok || !strings.Contains(out, "1 dead events of kapso queued again") {
		t.Fatalf("webhook replay --dead:\n%s", out)
	}
	waitFor(t, func() bool { return ta.delivered(t) == 1 })
	out, ok = runCaddyCmd(t, nil, "webhook", "replay", "evt_000000000000000000000000", "--address", address)
	if ok || !strings.Contains(out, "not_found") {
		t.Fatalf("replay of an unknown id exited 0 or without the reason:\n%s", out)
	}
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }
