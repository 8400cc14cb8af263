package webhookguard

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("webhook_guard", parseCaddyfile)
	// Ordering the directive here lets a plain site block use it without
	// an order option; it must see the body before reverse_proxy sends it.
	httpcaddyfile.RegisterDirectiveOrder("webhook_guard", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(helper httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	h := new(Handler)
	h.helper = &helper // an inbox's deliver block is parsed as a subroute
	err := h.UnmarshalCaddyfile(helper.Dispenser)
	return h, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	webhook_guard [<matcher>] {
//	    name <name>                         # metrics/log label; default: the schemes
//	    # one line per verifier; a request passes when any accepts it
//	    verify <kapso|meta|hmac|standard> <secret...>
//	    verify <scheme> [<secret...>] {
//	        secret    <secret...>
//	        header    <name>                # hmac only, required there
//	        prefix    <prefix>              # hmac only
//	        encoding  hex|base64            # hmac only, default hex
//	        algorithm sha256|sha512|sha1    # hmac only, default sha256
//	        tolerance <duration>            # standard only, default 5m
//	    }
//	    max_body <size>                     # default 5MB
//	    dedupe [{
//	        key            <placeholder>    # default {http.request.header.X-Idempotency-Key}
//	        capacity       <n>              # default 100000
//	        ttl            <duration>       # default 24h
//	        wait           <duration>       # default 8s
//	        lease          <duration>       # default 5m
//	        scope          <name>           # default "default"
//	        redis          <url>            # default: in memory
//	        prefix         <prefix>         # default "webhookguard:"
//	        on_store_error pass|reject      # default pass
//	    }]
//	    unbatch [{
//	        max_items <n>                   # default 1000
//	    }]
//	    events <pattern...>                 # default: every event
//	    inbox {
//	        to          <upstreams...>      # shorthand for deliver { reverse_proxy <upstreams...> }
//	        deliver {                       # instead of to: any handler directives
//	            reverse_proxy app:3000 { … }
//	        }
//	        path        <file>              # default webhookguard/inbox.db in Caddy's data directory
//	        redis       <url>               # instead of path: a queue shared by several instances
//	        prefix      <prefix>            # with redis; default webhookguard:inbox:
//	        lease       <duration>          # with redis: takeover after an instance dies; default 15s
//	        retry       <delay...>          # default 10s 1m 5m 30m 2h 6h 12h 24h
//	        order_by    <placeholder>|none  # default: the conversation
//	        concurrency <n>                 # default 4
//	        rate        <n>/<s|m|h>         # default no limit
//	        timeout     <duration>          # default 30s
//	        retention   <duration>          # default 7d
//	    }
//	    normalize meta                      # default off
//	    verify_token <token...>             # Meta handshake; default none
//	    forward_secret <secret>
//	    alert <url> [{                      # a message to a person when deliveries fail or recover
//	        every <duration>                # default 15m: at most one message per condition
//	        pending_over <duration>         # default 5m: the oldest pending event waited too long
//	    }]
//	}
//
// Secrets may be {env.NAME} or {file./path} placeholders, resolved when
// the config is loaded and never written into the JSON config.
//
// Mistakes that need no secret to spot (no verify, an unknown scheme,
// hmac without a header, an option of another scheme, an unknown
// on_store_error or normalize value, a redis URL of another scheme) are
// reported here, with the file and line, so that caddy adapt shows them;
// Validate checks the same for JSON configs.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	directive := errorAt(d)
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "name":
			err = parseString(d, &h.Name)
		case "verify":
			err = h.unmarshalVerify(d)
		case "max_body":
			err = parseSize(d, &h.MaxBody)
		case "dedupe":
			if h.Dedupe != nil {
				return d.Err("dedupe given twice")
			}
			h.Dedupe = new(Dedupe)
			err = h.Dedupe.unmarshalCaddyfile(d)
		case "unbatch":
			if h.Unbatch != nil {
				return d.Err("unbatch given twice")
			}
			h.Unbatch = new(Unbatch)
			err = h.Unbatch.unmarshalCaddyfile(d)
		case "forward_secret":
			err = parseString(d, &h.ForwardSecret)
		case "normalize":
			if err = parseString(d, &h.Normalize); err == nil && h.Normalize != normalizeFormatMeta {
				err = d.Errf("normalize: unknown format %q (want meta)", h.Normalize)
			}
		case "inbox":
			if h.Inbox != nil {
				return d.Err("inbox given twice")
			}
			h.Inbox = new(Inbox)
			err = h.unmarshalInbox(d)
		case "events":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("events needs at least one pattern, such as whatsapp.message.* or *")
			}
			h.Events = append(h.Events, args...)
		case "alert":
			if h.Alert != nil {
				return d.Err("alert given twice")
			}
			h.Alert = new(Alert)
			err = h.Alert.unmarshalCaddyfile(d)
		case "verify_token":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.VerifyTokens = append(h.VerifyTokens, args...)
		default:
			return d.Errf("unrecognized subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if len(h.Verify) == 0 {
		return directive("webhook_guard needs at least one verify line: it never forwards unverified requests")
	}
	if err := h.checkInboxName(); err != nil {
		return directive("%s", err)
	}
	return nil
}

func (h *Handler) unmarshalInbox(d *caddyfile.Dispenser) error {
	in := h.Inbox
	inboxLine := errorAt(d)
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "to":
			if in.DeliverRaw != nil {
				return d.Err("inbox: to and deliver given together, or twice: use one")
			}
			err = in.parseTo(d)
		case "deliver":
			if in.DeliverRaw != nil {
				return d.Err("inbox: to and deliver given together, or twice: use one")
			}
			err = in.parseDeliver(d, h.helper)
		case "path":
			err = parseString(d, &in.Path)
		case "redis":
			err = parseString(d, &in.Redis)
		case "prefix":
			err = parseString(d, &in.Prefix)
		case "lease":
			err = parseDuration(d, &in.Lease)
		case "retry":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Err("retry needs at least one delay, such as 10s 1m 5m")
			}
			for _, a := range args {
				dur, perr := caddy.ParseDuration(a)
				if perr != nil {
					return d.Errf("retry: %q is not a duration", a)
				}
				in.Retry = append(in.Retry, caddy.Duration(dur))
			}
		case "order_by":
			err = parseString(d, &in.OrderBy)
		case "concurrency":
			err = parseInt(d, &in.Concurrency)
		case "rate":
			err = parseString(d, &in.Rate)
		case "timeout":
			err = parseDuration(d, &in.Timeout)
		case "retention":
			err = parseDuration(d, &in.Retention)
		default:
			return d.Errf("unrecognized inbox option %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := in.checkOptions(); err != nil {
		return inboxLine("inbox: %v", err)
	}
	return nil
}

// parseTo reads "to <upstreams...>" as reverse_proxy with those upstreams.
func (in *Inbox) parseTo(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.Err("to needs at least one upstream, such as localhost:3000")
	}
	rp := new(reverseproxy.Handler)
	tokens, err := caddyfile.Tokenize([]byte("reverse_proxy "+strings.Join(args, " ")), d.File())
	if err != nil {
		return d.Errf("to: %v", err)
	}
	if err := rp.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
		return d.Errf("to: %v", err)
	}
	in.DeliverRaw = caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil)
	return nil
}

// parseDeliver reads a deliver block as a subroute of handler directives.
func (in *Inbox) parseDeliver(d *caddyfile.Dispenser, h *httpcaddyfile.Helper) error {
	if h == nil {
		return d.Err("deliver blocks are read by the Caddyfile adapter only")
	}
	sub, err := httpcaddyfile.ParseSegmentAsSubroute(h.WithDispenser(d.NewFromNextSegment()))
	if err != nil {
		return err
	}
	in.DeliverRaw = caddyconfig.JSONModuleObject(sub, "handler", "subroute", nil)
	return nil
}

// errorAt returns a function that reports a parse error at the current
// token's file and line, as the Dispenser's own errors do, for checks made
// after the parser has moved past it.
func errorAt(d *caddyfile.Dispenser) func(format string, args ...any) error {
	file, line := d.File(), d.Line()
	return func(format string, args ...any) error {
		return fmt.Errorf("%s, at %s:%d", fmt.Sprintf(format, args...), file, line)
	}
}

func (h *Handler) unmarshalVerify(d *caddyfile.Dispenser) error {
	verifyLine := errorAt(d)
	if !d.NextArg() {
		return d.Err("verify needs a scheme: kapso, meta, hmac or standard")
	}
	v := &Verifier{Scheme: d.Val(), Secrets: d.RemainingArgs()}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "secret", "secrets":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			v.Secrets = append(v.Secrets, args...)
		case "header":
			err = parseString(d, &v.Header)
		case "prefix":
			err = parseString(d, &v.Prefix)
		case "encoding":
			err = parseString(d, &v.Encoding)
		case "algorithm":
			err = parseString(d, &v.Algorithm)
		case "tolerance":
			err = parseDuration(d, &v.Tolerance)
		default:
			return d.Errf("unrecognized verify option %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if len(v.Secrets) == 0 {
		return verifyLine("verify %s needs at least one secret", v.Scheme)
	}
	if err := v.checkOptions(); err != nil {
		return verifyLine("verify %s: %v", v.Scheme, err)
	}
	h.Verify = append(h.Verify, v)
	return nil
}

func (d *Dedupe) unmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	if disp.NextArg() {
		return disp.ArgErr()
	}
	for nesting := disp.Nesting(); disp.NextBlock(nesting); {
		var err error
		switch disp.Val() {
		case "key":
			err = parseString(disp, &d.Key)
		case "capacity":
			err = parseInt(disp, &d.Capacity)
		case "ttl":
			err = parseDuration(disp, &d.TTL)
		case "wait":
			err = parseDuration(disp, &d.Wait)
		case "lease":
			err = parseDuration(disp, &d.Lease)
		case "scope":
			err = parseString(disp, &d.Scope)
		case "redis":
			err = parseString(disp, &d.Redis)
		case "prefix":
			err = parseString(disp, &d.Prefix)
		case "on_store_error":
			err = parseString(disp, &d.OnStoreError)
		default:
			return disp.Errf("unrecognized dedupe option %q", disp.Val())
		}
		if err == nil {
			err = d.checkOptions()
		}
		if err != nil {
			return disp.Errf("dedupe: %v", err)
		}
	}
	return nil
}

// unmarshalCaddyfile reads "alert <url> [{ every <d>; pending_over <d> }]".
func (a *Alert) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	at := errorAt(d)
	if !d.NextArg() {
		return d.Err("alert needs the URL to POST its messages to")
	}
	a.URL = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "every":
			err = parseDuration(d, &a.Every)
		case "pending_over":
			err = parseDuration(d, &a.PendingOver)
		default:
			return d.Errf("unrecognized alert option %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	if err := a.checkOptions(); err != nil {
		return at("%s", err)
	}
	return nil
}

func (u *Unbatch) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "max_items":
			if err := parseInt(d, &u.MaxItems); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized unbatch option %q", d.Val())
		}
	}
	return nil
}

// parseString reads exactly one argument.
func parseString(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

func parseInt(d *caddyfile.Dispenser, dst *int) error {
	var s string
	if err := parseString(d, &s); err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return d.Errf("%s: want a non-negative whole number, got %q", d.Val(), s)
	}
	*dst = n
	return nil
}

func parseSize(d *caddyfile.Dispenser, dst *int64) error {
	name := d.Val()
	var s string
	if err := parseString(d, &s); err != nil {
		return err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 {
		return d.Errf("%s: want a size such as 5MB, 512KB or 1000000 (bytes), got %q", name, s)
	}
	*dst = int64(n)
	return nil
}

func parseDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	var s string
	if err := parseString(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("bad duration %q: %v", s, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
