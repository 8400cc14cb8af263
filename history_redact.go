package webhookguard

import (
	"net/http"
	"slices"
	"strings"
)

// What the history shows of forwarded headers.

// redactHeaders is the forwarded headers as the history shows them:
// signature headers are never stored, and credentials a sender put in
// other headers (basic auth on the webhook URL, a token) are kept for
// delivery but not shown. The rule errs towards hiding: a header is shown
// only when its name contains none of credentialWords and none of its
// values looks like a credential.
func redactHeaders(hdr http.Header) http.Header {
	out := make(http.Header, len(hdr))
	for name, values := range hdr {
		if isCredentialHeader(name) || slices.ContainsFunc(values, looksLikeCredential) {
			out[name] = []string{"[redacted]"}
			continue
		}
		out[name] = values
	}
	return out
}

// credentialWords hide a header whose name contains one of them, in any
// case (README, History, lists them).
var credentialWords = []string{"auth", "key", "token", "secret", "signature", "sig", "password", "passwd", "pwd",
	"pass", "session", "cookie", "credential", "private", "jwt", "bearer", "csrf", "xsrf", "nonce"}

func isCredentialHeader(name string) bool {
	lower := strings.ToLower(name)
	return slices.ContainsFunc(credentialWords, func(w string) bool { return strings.Contains(lower, w) })
}

// credentialSchemes start a value that carries a credential, whatever
// the header's name (an Authorization-style value under another name).
var credentialSchemes = []string{"bearer ", "basic ", "digest ", "token ", "negotiate ", "hmac ", "aws4-hmac-"}

// looksLikeCredential reports whether a header value carries a
// credential: an authorization scheme followed by its secret, or a JWT.
func looksLikeCredential(v string) bool {
	lower := strings.ToLower(strings.TrimSpace(v))
	if slices.ContainsFunc(credentialSchemes, func(s string) bool { return strings.HasPrefix(lower, s) }) {
		return true
	}
	return strings.HasPrefix(lower, "eyj") && strings.Count(v, ".") == 2
}
