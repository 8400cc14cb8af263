package webhookguard

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the webhook_guard app: state that belongs to a config rather
// than to one handler. Every webhook_guard handler loads it (through
// ctx.App), so it needs no config of its own. At Start, when the HTTP
// app's routes are all provisioned, it refuses a config in which a
// request would be answered before webhook_guard runs.
type App struct {
	ctx caddy.Context
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "webhook_guard",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision keeps the config's context for Start.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	return nil
}

// Start checks where each webhook_guard handler stands in its routes.
func (a *App) Start() error {
	httpApp, err := a.ctx.AppIfConfigured("http")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil
	}
	if err != nil {
		return err
	}
	servers := httpApp.(*caddyhttp.App).Servers
	names := make([]string, 0, len(servers))
	for name := range servers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if err := checkGuardOrder(servers[name].Routes, "server "+name); err != nil {
			return err
		}
	}
	return nil
}

// Stop has nothing to stop yet.
func (a *App) Stop() error { return nil }

// terminalHandlers answer every request they get, so nothing after them
// in a route list ever runs.
var terminalHandlers = []string{
	"http.handlers.reverse_proxy",
	"http.handlers.static_response",
	"http.handlers.file_server",
}

// checkGuardOrder refuses a route list in which a route that matches
// every request answers it with a terminal handler before a later
// webhook_guard runs: route { reverse_proxy app; webhook_guard {…} }
// keeps that order, and every request would reach the app unverified.
// A terminal route with a matcher is not refused (it may well cover
// other paths); neither is one in a separate route list.
func checkGuardOrder(routes caddyhttp.RouteList, where string) error {
	var terminal string // "<handler> in <route>", once one answers everything
	for i, r := range routes {
		at := fmt.Sprintf("%s, route %d", where, i)
		for _, h := range r.Handlers {
			switch h := h.(type) {
			case *Handler:
				if terminal != "" {
					return guardOrderError(h, terminal)
				}
			case *caddyhttp.Subroute:
				if err := checkGuardOrder(h.Routes, at+" > subroute"); err != nil {
					return err
				}
			}
			if terminal == "" && len(r.MatcherSets) == 0 && isTerminal(h) {
				terminal = shortName(moduleName(h)) + " (" + at + ")"
			}
		}
	}
	return nil
}

func guardOrderError(h *Handler, terminal string) error {
	return fmt.Errorf("webhook_guard %q comes after %s, which answers every request first: "+
		"requests would reach the app unverified. Put webhook_guard before it, for example "+
		"route { webhook_guard {…} reverse_proxy … }, or use handle, where directives are sorted "+
		"and webhook_guard comes before reverse_proxy", h.name, terminal)
}

// isTerminal reports whether h answers every request it gets: a terminal
// handler, or a subroute whose own routes end in one for every request.
func isTerminal(h caddyhttp.MiddlewareHandler) bool {
	if sub, ok := h.(*caddyhttp.Subroute); ok {
		for _, r := range sub.Routes {
			if len(r.MatcherSets) == 0 && slices.ContainsFunc(r.Handlers, isTerminal) {
				return true
			}
		}
		return false
	}
	return slices.Contains(terminalHandlers, moduleName(h))
}

// moduleName is the module ID of a handler, "" for one that is not a
// Caddy module.
func moduleName(h caddyhttp.MiddlewareHandler) string {
	if m, ok := h.(caddy.Module); ok {
		return string(m.CaddyModule().ID)
	}
	return ""
}

// shortName is a handler's directive name, for messages.
func shortName(id string) string { return strings.TrimPrefix(id, "http.handlers.") }

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
