package webhookguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	"github.com/webhookguard/webhookguard/internal/inbox"
	"go.uber.org/zap"
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
	inboxes map[string]*Inbox // this config's, by handler name
	names   map[string]bool   // every handler's name in this config
	alerts  []*Alert          // this config\'s, started with it
	// orderChecked is set once the first handler checked the routes.
	orderChecked bool
	opened       map[string]*inboxRuntime // the inbox files Start took a reference on
	reached      []testTarget             // where a request reaches each handler, found at Start
	published    []published              // the targets Start gave Send Test Event, to take back on Stop
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
	a.names = map[string]bool{}
	return nil
}

// addHandler notes a handler's name. Two handlers of one name would share
// one history and one metric series without saying so: the second is
// warned about (an inbox's name, which names its queue, is refused by
// addInbox).
func (a *App) addHandler(h *Handler) {
	if a.names[h.name] {
		h.logger.Warn("two webhook_guard handlers have the same name: they share one history and one set of "+
			"metric series, and their deliveries cannot be told apart; give each a name of its own (name …)",
			zap.String("handler", h.name))
	}
	a.names[h.name] = true
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

// Start checks where each webhook_guard handler stands in its routes,
// now that all are provisioned, and opens the inboxes.
func (a *App) Start() error {
	httpApp, err := a.ctx.AppIfConfigured("http")
	if errors.Is(err, caddy.ErrNotConfigured) {
		return nil
	}
	if err != nil {
		return err
	}
	a.reached = nil
	if err := checkServers(httpApp.(*caddyhttp.App), a.reach); err != nil {
		return err
	}
	if err := a.openInboxes(); err != nil {
		return err
	}
	for _, al := range a.alerts {
		al.start()
	}
	a.publishTargets()
	return nil
}

// reach notes where a request reaches h; an inbox delivers through that
// server's context.
func (a *App) reach(h *Handler, at testTarget) {
	if h.Inbox != nil {
		h.Inbox.server.Store(at.srv)
	}
	at.h = h
	a.reached = append(a.reached, at)
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
			return err   // it names the store
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
		a.logStore(rt)
	}
	return nil
}

// compactAbove is how many free pages of an inbox file make its start
// warn that the file wants compacting (BENCHMARKS.md has what a long
// list of free pages costs each commit).
const compactAbove = 5000

// logStore says, when a config starts, where each inbox keeps its events
// (the file, or Redis's address and prefix) and what its queues hold, and
// warns of each queue that holds pending events no handler serves: a
// renamed handler leaves its queue behind, and nothing else would say so.
func (a *App) logStore(rt *inboxRuntime) {
	counts, err := rt.store.Counts()
	if err != nil {
		a.ctx.Logger().Error("inbox store opened but its counts could not be read", zap.String("store", rt.label), zap.Error(err))
		return
	}
	if file, ok := rt.store.(*inbox.Store); ok {
		if free := file.FreePages(); free > compactAbove {
			a.ctx.Logger().Warn("the inbox file has many free pages, left by a backlog that drained: bbolt rewrites "+
				"their list with every commit, which slows acceptance; compact the file while Caddy is stopped: "+
				"caddy webhook inbox compact <file>", zap.String("store", rt.label), zap.Int("free_pages", free))
		}
	}
	served := map[string]bool{}
	for _, q := range rt.currentQueues() {
		served[q.Name] = true
		a.ctx.Logger().Info("inbox queue open", zap.String("store", rt.label), zap.String("queue", q.Name),
			zap.Int("pending", counts[q.Name][inbox.Pending]), zap.Int("dead", counts[q.Name][inbox.Dead]),
			zap.Int("damaged", counts[q.Name][inbox.Damaged]))
	}
	for _, name := range slices.Sorted(maps.Keys(counts)) {
		if n := counts[name][inbox.Pending]; n > 0 && !served[name] {
			a.ctx.Logger().Warn("an inbox queue holds pending events that no handler serves (was the handler renamed?): "+
				"they are not delivered. Name the handler after the queue again, or move them: "+
				"caddy webhook inbox move --from <queue> --to <handler>",
				zap.String("queue", name), zap.Int("pending", n), zap.String("store", rt.label))
		}
	}
}

// Stop lets go of this config's inbox files; the last config to let go of
// one stops its dispatcher and closes it.
func (a *App) Stop() error {
	a.withdrawTargets()
	for _, al := range a.alerts {
		al.shutdown()
	}
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
// Once the config is started (found is set), it also reports where a
// request reaches each provisioned handler: its server, and a host and
// path its routes match (a prefix that an earlier route of the same
// list strips, as handle_path does, added back).
func checkGuardOrder(routes []routeView, where string, reach testTarget, found func(*Handler, testTarget)) error {
	var terminal string // "<handler> in <route>", once one answers everything
	strip := ""         // stripped by an earlier route of this list, for those after it
	for i, r := range routes {
		at := fmt.Sprintf("%s, route %d", where, i)
		here := reach
		if r.host != "" {
			here.host = r.host
		}
		if r.path != "" {
			here.path = strip + r.path
		}
		for _, h := range r.handlers {
			if h.module == guardModule {
				if terminal != "" {
					return guardOrderError(h.name, terminal)
				}
				if h.guard != nil && found != nil {
					found(h.guard, here)
				}
			}
			if h.strip != "" && !r.matched {
				strip = h.strip
			}
			if err := checkGuardOrder(h.routes, at+" > subroute", here, found); err != nil {
				return err
			}
			if terminal == "" && !r.matched && h.terminal() {
				terminal = shortName(h.module) + " (" + at + ")"
			}
		}
	}
	return nil
}

func guardOrderError(name, terminal string) error {
	return fmt.Errorf("webhook_guard %q comes after %s, which answers every request first: "+
		"requests would reach the app unverified. Put webhook_guard before it, for example "+
		"route { webhook_guard {…} reverse_proxy … }, or use handle, where directives are sorted "+
		"and webhook_guard comes before reverse_proxy", name, terminal)
}

// checkOrderAtProvision runs checkGuardOrder over the HTTP app being
// provisioned, once per config, from the first handler's Provision: caddy
// validate provisions but never starts, and must refuse what run refuses.
// Routes not provisioned yet are read from their JSON.
func (a *App) checkOrderAtProvision(ctx caddy.Context) error {
	if a.orderChecked {
		return nil
	}
	a.orderChecked = true
	for _, m := range ctx.Modules() {
		if httpApp, ok := m.(*caddyhttp.App); ok {
			return checkServers(httpApp, nil)
		}
	}
	return nil
}

// checkServers checks every server's routes in name order; at Start
// (found set) it also reports where a request reaches each handler.
func checkServers(httpApp *caddyhttp.App, found func(*Handler, testTarget)) error {
	for _, name := range slices.Sorted(maps.Keys(httpApp.Servers)) {
		srv := httpApp.Servers[name]
		if err := checkGuardOrder(viewRoutes(srv.Routes), "server "+name, testTarget{srv: srv}, found); err != nil {
			return err
		}
	}
	return nil
}

const guardModule = "http.handlers.webhook_guard"

// routeView is a route as checkGuardOrder needs it, whether its handlers
// are provisioned yet or still JSON.
type routeView struct {
	matched    bool
	host, path string // the first host and path its first matcher set matches (provisioned routes)
	handlers   []handlerView
}

type handlerView struct {
	module string      // module ID
	name   string      // a webhook_guard's name, for messages
	guard  *Handler    // a provisioned webhook_guard
	routes []routeView // a subroute's
	strip  string      // a rewrite's strip_path_prefix
}

// terminal reports whether h answers every request it gets: a terminal
// handler, or a subroute whose own routes end in one for every request.
func (h handlerView) terminal() bool {
	if h.module == "http.handlers.subroute" {
		for _, r := range h.routes {
			if !r.matched && slices.ContainsFunc(r.handlers, handlerView.terminal) {
				return true
			}
		}
		return false
	}
	return slices.Contains(terminalHandlers, h.module)
}

func viewRoutes(routes caddyhttp.RouteList) []routeView {
	out := make([]routeView, 0, len(routes))
	for _, r := range routes {
		v := routeView{matched: len(r.MatcherSets) > 0 || len(r.MatcherSetsRaw) > 0}
		if len(r.MatcherSets) > 0 {
			v.host, v.path = matchedHostAndPath(r.MatcherSets[0])
		}
		for _, h := range r.Handlers {
			v.handlers = append(v.handlers, viewHandler(h))
		}
		if len(r.Handlers) == 0 {
			for _, raw := range r.HandlersRaw {
				v.handlers = append(v.handlers, viewRawHandler(raw))
			}
		}
		out = append(out, v)
	}
	return out
}

func viewHandler(h caddyhttp.MiddlewareHandler) handlerView {
	v := handlerView{module: moduleName(h)}
	switch h := h.(type) {
	case *Handler:
		v.name, v.guard = h.name, h
	case *caddyhttp.Subroute:
		v.routes = viewRoutes(h.Routes)
	case *rewrite.Rewrite:
		v.strip = h.StripPathPrefix
	}
	return v
}

// viewRawHandler reads a handler not provisioned yet; JSON it cannot read
// is left to Caddy's own loading, which will say what is wrong.
func viewRawHandler(raw json.RawMessage) handlerView {
	var h struct {
		Handler string              `json:"handler"`
		Name    string              `json:"name"`
		Routes  caddyhttp.RouteList `json:"routes"`
	}
	_ = json.Unmarshal(raw, &h)
	v := handlerView{module: "http.handlers." + h.Handler, name: h.Name, routes: viewRoutes(h.Routes)}
	if v.module == guardModule && v.name == "" {
		v.name = "webhook_guard"
	}
	return v
}

// matchedHostAndPath is a host and a path that the host and path
// matchers of set match (a wildcard made concrete), "" for what it does
// not restrict.
func matchedHostAndPath(set caddyhttp.MatcherSet) (host, path string) {
	for _, m := range set {
		switch m := m.(type) {
		case *caddyhttp.MatchHost:
			if len(*m) > 0 {
				host = strings.ReplaceAll((*m)[0], "*", "test")
			}
		case *caddyhttp.MatchPath:
			if len(*m) > 0 {
				path = strings.ReplaceAll((*m)[0], "*", "test")
			}
		}
	}
	return host, path
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
