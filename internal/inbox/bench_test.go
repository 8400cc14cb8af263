package inbox

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppendConcurrent measures durable appends of 1 KB events from
// 16 concurrent writers, as 16 senders make them: events per second and
// how many share a commit.
func BenchmarkAppendConcurrent(b *testing.B) {
	s := openBenchStore(b)
	appendFromSenders(b, s, nil)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/float64(max(1, s.commits.Load())), "events/commit")
}

// BenchmarkAcceptAndDeliver measures the store under the inbox's steady
// state: 16 writers appending 1 KB events of 256 conversations while a
// dispatcher with concurrency 16 delivers them to a deliverer that takes
// them at once. It reports accepted events per second and the bytes
// written to disk per event (from /proc/self/io).
func BenchmarkAcceptAndDeliver(b *testing.B) {
	s := openBenchStore(b)
	d, delivered := takeAll(b, s)
	defer d.Stop(time.Second)
	written := writtenBytes()
	appendFromSenders(b, s, d)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "accepted/s")
	b.ReportMetric(float64(delivered.Load())/b.Elapsed().Seconds(), "delivered/s")
	b.ReportMetric(float64(writtenBytes()-written)/float64(b.N)/1024, "KB-written/event")
	b.ReportMetric(float64(b.N)/float64(max(1, s.commits.Load())), "appends/commit")
}

// BenchmarkAcceptAndDeliverAfterDrain is BenchmarkAcceptAndDeliver on a
// file that held a backlog of 100,000 events, delivered and expired: as
// it was left (bbolt rewrites its list of the free pages, now long, with
// every commit), and after caddy webhook inbox compact rewrote it.
func BenchmarkAcceptAndDeliverAfterDrain(b *testing.B) {
	for _, compact := range []bool{false, true} {
		name := "as-left"
		if compact {
			name = "compacted"
		}
		b.Run(name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "inbox.db")
			s, err := Open(path, time.Second)
			if err != nil {
				b.Fatal(err)
			}
			const backlog = 100000
			appendBacklog(b, s, backlog)
			drain(b, s, backlog)
			if _, err := s.Expire(time.Now().Add(time.Hour)); err != nil {
				b.Fatal(err)
			}
			if compact {
				_ = s.Close()
				if _, _, err := Compact(path); err != nil {
					b.Fatal(err)
				}
				if s, err = Open(path, time.Second); err != nil {
					b.Fatal(err)
				}
			}
			defer s.Close()
			d, _ := takeAll(b, s)
			defer d.Stop(time.Second)
			written := writtenBytes()
			appendFromSenders(b, s, d)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "accepted/s")
			b.ReportMetric(float64(writtenBytes()-written)/float64(b.N)/1024, "KB-written/event")
		})
	}
}

// takeAll starts a dispatcher with concurrency 16 that delivers the
// events of s's queue q to a deliverer that takes them at once, and
// counts them.
func takeAll(b *testing.B, s *Store) (*Dispatcher, *atomic.Int64) {
	delivered := new(atomic.Int64)
	d := NewDispatcher(s, func(err error) { b.Error(err) })
	d.SetQueues([]Queue{{Name: "q", Concurrency: 16, Timeout: time.Second, Retry: []time.Duration{time.Second},
		Deliver: func(context.Context, *Event, int) Result { delivered.Add(1); return Result{Status: 200} }}})
	d.Start()
	return d, delivered
}

// drain delivers the n pending events of s to a deliverer that takes
// them at once.
func drain(b *testing.B, s *Store, n int64) {
	d, delivered := takeAll(b, s)
	defer d.Stop(time.Second)
	for delivered.Load() < n {
		time.Sleep(10 * time.Millisecond)
	}
}

// appendBacklog appends n pending events of 1 KB over 256
// conversations, 5,000 a commit.
func appendBacklog(b *testing.B, s *Store, n int) {
	body := make([]byte, 1024)
	const group = 5000
	for i := 0; i < n; i += group {
		events := make([]*Event, 0, group)
		for j := i; j < min(n, i+group); j++ {
			events = append(events, &Event{ID: fmt.Sprintf("evt_%08d", j), Queue: "q", OrderKey: fmt.Sprintf("conv_%d", j%256),
				Method: "POST", URI: "/", Body: body, ReceivedAt: time.Now()})
		}
		if err := s.Append(events); err != nil {
			b.Fatal(err)
		}
	}
}

func openBenchStore(b *testing.B) *Store {
	s, err := Open(filepath.Join(b.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// appendFromSenders appends b.N events of 1 KB over 256 conversations
// from 16 goroutines, waking d (when given) after each.
func appendFromSenders(b *testing.B, s *Store, d *Dispatcher) {
	body := make([]byte, 1024)
	header := http.Header{"Content-Type": {"application/json"}, "X-Webhook-Event": {"whatsapp.message.received"}}
	var n atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := n.Add(1); i <= int64(b.N); i = n.Add(1) {
				e := &Event{ID: fmt.Sprint(i), Queue: "q", OrderKey: fmt.Sprintf("conv_%d", i%256), Method: "POST", URI: "/",
					Header: header, Body: body, ReceivedAt: time.Now()}
				if err := s.Append([]*Event{e}); err != nil {
					b.Error(err)
					return
				}
				if d != nil {
					d.Wake()
				}
			}
		}()
	}
	wg.Wait()
}

// writtenBytes is what this process has written to disk so far.
func writtenBytes() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkList measures the history's listing over 100,000 stored
// events of 1 KB: the newest page, a page from the middle (paging by
// id), a filter that matches nothing (the whole file read, the worst
// case of the page's refresh), and a search (q=) for one event by its
// id and by a message id in its body: a search reads every event within
// the other filters to fill its page, and its bodies when their
// metadata does not match.
func BenchmarkList(b *testing.B) {
	s := openBenchStore(b)
	const total, group = 100000, 5000
	pad := strings.Repeat("x", 1024-64)
	var middle string
	for i := 0; i < total; i += group {
		events := make([]*Event, 0, group)
		for j := i; j < i+group; j++ {
			body := fmt.Appendf(nil, `{"message":{"id":"wamid.%08d","text":{"body":"%s"}}}`, j, pad)
			events = append(events, &Event{ID: fmt.Sprintf("evt_%08d", j), Queue: "q", Name: "whatsapp.message.received",
				OrderKey: fmt.Sprintf("conv_%d", j%256), Method: "POST", URI: "/", Body: body, ReceivedAt: time.Now()})
		}
		if err := s.Append(events); err != nil {
			b.Fatal(err)
		}
		if i == total/2 {
			middle = events[0].ID
		}
	}
	for _, bc := range []struct {
		name string
		q    Query
		want int
	}{
		{"newest-50", Query{Queue: "q", Limit: 50}, 50},
		{"middle-50", Query{Queue: "q", Limit: 50, Before: middle}, 50},
		{"dead-none", Query{Queue: "q", State: Dead, Limit: 50}, 0},
		{"search-id", Query{Queue: "q", Text: "evt_00099990", Limit: 50}, 1},
		{"search-wamid-in-body", Query{Queue: "q", Text: "wamid.00012345", Limit: 50}, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				events, _, err := s.List(bc.q)
				if err != nil || len(events) != bc.want {
					b.Fatalf("%d events, %v", len(events), err)
				}
			}
		})
	}
}
