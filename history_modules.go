package webhookguard

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(AdminHistory{})
	caddy.RegisterModule(HistoryHandler{})
	httpcaddyfile.RegisterHandlerDirective("webhook_guard_history", parseHistoryCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("webhook_guard_history", httpcaddyfile.Before, "respond")
}

// AdminHistory serves the delivery history (its JSON API and its page)
// on Caddy's admin listener under /webhook_guard/, as the metrics module
// serves /metrics there. It is loaded with the admin API and has no
// configuration.
type AdminHistory struct{}

// CaddyModule returns the Caddy module information.
func (AdminHistory) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.webhook_guard",
		New: func() caddy.Module { return new(AdminHistory) },
	}
}

// Routes returns the history's one route on the admin listener.
func (AdminHistory) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/webhook_guard/",
		Handler: caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return serveHistory(w, r, strings.TrimPrefix(r.URL.Path, "/webhook_guard"))
		}),
	}}
}

// HistoryHandler serves the same history on a site, so that it can sit
// behind basic_auth on a public host:
//
//	handle /webhook-history/* {
//		basic_auth { admin <hash> }
//		webhook_guard_history
//	}
//
// It answers every request it gets and has no configuration; it works
// under any path prefix, stripped (handle_path) or not.
type HistoryHandler struct{}

// CaddyModule returns the Caddy module information.
func (HistoryHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.webhook_guard_history",
		New: func() caddy.Module { return new(HistoryHandler) },
	}
}

// ServeHTTP answers a history request; it never calls next.
func (HistoryHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	return serveHistory(w, r, historyPath(r.URL.Path))
}

// historyPath finds the history's own path at the end of a request path
// under any mount point: the API's paths all start with /inbox; anything
// else is the page.
func historyPath(path string) string {
	for _, tail := range historyEndpoints {
		if strings.HasSuffix(path, tail) {
			return tail
		}
	}
	if i := strings.LastIndex(path, "/inbox/events/"); i >= 0 {
		return path[i:]
	}
	return "/"
}

// UnmarshalCaddyfile reads the directive, which takes no arguments:
//
//	webhook_guard_history [<matcher>]
func (h *HistoryHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Err("webhook_guard_history takes no options")
	}
	return nil
}

func parseHistoryCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(HistoryHandler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// Interface guards
var (
	_ caddy.AdminRouter           = (*AdminHistory)(nil)
	_ caddyhttp.MiddlewareHandler = (*HistoryHandler)(nil)
	_ caddyfile.Unmarshaler       = (*HistoryHandler)(nil)
)
