package inbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Events are stored in a small binary form rather than JSON: decoding
// one is part of every delivery attempt, and JSON's reflection, header
// map and time parsing made it a tenth of the dispatcher's CPU.
//
// The form is a version byte, then the fields in the order of
// encodeEvent, strings and byte slices as a uvarint length and the bytes,
// numbers as varints, times as nanoseconds since 1970 (0 for the zero
// time), headers as a count of names, each with a count of values, the
// attempt log as a count of attempts. The body is not part of it (it is
// kept in its own bucket).
const codecVersion = 3

var errCorrupt = errors.New("inbox: corrupt event record")

func encodeEvent(e *Event) []byte {
	b := make([]byte, 0, 256)
	b = append(b, codecVersion)
	for _, s := range []string{e.ID, e.Queue, e.Name, e.Key, e.OrderKey, e.Method, e.URI, e.Host, e.RemoteAddr, string(e.State), e.LastError} {
		b = appendString(b, s)
	}
	b = binary.AppendUvarint(b, e.Seq)
	b = binary.AppendUvarint(b, e.Pos)
	b = append(b, boolByte(e.Manual))
	b = binary.AppendVarint(b, int64(e.Attempts))
	b = binary.AppendVarint(b, int64(e.LastStatus))
	for _, t := range []time.Time{e.ReceivedAt, e.NextAt, e.DeliveredAt} {
		b = binary.AppendVarint(b, unixNanos(t))
	}
	b = binary.AppendUvarint(b, uint64(len(e.Header)))
	for name, values := range e.Header {
		b = appendString(b, name)
		b = binary.AppendUvarint(b, uint64(len(values)))
		for _, v := range values {
			b = appendString(b, v)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(e.Log)))
	for _, a := range e.Log {
		b = binary.AppendVarint(b, int64(a.N))
		b = binary.AppendVarint(b, unixNanos(a.At))
		b = append(b, boolByte(a.Manual))
		b = binary.AppendVarint(b, int64(a.Status))
		b = binary.AppendVarint(b, int64(a.Duration))
		b = appendString(b, a.Error)
		b = appendString(b, a.Response)
	}
	return b
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func decodeEvent(b []byte) (*Event, error) {
	// Version 2 (a development build's) lacks the attempts' responses.
	if len(b) == 0 || (b[0] != codecVersion && b[0] != 2) {
		return nil, fmt.Errorf("%w: unknown version", errCorrupt)
	}
	version := b[0]
	r := reader{b: b[1:]}
	e := new(Event)
	var state string
	for _, s := range []*string{&e.ID, &e.Queue, &e.Name, &e.Key, &e.OrderKey, &e.Method, &e.URI, &e.Host, &e.RemoteAddr, &state, &e.LastError} {
		*s = r.string()
	}
	e.State = State(state)
	e.Seq = r.uvarint()
	e.Pos = r.uvarint()
	e.Manual = r.bool()
	e.Attempts = int(r.varint())
	e.LastStatus = int(r.varint())
	for _, t := range []*time.Time{&e.ReceivedAt, &e.NextAt, &e.DeliveredAt} {
		if n := r.varint(); n != 0 {
			*t = time.Unix(0, n)
		}
	}
	if names := r.uvarint(); names > 0 && r.err == nil {
		if names > uint64(len(r.b)) {
			return nil, errCorrupt
		}
		e.Header = make(http.Header, names)
		for range names {
			name := r.string()
			count := r.uvarint()
			if count > uint64(len(r.b))+1 {
				return nil, errCorrupt
			}
			values := make([]string, 0, count)
			for range count {
				values = append(values, r.string())
			}
			e.Header[name] = values
		}
	}
	if n := r.uvarint(); n > 0 && r.err == nil {
		if n > uint64(len(r.b)) {
			return nil, errCorrupt
		}
		e.Log = make([]Attempt, n)
		for i := range e.Log {
			a := &e.Log[i]
			a.N = int(r.varint())
			if at := r.varint(); at != 0 {
				a.At = time.Unix(0, at)
			}
			a.Manual = r.bool()
			a.Status = int(r.varint())
			a.Duration = time.Duration(r.varint())
			a.Error = r.string()
			if version >= 3 {
				a.Response = r.string()
			}
		}
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, errCorrupt
	}
	return e, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// reader takes fields off a record; after the first error every read
// returns zero and err stays set.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bool() bool {
	if r.err != nil {
		return false
	}
	if len(r.b) == 0 || r.b[0] > 1 {
		r.err = errCorrupt
		return false
	}
	v := r.b[0] == 1
	r.b = r.b[1:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errCorrupt
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
