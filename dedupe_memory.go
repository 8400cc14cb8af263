package webhookguard

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// stores keeps dedupe stores alive across config reloads: a reload
// provisions the new handlers before the old ones are cleaned up, so the
// reference count never drops to zero and the keys survive.
var stores = caddy.NewUsagePool()

// memoryStore keeps committed keys, each with its expiry in Unix
// nanoseconds, in a bounded LRU (golang-lru's simplelru, which is not
// safe for concurrent use on its own) and claims in flight in a separate
// map, so that an eviction can never drop a claim. One mutex guards both
// and every compound operation (check, then claim).
type memoryStore struct {
	mu        sync.Mutex
	committed *simplelru.LRU[storeKey, int64]
	capacity  int
	inflight  map[storeKey]*claim
	ttl       time.Duration
	now       func() time.Time
	evictions uint64
	scope     string
	settings  storeSettings // the last handler's, see configure
	// This scope's series, looked up once rather than per commit.
	entriesGauge   prometheus.Gauge
	evictionsCount prometheus.Counter
}

func newMemoryStore(scope string, capacity int, ttl time.Duration, now func() time.Time) *memoryStore {
	initMetrics()
	capacity = max(1, capacity)
	return &memoryStore{
		committed:      newLRU(capacity),
		capacity:       capacity,
		inflight:       make(map[storeKey]*claim),
		ttl:            ttl,
		now:            now,
		scope:          scope,
		entriesGauge:   metrics.storeEntries.WithLabelValues(scope),
		evictionsCount: metrics.storeEvictions.WithLabelValues(scope),
	}
}

// newLRU makes the committed keys' LRU. It has no evict callback:
// golang-lru calls that on Remove and Purge too, and only the keys
// forgotten to make room count as evictions (see countEvictions).
func newLRU(capacity int) *simplelru.LRU[storeKey, int64] {
	lru, err := simplelru.NewLRU[storeKey, int64](capacity, nil)
	if err != nil {
		panic(err) // only for a size below 1, which callers rule out
	}
	return lru
}

// countEvictions records n keys forgotten to stay within capacity.
func (s *memoryStore) countEvictions(n int) {
	s.evictions += uint64(n)
	s.evictionsCount.Add(float64(n))
}

func (d *Dedupe) provisionMemory(ctx caddy.Context, handler string) error {
	key := "memory:" + d.Scope
	v, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newMemoryStore(d.Scope, d.Capacity, d.ttl, d.now), nil
	})
	if err != nil {
		return err
	}
	ms := v.(*memoryStore)
	if other, differs := ms.configure(ctx.Done(), handler, d.Capacity, d.ttl); differs {
		d.logger.Warn("handlers share a dedupe scope with different capacity or ttl; the one loaded last applies to both",
			zap.String("scope", d.Scope), zap.String("handler", handler), zap.String("other_handler", other.handler),
			zap.Int("capacity", d.Capacity), zap.Int("other_capacity", other.capacity),
			zap.Duration("ttl", d.ttl), zap.Duration("other_ttl", other.ttl))
	}
	d.store, d.poolKey = ms, key
	return nil
}

// storeSettings is what one handler asked of a shared store.
type storeSettings struct {
	config   <-chan struct{} // the Done channel of the config it came with
	handler  string
	capacity int
	ttl      time.Duration
}

// configure applies the capacity and TTL of the newest handler that uses
// this store, so a reload that changes them takes effect without losing
// the keys. When another handler of the same config asked for different
// ones, it reports that handler's settings: one of the two is not getting
// what it asked for.
func (s *memoryStore) configure(config <-chan struct{}, handler string, capacity int, ttl time.Duration) (other storeSettings, differs bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.settings
	s.settings = storeSettings{config: config, handler: handler, capacity: capacity, ttl: ttl}
	differs = prev.config == config && (prev.capacity != capacity || prev.ttl != ttl)
	capacity = max(1, capacity)
	if capacity < s.capacity/2 {
		s.rebuild(capacity)
	} else {
		s.countEvictions(s.committed.Resize(capacity))
	}
	s.capacity, s.ttl = capacity, ttl
	return prev, differs
}

// rebuild moves the most recently used keys into a new LRU of the given
// capacity, in the same order. A Go map never gives its memory back, so
// shrinking well below the old size needs a new one.
func (s *memoryStore) rebuild(capacity int) {
	keys := s.committed.Keys() // oldest first
	if drop := len(keys) - capacity; drop > 0 {
		keys = keys[drop:]
		s.countEvictions(drop)
	}
	lru := newLRU(capacity)
	for _, k := range keys {
		exp, _ := s.committed.Peek(k)
		lru.Add(k, exp)
	}
	s.committed = lru
	s.entriesGauge.Set(float64(lru.Len()))
}

func (s *memoryStore) claim(_ context.Context, keys []storeKey) (claimResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	nowNano := s.now().UnixNano()
	for _, k := range keys {
		if exp, ok := s.committed.Get(k); ok {
			if exp > nowNano {
				return claimResult{state: claimDuplicate}, nil
			}
			s.committed.Remove(k) // expired: not an eviction
		}
	}
	for _, k := range keys {
		if c, ok := s.inflight[k]; ok {
			return claimResult{state: claimBusy, wait: c.done}, nil
		}
	}
	c := &claim{keys: keys, done: make(chan struct{})}
	for _, k := range keys {
		s.inflight[k] = c
	}
	return claimResult{state: claimOwned, claim: c}, nil
}

func (s *memoryStore) commit(_ context.Context, c *claim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp := s.now().Add(s.ttl).UnixNano()
	for _, k := range c.keys {
		if s.committed.Add(k, exp) {
			s.countEvictions(1)
		}
	}
	s.entriesGauge.Set(float64(s.committed.Len()))
	s.dropClaim(c)
	return nil
}

func (s *memoryStore) release(_ context.Context, c *claim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropClaim(c)
	return nil
}

// dropClaim removes c's keys from the in-flight map, only where they are
// still c's, and wakes its waiters.
func (s *memoryStore) dropClaim(c *claim) {
	for _, k := range c.keys {
		if s.inflight[k] == c {
			delete(s.inflight, k)
		}
	}
	select {
	case <-c.done:
	default:
		close(c.done)
	}
}

// Destruct empties the store when the last config using it is unloaded.
func (s *memoryStore) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed.Purge()
	s.entriesGauge.Set(0)
	return nil
}
