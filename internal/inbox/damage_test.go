package inbox

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FuzzDispatcherPassOverCorruptRecord guards the dispatcher's pass, not
// only the codec: whatever bytes replace one pending event's record or
// body (the fuzzer's), passes of Due and Settle never panic or stop, the
// other events are all delivered, and the damaged one is set aside (or
// delivered, should the bytes still be that event).
func FuzzDispatcherPassOverCorruptRecord(f *testing.F) {
	f.Add(uint8(3), false, []byte{0xff})
	f.Add(uint8(0), true, []byte("{}"))
	f.Add(uint8(7), false, encodeEvent(&Event{ID: "evt_x", Queue: "q", State: Pending}))
	f.Add(uint8(5), false, []byte{2, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, which uint8, body bool, junk []byte) {
		const n = 8
		s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var events []*Event
		for i := range n {
			events = append(events, &Event{ID: fmt.Sprintf("evt_%d", i), Queue: "q", OrderKey: fmt.Sprintf("c%d", i%3),
				Method: "POST", URI: "/", Body: []byte(fmt.Sprintf(`{"n":%d}`, i)), ReceivedAt: time.Now()})
		}
		if err := s.Append(events); err != nil {
			t.Fatal(err)
		}
		target := uint64(which%n) + 1
		bucket := bucketEvents
		if body {
			bucket = bucketBodies
		}
		if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(seqKey(target), junk) }); err != nil {
			t.Fatal(err)
		}
		delivered, damaged := 0, 0
		for pass := 0; delivered+damaged < n; pass++ {
			if pass > 3*n {
				t.Fatalf("the passes stopped: %d delivered, %d damaged", delivered, damaged)
			}
			due, set, _, err := s.Due("q", time.Now().Add(time.Hour), 100, func(string, uint64) bool { return false })
			if err != nil {
				t.Fatalf("a pass failed: %v", err)
			}
			damaged += len(set)
			for _, e := range due {
				e.State, e.Attempts, e.DeliveredAt = Delivered, 1, time.Now()
				if err := s.Settle(e); err != nil {
					t.Fatal(err)
				}
				delivered++
			}
		}
		if damaged > 1 || delivered < n-1 {
			t.Fatalf("%d delivered, %d damaged", delivered, damaged)
		}
		counts, err := s.Counts()
		if err != nil || counts["q"][Pending] != 0 || counts["q"][Damaged] != damaged {
			t.Fatalf("counts %v (%v), %d damaged", counts, err, damaged)
		}
		if _, _, err := s.List(Query{Queue: "q", Limit: 100}); err != nil {
			t.Fatalf("the list failed over the damaged record: %v", err)
		}
	})
}

// TestStoreOptionsAreFixed guards "acknowledged means fsynced": the
// environment variables an earlier build read into bbolt's options
// (XNOSYNC among them) change nothing.
func TestStoreOptionsAreFixed(t *testing.T) {
	for _, v := range []string{"XNOSYNC", "XNFS", "XFLT"} {
		t.Setenv(v, "1")
	}
	s, err := Open(filepath.Join(t.TempDir(), "inbox.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.db.NoSync || s.db.NoFreelistSync || s.db.NoGrowSync {
		t.Fatalf("bbolt options changed by the environment: NoSync=%v NoFreelistSync=%v NoGrowSync=%v",
			s.db.NoSync, s.db.NoFreelistSync, s.db.NoGrowSync)
	}
}
