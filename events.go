package webhookguard

import (
	"errors"
	"github.com/webhookguard/webhookguard/internal/payload"
	"net/http"
	"slices"
	"strings"
)

// The event filter: a route subscribes to the events its app handles
// (Handler.Events) and the others are answered 200 {"status":"ignored"}
// without reaching the app, after their signature was checked. A sender
// counts a 404 from the app as a failure (Kapso pauses a webhook that
// keeps failing); an ignored event is a success that says what it was.

// filter applies the route's event filter (no filter passes all): it
// returns the names the request is known by and whether it passes. A
// Kapso batch carries one type for all its items, so a batch passes or
// is ignored whole.
func (d *delivery) filter() ([]string, bool) {
	if len(d.h.Events) == 0 {
		return nil, true
	}
	var names []string
	if d.batch != nil {
		names = payload.EventNames(d.batch.Event, nil)
	} else {
		names = payload.EventNames(d.event, d.body.bytes())
	}
	return names, d.h.subscribed(names)
}

// subscribed reports whether a delivery known by names passes the filter:
// no filter passes everything; a name must match a pattern; a delivery
// without a name passes only a filter that contains "*". A Meta delivery
// passes when any of its changes' fields matches.
func (h *Handler) subscribed(names []string) bool {
	if len(h.Events) == 0 {
		return true
	}
	if len(names) == 0 {
		return slices.Contains(h.Events, "*")
	}
	for _, name := range names {
		for _, pattern := range h.Events {
			if matchEvent(pattern, name) {
				return true
			}
		}
	}
	return false
}

// matchEvent matches name against pattern, in which each "*" stands for
// any run of characters (none included) and everything else for itself.
func matchEvent(pattern, name string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == name
	}
	first, last := parts[0], parts[len(parts)-1]
	if !strings.HasPrefix(name, first) || len(name) < len(first)+len(last) || !strings.HasSuffix(name, last) {
		return false
	}
	middle := name[len(first) : len(name)-len(last)]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(middle, p)
		if i < 0 {
			return false
		}
		middle = middle[i+len(p):]
	}
	return true
}

// validateEvents refuses an empty pattern, which could match nothing.
func validateEvents(patterns []string) error {
	if slices.Contains(patterns, "") {
		return errors.New("events: a pattern is empty")
	}
	return nil
}

// answerIgnored tells the sender its event was received and is not for
// this route's app; a batch's items are each recorded as ignored.
func (d *delivery) answerIgnored(names []string) error {
	d.h.countRequest(outcomeIgnored)
	if d.batch == nil {
		d.h.logDelivery(strings.Join(names, ","), d.key, d.scheme, outcomeIgnored, http.StatusOK, 0, isTest(d.r))
		return writeJSON(d.w, http.StatusOK, map[string]any{"status": "ignored"})
	}
	for i := range d.items {
		d.record(&d.items[i], outcomeIgnored, http.StatusOK, 0)
	}
	return writeJSON(d.w, http.StatusOK, batchResult{Status: string(outcomeIgnored), Items: len(d.items), Ignored: len(d.items)})
}
