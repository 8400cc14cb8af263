package webhookguard

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
)

// TestReadLimited guards the body reading that replaced MaxBytesReader: a
// body at the limit is read whole, one byte over it is refused with
// *http.MaxBytesError whatever length was announced, and read errors are
// passed on rather than taken for the end of the body.
func TestReadLimited(t *testing.T) {
	t.Parallel()
	const limit = 1000
	for _, tc := range []struct {
		name    string
		size    int
		cl      int64 // announced length, -1 for chunked
		reader  func(io.Reader) io.Reader
		tooBig  bool
		failure bool
	}{
		{name: "empty", size: 0, cl: 0},
		{name: "announced, under", size: 10, cl: 10},
		{name: "announced, at limit", size: limit, cl: limit},
		{name: "chunked, at limit", size: limit, cl: -1},
		{name: "chunked, one over", size: limit + 1, cl: -1, tooBig: true},
		{name: "announced short, body over", size: limit + 50, cl: 20, tooBig: true},
		{name: "one byte at a time", size: limit, cl: -1, reader: iotest.OneByteReader},
		{name: "one byte at a time, over", size: limit + 1, cl: -1, reader: iotest.OneByteReader, tooBig: true},
		{name: "data with EOF", size: 300, cl: 300, reader: iotest.DataErrReader},
		{name: "read error", size: 300, cl: 300, failure: true,
			reader: func(r io.Reader) io.Reader {
				return io.MultiReader(io.LimitReader(r, 100), iotest.ErrReader(errors.New("reset")))
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(strings.Repeat("abcdefghij", tc.size/10+1)[:tc.size])
			var r io.Reader = bytes.NewReader(body)
			if tc.reader != nil {
				r = tc.reader(r)
			}
			pb := getPooledBody()
			defer pb.release()
			err := pb.readFrom(r, tc.cl, limit)
			_, isTooBig := errors.AsType[*http.MaxBytesError](err)
			switch {
			case tc.tooBig:
				if !isTooBig {
					t.Fatalf("got %v, want a MaxBytesError", err)
				}
			case tc.failure:
				if err == nil || isTooBig {
					t.Fatalf("got %v, want the read error", err)
				}
			case err != nil:
				t.Fatalf("unexpected error %v", err)
			case !bytes.Equal(pb.bytes(), body):
				t.Fatalf("read %d bytes, want the %d sent", len(pb.bytes()), len(body))
			}
		})
	}
}
