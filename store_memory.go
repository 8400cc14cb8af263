package webhookguard

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// stores keeps dedupe stores alive across config reloads: a reload
// provisions the new handlers before the old ones are cleaned up, so the
// reference count never drops to zero and the keys survive.
var stores = caddy.NewUsagePool()

// memoryStore keeps committed keys in a bounded LRU table and claims in
// flight in a separate map, so that an eviction can never drop a claim.
// A mutex guards every compound operation (check, then claim).
type memoryStore struct {
	mu        sync.Mutex
	committed *keyTable
	inflight  map[storeKey]*claim
	ttl       time.Duration
	evictions uint64
	scope     string
	// This scope's series, looked up once rather than per commit.
	entriesGauge   prometheus.Gauge
	evictionsCount prometheus.Counter
}

func newMemoryStore(scope string, capacity int, ttl time.Duration) *memoryStore {
	initMetrics()
	s := &memoryStore{
		inflight:       make(map[storeKey]*claim),
		ttl:            ttl,
		scope:          scope,
		entriesGauge:   metrics.storeEntries.WithLabelValues(scope),
		evictionsCount: metrics.storeEvictions.WithLabelValues(scope),
	}
	s.committed = newKeyTable(capacity, func() {
		s.evictions++
		s.evictionsCount.Inc()
	})
	return s
}

func (d *Dedupe) provisionMemory() error {
	key := "memory:" + d.Scope
	v, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newMemoryStore(d.Scope, d.Capacity, d.ttl), nil
	})
	if err != nil {
		return err
	}
	ms := v.(*memoryStore)
	ms.configure(d.Capacity, d.ttl)
	d.store, d.poolKey = ms, key
	return nil
}

// configure applies the capacity and TTL of the newest config that uses
// this store, so a reload that changes them takes effect without losing
// the keys.
func (s *memoryStore) configure(capacity int, ttl time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed.resize(capacity)
	s.ttl = ttl
}

func (s *memoryStore) claim(_ context.Context, keys []storeKey) (claimResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	nowNano := now().UnixNano()
	for _, k := range keys {
		if exp, ok := s.committed.get(k); ok {
			if exp > nowNano {
				return claimResult{state: outcomeDuplicate}, nil
			}
			s.committed.remove(k) // expired: not an eviction
		}
	}
	for _, k := range keys {
		if c, ok := s.inflight[k]; ok {
			return claimResult{state: outcomeBusy, wait: c.done}, nil
		}
	}
	c := &claim{keys: keys, done: make(chan struct{})}
	for _, k := range keys {
		s.inflight[k] = c
	}
	return claimResult{state: outcomeOwned, claim: c}, nil
}

func (s *memoryStore) commit(_ context.Context, c *claim) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	exp := now().Add(s.ttl).UnixNano()
	for _, k := range c.keys {
		s.committed.add(k, exp)
	}
	s.entriesGauge.Set(float64(s.committed.len()))
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

// stats reports the number of committed keys and evictions so far.
func (s *memoryStore) stats() (entries int, evictions uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.committed.len(), s.evictions
}

// Destruct empties the store when the last config using it is unloaded.
func (s *memoryStore) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.committed.purge()
	s.entriesGauge.Set(0)
	return nil
}
