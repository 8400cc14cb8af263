package webhookguard

import (
	"bytes"
	"slices"
	"strconv"
	"unicode"
)

// The SDK edits messages and calls; everything else it only camelCases.
// An object it edits is held here as an ordered list of members whose
// values are either spans of its source (raw's converted copy, copied as
// is, or the received body, camelCased when written), output already
// rendered, or a nested edited object.

type member struct {
	key      []byte // camelCased, decoded
	val      span
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

// source is the document an edited item is read from: the received body,
// whose keys still need camelCasing and whose values still need
// rendering, or raw's copy of the item, which is already final.
type source struct {
	doc   []byte
	final bool
}

// itemSource returns where item k of a change can be read from: raw's
// copy, unless reordering the change's value moved it.
func (n *normalizer) itemSource(ch *metaChange, k int) (span, source) {
	if ch.rawMoved {
		return n.items[k], source{doc: n.b}
	}
	return n.itemOut[k], source{doc: n.raw.out, final: true}
}

// writeValue writes the value at v as output JSON.
func (s source) writeValue(w *jsWriter, v span) error {
	if s.final {
		w.out = append(w.out, s.doc[v.start:v.end]...)
		return nil
	}
	_, err := w.value(s.doc, v.start, keysCamel, 0)
	return err
}

// render returns the value at v as output JSON.
func (s source) render(v span) ([]byte, error) {
	if s.final {
		return s.doc[v.start:v.end:v.end], nil
	}
	var w jsWriter
	if _, err := w.value(s.doc, v.start, keysCamel, 0); err != nil {
		return nil, err
	}
	return w.out, nil
}

// loadObject reads the members of the object at v in the current source:
// keys are camelCased when it is the body, taken as written from raw.
func (n *normalizer) loadObject(v span) (*objModel, error) {
	src := n.src
	o := n.newObj()
	if src.final {
		eachOwnMember(src.doc, v.start, func(key []byte, val span) {
			o.set(member{key: o.decodedKeyBytes(key), val: val})
		})
		return o, nil
	}
	_, err := eachMember(src.doc, v.start, func(key []byte, mv int) (int, error) {
		end, err := skipValueDepth(src.doc, mv, 1)
		if err != nil {
			return 0, err
		}
		k := o.decodedKeyBytes(key)
		if !src.final {
			k = o.camelKeyBytes(key)
		}
		o.set(member{key: k, val: span{mv, end}})
		return end, nil
	})
	return o, err
}

// decodedKeyBytes decodes a key that is already camelCased.
func (o *objModel) decodedKeyBytes(raw []byte) []byte {
	inner := raw[1 : len(raw)-1]
	if !containsByte(inner, '\\') {
		return inner
	}
	start := len(o.keyBuf)
	dec, err := decodeString(o.keyBuf, raw, 0, true)
	if err != nil {
		return nil
	}
	o.keyBuf = dec
	return o.keyBuf[start:len(o.keyBuf):len(o.keyBuf)]
}

// camelKeyBytes converts a raw key, referring to the body when the key
// needs no change.
func (o *objModel) camelKeyBytes(raw []byte) []byte {
	inner := raw[1 : len(raw)-1]
	if isPlainKey(inner) && !containsByte(inner, '_') && !containsByte(inner, '-') {
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
func (o *objModel) write(w *jsWriter, src source) error {
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
		if err := ms[i].writeValue(w, src); err != nil {
			return err
		}
	}
	w.out = append(w.out, '}')
	return nil
}

func (m *member) writeValue(w *jsWriter, src source) error {
	switch {
	case m.obj != nil:
		return m.obj.write(w, src)
	case m.rendered != nil:
		w.out = append(w.out, m.rendered...)
		return nil
	}
	return src.writeValue(w, m.val)
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
	b := n.src.doc
	m, ok := msg.get("kapso")
	if !ok {
		return kapsoState{kind: kapsoAbsent}, nil
	}
	raw := b[m.val.start:m.val.end]
	switch c := raw[0]; {
	case c == '{':
		o, err := n.loadObject(m.val)
		return kapsoState{kind: kapsoObject, obj: o}, err
	case c == '[':
		items, err := arrayItems(b, m.val.start)
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
		return errSDKThrows
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
		if !ch.rawMoved && n.messageFromRaw(ch, k, echo) {
			continue
		}
		var it span
		it, n.src = n.itemSource(ch, k)
		if err := n.message(ch, k, it, echo); err != nil {
			return err
		}
	}
	return nil
}

// messageFromRaw handles the common message, one the SDK changes only by
// adding a kapso object at its end (kapso.direction, and kapso.source for
// an echo, led by order.text and by the fields of a Flow reply when there
// are any) and by moving order.text. It has no kapso member and kept its
// member order. Its camelCased form is already in raw, so it is copied
// from there, edited on the way. It reports false, writing nothing, for
// any other message.
func (n *normalizer) messageFromRaw(ch *metaChange, k int, echo bool) bool {
	info := &n.msgInfo[k]
	if !info.simple {
		return false
	}
	o := n.itemOut[k]
	out := n.raw.out[o.start:o.end] // the spans in info are relative to it
	var fields []member
	if info.flow.isFlow {
		fields, _ = n.flowReplyFields(source{doc: out, final: true}, info.flow.responseJSON, info.flow.name)
	}
	dir := renderedOutbound
	if !echo {
		dir = n.directionOf(ch, out, info.id)
	}
	var orderText []byte
	if info.order.hasText {
		orderText = out[info.order.textVal.start:info.order.textVal.end]
	}
	w := &n.w
	w.writeMembersOf(out, info.order)
	if dir != nil || len(fields) > 0 || orderText != nil {
		if len(out) > 2 {
			w.out = append(w.out, ',')
		}
		w.writeKapso(orderText, fields, dir, echo)
	}
	w.out = append(w.out, '}')
	return true
}

// writeMembersOf writes a message from raw without its closing brace,
// with order.text moved when the order has one.
func (w *jsWriter) writeMembersOf(msg []byte, order orderSpans) {
	if !order.hasText {
		w.out = append(w.out, msg[:len(msg)-1]...)
		return
	}
	v := order.value
	w.out = append(w.out, msg[:v.start]...)
	w.writeOrderMoved(msg[v.start:v.end], span{order.text.start - v.start, order.text.end - v.start},
		span{order.textVal.start - v.start, order.textVal.end - v.start})
	w.out = append(w.out, msg[v.end:len(msg)-1]...)
}

// writeKapso writes the kapso member the SDK adds, its keys in the order
// the SDK sets them: orderText, a Flow reply's fields, direction, source.
func (w *jsWriter) writeKapso(orderText []byte, fields []member, dir []byte, echo bool) {
	w.out = append(w.out, `"kapso":{`...)
	more := false
	if orderText != nil {
		w.out = append(w.out, `"orderText":`...)
		w.out = append(w.out, orderText...)
		more = true
	}
	for _, f := range fields {
		if more {
			w.out = append(w.out, ',')
		}
		w.out = append(w.out, '"')
		w.out = append(w.out, f.key...)
		w.out = append(w.out, `":`...)
		w.out = append(w.out, f.rendered...)
		more = true
	}
	if dir != nil {
		if more {
			w.out = append(w.out, ',')
		}
		w.out = append(w.out, `"direction":`...)
		w.out = append(w.out, dir...)
		if echo {
			w.out = append(w.out, `,"source":"smb_message_echo"`...)
		}
	}
	w.out = append(w.out, '}')
}

// messageInfo is what writing a message into raw noted about it.
type messageInfo struct {
	members itemList // its members, in normalizer.msgMembers, when it kept its order
	// simple: an object with no kapso member, not reordered, whose order
	// and interactive members are absent, left alone by the SDK, or noted
	// (see orderSpans and flowSpans).
	simple bool
	id     identity
	flow   flowSpans
	order  orderSpans
}

// orderSpans is where an order object and its text member are in a
// message written into raw, relative to the message's first byte, when
// it has one: the SDK moves order.text to the end of order, as orderText,
// and copies it to kapso.orderText.
type orderSpans struct {
	hasText bool
	value   span // the order object
	text    span // its text member, key and value
	textVal span // the text member's value
}

// writeOrderRaw writes a message's order object into raw, noting where it
// and its text are. An order that had to be reordered, or that already
// has an orderText (which the SDK would overwrite in place), is left to
// the general path.
func (n *normalizer) writeOrderRaw(v, outStart int, info *messageInfo) (int, error) {
	b := n.b
	start := len(n.raw.out)
	o := orderSpans{}
	hasOrderText := false
	end, err := n.raw.objectWith(b, v, keysCamel, 4, func(key []byte, tv int) (int, error) {
		switch string(key) {
		case `"text"`:
			vs := len(n.raw.out)
			e, err := n.raw.value(b, tv, keysCamel, 4)
			ks := vs - 1 - len(key) // the key, then ':'
			o.hasText = true
			o.text = span{ks - outStart, len(n.raw.out) - outStart}
			o.textVal = span{vs - outStart, len(n.raw.out) - outStart}
			return e, err
		case `"orderText"`:
			hasOrderText = true
		}
		return 0, nil
	})
	o.value = span{start - outStart, len(n.raw.out) - outStart}
	if o.hasText && (hasOrderText || n.raw.rearranged) {
		info.simple = false
	}
	info.order = o
	return end, err
}

// writeOrderMoved writes order (our own JSON) with its text member moved
// to the end as orderText: text and textVal are relative to order.
func (w *jsWriter) writeOrderMoved(order []byte, text, textVal span) {
	before, after := order[:text.start], order[text.end:len(order)-1]
	if len(before) > 1 {
		before = before[:len(before)-1] // the comma before text
	} else if len(after) > 0 {
		after = after[1:] // text came first: the comma after it
	}
	w.out = append(w.out, before...)
	w.out = append(w.out, after...)
	if len(before) > 1 || len(after) > 0 {
		w.out = append(w.out, ',')
	}
	w.out = append(w.out, `"orderText":`...)
	w.out = append(w.out, order[textVal.start:textVal.end]...)
	w.out = append(w.out, '}')
}

// flowSpans is where a Flow reply's fields are in a message written into
// raw, relative to the message's first byte: interactive.nfmReply's
// responseJson (a string) and name (when a string). They are used only
// when neither object was reordered, so that each was read once; a reply
// that is not an object, or has no string responseJson, gives the SDK no
// fields, and the message only its direction.
type flowSpans struct {
	isFlow             bool
	responseJSON, name span
	hasResponse        bool
	reordered          bool
}

// writeMessageRaw writes a message object into raw, noting where its
// identity members are (relative to the message's first byte) and
// whether the SDK would do more to it than add kapso.direction.
func (n *normalizer) writeMessageRaw(v, outStart int, info *messageInfo) (int, error) {
	info.simple = true
	info.members = itemList{len(n.msgMembers), len(n.msgMembers)}
	// Where each member lands in raw, should the SDK's edits need it.
	n.raw.sink = &n.msgMembers
	end, err := n.raw.objectWith(n.b, v, keysCamel, 3, func(key []byte, mv int) (int, error) {
		var sp *span
		var has *bool
		switch string(key[1 : len(key)-1]) {
		case "kapso":
			info.simple = false
			return 0, nil
		case "order":
			info.order = orderSpans{}
			if n.b[mv] != '{' {
				return 0, nil // the SDK only edits an order object
			}
			return n.writeOrderRaw(mv, outStart, info)
		case "interactive":
			return n.writeInteractiveRaw(mv, outStart, info)
		case "from":
			sp, has = &info.id.from, &info.id.hasFrom
		case "to":
			sp, has = &info.id.to, &info.id.hasTo
		case "context":
			sp, has = &info.id.context, &info.id.hasContext
		case "fromUserId":
			sp, has = &info.id.fromUserID, &info.id.hasFromUserID
		default:
			return 0, nil
		}
		start := len(n.raw.out)
		e, err := n.raw.value(n.b, mv, keysCamel, 3)
		*sp, *has = span{start - outStart, len(n.raw.out) - outStart}, true
		return e, err
	})
	info.members.hi = len(n.msgMembers)
	if n.raw.rearranged {
		// Members moved: the noted places are stale.
		info.simple, info.members = false, itemList{}
	}
	return end, err
}

// ownMember is where an object member's key and value are in raw.
type ownMember struct{ key, val span }

// loadMessage is loadObject for message item k, from the members noted
// while it was written into raw when it is read from there.
func (n *normalizer) loadMessage(k int, it span) (*objModel, error) {
	info := n.msgInfo[k]
	if !n.src.final || info.members.hi == info.members.lo {
		return n.loadObject(it)
	}
	o := n.newObj()
	for _, m := range n.msgMembers[info.members.lo:info.members.hi] {
		o.members = append(o.members, member{key: o.decodedKeyBytes(n.raw.out[m.key.start:m.key.end]), val: m.val})
	}
	return o, nil
}

// writeInteractiveRaw writes a message's interactive member into raw. Only
// a Flow reply (type nfm_reply) is edited by the SDK; a button or list
// reply keeps the message simple, and so does a Flow reply whose fields
// are noted (see flowSpans). A type written with escapes, and any other
// shape of Flow reply, is left to the general path.
func (n *normalizer) writeInteractiveRaw(v, outStart int, info *messageInfo) (int, error) {
	b := n.b
	if b[v] != '{' {
		return 0, nil // not an object: the SDK finds no Flow reply in it
	}
	flow, escaped := false, false
	var reply flowSpans
	end, err := n.raw.objectWith(b, v, keysCamel, 4, func(key []byte, tv int) (int, error) {
		switch string(key) {
		case `"type"`:
			e, err := n.raw.value(b, tv, keysCamel, 4)
			if err == nil {
				t := b[tv:e]
				flow = string(t) == `"nfm_reply"`
				escaped = t[0] == '"' && containsByte(t, '\\')
			}
			return e, err
		case `"nfmReply"`:
			reply = flowSpans{}
			if b[tv] != '{' {
				return 0, nil
			}
			return n.writeFlowReplyRaw(tv, outStart, &reply)
		}
		return 0, nil
	})
	switch {
	case escaped:
		info.simple = false
	case flow && (n.raw.rearranged || reply.reordered):
		info.simple = false
	case flow:
		info.flow = reply // without isFlow, a reply that gives kapso nothing
	}
	return end, err
}

// writeFlowReplyRaw writes interactive.nfm_reply into raw, noting where
// its response_json and name are. It sets reply.isFlow only when the reply
// kept its member order and response_json is a string, and notes in
// reply.reordered when it did not keep its order.
func (n *normalizer) writeFlowReplyRaw(v, outStart int, reply *flowSpans) (int, error) {
	b := n.b
	end, err := n.raw.objectWith(b, v, keysCamel, 5, func(key []byte, fv int) (int, error) {
		var sp *span
		switch string(key) {
		case `"responseJson"`:
			sp = &reply.responseJSON
			reply.hasResponse = b[fv] == '"'
		case `"name"`:
			sp = &reply.name
		default:
			return 0, nil
		}
		start := len(n.raw.out)
		e, err := n.raw.value(b, fv, keysCamel, 5)
		*sp = span{start - outStart, len(n.raw.out) - outStart}
		return e, err
	})
	reply.reordered = n.raw.rearranged
	reply.isFlow = err == nil && reply.hasResponse && !reply.reordered
	return end, err
}

// identity holds where a message's from, to, context and fromUserId are.
type identity struct {
	from, to, context, fromUserID             span
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

func (n *normalizer) message(ch *metaChange, k int, it span, echo bool) error {
	w := &n.w
	switch c := n.src.doc[it.start]; {
	case c == 'n':
		return errSDKThrows // reading a property of null
	case c == '[':
		return n.src.writeValue(w, it)
	case c != '{':
		if echo {
			return errSDKThrows // setting kapso on a primitive
		}
		return n.src.writeValue(w, it)
	}
	msg, err := n.loadMessage(k, it)
	if err != nil {
		return errNotNormalizable
	}
	kapso, err := n.loadKapso(msg)
	if err != nil {
		return errNotNormalizable
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
	if err := msg.write(w, n.src); err != nil {
		return errNotNormalizable
	}
	return nil
}

// applyOrderText moves order.text to order.orderText and kapso.orderText.
func (n *normalizer) applyOrderText(msg *objModel, kapso *kapsoState) error {
	b := n.src.doc
	om, ok := msg.get("order")
	if !ok || b[om.val.start] != '{' {
		return nil
	}
	order, err := n.loadObject(om.val)
	if err != nil {
		return errNotNormalizable
	}
	text, ok := order.get("text")
	if !ok {
		return nil
	}
	value, err := n.src.render(text.val)
	if err != nil {
		return errNotNormalizable
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
	b := n.src.doc
	im, ok := msg.get("interactive")
	if !ok || b[im.val.start] != '{' {
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
	if !ok || b[rm.val.start] != '{' {
		return nil, false
	}
	reply, err := n.loadObject(rm.val)
	if err != nil {
		return nil, false
	}
	rj, ok := reply.get("responseJson")
	if !ok || b[rj.val.start] != '"' {
		return nil, false
	}
	var name span
	if m, ok := reply.get("name"); ok {
		name = m.val
	}
	return n.flowReplyFields(n.src, rj.val, name)
}

// flowReplyFields is what a Flow reply gives kapso, read from src:
// flowResponse, response_json (the string at response)
// parsed and camelCased; flowToken, when that is an object with a string
// flowToken; flowName, when name (zero when absent) is a string. It
// reports false when response_json is blank or not JSON.
func (n *normalizer) flowReplyFields(src source, responseJSON, name span) ([]member, bool) {
	b := src.doc
	text, err := decodeString(n.flowText[:0], b, responseJSON.start, false)
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
		if tok, found, _ := objectField(response, 0, "flowToken"); found && response[tok.start] == '"' {
			fields = append(fields, member{key: keyFlowToken, rendered: response[tok.start:tok.end]})
		}
	}
	if name.end != 0 && b[name.start] == '"' {
		if rendered, err := src.render(name); err == nil {
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
	if err != nil || skipSpace(text, end) != len(text) {
		return nil, false
	}
	return w.out, true
}

// jsTrim is String.prototype.trim.
func jsTrim(s []byte) []byte {
	return bytes.TrimFunc(s, func(r rune) bool { return unicode.IsSpace(r) || r == '\uFEFF' })
}

func spanIsString(b []byte, v span, want string) bool {
	if v.end <= v.start || b[v.start] != '"' {
		return false
	}
	if inner := b[v.start+1 : v.end-1]; !containsByte(inner, '\\') {
		return string(inner) == want
	}
	var buf [64]byte
	dec, err := decodeString(buf[:0], b, v.start, false)
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
		sp  *span
		has *bool
	}{{"from", &id.from, &id.hasFrom}, {"to", &id.to, &id.hasTo}, {"context", &id.context, &id.hasContext},
		{"fromUserId", &id.fromUserID, &id.hasFromUserID}} {
		if m, ok := msg.get(f.key); ok && m.obj == nil && m.rendered == nil {
			*f.sp, *f.has = m.val, true
		}
	}
	return n.directionOf(ch, n.src.doc, id)
}

// directionOf applies the rules to values found in doc: the body, or the
// camelCased copy of a message in raw (whose keys are already converted).
func (n *normalizer) directionOf(ch *metaChange, doc []byte, id identity) []byte {
	business := n.businessSet(ch)
	hasContextFrom := false
	if id.hasContext && doc[id.context.start] == '{' {
		var ctxFrom span
		found := false
		_ = eachField(doc, id.context.start, func(key []byte, v span) error {
			if string(camelKeyOf(key)) == "from" {
				ctxFrom, found = v, true
			}
			return nil
		})
		if found && doc[ctxFrom.start] == '"' && ctxFrom.end-ctxFrom.start > 2 {
			hasContextFrom = true
			business.add(n.digitsOf(doc, ctxFrom))
		}
	}
	digits := func(has bool, v span) []byte {
		if !has || doc[v.start] != '"' {
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
	if id.hasFromUserID && doc[id.fromUserID.start] == '"' && id.fromUserID.end-id.fromUserID.start > 2 {
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
		var it span
		it, n.src = n.itemSource(ch, k)
		b := n.src.doc
		switch b[it.start] {
		case 'n':
			return errSDKThrows
		case '{':
		default:
			if err := n.src.writeValue(w, it); err != nil {
				return errNotNormalizable
			}
			continue
		}
		if n.src.final {
			// The copy in raw is final unless the call has a wacid to move.
			if _, hasWacid, _ := objectField(b, it.start, "wacid"); !hasWacid {
				w.out = append(w.out, b[it.start:it.end]...)
				continue
			}
		}
		call, err := n.loadObject(it)
		if err != nil {
			return errNotNormalizable
		}
		if wm, ok := call.get("wacid"); ok && b[wm.val.start] == '"' && !truthyMember(b, call, "callId") {
			id := wm.val
			call.del("wacid")
			call.set(member{key: keyCallID, val: id})
		}
		if err := call.write(w, n.src); err != nil {
			return errNotNormalizable
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
	raw := string(b[m.val.start:m.val.end])
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
