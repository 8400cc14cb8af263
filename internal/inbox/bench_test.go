package inbox

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAppendConcurrent measures durable appends of 1 KB events from
// 16 concurrent writers, as 16 senders make them: events per second and
// how many share a commit.
func BenchmarkAppendConcurrent(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := make([]byte, 1024)
	var n atomic.Int64
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				e := &Event{ID: fmt.Sprint(i), Queue: "q", OrderKey: fmt.Sprintf("conv_%d", i%256), Method: "POST", URI: "/",
					Body: body, ReceivedAt: time.Now()}
				if err := s.Append([]*Event{e}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.N)/float64(max(1, s.commits.Load())), "events/commit")
}
