package webhookguard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Alert sends a short JSON message to a person's channel (a Slack or
// Discord incoming webhook, or any URL that takes a POST) when this
// handler's deliveries start to fail, when events die, when the oldest
// pending event has waited too long, and when the app recovers.
//
//	alert https://hooks.slack.com/services/… {
//		every 15m
//		pending_over 5m
//	}
//
// Messages carry a "text" field (what Slack and Discord show) and the
// condition, handler and details as fields of their own; with
// forward_secret they are signed like deliveries (X-Webhook-Signature).
// Each condition sends at most one message per Every. Sending never holds
// up a delivery: messages go out from a goroutine of their own, and a
// message that cannot be sent is logged and counted
// (caddy_webhook_guard_alerts_total{outcome="failed"}), then dropped.
type Alert struct {
	// URL receives the messages (POST, application/json). Required.
	URL string `json:"url,omitempty"`

	// Every is the least time between two messages of one condition.
	// Default: 15m.
	Every caddy.Duration `json:"every,omitempty"`

	// PendingOver is how long the oldest pending event of an inbox may
	// wait before a message says so. Default: 5m.
	PendingOver caddy.Duration `json:"pending_over,omitempty"`

	h           *Handler
	every       time.Duration
	pendingOver time.Duration
	client      *http.Client

	mu      sync.Mutex
	last    map[string]time.Time // condition → when its last message went
	failing bool                 // a failure was alerted and no success came since
	queue   chan alertMessage
	stop    chan struct{}
	done    chan struct{}
}

const (
	defaultAlertEvery       = 15 * time.Minute
	defaultAlertPendingOver = 5 * time.Minute
	alertQueue              = 64
)

// The conditions an alert tells of.
const (
	alertFailing   = "failing"
	alertDead      = "dead"
	alertPending   = "pending"
	alertRecovered = "recovered"
)

type alertMessage struct {
	Text      string         `json:"text"`
	Condition string         `json:"condition"`
	Handler   string         `json:"handler"`
	At        time.Time      `json:"at"`
	Details   map[string]any `json:"details,omitempty"`
}

func (a *Alert) provision(h *Handler) {
	a.h = h
	a.every = durationOr(a.Every, defaultAlertEvery)
	a.pendingOver = durationOr(a.PendingOver, defaultAlertPendingOver)
	a.client = &http.Client{Timeout: 10 * time.Second}
	a.last = map[string]time.Time{}
}

// checkOptions checks the options as given; the Caddyfile parser and
// Validate both call it.
func (a *Alert) checkOptions() error {
	if a.URL == "" {
		return fmt.Errorf("alert needs a URL to POST its messages to")
	}
	if a.Every < 0 || a.PendingOver < 0 {
		return fmt.Errorf("alert: every and pending_over must not be negative")
	}
	return nil
}

// start runs the sender, and with an inbox the check of the oldest
// pending event; the webhook_guard app calls it at Start.
func (a *Alert) start() {
	a.queue = make(chan alertMessage, alertQueue)
	a.stop, a.done = make(chan struct{}), make(chan struct{})
	go a.run()
}

// shutdown ends the sender; messages not sent by then are dropped.
func (a *Alert) shutdown() {
	if a.stop == nil {
		return
	}
	close(a.stop)
	<-a.done
}

func (a *Alert) run() {
	defer close(a.done)
	tick := time.NewTicker(min(a.pendingOver/4, 10*time.Second))
	defer tick.Stop()
	for {
		select {
		case <-a.stop:
			return
		case m := <-a.queue:
			a.send(m)
		case <-tick.C:
			a.checkPending()
		}
	}
}

// checkPending alerts when the oldest pending event has waited longer
// than PendingOver.
func (a *Alert) checkPending() {
	in := a.h.Inbox
	if in == nil {
		return
	}
	rt := in.rt.Load()
	if rt == nil {
		return
	}
	at, ok, err := rt.store.OldestPending(a.h.name)
	if err != nil || !ok {
		return
	}
	if waited := time.Since(at); waited > a.pendingOver {
		a.raise(alertPending, fmt.Sprintf("webhookguard %s: the oldest pending event has waited %s (over %s): the app is not taking them",
			a.h.name, waited.Round(time.Second), a.pendingOver), map[string]any{"oldest_pending_seconds": int(waited.Seconds())})
	}
}

// failed is told of a delivery (or attempt) the app did not take; dead
// when the event will not be tried again.
func (a *Alert) failed(dead bool, what string, details map[string]any) {
	a.mu.Lock()
	a.failing = true
	a.mu.Unlock()
	if dead {
		a.raise(alertDead, fmt.Sprintf("webhookguard %s: an event is dead after its last attempt (%s); "+
			"replay it from the history once the app is fixed", a.h.name, what), details)
		return
	}
	a.raise(alertFailing, fmt.Sprintf("webhookguard %s: deliveries are failing (%s)", a.h.name, what), details)
}

// delivered is told of every delivery the app took: after failures it
// says the app recovered, once.
func (a *Alert) delivered() {
	a.mu.Lock()
	was := a.failing
	a.failing = false
	if was {
		// A new failure after a recovery is news again.
		delete(a.last, alertFailing)
	}
	a.mu.Unlock()
	if was {
		a.enqueue(alertMessage{Condition: alertRecovered, Text: fmt.Sprintf("webhookguard %s: the app takes deliveries again", a.h.name)})
	}
}

// raise queues a message for condition unless one went less than Every
// ago.
func (a *Alert) raise(condition, text string, details map[string]any) {
	a.mu.Lock()
	if last, ok := a.last[condition]; ok && time.Since(last) < a.every {
		a.mu.Unlock()
		return
	}
	a.last[condition] = time.Now()
	a.mu.Unlock()
	a.enqueue(alertMessage{Condition: condition, Text: text, Details: details})
}

func (a *Alert) enqueue(m alertMessage) {
	m.Handler, m.At = a.h.name, time.Now().UTC()
	select {
	case a.queue <- m:
	default:
		metrics.alerts.WithLabelValues(a.h.name, m.Condition, "dropped").Inc()
	}
}

func (a *Alert) send(m alertMessage) {
	body, err := json.Marshal(m)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL, bytes.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "webhookguard-alert")
		if a.h.forwardKey != nil {
			req.Header.Set(headerKapsoSignature, a.h.forwardKey.sign(body))
		}
		var resp *http.Response
		if resp, err = a.client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode >= 300 {
				err = fmt.Errorf("the alert URL answered %d", resp.StatusCode)
			}
		}
	}
	if err != nil {
		metrics.alerts.WithLabelValues(a.h.name, m.Condition, "failed").Inc()
		// The URL itself is a credential (Slack's carries its token): not logged.
		a.h.logger.Warn("alert could not be sent", zap.String("handler", a.h.name), zap.String("condition", m.Condition),
			zap.String("error", describeSendError(err)))
		return
	}
	metrics.alerts.WithLabelValues(a.h.name, m.Condition, "sent").Inc()
}

// describeSendError says why a message did not go, without the URL that
// net/http errors quote.
func describeSendError(err error) string {
	var ue interface{ Unwrap() error }
	if u, ok := err.(interface {
		Unwrap() error
		Timeout() bool
	}); ok {
		if u.Timeout() {
			return "timed out"
		}
		ue = u
	}
	if ue != nil {
		return innermost(err).Error()
	}
	return err.Error()
}
