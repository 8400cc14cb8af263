package webhookguard

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/webhookguard/webhookguard/internal/inbox"
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
	ctx     caddy.Context
	inboxes map[string]*Inbox        // this config's, by handler name
	opened  map[string]*inboxRuntime // the inbox files Start took a reference on
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
	a.inboxes = map[string]*Inbox{}
	return nil
}

// addInbox registers a handler's inbox; its queue is named by the
// handler's name, which must be unique among the config's inboxes.
func (a *App) addInbox(in *Inbox) error {
	if _, taken := a.inboxes[in.h.name]; taken {
		return fmt.Errorf("two webhook_guard handlers with an inbox are named %q: give each a name of its own "+
			"(name …), it names the queue", in.h.name)
	}
	a.inboxes[in.h.name] = in
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
		if err := checkGuardOrder(servers[name].Routes, "server "+name, servers[name]); err != nil {
			return err
		}
	}
	return a.openInboxes()
}

// openInboxes opens each inbox file (or takes another reference on the
// one a previous config opened), gives its dispatcher this config's
// queues and starts it: pending events are delivered at once.
func (a *App) openInboxes() error {
	byPath := map[string][]*Inbox{}
	for _, in := range a.inboxes {
		byPath[in.path] = append(byPath[in.path], in)
	}
	for _, path := range slices.Sorted(maps.Keys(byPath)) {
		ins := byPath[path]
		rt, err := openInbox(path, ins[0].storeLabel, ins[0].openStore, a.ctx.Logger())
		if err != nil {
			_ = a.Stop() // Caddy stops only the apps that started
			return fmt.Errorf("inbox: %w", err)
		}
		if a.opened == nil {
			a.opened = map[string]*inboxRuntime{}
		}
		a.opened[path] = rt
		queues := make([]inbox.Queue, 0, len(ins))
		for _, in := range ins {
			in.rt.Store(rt)
			select {
			case <-in.opened:
			default:
				close(in.opened)
			}
			queues = append(queues, in.queue())
		}
		rt.use(a, queues)
		rt.dispatcher.Start()
	}
	return nil
}

// Stop lets go of this config's inbox files; the last config to let go of
// one stops its dispatcher and closes it.
func (a *App) Stop() error {
	var errs []error
	for path, rt := range a.opened {
		rt.release(a)
		if _, err := inboxes.Delete(path); err != nil {
			errs = append(errs, err)
		}
	}
	a.opened = nil
	return errors.Join(errs...)
}

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
//
// It also tells each handler which server it is in: an inbox delivers
// through that server's context.
func checkGuardOrder(routes caddyhttp.RouteList, where string, srv *caddyhttp.Server) error {
	var terminal string // "<handler> in <route>", once one answers everything
	for i, r := range routes {
		at := fmt.Sprintf("%s, route %d", where, i)
		for _, h := range r.Handlers {
			switch h := h.(type) {
			case *Handler:
				if terminal != "" {
					return guardOrderError(h, terminal)
				}
				if h.Inbox != nil {
					h.Inbox.server.Store(srv)
				}
			case *caddyhttp.Subroute:
				if err := checkGuardOrder(h.Routes, at+" > subroute", srv); err != nil {
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
