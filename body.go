package webhookguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

// bodyPool recycles request bodies, buffer and bookkeeping together, so
// that steady traffic does not allocate a buffer per request.
var bodyPool = sync.Pool{New: func() any { return new(pooledBody) }}

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
	buf   bytes.Buffer
	refs  atomic.Int32
	limit limitReader // readFrom's, empty between reads
}

// getPooledBody takes an empty body from the pool, holding one reference.
func getPooledBody() *pooledBody {
	b := bodyPool.Get().(*pooledBody)
	b.buf.Reset()
	b.refs.Store(1)
	return b
}

// readBody reads the whole request body, refusing more than the handler's
// limit. The returned error wraps *http.MaxBytesError when the body is too
// large, whether or not the client announced its length.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) (*pooledBody, error) {
	if r.ContentLength > h.maxBody {
		return nil, &http.MaxBytesError{Limit: h.maxBody}
	}
	b := getPooledBody()
	if r.Body != nil {
		if err := b.readFrom(r.Body, r.ContentLength, h.maxBody); err != nil {
			b.release()
			return nil, err
		}
	}
	return b, nil
}

// readFrom reads the whole body into the buffer, refusing more than limit
// bytes with an *http.MaxBytesError. It is http.MaxBytesReader and
// ReadFrom together, with the limiting reader kept in the pooled body, so
// that reading allocates no reader per request and copies each byte once.
func (b *pooledBody) readFrom(body io.Reader, contentLength, limit int64) error {
	if contentLength > 0 {
		// Room for the announced body and for the read that finds its end.
		b.buf.Grow(int(contentLength) + bytes.MinRead)
	}
	b.limit = limitReader{r: body, left: limit + 1} // one byte over tells
	_, err := b.buf.ReadFrom(&b.limit)
	b.limit = limitReader{} // the pooled body must not keep the request's
	if int64(b.buf.Len()) > limit {
		return &http.MaxBytesError{Limit: limit}
	}
	return err
}

// limitReader reads at most left more bytes from r.
type limitReader struct {
	r    io.Reader
	left int64
}

var errOverLimit = errors.New("request body over the limit")

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errOverLimit
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

func (b *pooledBody) bytes() []byte { return b.buf.Bytes() }

// release drops one reference, returning the buffer when none is left.
func (b *pooledBody) release() {
	if b.refs.Add(-1) == 0 && b.buf.Cap() <= maxPooledBody {
		bodyPool.Put(b)
	}
}

// attach makes the request carry the buffered bytes as its body, with
// every length field in step, as reverse_proxy and FastCGI read them.
// The body reader is reader when not nil (one the delivery holds).
func (b *pooledBody) attach(r *http.Request, reader *bodyReader) {
	setBody(r, b.bytes(), b, reader)
}

// setBody installs p as r's body, read through reader, or a new reader
// when it is nil. When owner is non-nil the readers hold a reference to it
// until they are closed. A reader belongs to one request and is never
// reused, not even with its pooled body: a reader closed twice must not
// release a later request's reference.
func setBody(r *http.Request, p []byte, owner *pooledBody, reader *bodyReader) {
	if reader == nil {
		reader = new(bodyReader)
	}
	reader.init(p, owner)
	r.Body = reader
	r.GetBody = func() (io.ReadCloser, error) {
		return newBodyReader(p, owner), nil
	}
	r.ContentLength = int64(len(p))
	r.TransferEncoding = nil
	setContentLength(r.Header, len(p))
	// The body is already here; a 100-continue dance with the upstream
	// would only add a round trip.
	r.Header.Del("Expect")
}

// setContentLength sets the header unless it already says n, which it
// does for every body forwarded unchanged with its length announced.
func setContentLength(hdr http.Header, n int) {
	var buf [20]byte
	num := strconv.AppendInt(buf[:0], int64(n), 10)
	if v := hdr["Content-Length"]; len(v) == 1 && v[0] == string(num) {
		return
	}
	hdr.Set("Content-Length", string(num))
}

type bodyReader struct {
	bytes.Reader
	owner  *pooledBody
	closed atomic.Bool
}

func newBodyReader(p []byte, owner *pooledBody) io.ReadCloser {
	br := new(bodyReader)
	br.init(p, owner)
	return br
}

func (br *bodyReader) init(p []byte, owner *pooledBody) {
	br.owner = owner
	br.Reset(p)
	if owner != nil {
		owner.refs.Add(1)
	}
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

// rejectBody answers a body that could not be read: 413 when too large,
// 400 otherwise (for example a client that disconnected mid-body).
func (h *Handler) rejectBody(w http.ResponseWriter, r *http.Request, event string, err error) error {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		h.logRejection(r, event, outcomeTooLarge, "body over max_body")
		return writeJSONError(w, http.StatusRequestEntityTooLarge, "too_large",
			fmt.Sprintf("request body is larger than the %s limit", humanize.Bytes(uint64(h.maxBody))))
	}
	if errors.Is(err, context.Canceled) {
		return caddyhttp.Error(499, err)
	}
	h.logRejection(r, event, outcomeBadRequest, "body could not be read")
	return writeJSONError(w, http.StatusBadRequest, "bad_request", "request body could not be read")
}
