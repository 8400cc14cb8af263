package webhookguard

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
)

// isHandshake tells Meta's subscription check, on a route with a
// verify_token.
func (h *Handler) isHandshake(r *http.Request) bool {
	return len(h.verifyTokens) > 0 && r.Method == http.MethodGet && r.URL.Query().Has("hub.mode")
}

// answerHandshake answers Meta's subscription check (GET with hub.mode,
// hub.verify_token and hub.challenge). The challenge goes back byte for
// byte; the token is compared in constant time, through a hash so that
// its length does not show either. It is never forwarded.
func (h *Handler) answerHandshake(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("hub.mode") != "subscribe" || !q.Has("hub.challenge") {
		h.logRejection(r, "", outcomeHandshakeRefused, "not a subscribe handshake")
		return writeJSONError(w, http.StatusForbidden, "forbidden", "expected hub.mode=subscribe with a hub.challenge")
	}
	given := sha256.Sum256([]byte(q.Get("hub.verify_token")))
	match := 0
	for _, tok := range h.verifyTokens {
		match |= subtle.ConstantTimeCompare(given[:], tok[:])
	}
	if match != 1 {
		h.logRejection(r, "", outcomeHandshakeRefused, "verify token does not match")
		return writeJSONError(w, http.StatusForbidden, "forbidden", "hub.verify_token does not match")
	}
	h.countRequest(outcomeHandshake)
	challenge := q.Get("hub.challenge")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, err := w.Write([]byte(challenge))
	return err
}
