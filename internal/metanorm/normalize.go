// Package metanorm normalizes Meta WhatsApp webhooks: a raw payload
// ({"object":…,"entry":[{"changes":[{"field":…,"value":…}]}]}) is
// rewritten into exactly the JSON that normalizeWebhook() of Kapso's SDK
// (@kapso/whatsapp-cloud-api 0.3.0) returns for it, serialized as
// JSON.stringify would. The behaviour follows meta-webhooks.md §11 and is
// checked against the SDK's own output on the corpus in testdata.
//
// One walk down the payload writes each change's value into raw (the
// output's "raw" section), camelCased, and notes where the items of its
// contacts, messages, echoes, statuses and calls are in the body. Then the
// output is written section by section, each item rendered from the body:
// contacts and statuses camelCased as they are, messages and calls taken
// apart member by member for the SDK's edits. There is one way to render
// an item, so a change to match the SDK is made in one place.
package metanorm

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"sync"

	"github.com/webhookguard/webhookguard/internal/jsonscan"
)

var (
	// ErrNotNormalizable: the body is not a JSON object (or not valid
	// JSON); the caller forwards it as is.
	ErrNotNormalizable = errors.New("body is not a JSON object")
	// ErrSDKThrows marks payloads on which normalizeWebhook() throws (a
	// null message, say): there is no SDK output to match, so the caller
	// forwards the body as is.
	ErrSDKThrows = errors.New("payload the reference normalizer rejects")
)

var normalizerPool = sync.Pool{New: func() any { return new(normalizer) }}

// Append appends the normalized form of body to dst and returns the
// extended slice. On error (ErrNotNormalizable, ErrSDKThrows) it returns
// dst[:0] and the caller forwards the body unchanged. It is safe for
// concurrent use; its working memory is pooled.
func Append(dst, body []byte) ([]byte, error) {
	n := normalizerPool.Get().(*normalizer)
	defer normalizerPool.Put(n)
	n.reset(dst, body)
	err := n.run()
	out := n.w.out
	n.w.out = nil // the caller owns the output
	if err != nil {
		return dst[:0], err
	}
	return out, nil
}

// normalizer holds one normalization's state; its slabs are reused from
// one payload to the next.
type normalizer struct {
	w       jsWriter
	raw     jsWriter // raw's values, written during the walk
	b       []byte
	changes []metaChange
	items   []jsonscan.Span // item spans of every change's arrays, in the body
	digits  []byte          // digits of business numbers
	objs    []*objModel
	nobj    int
	// A Flow reply's decoded response_json, its rendering and the fields
	// it gives kapso, reused from one message to the next.
	flowText     []byte
	flow         jsWriter
	flowFieldBuf [3]member
	// Field names that are not Meta's own: decoded, converted and written.
	fieldText, fieldKey, fieldBuf []byte
}

func (n *normalizer) reset(dst, body []byte) {
	n.w.reset()
	n.raw.reset()
	n.w.out = dst[:0]
	n.b = body
	n.changes = n.changes[:0]
	n.items = n.items[:0]
	n.digits = n.digits[:0]
	n.fieldBuf = n.fieldBuf[:0]
	n.nobj = 0
}

// itemList is a range of n.items.
type itemList struct{ lo, hi int }

// metaChange is what the walk found in one entry[].changes[] item.
type metaChange struct {
	field      []byte        // raw's key as written (quoted JSON), nil when the change has no usable field
	rawOut     jsonscan.Span // the camelCased value, in normalizer.raw
	hasValue   bool
	business   businessNumbers
	hasBiz     bool
	phoneID    jsonscan.Span // metadata.phoneNumberId, when a string
	displayNum jsonscan.Span // metadata.displayPhoneNumber, when a string
	contacts   itemList
	messages   itemList
	echoes     itemList
	statuses   itemList
	calls      itemList
}

func (n *normalizer) run() error {
	b := n.b
	var object jsonscan.Span
	hasObject := false
	end, err := jsonscan.EachMember(b, 0, func(key []byte, v int) (int, error) {
		switch {
		case jsonscan.KeyEquals(key, "object"):
			e := v + len(quotedWABA)
			if e > len(b) || string(b[v:e]) != quotedWABA {
				var err error
				if e, err = jsonscan.SkipValue(b, v); err != nil {
					return 0, err
				}
			}
			object, hasObject = jsonscan.Span{Start: v, End: e}, true
			return e, nil
		case jsonscan.KeyEquals(key, "entry"):
			n.changes = n.changes[:0] // a repeated key: the last one wins
			if b[v] == '[' {
				return jsonscan.EachItem(b, v, n.walkEntry)
			}
		}
		return 0, nil
	})
	if err != nil || jsonscan.SkipSpace(b, end) != len(b) {
		return ErrNotNormalizable
	}
	return n.write(object, hasObject && b[object.Start] == '"')
}

// quotedWABA is the object of every WhatsApp payload, as JSON: it needs
// neither scanning nor re-encoding when it is written this way.
const quotedWABA = `"whatsapp_business_account"`

func (n *normalizer) walkEntry(v int) (int, error) {
	b := n.b
	if b[v] != '{' {
		return 0, nil // the SDK skips entries that are not objects
	}
	first := len(n.changes)
	return jsonscan.EachMember(b, v, func(key []byte, cv int) (int, error) {
		if !jsonscan.KeyEquals(key, "changes") {
			return 0, nil
		}
		n.changes = n.changes[:first]
		if b[cv] != '[' {
			return 0, nil
		}
		return jsonscan.EachItem(b, cv, n.walkChange)
	})
}

func (n *normalizer) walkChange(v int) (int, error) {
	b := n.b
	if b[v] != '{' {
		return 0, nil
	}
	var ch metaChange
	end, err := jsonscan.EachMember(b, v, func(key []byte, fv int) (int, error) {
		switch {
		case jsonscan.KeyEquals(key, "field"):
			e, err := jsonscan.SkipValue(b, fv)
			ch.field = nil
			if err == nil {
				ch.field = n.fieldName(b[fv:e])
			}
			return e, err
		case jsonscan.KeyEquals(key, "value"):
			field := ch.field
			ch = metaChange{field: field}
			return n.walkValue(&ch, fv)
		}
		return 0, nil
	})
	if err == nil && ch.hasValue {
		n.changes = append(n.changes, ch)
	}
	return end, err
}

// walkValue writes the change's value, camelCased, into raw while it
// walks it, noting where the items of contacts, messages, echoes, statuses
// and calls are: the value is read once for both.
func (n *normalizer) walkValue(ch *metaChange, v int) (int, error) {
	b := n.b
	if b[v] != '{' && b[v] != '[' {
		return 0, nil // neither object nor array: the SDK skips the change
	}
	start := len(n.raw.out)
	var end int
	var err error
	if b[v] == '[' {
		end, err = n.raw.value(b, v, keysCamel, 0)
	} else {
		end, err = n.raw.objectWith(b, v, keysCamel, 1, func(key []byte, mv int) (int, error) {
			var list *itemList
			switch string(key[1 : len(key)-1]) {
			case "metadata":
				ch.phoneID, ch.displayNum = jsonscan.Span{}, jsonscan.Span{}
				if b[mv] == '{' {
					return n.writeMetadata(ch, mv)
				}
				return 0, nil
			case "contacts":
				list = &ch.contacts
			case "messages":
				list = &ch.messages
			case "messageEchoes":
				list = &ch.echoes
			case "statuses":
				list = &ch.statuses
			case "calls":
				list = &ch.calls
			default:
				return 0, nil
			}
			*list = itemList{len(n.items), len(n.items)}
			if b[mv] != '[' {
				return 0, nil
			}
			e, err := n.raw.arrayWith(b, mv, keysCamel, 2, func(iv int) (int, error) {
				ie, err := n.raw.value(b, iv, keysCamel, 2)
				n.items = append(n.items, jsonscan.Span{Start: iv, End: ie})
				return ie, err
			})
			list.hi = len(n.items)
			return e, err
		})
	}
	if err != nil {
		return 0, err
	}
	ch.rawOut, ch.hasValue = jsonscan.Span{Start: start, End: len(n.raw.out)}, true
	return end, nil
}

// writeMetadata writes the value's metadata into raw, noting where the
// business's phone number ID and display number are in the body.
func (n *normalizer) writeMetadata(ch *metaChange, v int) (int, error) {
	b := n.b
	return n.raw.objectWith(b, v, keysCamel, 2, func(key []byte, mv int) (int, error) {
		var dst *jsonscan.Span
		switch string(key[1 : len(key)-1]) {
		case "phoneNumberId":
			dst = &ch.phoneID
		case "displayPhoneNumber":
			dst = &ch.displayNum
		default:
			return 0, nil
		}
		e, err := n.raw.value(b, mv, keysCamel, 2)
		*dst = jsonscan.Span{}
		if err == nil && b[mv] == '"' {
			*dst = jsonscan.Span{Start: mv, End: e}
		}
		return e, err
	})
}

// businessSet is the digits of the business's own numbers (non-empty
// strings only), against which a message's from and to are matched.
// It is worked out once per change.
func (n *normalizer) businessSet(ch *metaChange) businessNumbers {
	if ch.hasBiz {
		return ch.business
	}
	var set businessNumbers
	for _, sp := range [2]jsonscan.Span{ch.phoneID, ch.displayNum} {
		if sp.End == 0 || sp.End-sp.Start <= 2 {
			continue
		}
		set.add(n.digitsOf(n.b, sp))
	}
	ch.business, ch.hasBiz = set, true
	return set
}

// businessNumbers is a fixed-size set, so that looking a message's
// numbers up allocates nothing: the two metadata numbers and the number a
// reply's context names.
type businessNumbers struct {
	nums [3][]byte
	n    int
}

func (s *businessNumbers) add(d []byte) { s.nums[s.n] = d; s.n++ }

func (s *businessNumbers) has(d []byte) bool {
	if len(d) == 0 {
		return false
	}
	for _, x := range s.nums[:s.n] {
		if bytes.Equal(x, d) {
			return true
		}
	}
	return false
}

// fieldName is raw's key, as written, for a change's field value (the
// JSON text of a string), or nil when the value is not a non-empty string.
// Meta's fields are interned, others are built in the normalizer's own
// buffer: a field name is needed for every change.
func (n *normalizer) fieldName(v []byte) []byte {
	if len(v) < 2 || v[0] != '"' {
		return nil
	}
	if string(v) == `"messages"` {
		return quotedMessages // nearly every change: spare it the map
	}
	if f, ok := metaFields[string(v)]; ok {
		return f
	}
	dec, err := decodeString(n.fieldText[:0], v, 0, false)
	if err != nil || len(dec) == 0 {
		return nil
	}
	n.fieldText = dec
	n.fieldKey = appendFieldKey(n.fieldKey[:0], dec)
	start := len(n.fieldBuf)
	n.fieldBuf = appendJSString(n.fieldBuf, n.fieldKey, true)
	return n.fieldBuf[start:len(n.fieldBuf):len(n.fieldBuf)]
}

var quotedMessages = []byte(`"messages"`)

// metaFields maps the webhook fields of WhatsApp Business Accounts, as
// received, to raw's keys for them.
var metaFields = func() map[string][]byte {
	m := map[string][]byte{}
	for _, f := range []string{"messages", "message_echoes", "smb_message_echoes", "calls", "statuses",
		"account_update", "account_review_update", "account_alerts", "account_settings_update",
		"automatic_events", "business_capability_update", "business_status_update", "business_username_update",
		"flows", "group_lifecycle_update", "group_participants_update", "group_settings_update",
		"group_status_update", "history", "message_template_components_update",
		"message_template_quality_update", "message_template_status_update", "messaging_handovers",
		"partner_solutions", "payment_configuration_update", "phone_number_name_update",
		"phone_number_quality_update", "security", "smb_app_state_sync", "template_category_update",
		"tracking_events", "user_id_update", "user_preferences"} {
		m[`"`+f+`"`] = appendJSString(nil, appendFieldKey(nil, []byte(f)), false)
	}
	return m
}()

// digitsOf returns the ASCII digits of the JSON string at v in doc: the
// string's own bytes when it is all digits, as phone numbers usually are,
// and otherwise a copy in n.digits, which lasts for the payload.
func (n *normalizer) digitsOf(doc []byte, v jsonscan.Span) []byte {
	raw := doc[v.Start+1 : v.End-1 : v.End-1]
	if isDigits(raw) {
		return raw
	}
	start := len(n.digits)
	n.digits = appendStringDigits(n.digits, doc, v)
	return n.digits[start:len(n.digits):len(n.digits)]
}

// isDigits reports whether s is all ASCII digits.
func isDigits(s []byte) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// appendStringDigits appends the ASCII digits of the JSON string at v.
func appendStringDigits(dst, b []byte, v jsonscan.Span) []byte {
	raw := b[v.Start+1 : v.End-1]
	n := len(dst)
	dst = slices.Grow(dst, len(raw))[:n+len(raw)]
	k := n
	for _, c := range raw {
		if c == '\\' {
			// An escaped digit is still a digit: decode, then filter.
			dec, err := decodeString(nil, b, v.Start, false)
			if err != nil {
				return dst[:n]
			}
			return appendDigits(dst[:n], dec)
		}
		dst[k] = c
		if c-'0' <= 9 {
			k++
		}
	}
	return dst[:k]
}

func appendDigits(dst, s []byte) []byte {
	for _, c := range s {
		if '0' <= c && c <= '9' {
			dst = append(dst, c)
		}
	}
	return dst
}

// write emits the output object, section by section.
func (n *normalizer) write(object jsonscan.Span, objectIsString bool) error {
	w := &n.w
	b := n.b
	w.out = append(w.out, '{')
	switch {
	case string(b[object.Start:object.End]) == quotedWABA:
		w.out = append(w.out, `"object":`+quotedWABA+`,`...)
	case objectIsString:
		w.out = append(w.out, `"object":`...)
		if _, err := w.str(b, object.Start); err != nil {
			return ErrNotNormalizable
		}
		w.out = append(w.out, ',')
	}
	var phoneID, display jsonscan.Span
	for i := range n.changes {
		ch := &n.changes[i]
		if ch.phoneID.End != 0 {
			phoneID = ch.phoneID
		}
		if ch.displayNum.End != 0 {
			display = ch.displayNum
		}
	}
	if err := n.writeStringField(`"phoneNumberId":`, phoneID); err != nil {
		return err
	}
	if err := n.writeStringField(`"displayPhoneNumber":`, display); err != nil {
		return err
	}
	w.out = append(w.out, `"contacts":[`...)
	first := true
	for i := range n.changes {
		if err := n.copyItems(n.changes[i].contacts, &first); err != nil {
			return err
		}
	}
	w.out = append(w.out, `],"messages":[`...)
	first = true
	for i := range n.changes {
		ch := &n.changes[i]
		if err := n.messageItems(ch, ch.messages, false, &first); err != nil {
			return err
		}
		if err := n.messageItems(ch, ch.echoes, true, &first); err != nil {
			return err
		}
	}
	w.out = append(w.out, `],"statuses":[`...)
	first = true
	for i := range n.changes {
		if err := n.copyItems(n.changes[i].statuses, &first); err != nil {
			return err
		}
	}
	w.out = append(w.out, `],"calls":[`...)
	first = true
	for i := range n.changes {
		if err := n.callItems(&n.changes[i], n.changes[i].calls, &first); err != nil {
			return err
		}
	}
	w.out = append(w.out, "],"...)
	if err := n.writeRaw(); err != nil {
		return err
	}
	w.out = append(w.out, '}')
	return nil
}

func (n *normalizer) writeStringField(name string, v jsonscan.Span) error {
	if v.End == 0 {
		return nil
	}
	n.w.out = append(n.w.out, name...)
	if _, err := n.w.str(n.b, v.Start); err != nil {
		return ErrNotNormalizable
	}
	n.w.out = append(n.w.out, ',')
	return nil
}

func (n *normalizer) sep(first *bool) {
	if !*first {
		n.w.out = append(n.w.out, ',')
	}
	*first = false
}

// copyItems appends every item of a list, camelCased.
func (n *normalizer) copyItems(list itemList, first *bool) error {
	for k := list.lo; k < list.hi; k++ {
		n.sep(first)
		if _, err := n.w.value(n.b, n.items[k].Start, keysCamel, 0); err != nil {
			return ErrNotNormalizable
		}
	}
	return nil
}

// writeRaw emits raw: each field's camelCased values, fields in the order
// they first appear (integer-like ones first, as in any JavaScript object).
func (n *normalizer) writeRaw() error {
	w := &n.w
	var orderBuf [4][]byte
	order := orderBuf[:0]
	for i := range n.changes {
		f := n.changes[i].field
		if len(f) != 0 && !slices.ContainsFunc(order, func(g []byte) bool { return bytes.Equal(f, g) }) {
			order = append(order, f)
		}
	}
	if len(order) > 1 {
		slices.SortStableFunc(order, func(a, b []byte) int { return compareJSKeys(a[1:len(a)-1], b[1:len(b)-1]) })
	}
	w.out = append(w.out, `"raw":{`...)
	for i, f := range order {
		if i > 0 {
			w.out = append(w.out, ',')
		}
		w.out = append(w.out, f...)
		w.out = append(w.out, ":["...)
		first := true
		for i := range n.changes {
			ch := &n.changes[i]
			if !bytes.Equal(ch.field, f) {
				continue
			}
			n.sep(&first)
			w.out = append(w.out, n.raw.out[ch.rawOut.Start:ch.rawOut.End]...)
		}
		w.out = append(w.out, ']')
	}
	w.out = append(w.out, '}')
	return nil
}

// compareJSKeys orders integer-like keys first, ascending, and keeps the
// others in place.
func compareJSKeys(a, b []byte) int {
	ia, ib := isIndexKey(a), isIndexKey(b)
	switch {
	case ia && ib:
		x, _ := strconv.ParseUint(string(a), 10, 64)
		y, _ := strconv.ParseUint(string(b), 10, 64)
		return int(int64(x) - int64(y))
	case ia:
		return -1
	case ib:
		return 1
	}
	return 0
}

// camelKey decodes a raw object key and applies the deep camelCase rule,
// into buf when it fits, so that the walk's key comparisons allocate
// nothing.
func camelKey(raw []byte, buf *[64]byte) []byte {
	inner := raw[1 : len(raw)-1]
	switch keyClassOf(inner) {
	case keyVerbatim:
		return inner
	case keyPlain:
		return appendCamel(buf[:0], inner)
	}
	dec, err := decodeString(buf[:0], raw, 0, true)
	if err != nil {
		return nil
	}
	return appendCamel(nil, dec)
}
