package webhookguard

import (
	"errors"
	"fmt"
	"maps"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// A sub-request is a request the gateway makes of a handler chain on its
// own: a batch item through the rest of the route, an inbox event through
// its deliver handler. Each gets a fresh replacer, vars and route-group
// state (through caddyhttp.PrepareRequest), a private response writer
// that never touches the sender's, and its panics recovered under one
// rule: reverse_proxy aborts a response that broke after its headers by
// panicking, and a 2xx already received means the app took the request.

// subAnswer is what a sub-request got back.
type subAnswer struct {
	status int // the app's; for an error, the status Caddy would answer
	err    error
	header http.Header
	body   []byte // the first keep bytes of the answer
}

// ok reports whether the app took the request (2xx).
func (a subAnswer) ok() bool { return a.err == nil && a.status >= 200 && a.status < 300 }

// serveSub runs handler on req as a sub-request of server srv, keeping
// the first keep bytes of the answer. parent, when set, lends req its
// vars (set by earlier handlers); placeholders are set on the fresh
// replacer.
func serveSub(handler caddyhttp.Handler, req, parent *http.Request, srv *caddyhttp.Server, keep int,
	placeholders func(*caddy.Replacer)) (a subAnswer) {
	mw := &memWriter{hdr: make(http.Header), keep: keep}
	repl := caddy.NewReplacer()
	req = caddyhttp.PrepareRequest(req, repl, mw, srv)
	if parent != nil {
		copyVars(parent, req)
	}
	placeholders(repl)
	defer func() {
		a.header, a.body = mw.hdr, mw.body
		if p := recover(); p != nil {
			a.status, a.err = mw.status, nil
			if mw.status < 200 || mw.status > 299 {
				a.status, a.err = http.StatusBadGateway, brokenAnswer{mw.status, fmt.Errorf("handler panicked: %v", p)}
			}
		}
	}()
	if err := handler.ServeHTTP(mw, req); err != nil {
		return subAnswer{status: errorStatus(err), err: err}
	}
	a.status = mw.status
	if a.status == 0 {
		a.status = http.StatusOK
	}
	return a
}

// brokenAnswer is an answer that broke off after its headers.
type brokenAnswer struct {
	status int
	cause  error
}

func (b brokenAnswer) Error() string {
	return fmt.Sprintf("the app's answer (status %d) broke off after its headers", b.status)
}
func (b brokenAnswer) Unwrap() error { return b.cause }

// errorStatus is the status Caddy answers for a handler error: the
// HandlerError's own, else 502 (the route behind the gateway failed).
func errorStatus(err error) int {
	if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok && he.StatusCode != 0 {
		return he.StatusCode
	}
	return http.StatusBadGateway
}

// copyVars carries variables set by earlier handlers (vars, map) into a
// sub-request, whose PrepareRequest started an empty map.
func copyVars(from, to *http.Request) {
	parent, ok := from.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return
	}
	child, ok := to.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return
	}
	maps.Copy(child, parent)
}

// memWriter receives a sub-request's answer: its status, its headers and
// the first keep bytes of its body (the sender gets the gateway's answer,
// never this one).
type memWriter struct {
	hdr    http.Header
	status int
	keep   int    // how much of the body to keep (0: none)
	body   []byte // the first keep bytes
}

func (m *memWriter) Header() http.Header { return m.hdr }

func (m *memWriter) WriteHeader(status int) {
	if m.status == 0 && status >= 200 {
		m.status = status
	}
}

func (m *memWriter) Write(p []byte) (int, error) {
	if m.status == 0 {
		m.status = http.StatusOK
	}
	if room := m.keep - len(m.body); room > 0 {
		m.body = append(m.body, p[:min(room, len(p))]...)
	}
	return len(p), nil
}
