package webhookguard

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
)

// bodyPool recycles the buffers that hold request bodies, so that steady
// traffic does not allocate a new buffer per request.
var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody keeps one unusually large delivery from pinning its buffer
// in the pool for good.
const maxPooledBody = 4 << 20

// pooledBody is a request body read once into a pooled buffer. The buffer
// goes back to the pool only when every user is done with it: the handler
// (release) and each reader handed to the next handler (Close). An HTTP
// transport may close a request body after RoundTrip returns, so returning
// the buffer as soon as next.ServeHTTP returns could hand its bytes to
// another request while they are still being sent.
type pooledBody struct {
	buf  *bytes.Buffer
	refs atomic.Int32
}

// readBody reads the whole request body, refusing more than the handler's
// limit. The returned error wraps *http.MaxBytesError when the body is too
// large, whether or not the client announced its length.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) (*pooledBody, error) {
	if r.ContentLength > h.maxBody {
		return nil, &http.MaxBytesError{Limit: h.maxBody}
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	buf.Reset()
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	if r.Body != nil {
		_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, h.maxBody))
		if err != nil {
			bodyPool.Put(buf)
			return nil, err
		}
	}
	b := &pooledBody{buf: buf}
	b.refs.Store(1)
	return b, nil
}

func (b *pooledBody) bytes() []byte { return b.buf.Bytes() }

// release drops one reference, returning the buffer when none is left.
func (b *pooledBody) release() {
	if b.refs.Add(-1) == 0 && b.buf.Cap() <= maxPooledBody {
		bodyPool.Put(b.buf)
	}
}

// attach makes the request carry the buffered bytes as its body, with
// every length field in step, as reverse_proxy and FastCGI read them.
func (b *pooledBody) attach(r *http.Request) {
	setBody(r, b.bytes(), b)
}

// setBody installs p as r's body. When owner is non-nil the readers hold a
// reference to it until they are closed.
func setBody(r *http.Request, p []byte, owner *pooledBody) {
	r.Body = newBodyReader(p, owner)
	r.GetBody = func() (io.ReadCloser, error) {
		return newBodyReader(p, owner), nil
	}
	r.ContentLength = int64(len(p))
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.Itoa(len(p)))
	// The body is already here; a 100-continue dance with the upstream
	// would only add a round trip.
	r.Header.Del("Expect")
}

type bodyReader struct {
	bytes.Reader
	owner  *pooledBody
	closed atomic.Bool
}

func newBodyReader(p []byte, owner *pooledBody) io.ReadCloser {
	br := &bodyReader{owner: owner}
	br.Reset(p)
	if owner != nil {
		owner.refs.Add(1)
	}
	return br
}

func (br *bodyReader) Read(p []byte) (int, error) {
	if br.closed.Load() {
		return 0, errBodyClosed
	}
	return br.Reader.Read(p)
}

func (br *bodyReader) Close() error {
	if br.closed.CompareAndSwap(false, true) && br.owner != nil {
		br.owner.release()
	}
	return nil
}

var errBodyClosed = errors.New("webhook body already closed")
