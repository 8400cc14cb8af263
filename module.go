// Package webhookguard is a Caddy HTTP middleware that sits in front of any
// app receiving signed webhooks (Kapso, Meta WhatsApp, generic HMAC,
// Standard Webhooks). It verifies the signature over the exact bytes
// received, deduplicates deliveries so each event reaches the app once,
// splits Kapso batched deliveries into ordered individual requests and can
// answer Meta's subscription handshake, all before the request reaches the
// next handler (normally reverse_proxy).
package webhookguard

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Headers the gateway sets on what it forwards. A client could send any of
// them to fool the upstream, so every one is removed from the incoming
// request before anything else happens.
const (
	headerVerified       = "X-Webhook-Verified"
	headerDuplicate      = "X-Webhook-Duplicate"
	headerNormalized     = "X-Webhook-Normalized"
	headerBatchID        = "X-Webhook-Batch-Id"
	headerBatchIndex     = "X-Webhook-Batch-Index"
	headerBatchCount     = "X-Webhook-Batch-Count"
	headerConversationID = "X-Webhook-Conversation-Id"
	headerSequence       = "X-Webhook-Sequence"
	headerTest           = "X-Webhook-Test" // "true" on a Send Test Event delivery

	headerEvent          = "X-Webhook-Event"
	headerIdempotencyKey = "X-Idempotency-Key"
	headerKapsoSignature = "X-Webhook-Signature"
)

// defaultMaxBody is above Meta's documented 3 MB payload limit.
const defaultMaxBody = 5 * 1000 * 1000

// Handler verifies, deduplicates and unbatches webhook deliveries before they
// reach the next handler.
//
// A request whose signature is missing or wrong is answered 401 with a JSON
// body {"error":"invalid_signature","message":"..."}; a body over max_body is
// answered 413. Neither reaches the next handler. An accepted request is
// passed on with its body byte-for-byte unchanged and the header
// X-Webhook-Verified set to the scheme that accepted it.
//
// Placeholders set for later handlers and logs:
//
//	{http.webhook.verified}         the scheme that accepted the request
//	{http.webhook.event}            the X-Webhook-Event header (or a batch's type)
//	{http.webhook.idempotency_key}  the delivery's dedupe key
//	{http.webhook.duplicate}        "true" when answered as a duplicate
//	{http.webhook.batch_index}      0-based index of a batch item
//	{http.webhook.batch_count}      number of items in the batch
type Handler struct {
	// Name labels this handler's metrics and log lines. Default: the
	// schemes of its verifiers joined by "+", such as "kapso" or
	// "kapso+meta".
	Name string `json:"name,omitempty"`

	// Verify lists the signature verifiers. A request passes when any one
	// of them accepts it. At least one is required: a handler without
	// verifiers fails validation rather than running open.
	Verify []*Verifier `json:"verify,omitempty"`

	// MaxBody is the largest request body, in bytes, that is read and
	// verified. Larger bodies are answered 413, before reading when the
	// Content-Length says so. Default: 5MB.
	MaxBody int64 `json:"max_body,omitempty"`

	// Dedupe turns on deduplication of deliveries when set. Default: off
	// (but see Unbatch).
	Dedupe *Dedupe `json:"dedupe,omitempty"`

	// Unbatch turns a Kapso batched delivery into ordered individual
	// forwards when set. It needs a dedupe store to deliver each item
	// exactly once, so it turns on Dedupe with its defaults when Dedupe is
	// not set. Default: off.
	Unbatch *Unbatch `json:"unbatch,omitempty"`

	// Normalize, when "meta", rewrites a raw Meta WhatsApp payload into the
	// JSON that Kapso's SDK normalizeWebhook() (0.3.0) returns for it,
	// forwarded with X-Webhook-Normalized: true. A verified body that is
	// not a JSON object, or one the SDK itself rejects, is forwarded
	// unchanged with X-Webhook-Normalized: false. Default: off.
	Normalize string `json:"normalize,omitempty"`

	// Alert, when set, tells a person when deliveries start to fail,
	// events die, the oldest pending event waits too long, and the app
	// recovers (see Alert). Default: none.
	Alert *Alert `json:"alert,omitempty"`

	// VerifyTokens answers Meta's subscription handshake: a GET with
	// hub.mode=subscribe and one of these tokens as hub.verify_token is
	// answered 200 with hub.challenge as plain text, any other handshake
	// 403; handshakes are never forwarded. Accepts {env.*} and {file.*}
	// placeholders. Default: none (a handshake is refused like any
	// unsigned request).
	VerifyTokens []string `json:"verify_tokens,omitempty"`

	// Inbox, when set, answers the sender as soon as an accepted event is
	// stored on disk and delivers it to the app from there, retrying
	// until the app takes it (see Inbox). The handler is then terminal for
	// accepted events. Default: off (events are forwarded to the rest of
	// the route while the sender waits).
	Inbox *Inbox `json:"inbox,omitempty"`

	// Events lists the events this route's app handles, as patterns in
	// which "*" stands for any run of characters ("whatsapp.message.*",
	// "*.report", "*"). A verified delivery whose event matches none is
	// answered 200 {"status":"ignored"} and not forwarded. The event is
	// X-Webhook-Event when present (Kapso), else the body's top-level
	// "type", else each change's "field" of a raw Meta payload (which
	// passes when any field matches); a delivery with no event passes
	// only when the list holds "*". In a Kapso batch, items whose event
	// does not match are skipped. Default: every event passes.
	Events []string `json:"events,omitempty"`

	// ForwardSecret, when set, re-signs every body the gateway rewrote or
	// split with X-Webhook-Signature: hex(HMAC-SHA256(forward_secret,
	// body)), so an upstream that verifies Kapso signatures keeps working.
	// Accepts {env.*} and {file.*} placeholders. Default: none (rewritten
	// bodies carry no signature).
	ForwardSecret string `json:"forward_secret,omitempty"`

	forwardKey   *macKey
	verifyTokens [][32]byte
	maxBody      int64
	name         string
	metrics      handlerMetrics
	logger       *zap.Logger
	// now is the clock of the Standard Webhooks tolerance and of dedupe
	// expiry; tests set their own before provisioning.
	now func() time.Time
	// outsideConfig is set by in-process benchmarks, whose context has no
	// config to load the app into (Caddy's ctx.App needs one).
	outsideConfig bool
	app           *App
	recent        *recentHandler        // the timeline, and the in-memory history without an inbox
	helper        *httpcaddyfile.Helper // while the Caddyfile is parsed
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_guard",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets, sets defaults and attaches the dedupe store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	// The app checks, once every route is provisioned, that no handler
	// answers requests before this one runs.
	if !h.outsideConfig {
		app, err := ctx.App("webhook_guard")
		if err != nil {
			return err
		}
		h.app = app.(*App)
		if err := h.app.checkOrderAtProvision(ctx); err != nil {
			return err
		}
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.name = h.Name
	if h.name == "" {
		h.name = h.defaultName()
	}
	if h.app != nil {
		h.app.addHandler(h)
	}
	registerMetrics(ctx, h.logger)
	h.metrics = newHandlerMetrics(h.name, len(h.Events) > 0)
	h.recent = acquireRecent(h.name)
	h.maxBody = h.MaxBody
	if h.maxBody <= 0 {
		h.maxBody = defaultMaxBody
	}
	repl := caddy.NewReplacer()
	for i, v := range h.Verify {
		if v == nil {
			return fmt.Errorf("verify[%d]: empty verifier", i)
		}
		if err := v.provision(repl, h.now); err != nil {
			return fmt.Errorf("verify[%d] (%s): %w", i, v.Scheme, err)
		}
	}
	if h.ForwardSecret != "" {
		secret, err := resolveSecret(repl, h.ForwardSecret)
		if err != nil {
			return fmt.Errorf("forward_secret: %w", err)
		}
		h.forwardKey = newMacKey(hashSHA256, []byte(secret))
	}
	for i, tok := range h.VerifyTokens {
		resolved, err := resolveSecret(repl, tok)
		if err != nil {
			return fmt.Errorf("verify_token %d: %w", i+1, err)
		}
		h.verifyTokens = append(h.verifyTokens, sha256.Sum256([]byte(resolved)))
	}
	if h.Unbatch != nil {
		h.Unbatch.provision()
		if h.Dedupe == nil {
			h.logger.Info("unbatch needs a dedupe store to deliver each item once; using an in-memory store with defaults")
			h.Dedupe = new(Dedupe)
		}
	}
	if h.Dedupe != nil && h.Inbox != nil {
		h.Dedupe.provisionForInbox(h.logger, h.now)
	} else if h.Dedupe != nil {
		if err := h.Dedupe.provision(ctx, h.logger, h.name, h.now); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
	}
	if h.Alert != nil {
		if h.app == nil {
			return errors.New("alert: the handler is not part of a config")
		}
		h.Alert.provision(h)
		h.app.alerts = append(h.app.alerts, h.Alert)
	}
	if h.Inbox != nil {
		if h.app == nil {
			return errors.New("inbox: the handler is not part of a config")
		}
		ev, err := ctx.App("events")
		if err != nil {
			return fmt.Errorf("inbox: the events app: %w", err)
		}
		h.Inbox.events, h.Inbox.ctx = ev.(*caddyevents.App), ctx
		if err := h.Inbox.provision(ctx, h); err != nil {
			return fmt.Errorf("inbox: %w", err)
		}
		if err := h.app.addInbox(h.Inbox); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks the provisioned configuration without changing it.
func (h *Handler) Validate() error {
	if len(h.Verify) == 0 {
		return errors.New("webhook_guard needs at least one verify: it never forwards unverified requests")
	}
	for i, v := range h.Verify {
		if err := v.validate(); err != nil {
			return fmt.Errorf("verify[%d] (%s): %w", i, v.Scheme, err)
		}
	}
	if h.Dedupe != nil {
		if err := h.Dedupe.checkOptions(); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
	}
	if err := validateEvents(h.Events); err != nil {
		return err
	}
	if err := h.checkInboxName(); err != nil {
		return err
	}
	if h.Alert != nil {
		if err := h.Alert.checkOptions(); err != nil {
			return err
		}
	}
	if h.Inbox != nil {
		if err := h.Inbox.checkOptions(); err != nil {
			return fmt.Errorf("inbox: %w", err)
		}
	}
	if h.Normalize != "" && h.Normalize != normalizeFormatMeta {
		return fmt.Errorf("normalize: unknown format %q (want meta)", h.Normalize)
	}
	if h.Unbatch != nil && h.Unbatch.MaxItems < 0 {
		return errors.New("unbatch: max_items must not be negative")
	}
	return nil
}

// Cleanup releases the dedupe store. It is safe on a handler whose
// provisioning failed half-way.
func (h *Handler) Cleanup() error {
	if h.recent != nil {
		// Requests of this config may still be finishing and record into
		// the ring; it stays valid, only the registry lets go of it.
		_, _ = recent.Delete(h.name)
	}
	if h.Dedupe != nil {
		return h.Dedupe.cleanup()
	}
	return nil
}

// checkInboxName refuses an inbox handler without a name of its own: the
// name is its queue's in the store, and a name worked out from the
// schemes would change with a routine edit of verify, leaving the pending
// events of the old queue behind.
func (h *Handler) checkInboxName() error {
	if h.Inbox != nil && h.Name == "" {
		return errors.New("a webhook_guard handler with an inbox needs a name (name …): it names the queue in the " +
			"inbox's store, and must not change when verify lines are edited, or pending events stay behind")
	}
	return nil
}

// defaultName labels a handler by its schemes, which stay the same across
// reloads.
func (h *Handler) defaultName() string {
	var names []string
	for _, v := range h.Verify {
		if v != nil && !slices.Contains(names, strings.ToLower(v.Scheme)) {
			names = append(names, strings.ToLower(v.Scheme))
		}
	}
	if len(names) == 0 {
		return "webhook_guard"
	}
	return strings.Join(names, "+")
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ io.ReaderFrom               = (*statusRecorder)(nil)
)
