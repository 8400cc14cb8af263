package webhookguard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

const batchEvent = "whatsapp.message.received"

// makeBatch builds a Kapso batch envelope of n messages in one
// conversation, as compact JSON.
func makeBatch(n int, idPrefix string) []byte {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"message":{"id":"%s%d","timestamp":"17300928%02d","type":"text","text":{"body":"msg %d \u00e9"},`+
			`"kapso":{"direction":"inbound"}},"conversation":{"id":"conv_123","phone_number":"+15551234567"},`+
			`"is_new_conversation":false,"phone_number_id":"123456789012345"}`, idPrefix, i, i, i)
	}
	return []byte(`{"type":"` + batchEvent + `","batch":true,"data":[` + strings.Join(items, ",") +
		`],"batch_info":{"size":` + strconv.Itoa(n) + `,"window_ms":5000,"first_sequence":101,"last_sequence":` +
		strconv.Itoa(100+n) + `,"conversation_id":"conv_123"}}`)
}

// batchItems extracts the raw item bytes with encoding/json, independently
// of the gateway's scanner.
func batchItems(t *testing.T, body []byte) [][]byte {
	t.Helper()
	var env struct{ Data []json.RawMessage }
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, len(env.Data))
	for i, d := range env.Data {
		out[i] = d
	}
	return out
}

func batchHeaders(body []byte, key string, size int) map[string]string {
	h := kapsoHeaders(kapsoSecret, body, batchEvent, key)
	h["X-Webhook-Batch"] = "true"
	h["X-Batch-Size"] = strconv.Itoa(size)
	return h
}

func unbatchSite(up *upstream, extra string) string {
	return `
	route {
		webhook_guard {
			verify kapso ` + kapsoSecret + `
			unbatch
			` + extra + `
		}
		# A handle group after the guard: with a shared request context
		# only the first item would match it.
		handle {
			reverse_proxy ` + up.Addr() + ` {
				header_up X-Seen-Index {http.webhook.batch_index}
				header_up X-Seen-Count {http.webhook.batch_count}
				header_up X-Seen-Event {http.webhook.event}
			}
		}
	}`
}

type batchReply struct {
	Status         string `json:"status"`
	FailedIndex    *int   `json:"failed_index"`
	UpstreamStatus *int   `json:"upstream_status"`
	Forwarded      int    `json:"forwarded"`
	Duplicates     int    `json:"duplicates"`
	Items          int    `json:"items"`
}

func decodeBatchReply(t *testing.T, body []byte) batchReply {
	t.Helper()
	var r batchReply
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("batch reply %q: %v", body, err)
	}
	return r
}

// TestUnbatchSplitsInOrder guards the split itself: a batch of 3 reaches
// the upstream as 3 requests, in order, with the item bytes unchanged,
// per-item headers and placeholders, through a handle group.
func TestUnbatchSplitsInOrder(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, unbatchSite(up, "forward_secret fwd-secret"))
	body := makeBatch(3, "wamid.order.")
	h := batchHeaders(body, "batch-key-1", 3)
	h["X-Custom"] = "kept"
	status, _, resp := post(t, c.URL+"/kapso?q=1", body, h)
	if status != 200 {
		t.Fatalf("status %d: %s", status, resp)
	}
	if r := decodeBatchReply(t, resp); r.Status != "ok" || r.Forwarded != 3 || r.Items != 3 || r.Duplicates != 0 {
		t.Fatalf("reply %+v", r)
	}
	items := batchItems(t, body)
	reqs := up.requests()
	if len(reqs) != 3 {
		t.Fatalf("upstream got %d requests, want 3", len(reqs))
	}
	for i, got := range reqs {
		if !bytes.Equal(got.Body, items[i]) {
			t.Errorf("item %d body differs:\n got %s\nwant %s", i, got.Body, items[i])
		}
		want := map[string]string{
			"X-Webhook-Event":           batchEvent,
			"X-Webhook-Batch-Id":        "batch-key-1",
			"X-Webhook-Batch-Index":     strconv.Itoa(i),
			"X-Webhook-Batch-Count":     "3",
			"X-Webhook-Conversation-Id": "conv_123",
			"X-Webhook-Sequence":        strconv.Itoa(101 + i),
			"X-Idempotency-Key":         batchEvent + ":wamid.order." + strconv.Itoa(i),
			"X-Webhook-Verified":        "kapso",
			"X-Webhook-Signature":       signHex("fwd-secret", items[i]),
			"X-Webhook-Payload-Version": "v2",
			"X-Custom":                  "kept",
			"Content-Length":            strconv.Itoa(len(items[i])),
			"X-Seen-Index":              strconv.Itoa(i),
			"X-Seen-Count":              "3",
			"X-Seen-Event":              batchEvent,
		}
		for k, v := range want {
			if g := got.Header.Get(k); g != v {
				t.Errorf("item %d header %s = %q, want %q", i, k, g, v)
			}
		}
		for _, k := range []string{"X-Webhook-Batch", "X-Batch-Size"} {
			if g := got.Header.Get(k); g != "" {
				t.Errorf("item %d still carries %s: %q", i, k, g)
			}
		}
		if got.Path != "/kapso?q=1" || got.Method != "POST" {
			t.Errorf("item %d: %s %s", i, got.Method, got.Path)
		}
	}

	// The same batch again is a duplicate as a whole.
	status, hdr, resp := post(t, c.URL+"/kapso?q=1", body, h)
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 3 {
		t.Fatalf("repeated batch: %d %s, upstream %d", status, resp, up.count())
	}
}

// TestUnbatchResumesAfterFailure guards exactly-once and order across a
// partial failure: item 1 fails once, the batch stops there (item 2 is not
// sent ahead of it), the sender gets 502 with the failed index, and its
// retry delivers items 1 and 2 without resending item 0. Kapso's
// individual fallback redelivery of an item is then a duplicate.
func TestUnbatchResumesAfterFailure(t *testing.T) {
	up := newUpstream(t)
	failed := false
	up.setRespond(func(_ int, r recorded) (int, time.Duration) {
		if r.Header.Get("X-Webhook-Batch-Index") == "1" && !failed {
			failed = true
			return 503, 0
		}
		return 200, 0
	})
	c := startCaddy(t, unbatchSite(up, ""))
	body := makeBatch(3, "wamid.resume.")
	h := batchHeaders(body, "batch-resume", 3)

	status, _, resp := post(t, c.URL, body, h)
	r := decodeBatchReply(t, resp)
	if status != http.StatusBadGateway || r.Status != "partial" || r.FailedIndex == nil || *r.FailedIndex != 1 ||
		r.UpstreamStatus == nil || *r.UpstreamStatus != 503 || r.Forwarded != 1 || r.Items != 3 {
		t.Fatalf("first attempt: %d %s", status, resp)
	}
	if up.count() != 2 {
		t.Fatalf("after the failure the upstream got %d requests, want 2 (item 2 must wait)", up.count())
	}

	status, _, resp = post(t, c.URL, body, h)
	r = decodeBatchReply(t, resp)
	if status != 200 || r.Status != "ok" || r.Forwarded != 2 || r.Duplicates != 1 {
		t.Fatalf("retry: %d %s", status, resp)
	}
	var delivered []string
	for _, req := range up.requests() {
		delivered = append(delivered, req.Header.Get("X-Webhook-Batch-Index"))
	}
	if strings.Join(delivered, ",") != "0,1,1,2" {
		t.Fatalf("upstream saw items %v, want 0,1(failed),1,2", delivered)
	}

	// Kapso's fallback: the item arrives alone, with a new key.
	item := batchItems(t, body)[2]
	status, hdr, resp := post(t, c.URL, item, kapsoHeaders(kapsoSecret, item, batchEvent, "fallback-new-key"))
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 4 {
		t.Fatalf("individual redelivery of a batched item: %d %s, upstream %d", status, resp, up.count())
	}
}

// TestUnbatchUnreachableUpstream guards a transport error on an item: the
// sender gets a partial 502 and nothing is committed.
func TestUnbatchUnreachableUpstream(t *testing.T) {
	dead := "127.0.0.1:" + strconv.Itoa(freePort(t))
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		unbatch
	}
	reverse_proxy `+dead)
	body := makeBatch(2, "wamid.dead.")
	status, _, resp := post(t, c.URL, body, batchHeaders(body, "dead-batch", 2))
	r := decodeBatchReply(t, resp)
	if status != http.StatusBadGateway || r.FailedIndex == nil || *r.FailedIndex != 0 || r.Forwarded != 0 {
		t.Fatalf("%d %s", status, resp)
	}
}

// TestUnbatchRejectsBadInput guards that a malformed batch is refused
// whole with a JSON error, and no item is forwarded.
func TestUnbatchRejectsBadInput(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, unbatchSite(up, "")+"\n")
	c2 := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		unbatch {
			max_items 5
		}
	}
	reverse_proxy `+up.Addr())
	deep := strings.Repeat("[", 600) + strings.Repeat("]", 600)
	tests := []struct {
		name   string
		target *caddyInstance
		body   string
		status int
		want   string
	}{
		{"not JSON", c, `{"type":"x","batch":true,"data":[{"a":1}`, 400, "not valid JSON"},
		{"array body", c, `[{"a":1}]`, 400, "must be a JSON object"},
		{"data missing", c, `{"type":"x","batch":true}`, 400, "no data array"},
		{"data not an array", c, `{"type":"x","batch":true,"data":{"a":1}}`, 400, "must be an array"},
		{"item not an object", c, `{"type":"x","batch":true,"data":[{"a":1},"two"]}`, 400, "item 1 is not a JSON object"},
		{"zero items", c, `{"type":"x","batch":true,"data":[]}`, 400, "no items"},
		{"deep nesting", c, `{"type":"x","batch":true,"data":[{"a":` + deep + `}]}`, 400, "not valid JSON"},
		{"too many items", c2, string(makeBatch(6, "wamid.many.")), 413, "more than the limit of 5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			status, _, resp := post(t, tc.target.URL, body, batchHeaders(body, "bad-"+tc.name, 1))
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, resp)
			}
			if _, msg := errorCode(t, resp); !strings.Contains(msg, tc.want) {
				t.Errorf("message %q, want %q", msg, tc.want)
			}
		})
	}
	if n := up.count(); n != 0 {
		t.Fatalf("a malformed batch forwarded %d items", n)
	}
}

// TestUnbatchDetectionAndSizeMismatch guards detection by body when the
// header is absent, that a non-batch body passes through whole, and that
// an X-Batch-Size that disagrees with the items is logged while the items
// present are delivered.
func TestUnbatchDetectionAndSizeMismatch(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, unbatchSite(up, ""))
	body := makeBatch(2, "wamid.detect.")
	h := kapsoHeaders(kapsoSecret, body, batchEvent, "no-header-batch")
	h["X-Batch-Size"] = "5"
	if status, _, resp := post(t, c.URL, body, h); status != 200 || up.count() != 2 {
		t.Fatalf("batch detected by body: %d %s, upstream %d", status, resp, up.count())
	}
	if !strings.Contains(c.Logs(), "X-Batch-Size differs") {
		t.Error("size mismatch not logged")
	}
	single := compactFixture(t, "kapso/v2_message_received.json")
	if status, _, _ := post(t, c.URL, single, kapsoHeaders(kapsoSecret, single, batchEvent, "single")); status != 200 {
		t.Fatalf("single delivery: %d", status)
	}
	reqs := up.requests()
	if last := reqs[len(reqs)-1]; !bytes.Equal(last.Body, single) || last.Header.Get("X-Webhook-Batch-Index") != "" {
		t.Fatal("a single delivery was altered by unbatch")
	}
}

// TestUnbatchFixture runs the documented Kapso batch fixture through.
func TestUnbatchFixture(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, unbatchSite(up, ""))
	body := compactFixture(t, "kapso/v2_batch_message_received.json")
	status, _, resp := post(t, c.URL, body, batchHeaders(body, "fixture-batch", 2))
	if status != 200 || up.count() != 2 {
		t.Fatalf("%d %s", status, resp)
	}
	for i, item := range batchItems(t, body) {
		if !bytes.Equal(up.requests()[i].Body, item) {
			t.Errorf("item %d changed", i)
		}
	}
}

// BenchmarkUnbatch measures a batch of 1, 10 and 100 items through the
// handler (verify, dedupe, split, sub-requests) with a trivial next
// handler, beside one single delivery through the same pipeline: the
// budget is that an item costs less than a request of its own would.
func BenchmarkUnbatch(b *testing.B) {
	next := drainingNext(false)
	newHandler := func(scope string, unbatch bool) *Handler {
		h := &Handler{Verify: []*Verifier{{Scheme: "kapso", Secrets: []string{"bench"}}},
			Dedupe: &Dedupe{Scope: scope, Capacity: 1 << 20}}
		if unbatch {
			h.Unbatch = &Unbatch{}
		}
		return benchHandler(b, h)
	}
	serve := func(b *testing.B, h *Handler, body []byte, key string, batch bool) {
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		req.Header.Set("X-Webhook-Signature", signHex("bench", body))
		req.Header.Set("X-Idempotency-Key", key)
		req.Header.Set("X-Webhook-Event", batchEvent)
		if batch {
			req.Header.Set("X-Webhook-Batch", "true")
		}
		w := httptest.NewRecorder()
		req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil)
		if err := h.ServeHTTP(w, req, next); err != nil || w.Code != http.StatusOK {
			b.Fatalf("status %d, err %v: %s", w.Code, err, w.Body)
		}
	}
	// Keys must never repeat, or items would be skipped as duplicates:
	// benchmark bodies can run several times in one process.
	var seq atomic.Int64
	key := func(kind string) string { return kind + "-" + strconv.FormatInt(seq.Add(1), 10) }
	item := `{"message":{"type":"text","text":{"body":"hello"},"kapso":{"direction":"inbound"}},` +
		`"conversation":{"id":"conv_1"},"phone_number_id":"123456789012345"}`
	b.Run("harness-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(item))
			req.Header.Set("X-Webhook-Signature", signHex("bench", []byte(item)))
			req.Header.Set("X-Idempotency-Key", key("harness"))
			req.Header.Set("X-Webhook-Event", batchEvent)
			w := httptest.NewRecorder()
			req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, nil)
			if err := next.ServeHTTP(w, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	single := newHandler("bench-single", false)
	b.Run("single-delivery", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			serve(b, single, []byte(item), key("single"), false)
		}
	})
	for _, n := range []int{1, 10, 100} {
		items := make([]string, n)
		for i := range items {
			items[i] = item
		}
		body := []byte(`{"type":"` + batchEvent + `","batch":true,"data":[` + strings.Join(items, ",") + `]}`)
		h := newHandler("bench-batch-"+strconv.Itoa(n), true)
		b.Run("items-"+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				serve(b, h, body, key("batch"), true)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/item")
		})
	}
}
