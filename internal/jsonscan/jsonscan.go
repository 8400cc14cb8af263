// Package jsonscan finds values inside a JSON body without decoding it.
// Batch items must be forwarded as the exact bytes that were signed, and
// the dedupe key of a delivery needs one string out of a document that may
// be megabytes long; decoding into maps would cost both copies and time.
// Every function takes the position of the first byte to look at and
// returns positions into the same slice. Malformed input yields
// ErrMalformed, never a panic.
package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
)

// ErrMalformed is returned for anything that is not valid JSON.
var ErrMalformed = errors.New("malformed JSON")

// SkipSpace returns the position of the first byte at or after i that is
// not JSON white space.
func SkipSpace(b []byte, i int) int {
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

// SkipValue returns the position just after the value that starts at i
// (after optional white space).
func SkipValue(b []byte, i int) (int, error) {
	return SkipValueDepth(b, SkipSpace(b, i), 0)
}

// MaxDepth bounds nesting so that a hostile body cannot exhaust the stack.
const MaxDepth = 512

func SkipValueDepth(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, ErrMalformed
	}
	switch c := b[i]; {
	case c == '"':
		return SkipString(b, i)
	case c == '{' || c == '[':
		if depth >= MaxDepth {
			return 0, ErrMalformed
		}
		return skipContainer(b, i, depth)
	case c == 't':
		return SkipLiteral(b, i, "true")
	case c == 'f':
		return SkipLiteral(b, i, "false")
	case c == 'n':
		return SkipLiteral(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		return SkipNumber(b, i)
	}
	return 0, ErrMalformed
}

func SkipLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, ErrMalformed
	}
	return i + len(lit), nil
}

func SkipNumber(b []byte, i int) (int, error) {
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
		return ErrMalformed
	}
	if i < len(n) && n[i] == '.' {
		i++
		start := i
		for i < len(n) && '0' <= n[i] && n[i] <= '9' {
			i++
		}
		if i == start {
			return ErrMalformed
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
			return ErrMalformed
		}
	}
	if i != len(n) {
		return ErrMalformed
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

// strEnd returns the position of the first byte at or after j that stops
// SkipString, or len(b).
func strEnd(b []byte, j int) int {
	for j < len(b) && !strSpecial[b[j]] {
		j++
	}
	return j
}

// SkipString returns the position after the closing quote of the string
// starting at b[i] == '"'.
func SkipString(b []byte, i int) (int, error) {
	j := i + 1
	for {
		if j = strEnd(b, j); j >= len(b) {
			return 0, ErrMalformed
		}
		switch b[j] {
		case '"':
			return j + 1, nil
		case '\\':
			j += 2
		default:
			return 0, ErrMalformed
		}
	}
}

// EachMember walks the object at i. fn gets each raw key and the position
// of its value, and returns the end of the value when it parsed it, or 0
// to have it skipped. Walking once, descending where needed, visits each
// byte once instead of once per level.
func EachMember(b []byte, i int, fn func(key []byte, v int) (int, error)) (int, error) {
	i = SkipSpace(b, i)
	if i >= len(b) || b[i] != '{' {
		return 0, ErrNotObject
	}
	i = SkipSpace(b, i+1)
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
		if end, err = SkipValueDepth(b, v, 1); err != nil {
			return 0, false, err
		}
	}
	return AfterValue(b, end, closing)
}

// EachItem walks the array at i like eachMember.
func EachItem(b []byte, i int, fn func(v int) (int, error)) (int, error) {
	i = SkipSpace(b, i)
	if i >= len(b) || b[i] != '[' {
		return 0, ErrNotArray
	}
	i = SkipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		if i >= len(b) {
			return 0, ErrMalformed // callbacks may read b[i]
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
	i = SkipSpace(b, i+1)
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
		end, err := SkipValueDepth(b, i, depth+1)
		if err != nil {
			return 0, err
		}
		var more bool
		if i, more, err = AfterValue(b, end, closing); err != nil || !more {
			return i, err
		}
	}
}

// memberKey reads the key of an object member at b[i] and the colon after
// it, returning the end of the key and the position of the value.
func memberKey(b []byte, i int) (keyEnd, v int, err error) {
	if i >= len(b) || b[i] != '"' {
		return 0, 0, ErrMalformed
	}
	if keyEnd, err = SkipString(b, i); err != nil {
		return 0, 0, err
	}
	i = SkipSpace(b, keyEnd)
	if i >= len(b) || b[i] != ':' {
		return 0, 0, ErrMalformed
	}
	if v = SkipSpace(b, i+1); v >= len(b) {
		return 0, 0, ErrMalformed // callers may read b[v]
	}
	return keyEnd, v, nil
}

// AfterValue reads what follows a value that ends at end inside an object
// or array: a comma, after which more follows at next, or the closing
// byte, just past which next is.
func AfterValue(b []byte, end int, closing byte) (next int, more bool, err error) {
	i := SkipSpace(b, end)
	switch {
	case i >= len(b):
		return 0, false, ErrMalformed
	case b[i] == ',':
		return SkipSpace(b, i+1), true, nil
	case b[i] == closing:
		return i + 1, false, nil
	}
	return 0, false, ErrMalformed
}

// Span is a [start,end) range of a value inside a body.
type Span struct{ Start, End int }

// ObjectField finds the value of key in the object that starts at i. Keys
// are compared after unescaping, so "\u0064ata" finds "data". When a key
// repeats, the last occurrence wins, as it does for JSON.parse.
func ObjectField(b []byte, i int, key string) (Span, bool, error) {
	var found Span
	ok := false
	err := EachField(b, i, func(k []byte, v Span) error {
		if KeyEquals(k, key) {
			found, ok = v, true
		}
		return nil
	})
	return found, ok, err
}

// EachField calls fn with the raw (quoted) key and the value span of every
// member of the object starting at i.
func EachField(b []byte, i int, fn func(key []byte, v Span) error) error {
	_, err := EachMember(b, i, func(key []byte, v int) (int, error) {
		end, err := SkipValueDepth(b, v, 1)
		if err != nil {
			return 0, err
		}
		return end, fn(key, Span{v, end})
	})
	return err
}

var (
	ErrNotObject = errors.New("not a JSON object")
	ErrNotArray  = errors.New("not a JSON array")
)

// ArrayItems returns the span of every element of the array starting at i.
func ArrayItems(b []byte, i int) ([]Span, error) {
	var items []Span
	_, err := EachItem(b, i, func(v int) (int, error) {
		end, err := SkipValueDepth(b, v, 1)
		if err == nil {
			items = append(items, Span{v, end})
		}
		return end, err
	})
	if err != nil {
		return nil, err
	}
	return items, nil
}

// KeyEquals compares a raw quoted key with an unescaped name.
func KeyEquals(raw []byte, name string) bool {
	inner := raw[1 : len(raw)-1]
	if string(inner) == name {
		return true
	}
	// The decoded key is at most as long as the raw one.
	if len(inner) < len(name) || bytes.IndexByte(inner, '\\') < 0 {
		return false // a key without escapes is its own text
	}
	var s string
	return json.Unmarshal(raw, &s) == nil && s == name
}

// StringValue decodes the JSON string in v, reporting false when v is not
// a string.
func StringValue(b []byte, v Span) (string, bool) {
	raw := b[v.Start:v.End]
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// FieldPath follows object keys from the top-level value of b.
func FieldPath(b []byte, path ...string) (Span, bool) {
	cur := Span{SkipSpace(b, 0), len(b)}
	for _, key := range path {
		v, ok, err := ObjectField(b, cur.Start, key)
		if err != nil || !ok {
			return Span{}, false
		}
		cur = v
	}
	return cur, true
}

// JSON a caller wrote itself (the normalizer reorders objects of its own
// output in place) is compact and valid by construction, so finding where
// a value in it ends needs no checking: only strings and nesting are
// followed.

// SkipOwn returns the position after the value at b[i] in our own JSON.
func SkipOwn(b []byte, i int) int {
	switch b[i] {
	case '"':
		return SkipOwnString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = SkipOwnString(b, j) - 1
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

// SkipOwnString returns the position after the string at b[i] == '"'.
func SkipOwnString(b []byte, i int) int {
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
