package inbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
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
// attempt log as a count of attempts, the dedupe keys as a count of keys.
// The body is not part of it (it is kept in its own bucket); its CRC-32C
// is, and the record ends with the CRC-32C of everything before it, so
// that a byte changed anywhere in the record, or in the body, is found
// rather than delivered.
const codecVersion = 4

// crcTable is CRC-32C (Castagnoli), which the CPU computes in hardware.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

var errCorrupt = errors.New("inbox: corrupt event record")

// errBodyDamaged is a body whose bytes are not those that were stored.
var errBodyDamaged = errors.New("inbox: the body does not match its checksum")

// bodySum is the checksum an event record keeps of its body.
func bodySum(body []byte) uint32 { return crc32.Checksum(body, crcTable) }

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
		b = append(b, a.trigger())
		b = binary.AppendVarint(b, int64(a.Status))
		b = binary.AppendVarint(b, int64(a.Duration))
		b = appendString(b, a.Error)
		b = appendString(b, a.Response)
		b = appendString(b, a.Instance)
	}
	b = binary.AppendUvarint(b, uint64(len(e.Keys)))
	for _, k := range e.Keys {
		b = appendString(b, k)
	}
	b = binary.AppendVarint(b, unixNanos(e.KeysUntil))
	b = binary.LittleEndian.AppendUint32(b, e.BodySum)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// Attempt triggers as the record stores them.
const (
	triggerAuto   = 0
	triggerManual = 1
	triggerLate   = 2
)

func (a Attempt) trigger() byte {
	switch {
	case a.Late:
		return triggerLate
	case a.Manual:
		return triggerManual
	}
	return triggerAuto
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// decodeEvent reads a record of this version or of versions 2 and 3,
// which a file written by an earlier build holds (version 2 lacks the
// attempts' responses; neither has keys or checksums).
func decodeEvent(b []byte) (*Event, error) {
	if len(b) == 0 || b[0] < 2 || b[0] > codecVersion {
		return nil, fmt.Errorf("%w: unknown version", errCorrupt)
	}
	version := b[0]
	if version >= 4 {
		if len(b) < 9 {
			return nil, fmt.Errorf("%w: too short", errCorrupt)
		}
		body := b[:len(b)-4]
		if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
			return nil, fmt.Errorf("%w: checksum mismatch", errCorrupt)
		}
		b = body
	}
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
			switch t := r.byte(); {
			case t == triggerManual:
				a.Manual = true
			case t == triggerLate && version >= 4:
				a.Late = true
			case t != triggerAuto:
				r.err = errCorrupt
			}
			a.Status = int(r.varint())
			a.Duration = time.Duration(r.varint())
			a.Error = r.string()
			if version >= 3 {
				a.Response = r.string()
			}
			if version >= 4 {
				a.Instance = r.string()
			}
		}
	}
	if version >= 4 {
		if n := r.uvarint(); n > 0 && r.err == nil {
			if n > uint64(len(r.b)) {
				return nil, errCorrupt
			}
			e.Keys = make([]string, n)
			for i := range e.Keys {
				e.Keys[i] = r.string()
			}
		}
		if n := r.varint(); n != 0 {
			e.KeysUntil = time.Unix(0, n)
		}
		e.BodySum, e.summed = r.uint32(), true
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
	switch r.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	r.err = errCorrupt
	return false
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = errCorrupt
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uint32() uint32 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 4 {
		r.err = errCorrupt
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b)
	r.b = r.b[4:]
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
