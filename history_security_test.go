package webhookguard

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"
)

// securedHistorySite serves the history open under /hist/ and behind
// basic_auth (admin, password) under /auth/, with an inbox handler
// named kapso delivering to upstream.
func securedHistorySite(t *testing.T, dir, upstream, password string) string {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`
	handle /hist/* {
		webhook_guard_history
	}
	handle /auth/* {
		basic_auth {
			admin %s
		}
		webhook_guard_history
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
			}
		}
	}`, hash, kapsoSecret, upstream, filepath.Join(dir, "inbox.db"))
}

// attackerPage is a page of another origin that tries every way HTML and
// scripts have to make a browser POST to the history's replay endpoints:
// a form (text/plain, into an iframe), a no-cors fetch and a cors fetch
// with the page's header (which needs a preflight). window.done is set
// once the fetches settled.
func attackerPage(targets []string) string {
	var b strings.Builder
	b.WriteString("<!doctype html><html><body>")
	for i, u := range targets {
		fmt.Fprintf(&b, `<iframe name="sink%d"></iframe><form id="f%d" method="POST" enctype="text/plain" target="sink%d" action="%s">`+
			`<input name="a" value="b"></form>`, i, i, i, u)
	}
	b.WriteString("<script>\nconst targets = [")
	for i, u := range targets {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(strconv.Quote(u))
	}
	b.WriteString(`];
window.results = [];
targets.forEach((u, i) => document.getElementById("f" + i).submit());
Promise.all(targets.flatMap((u) => [
  fetch(u, { method: "POST", mode: "no-cors", credentials: "include" }).then(() => "no-cors sent", (e) => "no-cors " + e),
  fetch(u, { method: "POST", mode: "cors", credentials: "include", headers: { "X-Webhook-Guard-History": "evil" } })
    .then((r) => "cors " + r.status, (e) => "cors blocked"),
])).then((r) => { window.results = r; window.done = true; });
</script></body></html>`)
	return b.String()
}

// TestHistoryRefusesCrossSiteWrites guards point 1 of the history's
// security in a real headless Chromium through a real Caddy: a page of
// another loopback origin tries a form, a no-cors fetch and a cors fetch
// against the replay endpoint of an open history site and of one behind
// basic_auth with a logged-in browser, and the app receives nothing; the
// history's own Replay button still works on both; a curl-like request
// with a foreign Origin is 403 JSON.
func TestHistoryRefusesCrossSiteWrites(t *testing.T) {
	browser := chromiumPath(t)
	var mu sync.Mutex
	failing := true
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(string, int) int {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}))
	const password = "s3cret-pass"
	c := startCaddy(t, securedHistorySite(t, t.TempDir(), up.Addr(), password))
	body, h := conversationEvent("csrf", 1)
	id := sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool {
		var e apiEvent
		apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events/"+id, &e)
		return e.Status == "dead"
	})
	mu.Lock()
	failing = false
	mu.Unlock()
	attempted := up.count()

	// Without a browser: a foreign Origin, or no proof header, is refused.
	for _, tc := range []struct {
		name    string
		headers map[string]string
	}{
		{"foreign origin", map[string]string{"Origin": "http://evil.example", "Content-Type": "text/plain", headerFromPage: "x"}},
		{"no header", map[string]string{"Content-Type": "text/plain"}},
		{"same-site fetch", map[string]string{"Sec-Fetch-Site": "same-site", headerFromPage: "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, _, answer := post(t, c.URL+"/hist/inbox/replay?handler=kapso&status=dead", nil, tc.headers)
			if code, msg := errorCode(t, answer); status != http.StatusForbidden || code != "cross_site" || msg == "" {
				t.Fatalf("answered %d %s", status, answer)
			}
		})
	}

	targets := []string{
		c.URL + "/hist/inbox/replay?handler=kapso&status=dead",
		c.URL + "/hist/inbox/events/" + id + "/replay",
		c.URL + "/auth/inbox/replay?handler=kapso&status=dead",
		c.URL + "/auth/inbox/events/" + id + "/replay",
	}
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, attackerPage(targets))
	}))
	defer evil.Close()

	ctx := newBrowser(t, browser)
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	row := `tr[data-id="` + id + `"]`
	authURL := c.URL + "/auth/"
	// The operator is logged in: the browser answered basic_auth's
	// challenge, as from its dialog, and keeps the credentials.
	do("starting the browser", chromedp.Navigate("about:blank")) // on ctx, which the browser then lives as long as
	logIn(t, ctx, "admin", password, func() {
		do("logging in to the basic_auth history", chromedp.Navigate(authURL), chromedp.WaitVisible(chromedp.CSS(row)))
	})
	do("opening the other site's page", chromedp.Navigate(evil.URL))
	var results []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		done, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.done === true`))
		if done {
			results, _ = chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.results`))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other site's page did not finish its requests")
		}
	}
	for _, r := range results {
		if strings.HasPrefix(r, "cors ") && r != "cors blocked" {
			t.Errorf("a cors fetch from another site got an answer: %q", r)
		}
	}
	// The form posts and no-cors fetches to the open site reach Caddy and
	// are refused (those to the basic_auth site are refused as well, or,
	// when the browser keeps its credentials to the first party, answered
	// 401 by basic_auth).
	waitFor(t, func() bool { return strings.Count(c.Logs(), "history write refused") >= 4 })
	never(t, 500*time.Millisecond, func() bool { return up.count() > attempted }, "a cross-site request made the app receive an event")
	var e apiEvent
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events/"+id, &e)
	if e.Status != "dead" || e.Attempts != 3 {
		t.Fatalf("the dead event changed: %s after %d attempts", e.Status, e.Attempts)
	}

	// The page's own Replay button works, logged in and on the open site.
	for i, page := range []string{authURL, c.URL + "/hist/"} {
		do("opening "+page, chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS(row)))
		do("clicking Replay on "+page, chromedp.Click(chromedp.CSS(row)), chromedp.WaitVisible(chromedp.CSS("#replay")),
			chromedp.Click(chromedp.CSS("#replay")))
		waitFor(t, func() bool { return up.count() == attempted+i+1 })
		do("waiting for the replay to show delivered", chromedp.WaitVisible(chromedp.CSS(row+" td.status.delivered")))
	}
}

// logIn runs open with the browser answering every HTTP authentication
// challenge with user and password (as a user does in its dialog); the
// browser keeps them afterwards, as it would.
func logIn(t *testing.T, ctx context.Context, user, password string, open func()) {
	t.Helper()
	events := make(chan any, 256)
	listenCtx, stopListening := context.WithCancel(ctx)
	defer stopListening()
	// Listen's callback may not call the browser: it hands the events on.
	if err := chromedp.Listen(listenCtx, func(ev any) {
		switch ev.(type) {
		case *fetch.EventRequestPaused, *fetch.EventAuthRequired:
			select {
			case events <- ev:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			select {
			case <-listenCtx.Done():
				return
			case ev := <-events:
				switch e := ev.(type) {
				case *fetch.EventRequestPaused:
					_, _ = chromedp.Call(ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: e.RequestID})
				case *fetch.EventAuthRequired:
					_, _ = chromedp.Call(ctx, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: e.RequestID,
						AuthChallengeResponse: &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseProvideCredentials,
							Username: user, Password: password}})
				}
			}
		}
	}()
	handle := true
	if _, err := chromedp.Call(ctx, fetch.Enable, fetch.EnableParams{HandleAuthRequests: &handle}); err != nil {
		t.Fatal(err)
	}
	open()
	if _, err := chromedp.Call(ctx, fetch.Disable, cdp.Empty{}); err != nil {
		t.Fatal(err)
	}
}

// TestHistoryRedactsCredentials guards point 2: a header whose name holds
// a word of the credential list (names chosen that are not themselves in
// the list), or whose value is a Bearer or Basic credential, is shown
// [redacted] by the history and delivered to the app unchanged; other
// headers are shown.
func TestHistoryRedactsCredentials(t *testing.T) {
	ta := newTally()
	up := newUpstream(t)
	up.setRespond(ta.app(func(string, int) int { return http.StatusOK }))
	c := startCaddy(t, historySite(t.TempDir(), up.Addr(), ""))
	hidden := map[string]string{
		"X-Auth-Key": "a1", "X-Access-Key": "a2", "Private-Key": "a3", "X-Passwd": "a4", "X-Session-Id": "a5",
		"X-User-Pwd": "a6", "X-Client-Credentials": "a7", "X-Jwt-Assertion": "a8", "X-Sig": "a9", "X-Csrftoken": "a10",
		"X-Forwarded-Login": "Bearer eyJhbGciOi.abc.def", "X-Upstream": "Basic YWRtaW46cGFzcw==", "X-Opaque": "eyJhbGciOiJIUzI1NiJ9.e30.sig",
	}
	shown := map[string]string{"X-Customer-Tier": "gold", "X-Request-Source": "crm"}
	body, h := conversationEvent("redact", 1)
	for k, v := range hidden {
		h[k] = v
	}
	for k, v := range shown {
		h[k] = v
	}
	id := sendQueued(t, c.URL, body, h)
	waitFor(t, func() bool { return ta.delivered(t) == 1 })
	var e apiEvent
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events/"+id, &e)
	got := up.requests()[0].Header
	for k, v := range hidden {
		if shownAs := e.Headers.Get(k); shownAs != "[redacted]" {
			t.Errorf("%s is shown as %q", k, shownAs)
		}
		if got.Get(k) != v {
			t.Errorf("%s reached the app as %q, want %q", k, got.Get(k), v)
		}
	}
	for k, v := range shown {
		if e.Headers.Get(k) != v {
			t.Errorf("%s is shown as %q, want %q", k, e.Headers.Get(k), v)
		}
	}
}

// TestHistoryKeepsRefusalsApart guards point 3's memory history and
// status rules: 1,001 unsigned requests (which need no secret) leave a
// handler's verified deliveries in its history, the refusals keep to
// their own ring of 100 (while the summary counts all 1,001), and an
// unknown status is 400 for a handler without an inbox as for one with.
func TestHistoryKeepsRefusalsApart(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, historySite(t.TempDir(), up.Addr(), ""))
	for n := range 3 {
		body, h := conversationEvent("plain", n)
		if status, _, answer := post(t, c.URL+"/plain", body, h); status != http.StatusOK {
			t.Fatalf("a signed delivery answered %d %s", status, answer)
		}
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(c.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	for range 1001 {
		fmt.Fprintf(conn, "POST /plain HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\n\r\n{}", strings.TrimPrefix(c.URL, "http://"))
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("an unsigned request answered %d", resp.StatusCode)
		}
	}
	var l apiList
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events?handler=plain&status=delivered", &l)
	if len(l.Events) != 3 {
		t.Fatalf("%d verified deliveries left in the history after 1,001 refusals, want 3", len(l.Events))
	}
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events?handler=plain&status=invalid_signature&limit=500", &l)
	if len(l.Events) != recentRefusals {
		t.Fatalf("%d refusals kept in the history, want the last %d", len(l.Events), recentRefusals)
	}
	var s struct{ Handlers []handlerSummary }
	apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox", &s)
	for _, hs := range s.Handlers {
		if hs.Handler == "plain" && (hs.Refused != 1001 || hs.Delivered != 3 || hs.Total != 1004) {
			t.Fatalf("summary of plain: %+v", hs)
		}
	}
	for _, handler := range []string{"plain", "kapso"} {
		status, answer := apiCall(t, http.MethodGet, c.AdminURL+"/webhook_guard/inbox/events?handler="+handler+"&status=bogus", nil)
		if status != http.StatusBadRequest || !strings.Contains(answer, "status must be one of") {
			t.Errorf("%s: status=bogus answered %d %s", handler, status, answer)
		}
	}
}

// TestInboxCommandEscapesSenderText guards the rest of point 3: an event
// name with terminal escapes, a carriage return and a bidi override is
// printed by caddy webhook inbox with those spelled out, so that it can
// neither clear the terminal nor forge a row.
func TestInboxCommandEscapesSenderText(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, historySite(t.TempDir(), up.Addr(), ""))
	body := []byte(`{"type":"\u001b[2J\u001b[31mFAKE\u001b[0m\r\nevt_fake \u202edelivered","message":{"id":"wamid.esc"}}`)
	h := kapsoHeaders(kapsoSecret, body, "", "esc-1")
	delete(h, headerEvent)
	sendQueued(t, c.URL, body, h)
	out, ok := runCaddyCmd(t, nil, "webhook", "inbox", "--address", strings.TrimPrefix(c.AdminURL, "http://"), "--handler", "kapso")
	if !ok {
		t.Fatalf("caddy webhook inbox failed:\n%s", out)
	}
	if strings.ContainsAny(out, "\x1b\r\u202e") {
		t.Fatalf("the output holds raw control characters: %q", out)
	}
	if !strings.Contains(out, `\x1b[2J\x1b[31mFAKE`) || !strings.Contains(out, `\u202e`) {
		t.Fatalf("the event name is not spelled out:\n%s", out)
	}
}

// TestExampleAccessLogHasNoSignatures guards point 4: Caddyfile.example,
// run as shipped (on free ports), writes Caddy's access log without the
// senders' signature headers, for an accepted and a refused delivery.
func TestExampleAccessLogHasNoSignatures(t *testing.T) {
	example, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string]int{"8080": freePort(t), "9090": freePort(t), "2019": freePort(t), "2020": freePort(t)}
	cfg := string(example)
	for from, to := range ports {
		cfg = strings.ReplaceAll(cfg, from, strconv.Itoa(to))
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	cmd := exec.Command(exe, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), asCaddyEnv+"=1", "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	base := "http://127.0.0.1:" + strconv.Itoa(ports["8080"])
	waitFor(t, func() bool {
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(base, "http://"), 100*time.Millisecond)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	body := []byte(`{"message":{"id":"wamid.log"},"conversation":{"id":"c"}}`)
	good := kapsoHeaders("demo_kapso_secret", body, "whatsapp.message.received", "log-1")
	if status, _, answer := post(t, base+"/webhooks/kapso", body, good); status != http.StatusOK {
		t.Fatalf("a signed delivery answered %d %s", status, answer)
	}
	bad := kapsoHeaders("wrong", body, "whatsapp.message.received", "log-2")
	if status, _, _ := post(t, base+"/webhooks/kapso", body, bad); status != http.StatusUnauthorized {
		t.Fatalf("a wrong signature answered %d", status)
	}
	meta := map[string]string{"X-Hub-Signature-256": "sha256=" + signHex("wrong", body), "Content-Type": "application/json"}
	post(t, base+"/webhooks/meta", body, meta)
	waitFor(t, func() bool { return strings.Count(logs.String(), "handled request") >= 4 })
	for _, sig := range []string{good[headerKapsoSignature], bad[headerKapsoSignature], signHex("wrong", body)} {
		if strings.Contains(logs.String(), sig) {
			t.Fatalf("a signature is in the access log:\n%s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), "X-Idempotency-Key") {
		t.Fatalf("the access log does not show the other request headers:\n%s", logs.String())
	}
}
