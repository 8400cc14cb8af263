package webhookguard

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
)

// metricValue reads one sample from Caddy's admin /metrics endpoint, 0
// when the series is absent.
func metricValue(t *testing.T, c *caddyInstance, name, labels string) float64 {
	t.Helper()
	v, _ := metricSample(t, c, name, labels)
	return v
}

// metricSample reads one sample and whether the series exists at all.
func metricSample(t *testing.T, c *caddyInstance, name, labels string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(c.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+"{"+labels+"}") + ` (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v, true
}

// TestMetricsMoveAndSurviveReload guards the Prometheus counters: a
// forwarded, a duplicate, a rejected and a batched delivery each move
// their counter on Caddy's metrics endpoint, and a config reload does not
// reset them.
func TestMetricsMoveAndSurviveReload(t *testing.T) {
	up := newUpstream(t)
	site := func(maxBody string) string {
		return `
	webhook_guard {
		name orders
		verify kapso ` + kapsoSecret + `
		max_body ` + maxBody + `
		unbatch
	}
	reverse_proxy ` + up.Addr()
	}
	c := startCaddy(t, site("1MB"))
	const req = "caddy_webhook_guard_requests_total"
	// The hot request counts exist from load, at 0, so that rates over
	// them are defined before the first delivery.
	for _, outcome := range []string{"forwarded", "duplicate", "upstream_error"} {
		if v, ok := metricSample(t, c, req, `handler="orders",outcome="`+outcome+`"`); !ok || v != 0 {
			t.Errorf("before any delivery, %s{outcome=%q} = %v (present %v), want 0, present", req, outcome, v, ok)
		}
	}
	body := []byte(`{"message":{"id":"wamid.metrics"}}`)
	h := kapsoHeaders(kapsoSecret, body, "whatsapp.message.received", "metrics-key")
	post(t, c.URL, body, h)
	post(t, c.URL, body, h)
	post(t, c.URL, body, map[string]string{"X-Webhook-Signature": "00"})
	batch := makeBatch(3, "wamid.metrics.batch.")
	post(t, c.URL, batch, batchHeaders(batch, "metrics-batch", 3))

	want := []struct {
		name, labels string
		value        float64
	}{
		{req, `handler="orders",outcome="forwarded"`, 2},
		{req, `handler="orders",outcome="duplicate"`, 1},
		{req, `handler="orders",outcome="invalid_signature"`, 1},
		{"caddy_webhook_guard_batch_items_total", `handler="orders",outcome="forwarded"`, 3},
		{"caddy_webhook_guard_verification_failures_total", `handler="orders",reason="mismatch",scheme="kapso"`, 1},
		{"caddy_webhook_guard_upstream_duration_seconds_count", `handler="orders"`, 4},
	}
	for _, w := range want {
		if got := metricValue(t, c, w.name, w.labels); got != w.value {
			t.Errorf("%s{%s} = %v, want %v", w.name, w.labels, got, w.value)
		}
	}
	if got := metricValue(t, c, "caddy_webhook_guard_dedupe_store_entries", `scope="default"`); got < 5 {
		t.Errorf("dedupe_store_entries = %v, want the committed keys (at least 5)", got)
	}

	c.reload(site("2MB"))
	post(t, c.URL, body, h)
	if got := metricValue(t, c, req, `handler="orders",outcome="duplicate"`); got != 2 {
		t.Errorf("after a reload the duplicate counter is %v, want 2 (kept, then incremented)", got)
	}
	if got := metricValue(t, c, req, `handler="orders",outcome="forwarded"`); got != 2 {
		t.Errorf("after a reload the forwarded counter is %v, want 2", got)
	}
	logs := c.Logs()
	for _, want := range []string{`"msg":"webhook delivery"`, `"outcome":"forwarded"`, `"idempotency_key":"metrics-key"`, `"batch_index":2`} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(logs) {
			t.Errorf("delivery log lacks %s", want)
		}
	}
}
