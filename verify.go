package webhookguard

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Signature schemes.
const (
	schemeKapso    = "kapso"
	schemeMeta     = "meta"
	schemeHMAC     = "hmac"
	schemeStandard = "standard"
)

const defaultTolerance = 5 * time.Minute

// Verifier checks one signature scheme against one or more secrets.
//
// Schemes:
//
//	kapso     X-Webhook-Signature: hex(HMAC-SHA256(secret, body)); an
//	          optional "sha256=" prefix is tolerated, hex case is ignored.
//	meta      X-Hub-Signature-256: sha256=hex(HMAC-SHA256(app secret, body)).
//	hmac      a configurable header, prefix, encoding and hash.
//	standard  Standard Webhooks (webhook-id, webhook-timestamp,
//	          webhook-signature, or the same with an svix- prefix) with a
//	          whsec_ secret and a timestamp tolerance.
type Verifier struct {
	// Scheme is one of "kapso", "meta", "hmac" or "standard". Required.
	Scheme string `json:"scheme,omitempty"`

	// Secrets are the keys a signature may be made with; a request passes
	// when it was signed with any of them, so a secret can be rotated
	// without downtime by listing the old and the new one. Each may be a
	// {env.NAME} or {file./path} placeholder, resolved at provision time; a
	// secret that resolves empty is an error. At least one is required.
	Secrets []string `json:"secrets,omitempty"`

	// Header names the signature header for the hmac scheme. Required for
	// hmac, ignored by the other schemes.
	Header string `json:"header,omitempty"`

	// Prefix is stripped from the hmac header value before decoding (for
	// example "sha256="); a value without it is rejected. Default: none.
	Prefix string `json:"prefix,omitempty"`

	// Encoding of the hmac signature: "hex" or "base64" (standard or
	// URL alphabet, with or without padding). Default: hex.
	Encoding string `json:"encoding,omitempty"`

	// Algorithm of the hmac scheme: "sha256", "sha512" or "sha1".
	// Default: sha256.
	Algorithm string `json:"algorithm,omitempty"`

	// Tolerance is how far the standard scheme's webhook-timestamp may be
	// from the gateway's clock, in either direction. Default: 5m.
	Tolerance caddy.Duration `json:"tolerance,omitempty"`

	keys      []*macKey
	header    string
	kind      schemeKind
	tolerance time.Duration
	now       func() time.Time // the handler's clock
	// schemeValue is Scheme boxed once, for the placeholder that carries
	// it on every verified request.
	schemeValue any
}

// schemeKind is Scheme resolved once, so that requests switch on an int.
type schemeKind int

const (
	kindKapso schemeKind = iota
	kindMeta
	kindHMAC
	kindStandard
)

// verifyError says why a request was refused. message goes to the sender;
// reason goes to the log, kind to the metrics. None may carry a secret or
// a signature.
type verifyError struct {
	kind    failureKind
	message string
	reason  string
}

// failureKind is why a verifier refused a request, as the metrics label it.
type failureKind int

const (
	failMissing failureKind = iota
	failMismatch
	failMalformed
	failRepeated
	failTimestamp
)

// String is the kind's metric label.
func (k failureKind) String() string {
	switch k {
	case failMissing:
		return "missing"
	case failMismatch:
		return "mismatch"
	case failRepeated:
		return "repeated"
	case failTimestamp:
		return "timestamp"
	}
	return "malformed"
}

func (v *Verifier) provision(repl *caddy.Replacer, now func() time.Time) error {
	v.now = now
	v.Scheme = strings.ToLower(strings.TrimSpace(v.Scheme))
	v.schemeValue = v.Scheme
	v.keys = v.keys[:0]
	alg := hashSHA256
	switch v.Scheme {
	case schemeKapso:
		v.kind, v.header = kindKapso, headerKapsoSignature
	case schemeMeta:
		v.kind, v.header = kindMeta, "X-Hub-Signature-256"
	case schemeHMAC:
		v.kind, v.header = kindHMAC, v.Header
		var err error
		if alg, err = parseAlgorithm(v.Algorithm); err != nil {
			return err
		}
	case schemeStandard:
		v.kind, v.header = kindStandard, "Webhook-Signature"
		v.tolerance = time.Duration(v.Tolerance)
		if v.tolerance <= 0 {
			v.tolerance = defaultTolerance
		}
	default:
		return fmt.Errorf("unknown scheme %q (want kapso, meta, hmac or standard)", v.Scheme)
	}
	v.header = http.CanonicalHeaderKey(v.header)
	for i, s := range v.Secrets {
		secret, err := resolveSecret(repl, s)
		if err != nil {
			return fmt.Errorf("secret %d: %w", i+1, err)
		}
		key := []byte(secret)
		if v.Scheme == schemeStandard {
			if key, err = decodeStandardSecret(secret); err != nil {
				return fmt.Errorf("secret %d: %w", i+1, err)
			}
		}
		v.keys = append(v.keys, newMacKey(alg, key))
	}
	return nil
}

// signTest returns the headers that sign body as the sender would,
// with the verifier's first secret: Send Test Event's deliveries must
// pass the handler's own verification. It signs nothing without a secret.
func (v *Verifier) signTest(body []byte, now time.Time) http.Header {
	h := http.Header{}
	if len(v.keys) == 0 {
		return h
	}
	k := v.keys[0]
	switch v.kind {
	case kindKapso:
		h.Set(v.header, k.sign(body))
	case kindMeta:
		h.Set(v.header, "sha256="+k.sign(body))
	case kindHMAC:
		sig := hex.EncodeToString(k.sum(body))
		if strings.EqualFold(v.Encoding, "base64") {
			sig = base64.StdEncoding.EncodeToString(k.sum(body))
		}
		h.Set(v.header, v.Prefix+sig)
	case kindStandard:
		id, ts := randomID("msg_"), strconv.FormatInt(now.Unix(), 10)
		h.Set("Webhook-Id", id)
		h.Set("Webhook-Timestamp", ts)
		h.Set("Webhook-Signature", "v1,"+base64.StdEncoding.EncodeToString(k.sumStandard(id, ts, body)))
	}
	return h
}

func (v *Verifier) validate() error { return v.checkOptions() }

// checkOptions checks what can be checked without resolving secrets:
// Validate runs it on JSON configs, the Caddyfile parser as it reads, so
// that caddy adapt reports the file and line.
func (v *Verifier) checkOptions() error {
	switch strings.ToLower(strings.TrimSpace(v.Scheme)) {
	case schemeKapso, schemeMeta, schemeHMAC, schemeStandard:
	default:
		return fmt.Errorf("unknown scheme %q (want kapso, meta, hmac or standard)", v.Scheme)
	}
	scheme := strings.ToLower(strings.TrimSpace(v.Scheme))
	if len(v.Secrets) == 0 {
		return errors.New("at least one secret is required")
	}
	if slices.Contains(v.Secrets, "") {
		return errors.New("a secret is empty (a {$VAR} placeholder whose variable is unset or empty?)")
	}
	if scheme == schemeHMAC && v.Header == "" {
		return errors.New("the hmac scheme needs a header")
	}
	if scheme == schemeHMAC {
		switch strings.ToLower(v.Encoding) {
		case "", "hex", "base64":
		default:
			return fmt.Errorf("unknown encoding %q (want hex or base64)", v.Encoding)
		}
		if _, err := parseAlgorithm(v.Algorithm); err != nil {
			return err
		}
	}
	if scheme != schemeHMAC && (v.Header != "" || v.Prefix != "" || v.Encoding != "" || v.Algorithm != "") {
		return fmt.Errorf("header, prefix, encoding and algorithm apply only to the hmac scheme (the %s scheme's header is fixed)", scheme)
	}
	if scheme != schemeStandard && v.Tolerance != 0 {
		return errors.New("tolerance applies only to the standard scheme")
	}
	return nil
}

// resolveSecret expands {env.*} and {file.*} placeholders. An unknown
// placeholder or an empty result is an error: a verifier must never end up
// with an empty key, which anybody could sign with.
func resolveSecret(repl *caddy.Replacer, s string) (string, error) {
	out, err := repl.ReplaceOrErr(s, true, true)
	if err != nil {
		return "", fmt.Errorf("resolving secret: %w", err)
	}
	if out == "" {
		if strings.Contains(s, "{") {
			// The placeholder names the variable or file, not the secret.
			return "", fmt.Errorf("secret %s is empty: is the variable set, or the file non-empty?", s)
		}
		return "", errors.New("secret is empty")
	}
	return out, nil
}

func decodeStandardSecret(secret string) ([]byte, error) {
	raw := strings.TrimPrefix(secret, "whsec_")
	key, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		// Unpadded, as the Standard Webhooks libraries also accept.
		key, err = base64.RawStdEncoding.DecodeString(raw)
	}
	if err != nil {
		return nil, errors.New("a standard webhooks secret must be base64 (padded or not), with or without a whsec_ prefix")
	}
	if len(key) == 0 {
		return nil, errors.New("secret is empty")
	}
	return key, nil
}

// verify tries every verifier and returns the scheme of the first that
// accepts the request. When none does, the error says whether a signature
// was missing altogether or did not match.
func (h *Handler) verify(r *http.Request, body []byte) (*Verifier, *verifyError) {
	var first *verifyError
	allMissing := true
	for _, v := range h.Verify {
		err := v.check(r, body)
		if err == nil {
			return v, nil
		}
		metrics.verifyFailures.WithLabelValues(h.name, v.Scheme, err.kind.String()).Inc()
		if err.kind != failMissing {
			allMissing = false
			if first == nil {
				first = err
			}
		}
	}
	if allMissing {
		return nil, &verifyError{kind: failMissing, reason: "missing signature header",
			message: "missing signature header: expected " + h.expectedHeaders()}
	}
	return nil, first
}

func (h *Handler) expectedHeaders() string {
	names := make([]string, 0, len(h.Verify))
	for _, v := range h.Verify {
		names = append(names, v.header)
	}
	return strings.Join(names, " or ")
}

func (v *Verifier) check(r *http.Request, body []byte) *verifyError {
	if v.kind == kindStandard {
		return v.checkStandard(r, body)
	}
	value, err := singleHeaderCanonical(r, v.header)
	if err != nil {
		return err
	}
	// Decoded into a stack buffer: verification allocates nothing per
	// request for the hex schemes.
	var buf [sha512.Size]byte
	var sig []byte
	var ok bool
	switch v.kind {
	case kindKapso:
		sig, ok = decodeHexInto(buf[:], strings.TrimPrefix(value, "sha256="))
	case kindMeta:
		rest, found := strings.CutPrefix(value, "sha256=")
		if !found {
			return refused(failMalformed, v.header, "signature must start with sha256=")
		}
		sig, ok = decodeHexInto(buf[:], rest)
	case kindHMAC:
		rest, found := strings.CutPrefix(value, v.Prefix)
		if !found {
			return refused(failMalformed, v.header, "signature lacks the configured prefix")
		}
		if strings.EqualFold(v.Encoding, "base64") {
			sig, ok = decodeBase64Signature(rest)
		} else {
			sig, ok = decodeHexInto(buf[:], rest)
		}
	}
	if !ok {
		return refused(failMalformed, v.header, "signature is not well formed")
	}
	for _, k := range v.keys {
		if k.matches(sig, body) {
			return nil
		}
	}
	return refused(failMismatch, v.header, "signature does not match")
}

// singleHeader returns the one value of a signature header. A repeated
// header is refused: which copy would count is ambiguous, and ambiguity in
// signature checks is where bypasses come from.
func singleHeader(r *http.Request, name string) (string, *verifyError) {
	return singleHeaderCanonical(r, http.CanonicalHeaderKey(name))
}

// singleHeaderCanonical is singleHeader for a name already in canonical
// form, which skips canonicalizing it on every request.
func singleHeaderCanonical(r *http.Request, name string) (string, *verifyError) {
	values := r.Header[name]
	switch {
	case len(values) == 0 || (len(values) == 1 && values[0] == ""):
		return "", &verifyError{kind: failMissing}
	case len(values) > 1:
		return "", &verifyError{kind: failRepeated, reason: "repeated signature header",
			message: name + " was sent more than once"}
	}
	return values[0], nil
}

// refused is a refusal of a signature that was there: the sender is told
// only that it does not match, the log gets the reason.
func refused(kind failureKind, header, reason string) *verifyError {
	return &verifyError{kind: kind, reason: reason, message: header + ": signature does not match the request body"}
}

// checkStandard implements the Standard Webhooks scheme: the signed content
// is "<id>.<timestamp>.<body>", the header carries space-separated
// "v1,<base64>" entries, any of which may match.
func (v *Verifier) checkStandard(r *http.Request, body []byte) *verifyError {
	prefix := "Webhook-"
	if r.Header.Get("Webhook-Signature") == "" && r.Header.Get("Svix-Signature") != "" {
		prefix = "Svix-"
	}
	id, err := singleHeader(r, prefix+"Id")
	if err != nil {
		return err
	}
	ts, err := singleHeader(r, prefix+"Timestamp")
	if err != nil {
		return err
	}
	sigs, err := singleHeader(r, prefix+"Signature")
	if err != nil {
		return err
	}
	sec, perr := strconv.ParseInt(ts, 10, 64)
	if perr != nil {
		return &verifyError{kind: failTimestamp, reason: "timestamp not an integer", message: prefix + "timestamp is not a Unix time in seconds"}
	}
	skew := v.now().Sub(time.Unix(sec, 0))
	if skew > v.tolerance || skew < -v.tolerance {
		return &verifyError{kind: failTimestamp, reason: "timestamp outside tolerance",
			message: prefix + "timestamp is outside the allowed tolerance"}
	}
	for _, k := range v.keys {
		want := k.sumStandard(id, ts, body)
		for entry := range strings.FieldsSeq(sigs) {
			b64, found := strings.CutPrefix(entry, "v1,")
			if !found {
				continue
			}
			got, ok := decodeBase64Signature(b64)
			if ok && hmac.Equal(got, want) {
				return nil
			}
		}
	}
	return refused(failMismatch, prefix+"Signature", "no v1 signature matches")
}

// standardID is the webhook-id (or svix-id) of a Standard Webhooks
// delivery.
func standardID(r *http.Request) string {
	if id := r.Header.Get("Webhook-Id"); id != "" {
		return id
	}
	return r.Header.Get("Svix-Id")
}

// decodeHexInto decodes hex of either case into dst (at least
// sha512.Size long). It rejects anything else, including spaces and odd
// lengths, so that no two header values decode to the same signature by
// accident.
func decodeHexInto(dst []byte, s string) ([]byte, bool) {
	if len(s) == 0 || len(s)%2 != 0 || len(s) > 2*sha512.Size {
		return nil, false
	}
	var src [2 * sha512.Size]byte // a copy on the stack: the header needs no allocation
	n, err := hex.Decode(dst, src[:copy(src[:], s)])
	if err != nil {
		return nil, false
	}
	return dst[:n], true
}

func decodeBase64Signature(s string) ([]byte, bool) {
	if len(s) == 0 || len(s) > 4*sha512.Size {
		return nil, false
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}
