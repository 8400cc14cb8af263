package webhookguard

import (
	"bytes"
	"context"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// requireBrowserEnv, set to 1, turns a missing Chromium into a test
// failure, as requireRedisEnv does for redis-server: scripts/test.sh (and
// so CI) sets it and installs Debian's chromium.
const requireBrowserEnv = "WEBHOOKGUARD_REQUIRE_CHROMIUM"

// chromiumPath finds a Chromium or Chrome to drive, or skips (fails under
// requireBrowserEnv=1) the test with how to get one.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(requireBrowserEnv) == "1" {
		t.Fatalf("no chromium found and %s=1", requireBrowserEnv)
	}
	t.Skip("no chromium found: install it (apt-get install chromium) or run scripts/test.sh, which does, to run this test")
	return ""
}

// newBrowser starts a headless Chromium at path for the test, which it
// outlives by nothing: it stops at the test's end or after 90 s.
func newBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	return newBrowserSized(t, path, 1400, 900)
}

// newBrowserSized is newBrowser with a window of width × height.
func newBrowserSized(t *testing.T, path string, width, height int) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // CI runs as root, where Chromium's sandbox cannot start
		chromedp.WindowSize(width, height),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

// TestHistoryPageInBrowser guards the history page as a user sees it, in
// a real headless Chromium against a real Caddy with a real inbox, the
// page mounted on a site with webhook_guard_history: the
// cards count what the store holds, a click on a dead event opens its
// pretty-printed payload and attempt log, Send test event delivers a
// sample that the table marks as a test, and a click on Replay delivers
// the dead event to the app again. The screenshot it takes is README's (written to
// docs/history.png with -update).
func TestHistoryPageInBrowser(t *testing.T) {
	browser := chromiumPath(t)
	ta := newTally()
	up := newUpstream(t)
	var mu sync.Mutex
	failing := true
	up.setRespond(ta.app(func(id string, _ int) int {
		mu.Lock()
		defer mu.Unlock()
		if failing && strings.Contains(id, ".bad.") {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	}))
	c := startCaddy(t, historySite(t.TempDir(), up.Addr(), ""))
	for i := 1; i <= 3; i++ {
		body, h := conversationEvent("ok", i)
		sendQueued(t, c.URL, body, h)
	}
	bad, hb := conversationEvent("bad", 1)
	badID := sendQueued(t, c.URL, bad, hb)
	waitFor(t, func() bool { return ta.delivered(t) == 3 })
	waitFor(t, func() bool {
		var e apiEvent
		apiCall(t, "GET", c.AdminURL+"/webhook_guard/inbox/events/"+badID, &e)
		return e.Status == "dead"
	})

	ctx := newBrowser(t, browser)

	card := func(handler, name string) string {
		return `[data-handler="` + handler + `"] [data-card="` + name + `"] .value`
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return s
	}
	row := `tr[data-id="` + badID + `"]`
	// Through webhook_guard_history on the site: Caddy's admin endpoint
	// refuses a browser's own navigation (no Origin, no Referer) by design.
	do("opening the page", chromedp.Navigate(c.URL+"/hist/"), chromedp.WaitVisible(chromedp.CSS(row)))
	delivered, dead, pending, rate := text(card("kapso", "delivered")), text(card("kapso", "dead")), text(card("kapso", "pending")), text(card("kapso", "rate"))
	do("opening the dead event", chromedp.Click(chromedp.CSS(row)), chromedp.WaitVisible(chromedp.CSS("#payload")))
	payload, attempts := text("#payload"), text("#attempts")
	if delivered != "3" || dead != "1" || pending != "0" || rate != "75.0 %" {
		t.Errorf("cards: delivered %q, dead %q, pending %q, success rate %q; want 3, 1, 0, 75.0 %%", delivered, dead, pending, rate)
	}
	if !strings.Contains(payload, `"id": "wamid.bad.001"`) || !strings.Contains(payload, "\n  ") {
		t.Errorf("payload panel does not show the pretty-printed body:\n%s", payload)
	}
	if strings.Count(attempts, "auto") != 3 || !strings.Contains(attempts, "500") {
		t.Errorf("attempt log: %q", attempts)
	}

	// Send test event: its delivery shows in the table, marked as a test
	// (and in the screenshot, with the health line and the chart).
	do("sending a test event", chromedp.Click(chromedp.CSS(`[data-handler="kapso"] .send-test`)),
		chromedp.WaitVisible(chromedp.CSS(`#events td.status.delivered [data-tag="test"]`)))
	waitFor(t, func() bool { return ta.delivered(t) == 4 })
	do("reopening the dead event", chromedp.Click(chromedp.CSS(row)), chromedp.WaitVisible(chromedp.CSS("#payload")))

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG; below it, JPEG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil || img.Bounds().Dx() < 1000 {
		t.Fatalf("screenshot is not a full-width PNG: %v", err)
	}
	out := filepath.Join(t.TempDir(), "history.png")
	if *update {
		out = filepath.Join("docs", "history.png")
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	failing = false
	mu.Unlock()
	do("clicking Replay", chromedp.Click(chromedp.CSS("#replay")))
	waitFor(t, func() bool { return ta.delivered(t) == 5 })
	do("waiting for the page to show the replay delivered", chromedp.WaitVisible(chromedp.CSS(row+" td.status.delivered")))
	ta.mu.Lock()
	defer ta.mu.Unlock()
	if got := ta.attempts["wamid.bad.001"]; len(got) != 4 || got[3] != "4" {
		t.Fatalf("the replay reached the app as attempts %v; want a fourth", got)
	}
}
