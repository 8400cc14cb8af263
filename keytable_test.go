package webhookguard

import (
	"math/rand/v2"
	"runtime"
	runtimemetrics "runtime/metrics"
	"slices"
	"strconv"
	"testing"
)

// refLRU is the plain model keyTable must behave as: keys in recency
// order, most recent first.
type refLRU struct {
	keys      []storeKey
	exp       map[storeKey]int64
	capacity  int
	evictions int
}

func (r *refLRU) touch(k storeKey) {
	i := slices.Index(r.keys, k)
	r.keys = slices.Insert(slices.Delete(r.keys, i, i+1), 0, k)
}

func (r *refLRU) get(k storeKey) (int64, bool) {
	e, ok := r.exp[k]
	if ok {
		r.touch(k)
	}
	return e, ok
}

func (r *refLRU) add(k storeKey, e int64) {
	if _, ok := r.exp[k]; ok {
		r.exp[k] = e
		r.touch(k)
		return
	}
	if len(r.keys) >= r.capacity {
		r.evictOldest()
	}
	r.keys = slices.Insert(r.keys, 0, k)
	r.exp[k] = e
}

func (r *refLRU) evictOldest() {
	last := r.keys[len(r.keys)-1]
	r.keys = r.keys[:len(r.keys)-1]
	delete(r.exp, last)
	r.evictions++
}

func (r *refLRU) remove(k storeKey) {
	if i := slices.Index(r.keys, k); i >= 0 {
		r.keys = slices.Delete(r.keys, i, i+1)
		delete(r.exp, k)
	}
}

func (r *refLRU) resize(c int) {
	r.capacity = c
	for len(r.keys) > c {
		r.evictOldest()
	}
}

// recency lists the table's keys from most to least recently used,
// walking the links both ways, so that a broken prev or next link shows.
func (t *keyTable) recency(tb testing.TB) []storeKey {
	var fwd, back []storeKey
	for s := t.head; s != noSlot; s = t.slots[s].next {
		fwd = append(fwd, t.slots[s].key)
		if len(fwd) > len(t.slots) {
			tb.Fatal("recency list loops")
		}
	}
	for s := t.tail; s != noSlot; s = t.slots[s].prev {
		back = append(back, t.slots[s].key)
		if len(back) > len(t.slots) {
			tb.Fatal("recency list loops backwards")
		}
	}
	slices.Reverse(back)
	if !slices.Equal(fwd, back) {
		tb.Fatalf("links disagree: forward %d keys, backward %d", len(fwd), len(back))
	}
	return fwd
}

// TestKeyTableMatchesModel guards the in-memory store's bookkeeping: under
// long random mixes of lookups, adds, removals and resizes, the table
// must answer, order, evict and count exactly as a plain LRU does. A slip
// in its index links would forget a committed key (a duplicate delivered)
// or keep one past the capacity (memory without bound).
func TestKeyTableMatchesModel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int
		keys     int // distinct keys drawn from
		ops      int
	}{
		{"one slot", 1, 4, 2000},
		{"small, many keys", 5, 40, 20000},
		{"roomy", 64, 50, 20000},
		{"churn", 100, 1000, 50000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.capacity)))
			evictions := 0
			table := newKeyTable(tc.capacity, func() { evictions++ })
			model := &refLRU{exp: map[storeKey]int64{}, capacity: tc.capacity}
			key := func() storeKey { return keysOf(string(rune('a' + rng.IntN(tc.keys))))[0] }
			for op := range tc.ops {
				switch k := key(); rng.IntN(10) {
				case 0, 1, 2:
					e1, ok1 := table.get(k)
					e2, ok2 := model.get(k)
					if ok1 != ok2 || e1 != e2 {
						t.Fatalf("op %d: get = %d %v, model %d %v", op, e1, ok1, e2, ok2)
					}
				case 3, 4, 5, 6, 7:
					e := rng.Int64()
					table.add(k, e)
					model.add(k, e)
				case 8:
					table.remove(k)
					model.remove(k)
				case 9:
					if rng.IntN(50) == 0 {
						c := 1 + rng.IntN(2*tc.capacity)
						table.resize(c)
						model.resize(c)
						if len(table.slots) > 2*c {
							t.Fatalf("op %d: %d slots kept after shrinking to %d keys", op, len(table.slots), c)
						}
					}
				}
				if table.len() != len(model.keys) || evictions != model.evictions {
					t.Fatalf("op %d: %d keys and %d evictions, model %d and %d",
						op, table.len(), evictions, len(model.keys), model.evictions)
				}
				if op%97 == 0 && !slices.Equal(table.recency(t), model.keys) {
					t.Fatalf("op %d: recency order differs from the model", op)
				}
			}
			if !slices.Equal(table.recency(t), model.keys) {
				t.Fatal("final recency order differs from the model")
			}
			table.purge()
			if table.len() != 0 || len(table.recency(t)) != 0 {
				t.Fatal("purge left keys behind")
			}
		})
	}
}

// scannableHeap is the heap the garbage collector has to scan, as of a
// collection run now.
func scannableHeap() uint64 {
	runtime.GC()
	sample := []runtimemetrics.Sample{{Name: "/gc/scan/heap:bytes"}}
	runtimemetrics.Read(sample)
	return sample[0].Value.Uint64()
}

// TestKeyTableNothingToScan guards the reason the table exists: 200,000
// remembered keys must add (next to) nothing to the heap the garbage
// collector scans, so that a collection costs the same however many keys
// are kept. A pointer added to a slot, or a map of pointers, fails it.
func TestKeyTableNothingToScan(t *testing.T) {
	const n = 200_000
	before := scannableHeap()
	table := newKeyTable(n, nil)
	for i := range n {
		table.add(newStoreKey("key-"+strconv.Itoa(i)), int64(i))
	}
	grown := int64(scannableHeap()) - int64(before)
	runtime.KeepAlive(table)
	if table.len() != n {
		t.Fatalf("%d keys held, want %d", table.len(), n)
	}
	if perKey := float64(grown) / n; perKey > 1 {
		t.Fatalf("the table adds %.1f scannable bytes per key; want none", perKey)
	}
}
