package webhookguard

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// caseApp is an app whose answer depends on the message id's prefix:
// "fail." 503, "cut." a 200 cut short after its headers (reverse_proxy
// then panics), "slow." a 200 after 800 ms, anything else 200. It counts
// what it got per message id.
type caseApp struct {
	srv *httptest.Server
	mu  sync.Mutex
	got map[string]int
}

func newCaseApp(t *testing.T) *caseApp {
	a := &caseApp{got: map[string]int{}}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var v struct{ Message struct{ ID string } }
		_ = json.Unmarshal(body, &v)
		a.mu.Lock()
		a.got[v.Message.ID]++
		a.mu.Unlock()
		switch id := v.Message.ID; {
		case strings.HasPrefix(id, "fail."):
			w.WriteHeader(http.StatusServiceUnavailable)
		case strings.HasPrefix(id, "cut."):
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err == nil {
				fmt.Fprint(buf, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
				_ = buf.Flush()
				conn.Close()
			}
		case strings.HasPrefix(id, "slow."):
			time.Sleep(800 * time.Millisecond)
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *caseApp) count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.got[id]
}

// sinkSite has the same handler twice, one per sink: /direct forwards
// through reverse_proxy, /inbox queues; both deduplicate (a duplicate in
// flight waits 300 ms), unbatch and take message events only.
func sinkSite(dir, app string) string {
	guard := func(name, extra string) string {
		return fmt.Sprintf(`webhook_guard {
			name %s
			verify kapso %s
			dedupe {
				wait 300ms
			}
			unbatch
			events whatsapp.message.*
			%s
		}`, name, kapsoSecret, extra)
	}
	return fmt.Sprintf(`
	handle /direct {
		%s
		reverse_proxy %s
	}
	handle /inbox {
		%s
	}`, guard("direct", ""), app, guard("queued", fmt.Sprintf("inbox {\n\t\t\t\tto %s\n\t\t\t\tpath %s\n\t\t\t\tretry 50ms\n\t\t\t}",
		app, filepath.Join(dir, "inbox.db"))))
}

// sinkRequest is one delivery of message id as a single delivery or as a
// batch of one, with event and idempotency key key.
func sinkRequest(batch bool, id, event, key string) ([]byte, map[string]string) {
	item := `{"message":{"id":"` + id + `","type":"text"},"conversation":{"id":"c-` + id + `"},"phone_number_id":"1"}`
	body := []byte(item)
	if batch {
		body = []byte(`{"type":"` + event + `","batch":true,"data":[` + item + `],"batch_info":{"size":1,"window_ms":5000}}`)
	}
	h := kapsoHeaders(kapsoSecret, body, event, key)
	if batch {
		h["X-Webhook-Batch"] = "true"
	}
	return body, h
}

// answer is what a sender got: status and JSON status field; status 0
// when the answer broke off.
type answer struct {
	status int
	kind   string
}

func send(t *testing.T, url string, body []byte, h map[string]string) answer {
	t.Helper()
	conn, err := net.Dial("tcp", strings.SplitN(url, "/", 4)[2])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
	for k, v := range h {
		req.Header.Set(k, v)
	}
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return answer{}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{status: resp.StatusCode, kind: "broken"}
	}
	var v struct{ Status string }
	_ = json.Unmarshal(b, &v)
	if v.Status == "" {
		var e errorBody
		_ = json.Unmarshal(b, &e)
		v.Status = e.Error
	}
	return answer{status: resp.StatusCode, kind: v.Status}
}

// TestPipelineCasesThroughBothSinks guards the one pipeline: the same
// table of cases (new, duplicate, in flight, ignored, upstream 5xx, a 2xx
// cut short after its headers) for a single delivery and a batch of one,
// through the direct sink and the inbox, through a real Caddy. Each row
// says what the sender gets first, what its retry (same key) gets, and
// how many times the app got the message in the end.
func TestPipelineCasesThroughBothSinks(t *testing.T) {
	app := newCaseApp(t)
	c := startCaddy(t, sinkSite(t.TempDir(), strings.TrimPrefix(app.srv.URL, "http://")))
	type want struct {
		first, retry answer
		app          int
	}
	cases := []struct {
		name, prefix, event string
		concurrent          bool // the retry is sent while the first is still with the app
		direct, batch       want // the single delivery's and the batch's, forwarded directly
		inbox, inboxBatch   want
	}{
		{"new then duplicate", "ok.", "whatsapp.message.received", false,
			want{answer{200, ""}, answer{200, "duplicate"}, 1}, want{answer{200, "ok"}, answer{200, "duplicate"}, 1},
			want{answer{200, "queued"}, answer{200, "duplicate"}, 1}, want{answer{200, "queued"}, answer{200, "duplicate"}, 1}},
		{"in flight", "slow.", "whatsapp.message.received", true,
			want{answer{200, ""}, answer{409, "in_flight"}, 1}, want{answer{200, "ok"}, answer{409, "in_flight"}, 1},
			want{answer{200, "queued"}, answer{200, "duplicate"}, 1}, want{answer{200, "queued"}, answer{200, "duplicate"}, 1}},
		{"ignored", "ign.", "whatsapp.conversation.created", false,
			want{answer{200, "ignored"}, answer{200, "ignored"}, 0}, want{answer{200, "ignored"}, answer{200, "ignored"}, 0},
			want{answer{200, "ignored"}, answer{200, "ignored"}, 0}, want{answer{200, "ignored"}, answer{200, "ignored"}, 0}},
		{"upstream 5xx", "fail.", "whatsapp.message.received", false,
			want{answer{503, ""}, answer{503, ""}, 2}, want{answer{502, "partial"}, answer{502, "partial"}, 2},
			want{answer{200, "queued"}, answer{200, "duplicate"}, 2}, want{answer{200, "queued"}, answer{200, "duplicate"}, 2}},
		{"2xx cut after its headers", "cut.", "whatsapp.message.received", false,
			want{answer{200, "broken"}, answer{200, "duplicate"}, 1}, want{answer{200, "ok"}, answer{200, "duplicate"}, 1},
			want{answer{200, "queued"}, answer{200, "duplicate"}, 1}, want{answer{200, "queued"}, answer{200, "duplicate"}, 1}},
	}
	for _, tc := range cases {
		for _, run := range []struct {
			path  string
			batch bool
			want  want
		}{{"/direct", false, tc.direct}, {"/direct", true, tc.batch}, {"/inbox", false, tc.inbox}, {"/inbox", true, tc.inboxBatch}} {
			kind := map[bool]string{false: "single", true: "batch"}[run.batch]
			t.Run(tc.name+" "+kind+" "+run.path, func(t *testing.T) {
				id := tc.prefix + strings.Trim(run.path, "/") + "." + kind
				body, h := sinkRequest(run.batch, id, tc.event, "key-"+id)
				var first answer
				done := make(chan struct{})
				go func() { defer close(done); first = send(t, c.URL+run.path, body, h) }()
				if tc.concurrent {
					waitFor(t, func() bool { return app.count(id) == 1 })
				} else {
					<-done
				}
				retry := send(t, c.URL+run.path, body, h)
				<-done
				if first.status != run.want.first.status || (run.want.first.kind != "" && first.kind != run.want.first.kind) {
					t.Errorf("first answer %+v, want %+v", first, run.want.first)
				}
				if retry.status != run.want.retry.status || (run.want.retry.kind != "" && retry.kind != run.want.retry.kind) {
					t.Errorf("retry answered %+v, want %+v", retry, run.want.retry)
				}
				if run.want.app == 0 {
					never(t, 200*time.Millisecond, func() bool { return app.count(id) > 0 }, "an ignored event reached the app")
					return
				}
				// The inbox retries a 503 (retry 50ms): two attempts, then dead.
				waitFor(t, func() bool { return app.count(id) == run.want.app })
				never(t, 300*time.Millisecond, func() bool { return app.count(id) > run.want.app }, "the app got the message again")
			})
		}
	}
}
