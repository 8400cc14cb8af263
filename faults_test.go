package webhookguard

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// flakyUpstream is a raw TCP upstream whose behaviour per connection is
// scripted, for faults net/http servers will not produce: a connection
// reset before any response, or a response cut off after its headers.
type flakyUpstream struct {
	ln     net.Listener
	mu     sync.Mutex
	plan   []string // per request: "reset", "cut", "ok"
	served []string // idempotency key of each request, in order
}

func newFlakyUpstream(t *testing.T, plan ...string) *flakyUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &flakyUpstream{ln: ln, plan: plan}
	go u.serve()
	t.Cleanup(func() { ln.Close() })
	return u
}

func (u *flakyUpstream) Addr() string { return u.ln.Addr().String() }

func (u *flakyUpstream) serve() {
	for {
		conn, err := u.ln.Accept()
		if err != nil {
			return
		}
		go u.handle(conn)
	}
}

func (u *flakyUpstream) handle(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		u.mu.Lock()
		action := "ok"
		if len(u.served) < len(u.plan) {
			action = u.plan[len(u.served)]
		}
		u.served = append(u.served, req.Header.Get("X-Idempotency-Key")+" "+action)
		u.mu.Unlock()
		switch action {
		case "reset":
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // RST instead of FIN
			}
			return
		case "cut":
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			return
		default:
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	}
}

func (u *flakyUpstream) log() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.served...)
}

// TestFaultConnectionReset guards an upstream that resets the connection
// before answering: the sender gets a status that makes it retry (502),
// nothing is committed, and the retry is delivered, once.
func TestFaultConnectionReset(t *testing.T) {
	up := newFlakyUpstream(t, "reset")
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		dedupe
	}
	reverse_proxy `+up.Addr())
	body := []byte(`{"message":{"id":"wamid.reset"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "reset-key")
	if status, _, _ := post(t, c.URL, body, h); status != http.StatusBadGateway {
		t.Fatalf("reset: status %d, want 502", status)
	}
	if status, _, resp := post(t, c.URL, body, h); status != 200 || string(resp) != "ok" {
		t.Fatalf("retry: %d %q", status, resp)
	}
	status, hdr, resp := post(t, c.URL, body, h)
	if !isDuplicateAnswer(status, hdr, resp) {
		t.Fatalf("third copy: %d %s", status, resp)
	}
	if got := strings.Join(up.log(), ","); got != "reset-key reset,reset-key ok" {
		t.Fatalf("upstream saw %s", got)
	}
}

// TestFaultResponseCutAfterHeaders guards a response that breaks after the
// upstream answered 200: reverse_proxy aborts the sender's connection by
// panicking, and the claim must still be settled (here committed, since
// the upstream took the event) rather than left in flight, where every
// retry would wait on it and get 409.
func TestFaultResponseCutAfterHeaders(t *testing.T) {
	up := newFlakyUpstream(t, "cut")
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		dedupe {
			wait 2s
		}
	}
	reverse_proxy `+up.Addr())
	body := []byte(`{"message":{"id":"wamid.cut"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "cut-key")
	req, _ := http.NewRequest(http.MethodPost, c.URL, strings.NewReader(string(body)))
	for k, v := range h {
		req.Header.Set(k, v)
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatal("the cut response reached the sender whole")
		}
	}
	status, hdr, resp := post(t, c.URL, body, h)
	if !isDuplicateAnswer(status, hdr, resp) {
		t.Fatalf("retry after a 200 cut short: %d %s (a claim left in flight answers 409)", status, resp)
	}
	if n := len(up.log()); n != 1 {
		t.Fatalf("upstream got %d requests, want 1", n)
	}
}

// TestFaultUpstreamTimeout guards an upstream slower than the proxy's
// timeout: the sender gets 504, nothing stays committed, and the retry is
// forwarded.
func TestFaultUpstreamTimeout(t *testing.T) {
	up := newUpstream(t)
	up.setRespond(func(n int, _ recorded) (int, time.Duration) {
		if n == 0 {
			return 200, 2 * time.Second
		}
		return 200, 0
	})
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		dedupe
	}
	reverse_proxy `+up.Addr()+` {
		transport http {
			response_header_timeout 300ms
		}
	}`)
	body := []byte(`{"message":{"id":"wamid.slow"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "slow-key")
	if status, _, _ := post(t, c.URL, body, h); status != http.StatusGatewayTimeout && status != http.StatusBadGateway {
		t.Fatalf("timed-out forward: status %d, want 504 or 502", status)
	}
	if status, _, resp := post(t, c.URL, body, h); status != 200 || up.count() != 2 {
		t.Fatalf("retry: %d %s, upstream %d", status, resp, up.count())
	}
	status, hdr, resp := post(t, c.URL, body, h)
	if !isDuplicateAnswer(status, hdr, resp) || up.count() != 2 {
		t.Fatalf("after the successful retry: %d %s, upstream %d", status, resp, up.count())
	}
}

// TestFaultBatchItemTimeout guards a batch whose second item times out:
// the batch stops there, and the sender's retry delivers the rest in order,
// each item answered 2xx exactly once.
func TestFaultBatchItemTimeout(t *testing.T) {
	up := newUpstream(t)
	slowed := false
	var mu sync.Mutex
	up.setRespond(func(_ int, r recorded) (int, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("X-Webhook-Batch-Index") == "1" && !slowed {
			slowed = true
			return 200, 2 * time.Second
		}
		return 200, 0
	})
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		unbatch
	}
	reverse_proxy `+up.Addr()+` {
		transport http {
			response_header_timeout 300ms
		}
	}`)
	body := makeBatch(3, "wamid.batch.slow.")
	h := batchHeaders(body, "batch-slow", 3)
	status, _, resp := post(t, c.URL, body, h)
	if r := decodeBatchReply(t, resp); status != http.StatusBadGateway || r.FailedIndex == nil || *r.FailedIndex != 1 {
		t.Fatalf("first attempt: %d %s", status, resp)
	}
	if status, _, resp := post(t, c.URL, body, h); status != 200 {
		t.Fatalf("retry: %d %s", status, resp)
	}
	var order []string
	for _, r := range up.requests() {
		order = append(order, r.Header.Get("X-Webhook-Batch-Index"))
	}
	if strings.Join(order, ",") != "0,1,1,2" {
		t.Fatalf("upstream saw items %v, want 0,1(timed out),1,2", order)
	}
}

// TestFaultSenderDisconnectThenRetry guards a sender that hangs up mid
// body: nothing is forwarded or committed, and its retry is delivered.
func TestFaultSenderDisconnectThenRetry(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	webhook_guard {
		verify kapso `+kapsoSecret+`
		dedupe
	}
	reverse_proxy `+up.Addr())
	body := []byte(`{"message":{"id":"wamid.hangup"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "hangup-key")
	hangUpMidBody(t, c.URL, h, string(body[:10]), 200)
	never(t, 300*time.Millisecond, func() bool { return up.count() != 0 }, "a partial body was forwarded")
	if status, _, resp := post(t, c.URL, body, h); status != 200 || up.count() != 1 {
		t.Fatalf("retry: %d %s, upstream %d", status, resp, up.count())
	}
}

// hangUpMidBody sends a request announcing length bytes of body but only
// sent, with the given headers, then hangs up.
func hangUpMidBody(t *testing.T, url string, headers map[string]string, sent string, length int) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	req := "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(length) + "\r\n"
	for k, v := range headers {
		req += k + ": " + v + "\r\n"
	}
	_, _ = io.WriteString(conn, req+"\r\n"+sent)
	conn.Close()
}
