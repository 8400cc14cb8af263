package metanorm

import (
	"bytes"
	"slices"
	"strconv"
	"unicode"

	"github.com/webhookguard/webhookguard/internal/jsonscan"
)

// The SDK edits messages and calls; everything else it only camelCases.
// An object it edits is held here as an ordered list of members whose
// values are either spans of the received body (camelCased when written),
// output already rendered, or a nested edited object.

type member struct {
	key      []byte // camelCased, decoded
	val      jsonscan.Span
	rendered []byte // when non-nil, written instead of val
	obj      *objModel
}

// objModel is an object with JavaScript's own-key semantics: a repeated
// key keeps its first position and takes the later value.
type objModel struct {
	members []member
	keyBuf  []byte
}

// newObj hands out a reusable objModel from the normalizer's slab.
func (n *normalizer) newObj() *objModel {
	if n.nobj == len(n.objs) {
		n.objs = append(n.objs, &objModel{})
	}
	o := n.objs[n.nobj]
	n.nobj++
	o.members, o.keyBuf = o.members[:0], o.keyBuf[:0]
	return o
}

// writeValue writes the body's value at v as output JSON, camelCased.
func (n *normalizer) writeValue(v jsonscan.Span) error {
	_, err := n.w.value(n.b, v.Start, keysCamel, 0)
	return err
}

// render returns the body's value at v as output JSON, camelCased, in
// memory of its own.
func (n *normalizer) render(v jsonscan.Span) ([]byte, error) {
	var w jsWriter
	if _, err := w.value(n.b, v.Start, keysCamel, 0); err != nil {
		return nil, err
	}
	return w.out, nil
}

// loadObject reads the members of the body's object at v, their keys
// camelCased.
func (n *normalizer) loadObject(v jsonscan.Span) (*objModel, error) {
	o := n.newObj()
	_, err := jsonscan.EachMember(n.b, v.Start, func(key []byte, mv int) (int, error) {
		end, err := jsonscan.SkipValueDepth(n.b, mv, 1)
		if err != nil {
			return 0, err
		}
		o.set(member{key: o.camelKeyBytes(key), val: jsonscan.Span{Start: mv, End: end}})
		return end, nil
	})
	return o, err
}

// camelKeyBytes converts a raw key, referring to the body when the key
// needs no change.
func (o *objModel) camelKeyBytes(raw []byte) []byte {
	inner := raw[1 : len(raw)-1]
	if isPlainKey(inner) && bytes.IndexByte(inner, '_') < 0 && bytes.IndexByte(inner, '-') < 0 {
		return inner
	}
	start := len(o.keyBuf)
	if isPlainKey(inner) {
		o.keyBuf = appendCamel(o.keyBuf, inner)
	} else {
		dec, err := decodeString(nil, raw, 0, true)
		if err != nil {
			return nil
		}
		o.keyBuf = appendCamel(o.keyBuf, dec)
	}
	// A full slice expression, so that growing keyBuf later cannot move
	// the bytes under this key.
	return o.keyBuf[start:len(o.keyBuf):len(o.keyBuf)]
}

func (o *objModel) index(key string) int {
	for i := range o.members {
		if string(o.members[i].key) == key {
			return i
		}
	}
	return -1
}

func (o *objModel) get(key string) (*member, bool) {
	if i := o.index(key); i >= 0 {
		return &o.members[i], true
	}
	return nil, false
}

// set replaces the value of an existing key in place, or appends the key.
func (o *objModel) set(m member) {
	if i := o.index(string(m.key)); i >= 0 {
		o.members[i] = m
		return
	}
	o.members = append(o.members, m)
}

func (o *objModel) del(key string) {
	if i := o.index(key); i >= 0 {
		o.members = slices.Delete(o.members, i, i+1)
	}
}

// write emits the object with integer-like keys first, as JavaScript
// enumerates them.
func (o *objModel) write(w *jsWriter, body []byte) error {
	ms := o.members
	if slices.ContainsFunc(ms, func(m member) bool { return isIndexKey(m.key) }) {
		ms = slices.Clone(ms)
		slices.SortStableFunc(ms, func(x, y member) int { return compareJSKeys(x.key, y.key) })
	}
	w.out = append(w.out, '{')
	for i := range ms {
		if i > 0 {
			w.out = append(w.out, ',')
		}
		w.out = appendJSString(w.out, ms[i].key, true)
		w.out = append(w.out, ':')
		if err := ms[i].writeValue(w, body); err != nil {
			return err
		}
	}
	w.out = append(w.out, '}')
	return nil
}

func (m *member) writeValue(w *jsWriter, body []byte) error {
	switch {
	case m.obj != nil:
		return m.obj.write(w, body)
	case m.rendered != nil:
		w.out = append(w.out, m.rendered...)
		return nil
	}
	_, err := w.value(body, m.val.Start, keysCamel, 0)
	return err
}

// kapsoState models message.kapso through the SDK's steps, including what
// happens when the input already carried a kapso value of another type.
type kapsoState struct {
	kind     kapsoKind
	obj      *objModel // kind == kapsoObject
	hidden   bool      // kind == kapsoArray: properties set that JSON cannot show
	arrayLen int
}

type kapsoKind int

const (
	kapsoAbsent      kapsoKind = iota
	kapsoFalsy                 // null, false, 0, "": replaced when something is added
	kapsoString                // a non-empty string: assigning a property throws
	kapsoOtherTruthy           // true or a non-zero number: assigning throws, removal drops it
	kapsoArray
	kapsoObject
)

func (n *normalizer) loadKapso(msg *objModel) (kapsoState, error) {
	b := n.b
	m, ok := msg.get("kapso")
	if !ok {
		return kapsoState{kind: kapsoAbsent}, nil
	}
	raw := b[m.val.Start:m.val.End]
	switch c := raw[0]; {
	case c == '{':
		o, err := n.loadObject(m.val)
		return kapsoState{kind: kapsoObject, obj: o}, err
	case c == '[':
		items, err := jsonscan.ArrayItems(b, m.val.Start)
		return kapsoState{kind: kapsoArray, arrayLen: len(items)}, err
	case c == '"':
		if string(raw) == `""` {
			return kapsoState{kind: kapsoFalsy}, nil
		}
		return kapsoState{kind: kapsoString}, nil
	case string(raw) == "null" || string(raw) == "false":
		return kapsoState{kind: kapsoFalsy}, nil
	case string(raw) == "true":
		return kapsoState{kind: kapsoOtherTruthy}, nil
	}
	if f, err := strconv.ParseFloat(string(raw), 64); err == nil && f == 0 {
		return kapsoState{kind: kapsoFalsy}, nil
	}
	return kapsoState{kind: kapsoOtherTruthy}, nil
}

// ensure is `msg.kapso ||= {}`.
func (k *kapsoState) ensure(n *normalizer) {
	if k.kind == kapsoAbsent || k.kind == kapsoFalsy {
		k.kind, k.obj = kapsoObject, n.newObj()
	}
}

// assign is `msg.kapso[key] = value`, which throws on a primitive.
func (k *kapsoState) assign(key, rendered []byte) error {
	switch k.kind {
	case kapsoString, kapsoOtherTruthy:
		return ErrSDKThrows
	case kapsoArray:
		k.hidden = true
	case kapsoObject:
		k.obj.set(member{key: key, rendered: rendered})
	}
	return nil
}

// merge is Object.assign(msg.kapso, fields), which ignores primitives.
func (k *kapsoState) merge(fields []member) {
	switch k.kind {
	case kapsoArray:
		k.hidden = k.hidden || len(fields) > 0
	case kapsoObject:
		for _, f := range fields {
			k.obj.set(f)
		}
	}
}

// removable is `msg.kapso && Object.keys(msg.kapso).length === 0`.
func (k *kapsoState) removable() bool {
	switch k.kind {
	case kapsoOtherTruthy:
		return true
	case kapsoArray:
		return k.arrayLen == 0 && !k.hidden
	case kapsoObject:
		return len(k.obj.members) == 0
	}
	return false
}

// messageItems normalizes every item of a messages or message_echoes list.
func (n *normalizer) messageItems(ch *metaChange, list itemList, echo bool, first *bool) error {
	for k := list.lo; k < list.hi; k++ {
		n.sep(first)
		if err := n.message(ch, n.items[k], echo); err != nil {
			return err
		}
	}
	return nil
}

// identity holds where a message's from, to, context and fromUserId are.
type identity struct {
	from, to, context, fromUserID             jsonscan.Span
	hasFrom, hasTo, hasContext, hasFromUserID bool
}

// The keys the SDK adds, allocated once.
var (
	keyKapso        = []byte("kapso")
	keyOrderText    = []byte("orderText")
	keyFlowResponse = []byte("flowResponse")
	keyFlowToken    = []byte("flowToken")
	keyFlowName     = []byte("flowName")
	keyCallID       = []byte("callId")
	keyDirection    = []byte("direction")
	keySource       = []byte("source")
)

var (
	renderedInbound  = []byte(`"inbound"`)
	renderedOutbound = []byte(`"outbound"`)
	renderedEchoSrc  = []byte(`"smb_message_echo"`)
)

func (n *normalizer) message(ch *metaChange, it jsonscan.Span, echo bool) error {
	w := &n.w
	switch c := n.b[it.Start]; {
	case c == 'n':
		return ErrSDKThrows // reading a property of null
	case c == '[':
		return n.writeValue(it)
	case c != '{':
		if echo {
			return ErrSDKThrows // setting kapso on a primitive
		}
		return n.writeValue(it)
	}
	msg, err := n.loadObject(it)
	if err != nil {
		return ErrNotNormalizable
	}
	kapso, err := n.loadKapso(msg)
	if err != nil {
		return ErrNotNormalizable
	}
	if err := n.applyOrderText(msg, &kapso); err != nil {
		return err
	}
	if fields, ok := n.flowFields(msg); ok {
		kapso.ensure(n)
		kapso.merge(fields)
	}
	if kapso.removable() {
		msg.del("kapso")
		kapso.kind = kapsoAbsent
	}
	if dir := n.direction(ch, msg, echo); dir != nil {
		kapso.ensure(n)
		if err := kapso.assign(keyDirection, dir); err != nil {
			return err
		}
		if echo {
			if err := kapso.assign(keySource, renderedEchoSrc); err != nil {
				return err
			}
		}
	}
	if kapso.kind == kapsoObject {
		if m, ok := msg.get("kapso"); ok {
			m.obj, m.rendered = kapso.obj, nil
		} else {
			msg.set(member{key: keyKapso, obj: kapso.obj})
		}
	}
	if err := msg.write(w, n.b); err != nil {
		return ErrNotNormalizable
	}
	return nil
}

// applyOrderText moves order.text to order.orderText and kapso.orderText.
func (n *normalizer) applyOrderText(msg *objModel, kapso *kapsoState) error {
	b := n.b
	om, ok := msg.get("order")
	if !ok || b[om.val.Start] != '{' {
		return nil
	}
	order, err := n.loadObject(om.val)
	if err != nil {
		return ErrNotNormalizable
	}
	text, ok := order.get("text")
	if !ok {
		return nil
	}
	value, err := n.render(text.val)
	if err != nil {
		return ErrNotNormalizable
	}
	order.del("text")
	order.set(member{key: keyOrderText, rendered: value})
	om.obj = order
	kapso.ensure(n)
	return kapso.assign(keyOrderText, value)
}

// flowFields parses a Flow reply's response_json into kapso's
// flowResponse, flowToken and flowName, as the SDK does.
func (n *normalizer) flowFields(msg *objModel) ([]member, bool) {
	b := n.b
	im, ok := msg.get("interactive")
	if !ok || b[im.val.Start] != '{' {
		return nil, false
	}
	inter, err := n.loadObject(im.val)
	if err != nil {
		return nil, false
	}
	if t, ok := inter.get("type"); !ok || !spanIsString(b, t.val, "nfm_reply") {
		return nil, false
	}
	rm, ok := inter.get("nfmReply")
	if !ok || b[rm.val.Start] != '{' {
		return nil, false
	}
	reply, err := n.loadObject(rm.val)
	if err != nil {
		return nil, false
	}
	rj, ok := reply.get("responseJson")
	if !ok || b[rj.val.Start] != '"' {
		return nil, false
	}
	var name jsonscan.Span
	if m, ok := reply.get("name"); ok {
		name = m.val
	}
	return n.flowReplyFields(rj.val, name)
}

// flowReplyFields is what a Flow reply gives kapso, read from src:
// flowResponse, response_json (the string at response)
// parsed and camelCased; flowToken, when that is an object with a string
// flowToken; flowName, when name (zero when absent) is a string. It
// reports false when response_json is blank or not JSON.
func (n *normalizer) flowReplyFields(responseJSON, name jsonscan.Span) ([]member, bool) {
	b := n.b
	text, err := decodeString(n.flowText[:0], b, responseJSON.Start, false)
	if err != nil || len(jsTrim(text)) == 0 {
		return nil, false
	}
	n.flowText = text
	// The rendered response stays referenced until the message is written;
	// each message is written before the next one is parsed.
	n.flow.reset()
	response, ok := n.flow.parseJSONLikeJS(text)
	if !ok {
		return nil, false
	}
	fields := append(n.flowFieldBuf[:0], member{key: keyFlowResponse, rendered: response})
	if string(response) == "null" {
		return fields, true
	}
	if response[0] == '{' {
		if tok, found, _ := jsonscan.ObjectField(response, 0, "flowToken"); found && response[tok.Start] == '"' {
			fields = append(fields, member{key: keyFlowToken, rendered: response[tok.Start:tok.End]})
		}
	}
	if name.End != 0 && b[name.Start] == '"' {
		if rendered, err := n.render(name); err == nil {
			fields = append(fields, member{key: keyFlowName, rendered: rendered})
		}
	}
	return fields, true
}

// parseJSONLikeJS is JSON.parse followed by the deep camelCase rule and
// JSON.stringify: the text came out of a JSON string, so it may hold lone
// surrogates, which survive as \udxxx.
func (w *jsWriter) parseJSONLikeJS(text []byte) ([]byte, bool) {
	w.wtf8 = true
	end, err := w.value(text, 0, keysCamel, 0)
	if err != nil || jsonscan.SkipSpace(text, end) != len(text) {
		return nil, false
	}
	return w.out, true
}

// jsTrim is String.prototype.trim.
func jsTrim(s []byte) []byte {
	return bytes.TrimFunc(s, func(r rune) bool { return unicode.IsSpace(r) || r == '\uFEFF' })
}

func spanIsString(b []byte, v jsonscan.Span, want string) bool {
	if v.End <= v.Start || b[v.Start] != '"' {
		return false
	}
	if inner := b[v.Start+1 : v.End-1]; bytes.IndexByte(inner, '\\') < 0 {
		return string(inner) == want
	}
	var buf [64]byte
	dec, err := decodeString(buf[:0], b, v.Start, false)
	return err == nil && string(dec) == want
}

// direction tells inbound from outbound by the SDK's rules, returning the
// rendered value or nil.
func (n *normalizer) direction(ch *metaChange, msg *objModel, echo bool) []byte {
	if echo {
		return renderedOutbound
	}
	var id identity
	for _, f := range []struct {
		key string
		sp  *jsonscan.Span
		has *bool
	}{{"from", &id.from, &id.hasFrom}, {"to", &id.to, &id.hasTo}, {"context", &id.context, &id.hasContext},
		{"fromUserId", &id.fromUserID, &id.hasFromUserID}} {
		if m, ok := msg.get(f.key); ok && m.obj == nil && m.rendered == nil {
			*f.sp, *f.has = m.val, true
		}
	}
	return n.directionOf(ch, id)
}

// directionOf applies the rules to the message's values in the body.
func (n *normalizer) directionOf(ch *metaChange, id identity) []byte {
	doc := n.b
	business := n.businessSet(ch)
	hasContextFrom := false
	if id.hasContext && doc[id.context.Start] == '{' {
		var ctxFrom jsonscan.Span
		found := false
		_ = jsonscan.EachField(doc, id.context.Start, func(key []byte, v jsonscan.Span) error {
			if string(camelKeyOf(key)) == "from" {
				ctxFrom, found = v, true
			}
			return nil
		})
		if found && doc[ctxFrom.Start] == '"' && ctxFrom.End-ctxFrom.Start > 2 {
			hasContextFrom = true
			business.add(n.digitsOf(doc, ctxFrom))
		}
	}
	digits := func(has bool, v jsonscan.Span) []byte {
		if !has || doc[v.Start] != '"' {
			return nil
		}
		return n.digitsOf(doc, v)
	}
	from := digits(id.hasFrom, id.from)
	to := digits(id.hasTo, id.to)
	switch {
	case business.has(from):
		return renderedOutbound
	case business.has(to):
		return renderedInbound
	case hasContextFrom:
		return renderedInbound
	case len(from) > 0:
		return renderedInbound
	}
	if id.hasFromUserID && doc[id.fromUserID.Start] == '"' && id.fromUserID.End-id.fromUserID.Start > 2 {
		return renderedInbound
	}
	return nil
}

// camelKeyOf is camelKey for a comparison: the key of a context object in
// the body still has its original spelling.
func camelKeyOf(raw []byte) []byte {
	var buf [64]byte
	return camelKey(raw, &buf)
}

// callItems copies calls, turning a string wacid into callId when the
// call has no truthy callId.
func (n *normalizer) callItems(ch *metaChange, list itemList, first *bool) error {
	w := &n.w
	for k := list.lo; k < list.hi; k++ {
		n.sep(first)
		it, b := n.items[k], n.b
		switch b[it.Start] {
		case 'n':
			return ErrSDKThrows
		case '{':
		default:
			if err := n.writeValue(it); err != nil {
				return ErrNotNormalizable
			}
			continue
		}
		call, err := n.loadObject(it)
		if err != nil {
			return ErrNotNormalizable
		}
		if wm, ok := call.get("wacid"); ok && b[wm.val.Start] == '"' && !truthyMember(b, call, "callId") {
			id := wm.val
			call.del("wacid")
			call.set(member{key: keyCallID, val: id})
		}
		if err := call.write(w, n.b); err != nil {
			return ErrNotNormalizable
		}
	}
	return nil
}

// truthyMember reports whether o[key] is truthy in JavaScript terms.
func truthyMember(b []byte, o *objModel, key string) bool {
	m, ok := o.get(key)
	if !ok {
		return false
	}
	raw := string(b[m.val.Start:m.val.End])
	switch raw[0] {
	case '{', '[', 't':
		return true
	case '"':
		return raw != `""`
	case 'n', 'f':
		return false
	}
	f, err := strconv.ParseFloat(raw, 64)
	return err != nil || f != 0
}
