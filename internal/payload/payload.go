// Package payload reads what the gateway needs from a webhook's body
// without decoding it: whether it is a Kapso batch and where its items
// are, the names an event is known by, the content key that recognises a
// message delivered twice, and the conversation an event belongs to. It
// needs no Caddy; the request path in the root package uses it.
package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/webhookguard/webhookguard/internal/jsonscan"
)

// IsBatch tells a Kapso batched delivery by its X-Webhook-Batch header
// value or, when the header was lost on the way, by its body ("batch":
// true and a data array).
func IsBatch(header string, body []byte) bool {
	if strings.EqualFold(strings.TrimSpace(header), "true") {
		return true
	}
	flag, hasData := false, false
	_ = jsonscan.EachField(body, 0, func(key []byte, v jsonscan.Span) error {
		switch {
		case jsonscan.KeyEquals(key, "batch"):
			flag = string(body[v.Start:v.End]) == "true"
		case jsonscan.KeyEquals(key, "data"):
			hasData = body[v.Start] == '['
		}
		return nil
	})
	return flag && hasData
}

// Envelope is what the gateway needs from a batch: where its items are,
// and the fields that become per-item headers.
type Envelope struct {
	Event          string          // the batch's type, one for all its items
	Items          []jsonscan.Span // each item's exact bytes inside data
	ConversationID string          // batch_info.conversation_id
	FirstSequence  string          // batch_info.first_sequence, when a whole number
}

// InputError is a batch the gateway refuses whole.
type InputError struct {
	TooLarge bool // more items than allowed; otherwise malformed
	Message  string
}

func (e *InputError) Error() string { return e.Message }

func malformed(format string, args ...any) *InputError {
	return &InputError{Message: fmt.Sprintf(format, args...)}
}

// ParseBatch checks the whole envelope before any item is delivered, so
// that a malformed batch is refused whole rather than half delivered.
func ParseBatch(body []byte, maxItems int) (*Envelope, *InputError) {
	if !utf8.Valid(body) {
		// JSON must be UTF-8 (RFC 8259); splitting would forward bytes
		// the app cannot decode.
		return nil, malformed("batch body is not valid UTF-8")
	}
	if !json.Valid(body) {
		return nil, malformed("batch body is not valid JSON")
	}
	env := &Envelope{}
	var data, info jsonscan.Span
	hasData, hasInfo := false, false
	err := jsonscan.EachField(body, 0, func(key []byte, v jsonscan.Span) error {
		switch {
		case jsonscan.KeyEquals(key, "type"):
			env.Event, _ = jsonscan.StringValue(body, v)
		case jsonscan.KeyEquals(key, "data"):
			data, hasData = v, true
		case jsonscan.KeyEquals(key, "batch_info"):
			info, hasInfo = v, true
		}
		return nil
	})
	if errors.Is(err, jsonscan.ErrNotObject) {
		return nil, malformed("batch body must be a JSON object")
	}
	if err != nil {
		return nil, malformed("batch body is not valid JSON or is nested more than %d levels deep", jsonscan.MaxDepth)
	}
	if !hasData {
		return nil, malformed("batch has no data array")
	}
	items, err := jsonscan.ArrayItems(body, data.Start)
	if err != nil {
		return nil, malformed("batch data must be an array")
	}
	if len(items) == 0 {
		return nil, malformed("batch data has no items")
	}
	if len(items) > maxItems {
		return nil, &InputError{TooLarge: true,
			Message: fmt.Sprintf("batch has %d items, more than the limit of %d", len(items), maxItems)}
	}
	for i, it := range items {
		if body[it.Start] != '{' {
			return nil, malformed("batch item %d is not a JSON object", i)
		}
	}
	env.Items = items
	if hasInfo {
		env.readInfo(body, info)
	}
	return env, nil
}

func (env *Envelope) readInfo(body []byte, info jsonscan.Span) {
	_ = jsonscan.EachField(body, info.Start, func(key []byte, v jsonscan.Span) error {
		switch {
		case jsonscan.KeyEquals(key, "conversation_id"):
			env.ConversationID, _ = jsonscan.StringValue(body, v)
		case jsonscan.KeyEquals(key, "first_sequence"):
			raw := string(body[v.Start:v.End])
			if _, err := strconv.ParseInt(raw, 10, 64); err == nil {
				env.FirstSequence = raw
			}
		}
		return nil
	})
}

// Sequence is the per-conversation sequence number of item i: the batch's
// items are consecutive from first_sequence; "" without one.
func (env *Envelope) Sequence(i int) string {
	if env.FirstSequence == "" {
		return ""
	}
	first, _ := strconv.ParseInt(env.FirstSequence, 10, 64)
	return strconv.FormatInt(first+int64(i), 10)
}

// EventNames returns the names a delivery is known by: the
// X-Webhook-Event header when there is one (Kapso), else the body's
// top-level "type" (Standard Webhooks and platforms that put the event in
// an envelope), else every change's "field" of a raw Meta payload. A
// delivery with none of these has no name.
func EventNames(header string, body []byte) []string {
	if header != "" {
		return []string{header}
	}
	if v, ok, _ := jsonscan.ObjectField(body, 0, "type"); ok {
		if name, ok := jsonscan.StringValue(body, v); ok && name != "" {
			return []string{name}
		}
	}
	return MetaFields(body)
}

// MetaFields lists the distinct entry[].changes[].field values of a raw
// Meta payload, in order; nil for anything else.
func MetaFields(body []byte) []string {
	var fields []string
	for _, e := range arrayMember(body, jsonscan.Span{}, "entry") {
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

// ContentKey is "<event>:<message.id>" for a Kapso message event, the
// envelope's id ("envelope:<id>") for an event of a platform that wraps
// its events in {"id", "type", "data": {"object"}}, and "" for anything
// else. Kapso's status events (sent, delivered, read, failed) share the
// message id, so the event is part of their key; an envelope's id is the
// event's own, kept when the platform delivers it again.
func ContentKey(event string, item []byte) string {
	if !strings.HasPrefix(event, "whatsapp.message.") {
		if id := envelopeID(item); id != "" {
			return "envelope:" + id
		}
		return ""
	}
	v, ok := jsonscan.FieldPath(item, "message", "id")
	if !ok {
		return ""
	}
	id, ok := jsonscan.StringValue(item, v)
	if !ok || id == "" {
		return ""
	}
	return event + ":" + id
}

// envelopeID is the id of an event envelope (a top-level "evt_…" id and
// a "type" beside a "data" object holding an "object"), "" for any other
// body. The prefix keeps out bodies of that shape whose id is the
// object's, which later events about the same object would share.
func envelopeID(body []byte) string {
	if !bytes.Contains(body, []byte(`"evt_`)) {
		return "" // most bodies: one pass of a byte search instead of a walk of the object
	}
	id, kind := stringAt(body, "id"), stringAt(body, "type")
	if !strings.HasPrefix(id, "evt_") || len(id) == len("evt_") || kind == "" {
		return ""
	}
	if v, ok := jsonscan.FieldPath(body, "data", "object"); !ok || body[v.Start] != '{' {
		return ""
	}
	return id
}

// envelopeParties are the members of an envelope's data.object that name
// the customer: the sender of an incoming message, the recipient of a
// report, the customer who submitted a form.
var envelopeParties = []string{"from", "recipient", "customer", "contact"}

// envelopeCustomer is the customer an envelope's event is about
// ("customer:<id>", else "phone:<number>"), "" when it names none.
func envelopeCustomer(body []byte) string {
	if envelopeID(body) == "" {
		return ""
	}
	for _, by := range [][2]string{{"customer_id", "customer:"}, {"phone_number", "phone:"}} {
		for _, party := range envelopeParties {
			if v := stringAt(body, "data", "object", party, by[0]); v != "" {
				return by[1] + v
			}
		}
	}
	return ""
}

// ConversationKey finds the conversation a body belongs to: Kapso's
// conversation.id ("conversation:<id>"), an event envelope's customer
// ("customer:<customer_id>", else "phone:<phone_number>"), or for a raw
// Meta payload the
// business number and the customer, wa_id else the BSUID
// ("meta:<phone number id>:<customer>"); "" when it has none.
func ConversationKey(body []byte) string {
	if v, ok := jsonscan.FieldPath(body, "conversation", "id"); ok {
		if id, ok := jsonscan.StringValue(body, v); ok && id != "" {
			return "conversation:" + id
		}
	}
	if c := envelopeCustomer(body); c != "" {
		return c
	}
	for _, e := range arrayMember(body, jsonscan.Span{}, "entry") {
		for _, c := range arrayMember(body, e, "changes") {
			v, ok, _ := jsonscan.ObjectField(body, c.Start, "value")
			if !ok || body[v.Start] != '{' {
				continue
			}
			value := body[v.Start:v.End]
			phone := stringAt(value, "metadata", "phone_number_id")
			for _, who := range [][2]string{{"contacts", "wa_id"}, {"contacts", "user_id"}, {"messages", "from"},
				{"messages", "from_user_id"}, {"statuses", "recipient_id"}, {"statuses", "recipient_user_id"}} {
				items := arrayMember(value, jsonscan.Span{}, who[0])
				if len(items) == 0 {
					continue
				}
				if id := stringAt(value[items[0].Start:items[0].End], who[1]); id != "" {
					return "meta:" + phone + ":" + id
				}
			}
		}
	}
	return ""
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

// stringAt is the string at path in the JSON object doc, "" when absent.
func stringAt(doc []byte, path ...string) string {
	v, ok := jsonscan.FieldPath(doc, path...)
	if !ok {
		return ""
	}
	s, _ := jsonscan.StringValue(doc, v)
	return s
}
