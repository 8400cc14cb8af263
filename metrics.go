package webhookguard

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/webhookguard/webhookguard/internal/inbox"
	"go.uber.org/zap"
)

// outcome is what became of a request or a batch item: the outcome label
// of the metrics and the delivery log.
type outcome string

const (
	outcomeForwarded        outcome = "forwarded"
	outcomeDuplicate        outcome = "duplicate"
	outcomeFailed           outcome = "failed"    // a batch item the upstream did not take
	outcomeIgnored          outcome = "ignored"   // an event the route does not subscribe to
	outcomeQueued           outcome = "queued"    // stored in the inbox, the sender answered
	outcomeDelivered        outcome = "delivered" // an inbox attempt the app took
	outcomeDead             outcome = "dead"      // an inbox event's last attempt, which failed
	outcomeInvalidSignature outcome = "invalid_signature"
	outcomeTooLarge         outcome = "too_large"
	outcomeBadRequest       outcome = "bad_request"
	outcomeUpstreamError    outcome = "upstream_error"
	outcomeHandshake        outcome = "handshake"
	outcomeHandshakeRefused outcome = "handshake_refused"
	outcomeInFlight         outcome = "in_flight"
	outcomeStoreUnavailable outcome = "store_unavailable"
)

// metrics are created once per process and registered into each config's
// registry, so that their values survive config reloads (a collector made
// per config would start again from zero).
var metrics struct {
	once sync.Once

	requests           *prometheus.CounterVec
	verifyFailures     *prometheus.CounterVec
	batchItems         *prometheus.CounterVec
	storeEntries       *prometheus.GaugeVec
	storeEvictions     *prometheus.CounterVec
	storeErrors        *prometheus.CounterVec
	upstream           *prometheus.HistogramVec
	inboxAttempts      *prometheus.CounterVec
	inboxDamaged       *prometheus.CounterVec
	inboxOrderKeyEmpty *prometheus.CounterVec
	alerts             *prometheus.CounterVec
	inbox              *inboxCollector
}

func initMetrics() {
	metrics.once.Do(func() {
		const ns, sub = "caddy", "webhook_guard"
		metrics.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Webhook requests by handler and outcome.",
		}, []string{"handler", "outcome"})
		metrics.verifyFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "verification_failures_total",
			Help: "Signature checks that refused a request, by handler, scheme and reason.",
		}, []string{"handler", "scheme", "reason"})
		metrics.batchItems = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "batch_items_total",
			Help: "Items of batched deliveries by handler and outcome.",
		}, []string{"handler", "outcome"})
		metrics.storeEntries = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "dedupe_store_entries",
			Help: "Committed keys held by an in-memory dedupe store.",
		}, []string{"scope"})
		metrics.storeEvictions = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "dedupe_store_evictions_total",
			Help: "Committed keys an in-memory dedupe store forgot to stay within its capacity.",
		}, []string{"scope"})
		metrics.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "dedupe_store_errors_total",
			Help: "Dedupe store operations that failed, by scope.",
		}, []string{"scope"})
		metrics.upstream = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "upstream_duration_seconds",
			Help:    "Time the rest of the route (usually reverse_proxy) took per forward, batch items included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"handler"})
		metrics.inboxAttempts = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "inbox_attempts_total",
			Help: "Inbox delivery attempts by handler and outcome (delivered, failed).",
		}, []string{"handler", "outcome"})
		metrics.inboxDamaged = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "inbox_damaged_total",
			Help: "Inbox events whose stored record could not be read, set aside as damaged.",
		}, []string{"handler"})
		metrics.alerts = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "alerts_total",
			Help: "Alert messages by handler, condition (failing, dead, pending, recovered) and outcome (sent, failed, dropped).",
		}, []string{"handler", "condition", "outcome"})
		metrics.inboxOrderKeyEmpty = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "inbox_order_key_empty_total",
			Help: "Events whose order_by placeholder evaluated empty (delivered unordered).",
		}, []string{"handler"})
		metrics.inbox = &inboxCollector{
			events: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "inbox_events"),
				"Events in the inbox by handler and state (pending, delivered, dead, damaged).", []string{"handler", "state"}, nil),
			oldest: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "inbox_oldest_pending_seconds"),
				"Age of the oldest pending event of the handler's inbox; 0 when none is pending.", []string{"handler"}, nil),
			orphaned: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "inbox_orphaned_events"),
				"Pending events of a queue in the store that no handler of the running config serves (a renamed handler's).",
				[]string{"queue"}, nil),
		}
	})
}

// registerMetrics adds the collectors to the config's registry. A failure
// only costs the metrics, so it is logged, not fatal.
func registerMetrics(ctx caddy.Context, logger *zap.Logger) {
	initMetrics()
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	for _, c := range []prometheus.Collector{
		metrics.requests, metrics.verifyFailures, metrics.batchItems, metrics.storeEntries,
		metrics.storeEvictions, metrics.storeErrors, metrics.upstream, metrics.inboxAttempts, metrics.inboxDamaged,
		metrics.inboxOrderKeyEmpty, metrics.alerts, metrics.inbox,
	} {
		if err := reg.Register(c); err != nil {
			if _, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); !ok {
				logger.Warn("webhook_guard metrics not registered", zap.Error(err))
			}
		}
	}
}

func (h *Handler) countRequest(result outcome) {
	if c, ok := h.metrics.requests[result]; ok {
		c.Inc()
		return
	}
	metrics.requests.WithLabelValues(h.name, string(result)).Inc()
}

func (h *Handler) countBatchItem(result outcome) {
	metrics.batchItems.WithLabelValues(h.name, string(result)).Inc()
}

func (h *Handler) observeUpstream(took time.Duration) {
	h.metrics.upstream.Observe(took.Seconds())
}

// handlerMetrics are a handler's own series of the hot metrics, looked up
// once at provision: finding a series by its labels on every request cost
// more than verifying a small body's signature.
type handlerMetrics struct {
	upstream prometheus.Observer
	requests map[outcome]prometheus.Counter // read-only once built
}

func newHandlerMetrics(name string, filtersEvents bool) handlerMetrics {
	m := handlerMetrics{
		upstream: metrics.upstream.WithLabelValues(name),
		requests: map[outcome]prometheus.Counter{},
	}
	results := []outcome{outcomeForwarded, outcomeDuplicate, outcomeUpstreamError}
	if filtersEvents {
		results = append(results, outcomeIgnored)
	}
	for _, result := range results {
		m.requests[result] = metrics.requests.WithLabelValues(name, string(result))
	}
	return m
}

// inboxCollector reads the inbox gauges when Prometheus scrapes: the
// counts the store keeps with every write, the oldest pending event per
// queue, and the pending events of queues no handler serves.
type inboxCollector struct {
	events, oldest, orphaned *prometheus.Desc
}

func (c *inboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.oldest
	ch <- c.orphaned
}

func (c *inboxCollector) Collect(ch chan<- prometheus.Metric) {
	for _, q := range storedQueues() {
		for _, state := range inbox.States {
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.GaugeValue, float64(q.counts[state]), q.name, string(state))
		}
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, q.oldestPending().Seconds(), q.name)
		if !q.served {
			ch <- prometheus.MustNewConstMetric(c.orphaned, prometheus.GaugeValue, float64(q.counts[inbox.Pending]), q.name)
		}
	}
}
