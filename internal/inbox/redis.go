package inbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisStore keeps queues in Redis, so that several Caddy instances share
// them: any instance accepts, any instance delivers, and an instance that
// dies loses nothing.
//
// Structures. Each order key (conversation) is a list of its pending
// events' sequences, in arrival order; only a list's first element is a
// head, and heads (with events that have no order key) sit in one sorted
// set per queue, scored by when they are due. An instance takes a head
// with a lease (SET NX PX, renewed while the attempt runs); the next
// event of a conversation only becomes a head when the previous one is
// settled, so at most one instance delivers a conversation at a time and
// order holds across instances. A lease that is not renewed (its
// instance died) expires and another instance takes the head: only the
// attempts in flight at a death can repeat. Streams with consumer groups
// were the other candidate; they hand out messages, not conversations,
// so per-conversation order would still need a lock per conversation and
// a way to hold back its later messages, which the lists give for free.
//
// Every change is one Lua script, so a crash of Caddy or Redis between
// two steps cannot leave a conversation half moved. The scripts build
// their keys from a prefix: they need one Redis (with or without
// replicas), not a cluster.
type RedisStore struct {
	client *redis.Client
	prefix string
	owner  string // this process's lease token
	lease  time.Duration

	mu   sync.Mutex
	held map[string]string // queue \x00 seq → lease key, for renewal

	stop chan struct{}
	done chan struct{}
}

// OpenRedis returns a store over client under prefix. Leases last lease
// and are renewed every third of it while this store runs.
func OpenRedis(client *redis.Client, prefix string, lease time.Duration) *RedisStore {
	var token [12]byte
	_, _ = rand.Read(token[:])
	s := &RedisStore{client: client, prefix: prefix, owner: hex.EncodeToString(token[:]), lease: lease,
		held: map[string]string{}, stop: make(chan struct{}), done: make(chan struct{})}
	go s.renewLeases()
	return s
}

// AppendOnly reports whether Redis persists every write (appendonly yes):
// without it an acknowledged event can be lost when Redis restarts.
func (s *RedisStore) AppendOnly(ctx context.Context) (bool, error) {
	v, err := s.client.ConfigGet(ctx, "appendonly").Result()
	if err != nil {
		return false, err
	}
	return v["appendonly"] == "yes", nil
}

func (s *RedisStore) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

func ms(t time.Time) int64 { return max(t.UnixMilli(), 0) }

var appendScript = redis.NewScript(`
local P, Q, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local qp = P .. 'q:' .. Q .. ':'
redis.call('SADD', P .. 'queues', Q)
for i = 0, n - 1 do
  local b = 4 + i * 6
  local seq, id, order, at, blob, body = ARGV[b], ARGV[b+1], ARGV[b+2], ARGV[b+3], ARGV[b+4], ARGV[b+5]
  redis.call('SET', P .. 'ev:' .. seq, blob)
  redis.call('SET', P .. 'body:' .. seq, body)
  redis.call('SET', P .. 'id:' .. id, seq)
  redis.call('SET', P .. 'state:' .. seq, 'pending')
  redis.call('ZADD', qp .. 'all', seq, seq)
  redis.call('ZADD', qp .. 'pending', seq, seq)
  redis.call('HINCRBY', qp .. 'counts', 'pending', 1)
  if order == '' or redis.call('RPUSH', qp .. 'conv:' .. order, seq) == 1 then
    redis.call('ZADD', qp .. 'due', at, seq)
  end
end
return n
`)

// Append stores events of one queue as pending, all or none, in one
// script (a handler appends its own queue's events only).
func (s *RedisStore) Append(events []*Event) error {
	if len(events) == 0 {
		return nil
	}
	queue := events[0].Queue
	for _, e := range events {
		if e.Queue != queue {
			return errors.New("inbox: redis: one Append holds one queue's events")
		}
	}
	ctx, cancel := s.ctx()
	defer cancel()
	last, err := s.client.IncrBy(ctx, s.prefix+"seq", int64(len(events))).Result()
	if err != nil {
		return fmt.Errorf("inbox: redis: %w", err)
	}
	args := []any{s.prefix, queue, len(events)}
	for i, e := range events {
		e.Seq = uint64(last) - uint64(len(events)) + uint64(i) + 1
		e.Pos, e.State = e.Seq, Pending
		if e.NextAt.IsZero() {
			e.NextAt = e.ReceivedAt
		}
		args = append(args, e.Seq, e.ID, e.OrderKey, ms(e.NextAt), encodeEvent(e), e.Body)
	}
	if err := appendScript.Run(ctx, s.client, nil, args...).Err(); err != nil {
		return fmt.Errorf("inbox: redis: %w", err)
	}
	return nil
}

var claimScript = redis.NewScript(`
local P, Q, now, limit, owner, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local qp = P .. 'q:' .. Q .. ':'
local out = {}
local taken = 0
for _, seq in ipairs(redis.call('ZRANGEBYSCORE', qp .. 'due', '-inf', now, 'LIMIT', 0, limit * 4 + 64)) do
  if taken >= limit then break end
  if redis.call('SET', qp .. 'lease:' .. seq, owner, 'NX', 'PX', lease) then
    taken = taken + 1
    table.insert(out, seq)
    table.insert(out, redis.call('GET', P .. 'ev:' .. seq) or '')
    table.insert(out, redis.call('GET', P .. 'body:' .. seq) or '')
  end
end
local nxt = redis.call('ZRANGEBYSCORE', qp .. 'due', '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
table.insert(out, nxt[2] or '')
return out
`)

// Due takes up to limit due heads of queue, each with a lease that this
// store renews until the head is settled. busy is not needed: heads in
// flight here are leased, and a lease is taken only once.
func (s *RedisStore) Due(queue string, now time.Time, limit int, _ func(string, uint64) bool) ([]*Event, time.Time, error) {
	if limit <= 0 {
		return nil, time.Time{}, nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	res, err := claimScript.Run(ctx, s.client, nil, s.prefix, queue, ms(now), limit, s.owner, s.lease.Milliseconds()).StringSlice()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("inbox: redis: %w", err)
	}
	var due []*Event
	for i := 0; i+2 < len(res); i += 3 {
		seq, blob, body := res[i], res[i+1], res[i+2]
		s.hold(queue, seq)
		e, err := decodeEvent([]byte(blob))
		if err != nil {
			s.release(queue, seq)
			return due, time.Time{}, fmt.Errorf("inbox: redis event %s: %w", seq, err)
		}
		e.Body = []byte(body)
		due = append(due, e)
	}
	var next time.Time
	if at, err := strconv.ParseFloat(res[len(res)-1], 64); err == nil {
		next = time.UnixMilli(int64(at))
	}
	return due, next, nil
}

var settleScript = redis.NewScript(`
local P, Q, seq, owner, order, state, at, blob, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local qp = P .. 'q:' .. Q .. ':'
local holder = redis.call('GET', qp .. 'lease:' .. seq)
if (holder and holder ~= owner) or redis.call('GET', P .. 'state:' .. seq) ~= 'pending' then
  return redis.error_reply('LEASE another instance took this event')
end
redis.call('SET', P .. 'ev:' .. seq, blob)
redis.call('DEL', qp .. 'lease:' .. seq)
if state == 'pending' then
  redis.call('ZADD', qp .. 'due', at, seq)
  return 1
end
redis.call('SET', P .. 'state:' .. seq, state)
redis.call('ZREM', qp .. 'due', seq)
redis.call('ZREM', qp .. 'pending', seq)
redis.call('HINCRBY', qp .. 'counts', 'pending', -1)
redis.call('HINCRBY', qp .. 'counts', state, 1)
if order ~= '' then
  local ck = qp .. 'conv:' .. order
  redis.call('LREM', ck, 1, seq)
  local nxt = redis.call('LINDEX', ck, 0)
  if nxt then redis.call('ZADD', qp .. 'due', now, nxt) end
end
return 1
`)

// Settle records an attempt's result on a head this store leased.
func (s *RedisStore) Settle(e *Event) error {
	seq := strconv.FormatUint(e.Seq, 10)
	defer s.release(e.Queue, seq)
	ctx, cancel := s.ctx()
	defer cancel()
	err := settleScript.Run(ctx, s.client, nil, s.prefix, e.Queue, seq, s.owner, e.OrderKey, string(e.State),
		ms(e.NextAt), encodeEvent(e), ms(time.Now())).Err()
	if err != nil {
		return fmt.Errorf("inbox: redis: settling %s: %w", e.ID, err)
	}
	return nil
}

func (s *RedisStore) hold(queue, seq string) {
	s.mu.Lock()
	s.held[queue+"\x00"+seq] = s.prefix + "q:" + queue + ":lease:" + seq
	s.mu.Unlock()
}

func (s *RedisStore) release(queue, seq string) {
	s.mu.Lock()
	delete(s.held, queue+"\x00"+seq)
	s.mu.Unlock()
}

var renewScript = redis.NewScript(`
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 1
`)

// renewLeases keeps the leases of attempts in flight alive, every third
// of the lease, until Close.
func (s *RedisStore) renewLeases() {
	defer close(s.done)
	tick := time.NewTicker(s.lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		s.mu.Lock()
		keys := make([]string, 0, len(s.held))
		for _, k := range s.held {
			keys = append(keys, k)
		}
		s.mu.Unlock()
		if len(keys) == 0 {
			continue
		}
		ctx, cancel := s.ctx()
		_ = renewScript.Run(ctx, s.client, keys, s.owner, s.lease.Milliseconds()).Err()
		cancel()
	}
}

var expireScript = redis.NewScript(`
local P, Q, seq, id, state = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local qp = P .. 'q:' .. Q .. ':'
if redis.call('GET', P .. 'state:' .. seq) ~= state then return 0 end
redis.call('DEL', P .. 'ev:' .. seq, P .. 'body:' .. seq, P .. 'id:' .. id, P .. 'state:' .. seq)
redis.call('ZREM', qp .. 'all', seq)
redis.call('HINCRBY', qp .. 'counts', state, -1)
return 1
`)

// Expire deletes delivered and dead events received before cutoff.
func (s *RedisStore) Expire(cutoff time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	queues, err := s.client.SMembers(ctx, s.prefix+"queues").Result()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, q := range queues {
		for start := int64(0); ; {
			seqs, err := s.client.ZRange(ctx, s.prefix+"q:"+q+":all", start, start+499).Result()
			if err != nil || len(seqs) == 0 {
				return n, err
			}
			events, err := s.events(ctx, seqs)
			if err != nil {
				return n, err
			}
			stop, kept := false, 0
			for _, e := range events {
				if !e.ReceivedAt.Before(cutoff) {
					stop = true
					break
				}
				if e.State == Pending {
					kept++
					continue
				}
				ok, err := expireScript.Run(ctx, s.client, nil, s.prefix, q, e.Seq, e.ID, string(e.State)).Int()
				if err != nil {
					return n, err
				}
				n += ok
				kept += 1 - ok
			}
			if stop || len(seqs) < 500 {
				break
			}
			start += int64(kept)
		}
	}
	return n, nil
}

// events reads and decodes the events with the given sequences (missing
// ones are skipped).
func (s *RedisStore) events(ctx context.Context, seqs []string) ([]*Event, error) {
	keys := make([]string, len(seqs))
	for i, seq := range seqs {
		keys[i] = s.prefix + "ev:" + seq
	}
	blobs, err := s.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]*Event, 0, len(blobs))
	for _, b := range blobs {
		str, ok := b.(string)
		if !ok {
			continue
		}
		e, err := decodeEvent([]byte(str))
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Counts returns how many events of each queue are in each state.
func (s *RedisStore) Counts() (map[string]map[State]int, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	queues, err := s.client.SMembers(ctx, s.prefix+"queues").Result()
	if err != nil {
		return nil, err
	}
	out := map[string]map[State]int{}
	for _, q := range queues {
		m, err := s.client.HGetAll(ctx, s.prefix+"q:"+q+":counts").Result()
		if err != nil {
			return nil, err
		}
		out[q] = map[State]int{}
		for k, v := range m {
			n, _ := strconv.Atoi(v)
			out[q][State(k)] = max(n, 0)
		}
	}
	return out, nil
}

// OldestPending returns when queue's oldest pending event arrived.
func (s *RedisStore) OldestPending(queue string) (time.Time, bool, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	seqs, err := s.client.ZRange(ctx, s.prefix+"q:"+queue+":pending", 0, 0).Result()
	if err != nil || len(seqs) == 0 {
		return time.Time{}, false, err
	}
	es, err := s.events(ctx, seqs)
	if err != nil || len(es) == 0 {
		return time.Time{}, false, err
	}
	return es[0].ReceivedAt, true, nil
}

// Lookup returns the event with the given id, without its body.
func (s *RedisStore) Lookup(id string) (*Event, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	seq, err := s.client.Get(ctx, s.prefix+"id:"+id).Result()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	es, err := s.events(ctx, []string{seq})
	if err != nil {
		return nil, err
	}
	if len(es) == 0 {
		return nil, ErrNotFound
	}
	return es[0], nil
}

// List returns events of q.Queue (required here) matching q, newest
// first, and the id to page from.
func (s *RedisStore) List(q Query) ([]*Event, string, error) {
	if q.Queue == "" {
		return nil, "", errors.New("inbox: redis: a queue is required to list events")
	}
	limit, scan := q.Limit, q.Scan
	if limit <= 0 {
		limit = 50
	}
	if scan <= 0 {
		scan = 100000
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	upper := "+inf"
	if q.Before != "" {
		seq, err := s.client.Get(ctx, s.prefix+"id:"+q.Before).Result()
		if errors.Is(err, redis.Nil) {
			return nil, "", ErrNotFound
		}
		if err != nil {
			return nil, "", err
		}
		upper = "(" + seq
	}
	var out []*Event
	for read := 0; read < scan; {
		seqs, err := s.client.ZRevRangeByScore(ctx, s.prefix+"q:"+q.Queue+":all", &redis.ZRangeBy{Min: "-inf", Max: upper, Count: 200}).Result()
		if err != nil {
			return nil, "", err
		}
		if len(seqs) == 0 {
			return out, "", nil
		}
		read += len(seqs)
		events, err := s.events(ctx, seqs)
		if err != nil {
			return nil, "", err
		}
		for _, e := range events {
			if (q.State != "" && e.State != q.State) || (q.Name != "" && e.Name != q.Name) {
				continue
			}
			if len(out) == limit {
				return out, out[len(out)-1].ID, nil
			}
			out = append(out, e)
		}
		upper = "(" + seqs[len(seqs)-1]
	}
	return out, "", nil
}

// Body returns the body of the event with sequence seq.
func (s *RedisStore) Body(seq uint64) ([]byte, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	b, err := s.client.Get(ctx, s.prefix+"body:"+strconv.FormatUint(seq, 10)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	return b, err
}

var replayScript = redis.NewScript(`
local P, Q, seq, order, blob, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local qp = P .. 'q:' .. Q .. ':'
local st = redis.call('GET', P .. 'state:' .. seq)
if st ~= 'delivered' and st ~= 'dead' then return redis.error_reply('NOTREPLAYABLE') end
if redis.call('EXISTS', P .. 'body:' .. seq) == 0 then return redis.error_reply('NOBODY') end
redis.call('SET', P .. 'ev:' .. seq, blob)
redis.call('SET', P .. 'state:' .. seq, 'pending')
redis.call('HINCRBY', qp .. 'counts', st, -1)
redis.call('HINCRBY', qp .. 'counts', 'pending', 1)
redis.call('ZADD', qp .. 'pending', seq, seq)
if order == '' or redis.call('RPUSH', qp .. 'conv:' .. order, seq) == 1 then
  redis.call('ZADD', qp .. 'due', now, seq)
end
return 1
`)

// Replay queues a delivered or dead event again, behind its
// conversation's pending events, for one manual attempt.
func (s *RedisStore) Replay(id string, now time.Time) (*Event, error) {
	e, err := s.Lookup(id)
	if err != nil {
		return nil, err
	}
	if e.State != Delivered && e.State != Dead {
		return nil, fmt.Errorf("%w (event %s is %s)", ErrNotReplayable, e.ID, e.State)
	}
	e.State, e.Manual, e.NextAt, e.DeliveredAt = Pending, true, now, time.Time{}
	ctx, cancel := s.ctx()
	defer cancel()
	err = replayScript.Run(ctx, s.client, nil, s.prefix, e.Queue, e.Seq, e.OrderKey, encodeEvent(e), ms(now)).Err()
	if err != nil && strings.Contains(err.Error(), "NOTREPLAYABLE") {
		return nil, ErrNotReplayable
	}
	if err != nil {
		return nil, fmt.Errorf("inbox: redis: %w", err)
	}
	return e, nil
}

// ReplayAll queues every event of queue in state again.
func (s *RedisStore) ReplayAll(queue string, state State, now time.Time) (int, error) {
	if state != Dead && state != Delivered {
		return 0, ErrNotReplayable
	}
	n := 0
	for before := ""; ; {
		events, next, err := s.List(Query{Queue: queue, State: state, Limit: 500, Before: before})
		if err != nil {
			return n, err
		}
		for _, e := range events {
			if _, err := s.Replay(e.ID, now); err == nil {
				n++
			} else if !errors.Is(err, ErrNotReplayable) {
				return n, err
			}
		}
		if next == "" {
			return n, nil
		}
		before = next
	}
}

// Close stops renewing leases (those still held expire, and their events
// are taken by another instance or by this one after a restart). The
// client is the caller's.
func (s *RedisStore) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return nil
}

var _ Backend = (*RedisStore)(nil)
