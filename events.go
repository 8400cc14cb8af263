package webhookguard

import (
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/webhookguard/webhookguard/internal/jsonscan"
)

// The event filter: a route subscribes to the events its app handles
// (Handler.Events) and the others are answered 200 {"status":"ignored"}
// without reaching the app, after their signature was checked. A sender
// counts a 404 from the app as a failure (Kapso pauses a webhook that
// keeps failing); an ignored event is a success that says what it was.

// eventNames returns the names a verified delivery is known by: the
// X-Webhook-Event header when there is one (Kapso), else the body's
// top-level "type" (Standard Webhooks and platforms that put the event in
// an envelope), else every change's "field" of a raw Meta payload. A
// delivery with none of these has no name.
func eventNames(header string, body []byte) []string {
	if header != "" {
		return []string{header}
	}
	if v, ok, _ := jsonscan.ObjectField(body, 0, "type"); ok {
		if name, ok := jsonscan.StringValue(body, v); ok && name != "" {
			return []string{name}
		}
	}
	return metaFields(body)
}

// metaFields lists the distinct entry[].changes[].field values of a raw
// Meta payload, in order; nil for anything else.
func metaFields(body []byte) []string {
	var fields []string
	entries := arrayMember(body, jsonscan.Span{}, "entry")
	for _, e := range entries {
		for _, c := range arrayMember(body, e, "changes") {
			v, ok, _ := jsonscan.ObjectField(body, c.Start, "field")
			if !ok {
				continue
			}
			if name, ok := jsonscan.StringValue(body, v); ok && name != "" && !slices.Contains(fields, name) {
				fields = append(fields, name)
			}
		}
	}
	return fields
}

// arrayMember returns the items of obj's member key when obj is an object
// and the member an array, else nil.
func arrayMember(body []byte, obj jsonscan.Span, key string) []jsonscan.Span {
	if i := jsonscan.SkipSpace(body, obj.Start); i >= len(body) || body[i] != '{' {
		return nil
	}
	v, ok, err := jsonscan.ObjectField(body, obj.Start, key)
	if !ok || err != nil || body[v.Start] != '[' {
		return nil
	}
	items, _ := jsonscan.ArrayItems(body, v.Start)
	return items
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
// this route's app.
func (d *delivery) answerIgnored(names []string) error {
	d.h.countRequest(outcomeIgnored)
	d.h.logDelivery(strings.Join(names, ","), d.key, d.scheme, outcomeIgnored, http.StatusOK, 0)
	return writeJSON(d.w, http.StatusOK, map[string]any{"status": "ignored"})
}
