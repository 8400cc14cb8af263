package webhookguard

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/bits"
)

// A small JSON scanner that finds values inside a body without decoding it.
// Batch items must be forwarded as the exact bytes that were signed, and
// the dedupe key of a delivery needs one string out of a document that may
// be megabytes long; decoding into maps would cost both copies and time.
// Every function takes the position of the first byte to look at and
// returns positions into the same slice. Malformed input yields
// errMalformedJSON, never a panic.

var errMalformedJSON = errors.New("malformed JSON")

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the position just after the value that starts at i
// (after optional white space).
func skipValue(b []byte, i int) (int, error) {
	return skipValueDepth(b, skipSpace(b, i), 0)
}

// maxDepth bounds nesting so that a hostile body cannot exhaust the stack.
const maxDepth = 512

func skipValueDepth(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, errMalformedJSON
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return 0, errMalformedJSON
		}
		return skipContainer(b, i, depth)
	case c == 't':
		return skipLiteral(b, i, "true")
	case c == 'f':
		return skipLiteral(b, i, "false")
	case c == 'n':
		return skipLiteral(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		return skipNumber(b, i)
	}
	return 0, errMalformedJSON
}

func skipLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, errMalformedJSON
	}
	return i + len(lit), nil
}

func skipNumber(b []byte, i int) (int, error) {
	start := i
	for i < len(b) {
		switch c := b[i]; {
		case '0' <= c && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			i++
		default:
			return i, checkNumber(b[start:i])
		}
	}
	return i, checkNumber(b[start:i])
}

// checkNumber validates the JSON number grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func checkNumber(n []byte) error {
	i := 0
	if i < len(n) && n[i] == '-' {
		i++
	}
	switch {
	case i < len(n) && n[i] == '0':
		i++
	case i < len(n) && '1' <= n[i] && n[i] <= '9':
		for i < len(n) && '0' <= n[i] && n[i] <= '9' {
			i++
		}
	default:
		return errMalformedJSON
	}
	if i < len(n) && n[i] == '.' {
		i++
		start := i
		for i < len(n) && '0' <= n[i] && n[i] <= '9' {
			i++
		}
		if i == start {
			return errMalformedJSON
		}
	}
	if i < len(n) && (n[i] == 'e' || n[i] == 'E') {
		i++
		if i < len(n) && (n[i] == '+' || n[i] == '-') {
			i++
		}
		start := i
		for i < len(n) && '0' <= n[i] && n[i] <= '9' {
			i++
		}
		if i == start {
			return errMalformedJSON
		}
	}
	if i != len(n) {
		return errMalformedJSON
	}
	return nil
}

// strSpecial marks the bytes that end a run of plain string content.
var strSpecial = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

// strEndMask8 marks, with the high bit of each byte, the bytes of x that
// stop skipString: a control character, '"' or '\\'. A byte above a
// marked one may be marked too (a borrow), but the lowest mark is exact,
// so it tells where the first such byte is.
func strEndMask8(x uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	lt20 := (x - ones*0x20) &^ x
	q := x ^ ones*'"'
	quote := (q - ones) &^ q
	s := x ^ ones*'\\'
	slash := (s - ones) &^ s
	return (lt20 | quote | slash) & highs
}

// strEnd returns the position of the first byte at or after j that stops
// skipString, or len(b), eight bytes at a time.
func strEnd(b []byte, j int) int {
	for ; j+8 <= len(b); j += 8 {
		if m := strEndMask8(binary.LittleEndian.Uint64(b[j:])); m != 0 {
			return j + bits.TrailingZeros64(m)>>3
		}
	}
	for j < len(b) && !strSpecial[b[j]] {
		j++
	}
	return j
}

// skipString returns the position after the closing quote of the string
// starting at b[i] == '"'.
func skipString(b []byte, i int) (int, error) {
	j := i + 1
	for {
		if j = strEnd(b, j); j >= len(b) {
			return 0, errMalformedJSON
		}
		switch b[j] {
		case '"':
			return j + 1, nil
		case '\\':
			j += 2
		default:
			return 0, errMalformedJSON
		}
	}
}

// eachMember walks the object at i. fn gets each raw key and the position
// of its value, and returns the end of the value when it parsed it, or 0
// to have it skipped. Walking once, descending where needed, visits each
// byte once instead of once per level.
func eachMember(b []byte, i int, fn func(key []byte, v int) (int, error)) (int, error) {
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != '{' {
		return 0, errNotObject
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		kEnd, v, err := memberKey(b, i)
		if err != nil {
			return 0, err
		}
		end, err := fn(b[i:kEnd], v)
		if err != nil {
			return 0, err
		}
		var more bool
		if i, more, err = nextAfter(b, v, end, '}'); err != nil || !more {
			return i, err
		}
	}
}

// nextAfter finishes a member or item whose value starts at v: it skips
// the value when the callback left it (end 0), then reads what follows,
// as afterValue does.
func nextAfter(b []byte, v, end int, closing byte) (next int, more bool, err error) {
	if end == 0 {
		if end, err = skipValueDepth(b, v, 1); err != nil {
			return 0, false, err
		}
	}
	return afterValue(b, end, closing)
}

// eachItem walks the array at i like eachMember.
func eachItem(b []byte, i int, fn func(v int) (int, error)) (int, error) {
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != '[' {
		return 0, errNotArray
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		if i >= len(b) {
			return 0, errMalformedJSON // callbacks may read b[i]
		}
		end, err := fn(i)
		if err != nil {
			return 0, err
		}
		var more bool
		if i, more, err = nextAfter(b, i, end, ']'); err != nil || !more {
			return i, err
		}
	}
}

func skipContainer(b []byte, i, depth int) (int, error) {
	closing := byte('}')
	if b[i] == '[' {
		closing = ']'
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == closing {
		return i + 1, nil
	}
	for {
		var err error
		if closing == '}' {
			if _, i, err = memberKey(b, i); err != nil {
				return 0, err
			}
		}
		end, err := skipValueDepth(b, i, depth+1)
		if err != nil {
			return 0, err
		}
		var more bool
		if i, more, err = afterValue(b, end, closing); err != nil || !more {
			return i, err
		}
	}
}

// memberKey reads the key of an object member at b[i] and the colon after
// it, returning the end of the key and the position of the value.
func memberKey(b []byte, i int) (keyEnd, v int, err error) {
	if i >= len(b) || b[i] != '"' {
		return 0, 0, errMalformedJSON
	}
	if keyEnd, err = skipString(b, i); err != nil {
		return 0, 0, err
	}
	i = skipSpace(b, keyEnd)
	if i >= len(b) || b[i] != ':' {
		return 0, 0, errMalformedJSON
	}
	if v = skipSpace(b, i+1); v >= len(b) {
		return 0, 0, errMalformedJSON // callers may read b[v]
	}
	return keyEnd, v, nil
}

// afterValue reads what follows a value that ends at end inside an object
// or array: a comma, after which more follows at next, or the closing
// byte, just past which next is.
func afterValue(b []byte, end int, closing byte) (next int, more bool, err error) {
	i := skipSpace(b, end)
	switch {
	case i >= len(b):
		return 0, false, errMalformedJSON
	case b[i] == ',':
		return skipSpace(b, i+1), true, nil
	case b[i] == closing:
		return i + 1, false, nil
	}
	return 0, false, errMalformedJSON
}

// span is a [start,end) range of a value inside a body.
type span struct{ start, end int }

// objectField finds the value of key in the object that starts at i. Keys
// are compared after unescaping, so "\u0064ata" finds "data". When a key
// repeats, the last occurrence wins, as it does for JSON.parse.
func objectField(b []byte, i int, key string) (span, bool, error) {
	var found span
	ok := false
	err := eachField(b, i, func(k []byte, v span) error {
		if keyEquals(k, key) {
			found, ok = v, true
		}
		return nil
	})
	return found, ok, err
}

// eachField calls fn with the raw (quoted) key and the value span of every
// member of the object starting at i.
func eachField(b []byte, i int, fn func(key []byte, v span) error) error {
	_, err := eachMember(b, i, func(key []byte, v int) (int, error) {
		end, err := skipValueDepth(b, v, 1)
		if err != nil {
			return 0, err
		}
		return end, fn(key, span{v, end})
	})
	return err
}

var (
	errNotObject = errors.New("not a JSON object")
	errNotArray  = errors.New("not a JSON array")
)

// arrayItems returns the span of every element of the array starting at i.
func arrayItems(b []byte, i int) ([]span, error) {
	var items []span
	_, err := eachItem(b, i, func(v int) (int, error) {
		end, err := skipValueDepth(b, v, 1)
		if err == nil {
			items = append(items, span{v, end})
		}
		return end, err
	})
	if err != nil {
		return nil, err
	}
	return items, nil
}

// keyEquals compares a raw quoted key with an unescaped name.
func keyEquals(raw []byte, name string) bool {
	inner := raw[1 : len(raw)-1]
	if string(inner) == name {
		return true
	}
	// The decoded key is at most as long as the raw one.
	if len(inner) < len(name) || !containsByte(inner, '\\') {
		return false // a key without escapes is its own text
	}
	var s string
	return json.Unmarshal(raw, &s) == nil && s == name
}

func containsByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

// stringValue decodes the JSON string in v, reporting false when v is not
// a string.
func stringValue(b []byte, v span) (string, bool) {
	raw := b[v.start:v.end]
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if !containsByte(inner, '\\') {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// fieldPath follows object keys from the top-level value of b.
func fieldPath(b []byte, path ...string) (span, bool) {
	cur := span{skipSpace(b, 0), len(b)}
	for _, key := range path {
		v, ok, err := objectField(b, cur.start, key)
		if err != nil || !ok {
			return span{}, false
		}
		cur = v
	}
	return cur, true
}

// JSON this package wrote itself (raw's camelCased copy of a payload) is
// compact and valid by construction, so finding where a value in it ends
// needs no checking: only strings and nesting are followed. This is what
// reading an edited message back from raw costs, instead of a validating
// scan.

// skipOwn returns the position after the value at b[i] in our own JSON.
func skipOwn(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipOwnString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipOwnString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' {
		j++
	}
	return j
}

// skipOwnString returns the position after the string at b[i] == '"'.
func skipOwnString(b []byte, i int) int {
	j := i + 1
	for {
		j = strEnd(b, j) // our own strings hold no control characters
		switch {
		case j >= len(b):
			return len(b)
		case b[j] == '\\':
			j += 2
		default:
			return j + 1
		}
	}
}
