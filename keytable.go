package webhookguard

import "math"

// keyTable is a bounded set of dedupe keys, each with its expiry, that
// forgets the least recently used key to make room for a new one. It is
// the in-memory store's committed keys.
//
// Nothing in it holds a pointer: the keys and their recency list live in
// one slice of plain slots linked by index, and the map from key to slot
// holds plain values. A general-purpose LRU keeps a heap object with
// pointers per key, which every garbage collection cycle has to visit,
// so that the cost of a cycle grew with the number of keys remembered;
// here it does not, and a key takes about half the memory.
type keyTable struct {
	index    map[storeKey]int32 // the slot of each key
	slots    []keySlot
	head     int32 // most recently used slot, noSlot when empty
	tail     int32 // least recently used slot, noSlot when empty
	free     int32 // first unused slot, linked through next; noSlot when none
	capacity int
	// onEvict is called for each key forgotten to stay within capacity
	// (not for keys removed or purged).
	onEvict func()
}

// keySlot is one key of the table, linked to its neighbours in recency
// order (prev is more recent, next less recent).
type keySlot struct {
	key        storeKey
	exp        int64
	prev, next int32
}

// noSlot ends the recency list and the free list.
const noSlot = -1

// newKeyTable returns an empty table that keeps at most capacity keys.
func newKeyTable(capacity int, onEvict func()) *keyTable {
	t := &keyTable{onEvict: onEvict}
	t.purge()
	t.capacity = clampCapacity(capacity)
	return t
}

// clampCapacity keeps a capacity between one key and what a slot index
// can number.
func clampCapacity(capacity int) int {
	return min(max(1, capacity), math.MaxInt32)
}

// len is the number of keys held.
func (t *keyTable) len() int { return len(t.index) }

// get returns the expiry of k and marks it most recently used.
func (t *keyTable) get(k storeKey) (exp int64, ok bool) {
	s, ok := t.index[k]
	if !ok {
		return 0, false
	}
	t.moveToFront(s)
	return t.slots[s].exp, true
}

// add sets k's expiry and marks it most recently used, forgetting the
// least recently used key first when the table is full.
func (t *keyTable) add(k storeKey, exp int64) {
	if s, ok := t.index[k]; ok {
		t.slots[s].exp = exp
		t.moveToFront(s)
		return
	}
	if len(t.index) >= t.capacity {
		t.evictOldest()
	}
	s := t.allocSlot()
	t.slots[s] = keySlot{key: k, exp: exp, prev: noSlot, next: noSlot}
	t.pushFront(s)
	t.index[k] = s
}

// remove forgets k, if held.
func (t *keyTable) remove(k storeKey) {
	if s, ok := t.index[k]; ok {
		t.drop(s)
	}
}

// resize changes the capacity, forgetting the least recently used keys
// beyond it. A table shrunk well below its size is rebuilt, since
// neither the slots nor a Go map give memory back on their own.
func (t *keyTable) resize(capacity int) {
	t.capacity = clampCapacity(capacity)
	for len(t.index) > t.capacity {
		t.evictOldest()
	}
	if len(t.slots) > 2*t.capacity {
		t.compact()
	}
}

// compact rebuilds the slots and the index with just the keys held, in
// the same recency order.
func (t *keyTable) compact() {
	slots := make([]keySlot, 0, len(t.index))
	index := make(map[storeKey]int32, len(t.index))
	for s := t.head; s != noSlot; s = t.slots[s].next {
		n := int32(len(slots))
		slots = append(slots, keySlot{key: t.slots[s].key, exp: t.slots[s].exp, prev: n - 1, next: n + 1})
		index[t.slots[s].key] = n
	}
	t.head, t.tail, t.free = noSlot, noSlot, noSlot
	if n := int32(len(slots)); n > 0 {
		slots[n-1].next = noSlot
		t.head, t.tail = 0, n-1
	}
	t.slots, t.index = slots, index
}

// purge forgets every key and releases the memory they took.
func (t *keyTable) purge() {
	t.index = make(map[storeKey]int32)
	t.slots = nil
	t.head, t.tail, t.free = noSlot, noSlot, noSlot
}

func (t *keyTable) evictOldest() {
	if t.tail == noSlot {
		return
	}
	t.drop(t.tail)
	if t.onEvict != nil {
		t.onEvict()
	}
}

// drop unlinks slot s, forgets its key and puts the slot on the free list.
func (t *keyTable) drop(s int32) {
	t.unlink(s)
	delete(t.index, t.slots[s].key)
	t.slots[s] = keySlot{prev: noSlot, next: t.free}
	t.free = s
}

// allocSlot takes a slot from the free list, or a new one.
func (t *keyTable) allocSlot() int32 {
	if s := t.free; s != noSlot {
		t.free = t.slots[s].next
		return s
	}
	t.slots = append(t.slots, keySlot{})
	return int32(len(t.slots) - 1)
}

func (t *keyTable) moveToFront(s int32) {
	if t.head == s {
		return
	}
	t.unlink(s)
	t.pushFront(s)
}

func (t *keyTable) pushFront(s int32) {
	t.slots[s].prev, t.slots[s].next = noSlot, t.head
	if t.head != noSlot {
		t.slots[t.head].prev = s
	}
	t.head = s
	if t.tail == noSlot {
		t.tail = s
	}
}

func (t *keyTable) unlink(s int32) {
	p, n := t.slots[s].prev, t.slots[s].next
	if p != noSlot {
		t.slots[p].next = n
	} else {
		t.head = n
	}
	if n != noSlot {
		t.slots[n].prev = p
	} else {
		t.tail = p
	}
}
