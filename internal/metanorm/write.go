package metanorm

import (
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/webhookguard/webhookguard/internal/jsonscan"
)

// jsWriter copies JSON to JSON the way JSON.stringify(JSON.parse(text))
// does in JavaScript, optionally camelCasing every object key on the way.
// It streams: values are written as they are read, and only an object
// whose keys need JavaScript's treatment (a repeated key, where the later
// value wins at the first one's position, or integer-like keys, which
// JavaScript moves to the front in ascending order) is rearranged, from
// the ranges already written.
type jsWriter struct {
	out []byte
	// members and order are rearrange's scratch lists for one object.
	members []memberRange
	order   []int
	keyBuf  []byte // an escaped key, decoded and camelCased
	scratch []byte
	// wtf8 lets strings carry surrogate code points encoded as WTF-8: the
	// text of a Flow response comes from a decoded JSON string, where a
	// lone surrogate is legal, and must be written back as \udxxx.
	wtf8 bool
}

type memberRange struct {
	keyStart, keyEnd, valStart, valEnd int
	index                              int64 // the key's value when it is an array index, else -1
}

type keyMode int

const (
	keysAsIs keyMode = iota
	keysCamel
)

func (w *jsWriter) reset() {
	w.out = w.out[:0]
	w.members = w.members[:0]
	w.wtf8 = false
}

// value writes the value starting at b[i] (after optional white space)
// and returns the position after it.
func (w *jsWriter) value(b []byte, i int, mode keyMode, depth int) (int, error) {
	i = jsonscan.SkipSpace(b, i)
	if i >= len(b) {
		return 0, jsonscan.ErrMalformed
	}
	switch c := b[i]; {
	case c == '"':
		return w.str(b, i)
	case c == '{':
		if depth >= jsonscan.MaxDepth {
			return 0, jsonscan.ErrMalformed
		}
		return w.object(b, i, mode, depth+1)
	case c == '[':
		if depth >= jsonscan.MaxDepth {
			return 0, jsonscan.ErrMalformed
		}
		return w.array(b, i, mode, depth+1)
	case c == 't':
		return w.literal(b, i, "true")
	case c == 'f':
		return w.literal(b, i, "false")
	case c == 'n':
		return w.literal(b, i, "null")
	case c == '-' || ('0' <= c && c <= '9'):
		end, err := jsonscan.SkipNumber(b, i)
		if err != nil {
			return 0, err
		}
		w.out = appendJSNumber(w.out, b[i:end])
		return end, nil
	}
	return 0, jsonscan.ErrMalformed
}

func (w *jsWriter) literal(b []byte, i int, lit string) (int, error) {
	end, err := jsonscan.SkipLiteral(b, i, lit)
	if err != nil {
		return 0, err
	}
	w.out = append(w.out, lit...)
	return end, nil
}

func (w *jsWriter) array(b []byte, i int, mode keyMode, depth int) (int, error) {
	return w.arrayWith(b, i, mode, depth, nil)
}

// arrayWith writes an array, letting fn write each element (fn gets the
// element's position and returns its end) when fn is not nil.
func (w *jsWriter) arrayWith(b []byte, i int, mode keyMode, depth int, fn func(v int) (int, error)) (int, error) {
	w.out = append(w.out, '[')
	i = jsonscan.SkipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		w.out = append(w.out, ']')
		return i + 1, nil
	}
	for {
		if i >= len(b) {
			return 0, jsonscan.ErrMalformed
		}
		var end int
		var err error
		if fn != nil {
			end, err = fn(i)
		} else {
			end, err = w.value(b, i, mode, depth)
		}
		if err != nil {
			return 0, err
		}
		// Compact input, the usual case, needs no call to find the comma.
		if end+1 < len(b) && b[end] == ',' && b[end+1] > ' ' {
			w.out = append(w.out, ',')
			i = end + 1
			continue
		}
		var more bool
		if i, more, err = jsonscan.AfterValue(b, end, ']'); err != nil {
			return 0, err
		}
		if !more {
			w.out = append(w.out, ']')
			return i, nil
		}
		w.out = append(w.out, ',')
	}
}

func (w *jsWriter) object(b []byte, i int, mode keyMode, depth int) (int, error) {
	return w.objectWith(b, i, mode, depth, nil)
}

// objectWith writes an object. When fn is not nil it is offered each
// member first: it gets the key as written and the value's position, and
// either writes the value itself and returns its end, or returns 0 to
// have it copied.
func (w *jsWriter) objectWith(b []byte, i int, mode keyMode, depth int, fn func(key []byte, v int) (int, error)) (int, error) {
	start := len(w.out)
	w.out = append(w.out, '{')
	i = jsonscan.SkipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		w.out = append(w.out, '}')
		return i + 1, nil
	}
	rearrange := false
	// keysSeen is a one-word Bloom filter of the keys written so far: a
	// repeated key is rare, so the written keys are only compared when
	// the filter cannot rule one out.
	var keysSeen uint64
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, jsonscan.ErrMalformed
		}
		ks := len(w.out)
		end, err := w.key(b, i, mode)
		if err != nil {
			return 0, err
		}
		ke := len(w.out)
		if !rearrange {
			k := w.out[ks+1 : ke-1]
			bit := uint64(1) << keyHash(k)
			switch {
			case mayBeIndexKey(k) && isIndexKey(k):
				rearrange = true
			case keysSeen&bit != 0 && w.hasKey(start, ks):
				rearrange = true
			}
			keysSeen |= bit
		}
		var v int
		if end+1 < len(b) && b[end] == ':' && b[end+1] > ' ' {
			v = end + 1
		} else {
			i = jsonscan.SkipSpace(b, end)
			if i >= len(b) || b[i] != ':' {
				return 0, jsonscan.ErrMalformed
			}
			if v = jsonscan.SkipSpace(b, i+1); v >= len(b) {
				return 0, jsonscan.ErrMalformed
			}
		}
		w.out = append(w.out, ':')
		i = 0
		if fn != nil {
			if i, err = fn(w.out[ks:ke], v); err != nil {
				return 0, err
			}
		}
		if i == 0 {
			if b[v] == '"' {
				i, err = w.str(b, v) // most values: spare the dispatch
			} else {
				i, err = w.value(b, v, mode, depth)
			}
			if err != nil {
				return 0, err
			}
		}
		if i+1 < len(b) && b[i] == ',' && b[i+1] == '"' {
			w.out = append(w.out, ',')
			i++
			continue
		}
		var more bool
		if i, more, err = jsonscan.AfterValue(b, i, '}'); err != nil {
			return 0, err
		}
		if more {
			w.out = append(w.out, ',')
			continue
		}
		w.out = append(w.out, '}')
		if rearrange {
			w.rearrange(start)
		}
		return i, nil
	}
}

// keyHash picks a bit for the Bloom filter of an object's keys.
func keyHash(k []byte) uint {
	h := uint64(len(k))
	if n := len(k); n > 0 {
		h |= uint64(k[0])<<8 | uint64(k[n/2])<<16 | uint64(k[n-1])<<24
	}
	return uint((h * 0x9E3779B97F4A7C15) >> 58)
}

// hasKey reports whether the key just written at out[ks:] repeats one of
// the keys of the object being written from out[start]. Encoded keys
// compare equal exactly when the decoded keys do, as the encoding is
// canonical. The members written so far are read back from the output,
// which is compact JSON of our own making.
func (w *jsWriter) hasKey(start, ks int) bool {
	out := w.out
	key := out[ks:jsonscan.SkipOwnString(out, ks)]
	for p := start + 1; p < ks; {
		e := jsonscan.SkipOwnString(out, p)
		if string(out[p:e]) == string(key) {
			return true
		}
		p = jsonscan.SkipOwn(out, e+1) + 1 // past the comma
	}
	return false
}

// rearrange rewrites the object at out[start:] in JavaScript's key order:
// a repeated key keeps its first position with its last value, and
// integer-like keys come first in ascending numeric order.
func (w *jsWriter) rearrange(start int) {
	// The members as written: each one's key, and its value up to valEnd.
	ms := w.members[:0]
	for p := start + 1; p < len(w.out)-1; {
		ke := jsonscan.SkipOwnString(w.out, p)
		ve := jsonscan.SkipOwn(w.out, ke+1)
		key := w.out[p:ke]
		// A repeated key keeps the first one's place and takes this value.
		replaced := false
		for j := range ms {
			if string(w.out[ms[j].keyStart:ms[j].keyEnd]) == string(key) {
				ms[j].valStart, ms[j].valEnd = ke+1, ve
				replaced = true
				break
			}
		}
		if !replaced {
			ms = append(ms, memberRange{keyStart: p, keyEnd: ke, valStart: ke + 1, valEnd: ve, index: indexKeyValue(key)})
		}
		p = ve + 1
	}
	w.members = ms
	// Integer-like keys first, ascending (they are distinct by now), then
	// the others in their order.
	order := w.order[:0]
	for j := range ms {
		if ms[j].index >= 0 {
			order = append(order, j)
		}
	}
	slices.SortFunc(order, func(a, b int) int { return int(ms[a].index - ms[b].index) })
	for j := range ms {
		if ms[j].index < 0 {
			order = append(order, j)
		}
	}
	w.order = order
	w.scratch = append(w.scratch[:0], '{')
	for n, j := range order {
		if n > 0 {
			w.scratch = append(w.scratch, ',')
		}
		m := &ms[j]
		w.scratch = append(w.scratch, w.out[m.keyStart:m.keyEnd]...)
		w.scratch = append(w.scratch, ':')
		w.scratch = append(w.scratch, w.out[m.valStart:m.valEnd]...)
	}
	w.scratch = append(w.scratch, '}')
	w.out = append(w.out[:start], w.scratch...)
}

// indexKeyValue is the numeric value of a quoted key that is an array
// index, or -1.
func indexKeyValue(quoted []byte) int64 {
	k := quoted[1 : len(quoted)-1]
	if !mayBeIndexKey(k) || !isIndexKey(k) {
		return -1
	}
	v, _ := strconv.ParseInt(string(k), 10, 64)
	return v
}

// mayBeIndexKey is the cheap first test of isIndexKey.
func mayBeIndexKey(k []byte) bool { return len(k) > 0 && k[0] >= '0' && k[0] <= '9' }

// isIndexKey reports whether an (encoded, unquoted) key is a canonical
// array index, 0 to 2^32-2: the keys JavaScript orders numerically.
func isIndexKey(k []byte) bool {
	if len(k) == 0 || len(k) > 10 || (len(k) > 1 && k[0] == '0') {
		return false
	}
	for _, c := range k {
		if c < '0' || c > '9' {
			return false
		}
	}
	n, err := strconv.ParseUint(string(k), 10, 64)
	return err == nil && n <= math.MaxUint32-1
}

// key writes the object key at b[i], camelCased in keysCamel mode.
func (w *jsWriter) key(b []byte, i int, mode keyMode) (int, error) {
	if mode == keysAsIs {
		return w.str(b, i)
	}
	// One pass finds the end of the key and whether it needs work.
	var seen uint8
	j := i + 1
	for j < len(b) {
		k := keyByte[b[j]]
		if k >= 2 {
			break
		}
		seen |= k
		j++
	}
	if j < len(b) && b[j] == '"' {
		if seen == 0 {
			w.out = append(w.out, b[i:j+1]...)
		} else if out, known := knownCamelKey(b[i+1 : j]); known {
			w.out = append(w.out, out...)
		} else {
			w.out = appendCamelQuoted(w.out, b[i+1:j])
		}
		return j + 1, nil
	}
	end, err := jsonscan.SkipString(b, i)
	if err != nil {
		return 0, err
	}
	{
		decoded, err := decodeString(w.scratch[:0], b, i, w.wtf8)
		if err != nil {
			return 0, err
		}
		w.scratch = decoded
		w.keyBuf = appendCamel(w.keyBuf[:0], decoded)
		w.out = appendJSString(w.out, w.keyBuf, true)
	}
	return end, nil
}

type keyClass int

const (
	keyVerbatim keyClass = iota // printable ASCII, no separator: copied as is
	keyPlain                    // printable ASCII with '_' or '-'
	keyEscaped                  // anything else: decoded first
)

// keyByte classifies key bytes: 0 plain, 1 separator, 2 needs decoding.
var keyByte = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case c < 0x20 || c >= 0x7f || c == '\\' || c == '"':
			t[c] = 2
		case c == '_' || c == '-':
			t[c] = 1
		}
	}
	return t
}()

func keyClassOf(raw []byte) keyClass {
	var seen uint8
	for _, c := range raw {
		seen |= keyByte[c]
	}
	switch {
	case seen&2 != 0:
		return keyEscaped
	case seen&1 != 0:
		return keyPlain
	}
	return keyVerbatim
}

// isPlainKey reports whether raw key bytes need neither decoding nor
// escaping: printable ASCII without backslash or quote.
func isPlainKey(raw []byte) bool {
	for _, c := range raw {
		if c < 0x20 || c >= 0x7f || c == '\\' || c == '"' {
			return false
		}
	}
	return true
}

// appendCamelQuoted is appendCamel for a plain key, quoted. Meta's own
// keys are converted once, into a table (normalize_keys.go); this serves
// the others.
func appendCamelQuoted(dst, key []byte) []byte {
	dst = append(dst, '"')
	return append(appendCamel(dst, key), '"')
}

// appendCamel applies the SDK's deep key rule: a key with neither '_' nor
// '-' is unchanged; otherwise every '_' or '-' followed by an ASCII letter
// or digit is dropped and that character upper-cased.
func appendCamel(dst, key []byte) []byte {
	start := 0
	for j := 0; j+1 < len(key); j++ {
		c := key[j]
		if (c == '_' || c == '-') && isASCIIAlnum(key[j+1]) {
			dst = append(dst, key[start:j]...)
			dst = append(dst, upperASCII(key[j+1]))
			j++
			start = j + 1
		}
	}
	return append(dst, key[start:]...)
}

// appendFieldKey applies the SDK's rule for raw's keys: only '_' followed
// by a lower-case ASCII letter is converted.
func appendFieldKey(dst, field []byte) []byte {
	for j := 0; j < len(field); j++ {
		c := field[j]
		if c == '_' && j+1 < len(field) && 'a' <= field[j+1] && field[j+1] <= 'z' {
			dst = append(dst, field[j+1]-'a'+'A')
			j++
			continue
		}
		dst = append(dst, c)
	}
	return dst
}

func isASCIIAlnum(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
}

func upperASCII(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// str writes the JSON string at b[i] re-encoded as JSON.stringify would:
// raw UTF-8 instead of \u escapes, short escapes for control characters,
// lone surrogates as \udxxx, invalid UTF-8 as U+FFFD.
func (w *jsWriter) str(b []byte, i int) (int, error) {
	j := strCopyEnd(b, i+1)
	if j < len(b) && b[j] == '"' {
		w.out = append(w.out, b[i:j+1]...)
		return j + 1, nil
	}
	w.out = append(w.out, b[i:j]...)
	for j < len(b) {
		// Copy the run that needs no change in one go.
		run := strCopyEnd(b, j)
		w.out = append(w.out, b[j:run]...)
		j = run
		if j >= len(b) {
			break
		}
		switch c := b[j]; {
		case c == '"':
			w.out = append(w.out, '"')
			return j + 1, nil
		case c == '\\':
			r, n, err := decodeEscape(b, j)
			if err != nil {
				return 0, err
			}
			w.out = appendJSRune(w.out, r)
			j += n
		case c < 0x20:
			return 0, jsonscan.ErrMalformed
		default:
			r, n := decodeRuneWTF8(b[j:], w.wtf8)
			w.out = appendJSRune(w.out, r)
			j += n
		}
	}
	return 0, jsonscan.ErrMalformed
}

// strCopyEnd returns the position of the first byte at or after j that
// str cannot copy verbatim, or len(b): a control character, '"', '\' or
// a byte of a multi-byte sequence (which is checked for valid UTF-8).
func strCopyEnd(b []byte, j int) int {
	for j < len(b) && !strCopySpecial[b[j]] {
		j++
	}
	return j
}

// strCopySpecial marks the bytes str cannot copy verbatim.
var strCopySpecial = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c < 0x20 || c >= 0x80 || c == '"' || c == '\\'
	}
	return t
}()

// decodeEscape decodes the escape at b[j] == '\\', pairing surrogates.
// A lone surrogate is returned as its code point.
func decodeEscape(b []byte, j int) (rune, int, error) {
	if j+1 >= len(b) {
		return 0, 0, jsonscan.ErrMalformed
	}
	switch b[j+1] {
	case '"':
		return '"', 2, nil
	case '\\':
		return '\\', 2, nil
	case '/':
		return '/', 2, nil
	case 'b':
		return '\b', 2, nil
	case 'f':
		return '\f', 2, nil
	case 'n':
		return '\n', 2, nil
	case 'r':
		return '\r', 2, nil
	case 't':
		return '\t', 2, nil
	case 'u':
		r, ok := hex4(b, j+2)
		if !ok {
			return 0, 0, jsonscan.ErrMalformed
		}
		if 0xD800 <= r && r < 0xDC00 && j+12 <= len(b) && b[j+6] == '\\' && b[j+7] == 'u' {
			if lo, ok := hex4(b, j+8); ok && 0xDC00 <= lo && lo < 0xE000 {
				return 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00), 12, nil
			}
		}
		return r, 6, nil
	}
	return 0, 0, jsonscan.ErrMalformed
}

func hex4(b []byte, j int) (rune, bool) {
	if j+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[j : j+4] {
		v, ok := fromHexChar(c)
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(v)
	}
	return r, true
}

// decodeRuneWTF8 decodes one UTF-8 sequence. With wtf8 set, a surrogate
// code point encoded in three bytes is accepted and returned as is.
func decodeRuneWTF8(p []byte, wtf8 bool) (rune, int) {
	if wtf8 && len(p) >= 3 && p[0] == 0xED && p[1] >= 0xA0 && p[1] <= 0xBF && p[2] >= 0x80 && p[2] <= 0xBF {
		return rune(0xD000) | rune(p[1]&0x3F)<<6 | rune(p[2]&0x3F), 3
	}
	return utf8.DecodeRune(p)
}

const lowerHex = "0123456789abcdef"

// appendJSRune writes one code point inside a JSON string as
// JSON.stringify does.
func appendJSRune(dst []byte, r rune) []byte {
	switch {
	case r == '"':
		return append(dst, '\\', '"')
	case r == '\\':
		return append(dst, '\\', '\\')
	case r == '\b':
		return append(dst, '\\', 'b')
	case r == '\f':
		return append(dst, '\\', 'f')
	case r == '\n':
		return append(dst, '\\', 'n')
	case r == '\r':
		return append(dst, '\\', 'r')
	case r == '\t':
		return append(dst, '\\', 't')
	case r < 0x20 || (0xD800 <= r && r < 0xE000):
		return append(dst, '\\', 'u', lowerHex[r>>12&0xF], lowerHex[r>>8&0xF], lowerHex[r>>4&0xF], lowerHex[r&0xF])
	}
	return utf8.AppendRune(dst, r)
}

// appendJSString writes s (UTF-8, or WTF-8 when wtf8) as a JSON string.
func appendJSString(dst, s []byte, wtf8 bool) []byte {
	dst = append(dst, '"')
	// The plain run up to the first byte that needs a look, in one copy.
	j := strCopyEnd(s, 0)
	dst = append(dst, s[:j]...)
	for j < len(s) {
		c := s[j]
		if c >= 0x20 && c < 0x80 && c != '"' && c != '\\' {
			dst = append(dst, c)
			j++
			continue
		}
		r, n := decodeRuneWTF8(s[j:], wtf8)
		dst = appendJSRune(dst, r)
		j += n
	}
	return append(dst, '"')
}

// decodeString appends the decoded content of the JSON string at b[i] to
// dst, as WTF-8 so that lone surrogates survive.
func decodeString(dst, b []byte, i int, wtf8 bool) ([]byte, error) {
	for j := i + 1; j < len(b); {
		switch c := b[j]; {
		case c == '"':
			return dst, nil
		case c == '\\':
			r, n, err := decodeEscape(b, j)
			if err != nil {
				return nil, err
			}
			dst = appendWTF8(dst, r)
			j += n
		case c < 0x20:
			return nil, jsonscan.ErrMalformed
		case c < 0x80:
			dst = append(dst, c)
			j++
		default:
			r, n := decodeRuneWTF8(b[j:], wtf8)
			dst = appendWTF8(dst, r)
			j += n
		}
	}
	return nil, jsonscan.ErrMalformed
}

// appendWTF8 is utf8.AppendRune that also encodes surrogate code points.
func appendWTF8(dst []byte, r rune) []byte {
	if 0xD800 <= r && r < 0xE000 {
		return append(dst, 0xED, byte(0x80|(r>>6)&0x3F), byte(0x80|r&0x3F))
	}
	return utf8.AppendRune(dst, r)
}

// appendJSNumber writes a JSON number as JavaScript prints it, except that
// a plain integer keeps all its digits: JavaScript would round one beyond
// 2^53, and an ID rounded in transit is a different ID.
func appendJSNumber(dst, num []byte) []byte {
	if isPlainInteger(num) {
		if string(num) == "-0" {
			return append(dst, '0')
		}
		return append(dst, num...)
	}
	if out, ok := appendShortDecimal(dst, num); ok {
		return out
	}
	f, err := strconv.ParseFloat(string(num), 64)
	if err != nil {
		// Out of float64 range: JavaScript would print Infinity, which
		// JSON.stringify turns into null.
		return append(dst, "null"...)
	}
	return appendJSFloat(dst, f)
}

// appendShortDecimal is appendJSNumber for the usual fraction (a price, a
// latitude): no exponent, at most 15 significant digits, and at least
// 1e-6 in magnitude. Such a decimal is the shortest one that rounds to its
// float64 (two decimals of 15 digits never round to the same float64), so
// JavaScript prints its digits as they are, less trailing zeros, in fixed
// notation: no float conversion is needed. It reports false for any other
// number.
func appendShortDecimal(dst, num []byte) ([]byte, bool) {
	neg := len(num) > 0 && num[0] == '-'
	digits := num
	if neg {
		digits = num[1:]
	}
	dot := 0
	for dot < len(digits) && '0' <= digits[dot] && digits[dot] <= '9' {
		dot++
	}
	if dot == 0 || dot+1 >= len(digits) || digits[dot] != '.' {
		return dst, false
	}
	whole, frac := digits[:dot], digits[dot+1:]
	for _, c := range frac {
		if c < '0' || c > '9' {
			return dst, false // an exponent
		}
	}
	for len(frac) > 0 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}
	significant := len(whole) + len(frac)
	if whole[0] == '0' {
		if len(whole) > 1 {
			return dst, false
		}
		zeros := 0
		for zeros < len(frac) && frac[zeros] == '0' {
			zeros++
		}
		if len(frac) == 0 {
			return append(dst, '0'), true // -0.0 included: JavaScript prints 0
		}
		if zeros > 5 {
			return dst, false // below 1e-6: exponent notation
		}
		significant = len(frac) - zeros
	}
	if significant > 15 {
		return dst, false
	}
	if neg {
		dst = append(dst, '-')
	}
	dst = append(dst, whole...)
	if len(frac) > 0 {
		dst = append(dst, '.')
		dst = append(dst, frac...)
	}
	return dst, true
}

func isPlainInteger(num []byte) bool {
	digits := num
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// appendJSFloat formats like Number.prototype.toString: the shortest
// representation that round-trips, fixed notation from 1e-6 up to 1e21,
// exponent notation outside it with no padding in the exponent.
func appendJSFloat(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0')
	}
	abs := math.Abs(f)
	if abs >= 1e-6 && abs < 1e21 {
		return strconv.AppendFloat(dst, f, 'f', -1, 64)
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, 'e', -1, 64)
	// Go writes e-07 and e+07; JavaScript writes e-7 and e+7.
	if n := len(dst); n-start >= 4 && dst[n-4] == 'e' && dst[n-2] == '0' {
		dst[n-2] = dst[n-1]
		dst = dst[:n-1]
	}
	return dst
}

// fromHexChar is the value of one hex digit of a \u escape.
func fromHexChar(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
