package inbox

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeFile stores n pending events of queue q, each with a body of its
// own (size bytes), in a new file, closes it and returns its path and
// each event's body by id.
func writeFile(t *testing.T, n, size int) (string, map[string][]byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inbox.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bodies := map[string][]byte{}
	for i := range n {
		body := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		body = append([]byte(fmt.Sprintf(`{"n":%d,"pad":"`, i)), body...)
		e := &Event{ID: fmt.Sprintf("evt_%04d", i), Queue: "q", OrderKey: fmt.Sprintf("c%d", i%5), Method: "POST",
			URI: "/", Body: body, ReceivedAt: time.Now(), Keys: []string{fmt.Sprintf("key-%d", i)},
			KeysUntil: time.Now().Add(time.Hour)}
		if err := s.Append([]*Event{e}); err != nil {
			t.Fatal(err)
		}
		bodies[e.ID] = body
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return path, bodies
}

// checkSalvaged opens a salvaged file and fails unless every event in it
// is one that was written, with its body intact; it returns how many
// pending events it holds.
func checkSalvaged(t *testing.T, path string, bodies map[string][]byte) int {
	t.Helper()
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatalf("the salvaged file does not open: %v", err)
	}
	defer s.Close()
	pending := 0
	for id, want := range bodies {
		e, err := s.Lookup(id)
		if err != nil {
			continue
		}
		if e.State != Pending {
			continue
		}
		got, err := s.Body(e.Seq)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s salvaged with a body that differs: %v", id, err)
		}
		pending++
	}
	// A redelivery of a salvaged event is still a duplicate: its key came along.
	dup := &Event{ID: "evt_dup", Queue: "q", Method: "POST", URI: "/", Body: []byte("{}"), ReceivedAt: time.Now(),
		Keys: []string{"key-1"}}
	if err := s.Append([]*Event{dup}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup("evt_0001"); err == nil && !dup.Duplicate {
		t.Fatal("a salvaged event's dedupe key was not kept")
	}
	return pending
}

// TestSalvageAFlippedRecord guards check and salvage on a file with one
// damaged record: bbolt reads every bucket, the record is reported
// unreadable, and the salvaged file holds the other 49 events, whole.
func TestSalvageAFlippedRecord(t *testing.T) {
	path, bodies := writeFile(t, 50, 100)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The record of evt_0017 holds its id, then its queue's; change the
	// queue's name.
	at := bytes.Index(raw, []byte("\x08evt_0017\x01q"))
	if at < 0 {
		t.Fatal("the record was not found in the file")
	}
	raw[at+10] ^= 0xff
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Check(path)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Walked || r.Unreadable != 1 || r.Readable() != 49 || r.OpenError != "" {
		t.Fatalf("check: %+v", r)
	}
	out := filepath.Join(t.TempDir(), "salvaged.db")
	if r, err = Salvage(path, out); err != nil || r.Written != 49 {
		t.Fatalf("salvage: %+v %v", r, err)
	}
	if n := checkSalvaged(t, out, bodies); n != 49 {
		t.Fatalf("%d pending events salvaged, want 49", n)
	}
	if _, err := Salvage(path, out); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("salvage over an existing file: %v", err)
	}
}

// TestSalvageATruncatedFile guards the way out of a file cut short (bbolt
// panics opening it): check reports without a panic, and salvage copies
// what survived, every body checked against its record's checksum.
func TestSalvageATruncatedFile(t *testing.T) {
	path, bodies := writeFile(t, 200, 600)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, info.Size()/2); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, time.Second); err == nil || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("opening the truncated file: %v", err)
	} else {
		t.Log(err)
	}
	r, err := Check(path)
	if err != nil {
		t.Fatal(err)
	}
	if r.Walked || !r.PageScan || r.Readable() == 0 {
		t.Fatalf("check: %+v", r)
	}
	out := filepath.Join(t.TempDir(), "salvaged.db")
	if r, err = Salvage(path, out); err != nil {
		t.Fatal(err)
	}
	n := checkSalvaged(t, out, bodies)
	if n == 0 || n > 200 {
		t.Fatalf("%d pending events salvaged", n)
	}
	t.Logf("%d of 200 events salvaged from the first half of the file (%+v)", n, r)
}

// TestCompactShrinksADrainedFile guards compaction: a file grown by a
// backlog that was then delivered and forgotten shrinks, and what is left
// in it (a pending event, its body and key) is still there.
func TestCompactShrinksADrainedFile(t *testing.T) {
	path, _ := writeFile(t, 1000, 2000)
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	keep := &Event{ID: "evt_keep", Queue: "q", Method: "POST", URI: "/", Body: []byte(`{"keep":1}`), ReceivedAt: time.Now().Add(time.Hour),
		Keys: []string{"key-keep"}, KeysUntil: time.Now().Add(2 * time.Hour)}
	if err := s.Append([]*Event{keep}); err != nil {
		t.Fatal(err)
	}
	for passes := 0; ; passes++ {
		due, _, _, err := s.Due("q", time.Now().Add(3*time.Hour), 500, func(string, uint64) bool { return false })
		if err != nil || passes > 1000 {
			t.Fatalf("draining: %v", err)
		}
		if len(due) == 0 || (len(due) == 1 && due[0].ID == "evt_keep") {
			break
		}
		for _, e := range due {
			if e.ID == "evt_keep" {
				continue
			}
			e.State, e.Attempts, e.DeliveredAt = Delivered, 1, time.Now()
			if err := s.Settle(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.Expire(time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	before, after, err := Compact(path)
	if err != nil {
		t.Fatal(err)
	}
	if after*4 > before {
		t.Fatalf("compaction took %d bytes to %d: want it under a quarter", before, after)
	}
	s, err = Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := s.Lookup("evt_keep")
	if err != nil || e.State != Pending {
		t.Fatalf("the pending event after compaction: %v %+v", err, e)
	}
	if body, err := s.Body(e.Seq); err != nil || string(body) != `{"keep":1}` {
		t.Fatalf("its body: %q %v", body, err)
	}
	t.Logf("compacted %d → %d bytes", before, after)
}

// TestEraseRemovesTheBytes guards erasure: erasing by id, by order key
// and by phone number deletes the events, their keys and their bodies,
// and the erased text is nowhere in the file afterwards (freed pages
// included), while the other events are untouched and still due.
func TestEraseRemovesTheBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inbox.db")
	s, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var events []*Event
	for i := range 12 {
		body := fmt.Sprintf(`{"n":%d,"from":"+1555000%04d","text":"secret-text-%d"}`, i, i%4, i)
		events = append(events, &Event{ID: fmt.Sprintf("evt_%02d", i), Queue: "q", OrderKey: fmt.Sprintf("c%d", i%4),
			Method: "POST", URI: "/", Body: []byte(body), ReceivedAt: time.Now(), Keys: []string{fmt.Sprintf("k%d", i)},
			KeysUntil: time.Now().Add(time.Hour)})
	}
	if err := s.Append(events); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		x    Erasure
		want int
		gone []string
	}{
		{Erasure{ID: "evt_05"}, 1, []string{"secret-text-5"}},
		{Erasure{OrderKey: "c2"}, 3, []string{"secret-text-2", "secret-text-6", "secret-text-10"}},
		{Erasure{Phone: "+15550000003"}, 3, []string{"secret-text-3", "secret-text-7", "secret-text-11"}},
	} {
		n, err := s.Erase(tc.x)
		if err != nil || n != tc.want {
			t.Fatalf("erase %+v: %d %v, want %d", tc.x, n, err, tc.want)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, text := range tc.gone {
			if bytes.Contains(raw, []byte(text)) {
				t.Fatalf("after erasing %+v, %q is still in the file", tc.x, text)
			}
		}
	}
	if _, err := s.Lookup("evt_05"); err == nil {
		t.Fatal("the erased event can still be looked up")
	}
	dup := &Event{ID: "evt_again", Queue: "q", Method: "POST", URI: "/", Body: []byte("{}"), ReceivedAt: time.Now(), Keys: []string{"k5"}}
	if err := s.Append([]*Event{dup}); err != nil || dup.Duplicate {
		t.Fatalf("the erased event's key still holds: %v %v", err, dup.Duplicate)
	}
	counts, _ := s.Counts()
	if counts["q"][Pending] != 12-7+1 {
		t.Fatalf("pending count %d, want 6", counts["q"][Pending])
	}
	due := dueIDs(t, s, "q", time.Now().Add(time.Hour))
	if len(due) != 3 { // the heads of c0 and c1, and evt_again
		t.Fatalf("due after erasure: %v", due)
	}
	if _, err := s.Erase(Erasure{ID: "a", Phone: "b"}); err == nil {
		t.Fatal("an erasure naming two things was accepted")
	}
}
