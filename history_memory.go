package webhookguard

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The in-memory history: what each handler remembers of its deliveries
// without storing them (all of them without an inbox; with one, what
// never became an event), and its timeline, held by handler name across
// reloads.

// recentHandler is what a handler remembers of its last deliveries
// without storing them: no body, no headers (every delivery of a handler
// without an inbox; of one with an inbox, what never became an event).
// Refusals (unsigned or malformed requests, which need no secret to
// send) have a smaller ring of their own, so that nobody without a
// secret can push what verified senders did out of the history. It also
// holds the handler's timeline and where Send Test Event reaches it.
type recentHandler struct {
	name       string
	tally      *handlerTally              // outcomes per minute and the app's health, for every handler
	target     atomic.Pointer[testTarget] // where Send Test Event reaches the newest handler of this name
	mu         sync.Mutex
	deliveries ring // the last recentPerHandler verified deliveries
	refusals   ring // the last recentRefusals refused requests
	seq        uint64
}

// ring keeps the last size views, oldest overwritten first.
type ring struct {
	views []eventView
	next  int
}

func (g *ring) add(v eventView, size int) {
	if len(g.views) < size {
		g.views = append(g.views, v)
		return
	}
	g.views[g.next] = v
	g.next = (g.next + 1) % size
}

func (rh *recentHandler) add(v eventView, refused bool) {
	rh.mu.Lock()
	defer rh.mu.Unlock()
	rh.seq++
	v.ID = "req_" + strconv.FormatInt(v.ReceivedAt.UnixNano(), 36) + "_" + strconv.FormatUint(rh.seq, 36)
	v.seq = rh.seq
	if refused {
		rh.refusals.add(v, recentRefusals)
	} else {
		rh.deliveries.add(v, recentPerHandler)
	}
}

// snapshot returns the deliveries and refusals newest first.
func (rh *recentHandler) snapshot() []eventView {
	rh.mu.Lock()
	out := make([]eventView, 0, len(rh.deliveries.views)+len(rh.refusals.views))
	out = append(append(out, rh.deliveries.views...), rh.refusals.views...)
	rh.mu.Unlock()
	slices.SortFunc(out, func(a, b eventView) int { return cmp.Compare(b.seq, a.seq) })
	return out
}

func (rh *recentHandler) page(f eventFilter, before string, limit int) ([]eventView, string, bool) {
	all := rh.snapshot()
	start := 0
	if before != "" {
		i := slices.IndexFunc(all, func(v eventView) bool { return v.ID == before })
		if i < 0 {
			return nil, "", false
		}
		start = i + 1
	}
	out := []eventView{}
	for _, v := range all[start:] {
		if !f.selects(v) {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID, true
		}
		out = append(out, v)
	}
	return out, "", true
}

// recent holds the in-memory histories by handler name: a handler takes
// a reference when provisioned and lets go on Cleanup, so that a reload's
// new handler of the same name keeps the history.
var recent = caddy.NewUsagePool()

func acquireRecent(name string) *recentHandler {
	v, _ := recent.LoadOrStore(name, &recentHandler{name: name, tally: newHandlerTally(time.Now())})
	return v.(*recentHandler)
}

// Destruct lets a history go once no handler of its name is left.
func (rh *recentHandler) Destruct() error { return nil }

// recentHandlers are the in-memory histories of the handlers loaded now.
func recentHandlers() []*recentHandler {
	var out []*recentHandler
	recent.Range(func(_, v any) bool {
		out = append(out, v.(*recentHandler))
		return true
	})
	return out
}

func recentHandlerNamed(name string) *recentHandler {
	var found *recentHandler
	recent.Range(func(k, v any) bool {
		if k == name {
			found = v.(*recentHandler)
		}
		return found == nil
	})
	return found
}

// findRecent finds a delivery of the in-memory history by its id.
func findRecent(id string) (eventView, bool) {
	if !strings.HasPrefix(id, "req_") {
		return eventView{}, false
	}
	for _, rh := range recentHandlers() {
		for _, v := range rh.snapshot() {
			if v.ID == id {
				return v, true
			}
		}
	}
	return eventView{}, false
}

// memoryStates are the statuses the in-memory history records.
var memoryStates = slices.Concat([]string{"delivered", "failed"}, unstoredStates)
