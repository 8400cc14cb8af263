package inbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
	client   *redis.Client
	prefix   string
	owner    string // this process's lease token
	instance string // this process as attempt logs name it
	lease    time.Duration

	mu   sync.Mutex
	held map[string]string // queue \x00 seq → lease key, for renewal

	stop chan struct{}
	done chan struct{}

	settles     *callQueue[settleCall] // to the one settle writer, settleGroups
	settlesDone chan struct{}
}

// OpenRedis returns a store over client under prefix. Leases last lease
// and are renewed every third of it while this store runs.
func OpenRedis(client *redis.Client, prefix string, lease time.Duration) *RedisStore {
	var token [12]byte
	_, _ = rand.Read(token[:])
	host, _ := os.Hostname()
	s := &RedisStore{client: client, prefix: prefix, owner: hex.EncodeToString(token[:]), lease: lease,
		instance: fmt.Sprintf("%s/%d", host, os.Getpid()),
		held:     map[string]string{}, stop: make(chan struct{}), done: make(chan struct{}),
		settles: newCallQueue[settleCall](maxSettleGroup), settlesDone: make(chan struct{})}
	go s.renewLeases()
	go s.settleGroups()
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

// appendScript stores one request's events, deduplicating on their keys
// in the same script: it answers, per event, "" when stored or the id of
// the event that holds one of its keys ("?" when that is unknown). A key
// holds its event's id; it has no expiry while its event is pending,
// and its time (the keys list's first element) is set when the event
// settles.
var appendScript = redis.NewScript(`
local P, Q, n, untilMs, nshared = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local qp = P .. 'q:' .. Q .. ':'
local out = {}
local function held(keys)
  for _, k in ipairs(keys) do
    local v = redis.call('GET', P .. 'key:' .. k)
    if v then return v end
  end
  return nil
end
local shared = {}
for i = 1, nshared do shared[i] = ARGV[5 + i] end
local a = 6 + nshared
local events = {}
for i = 1, n do
  local e = {seq = ARGV[a], id = ARGV[a+1], order = ARGV[a+2], at = ARGV[a+3], blob = ARGV[a+4], body = ARGV[a+5], keys = {}}
  local nk = tonumber(ARGV[a+6])
  for j = 1, nk do e.keys[j] = ARGV[a+6+j] end
  a = a + 7 + nk
  events[i] = e
end
local sharedHolder = held(shared)
local first = nil
for i, e in ipairs(events) do
  local holder = sharedHolder or held(e.keys)
  if holder then
    out[i] = holder
  else
    out[i] = ''
    redis.call('SET', P .. 'ev:' .. e.seq, e.blob)
    redis.call('SET', P .. 'body:' .. e.seq, e.body)
    redis.call('SET', P .. 'id:' .. e.id, e.seq)
    redis.call('SET', P .. 'eid:' .. e.seq, e.id)
    redis.call('SET', P .. 'state:' .. e.seq, 'pending')
    if e.order ~= '' then redis.call('SET', P .. 'order:' .. e.seq, e.order) end
    redis.call('ZADD', qp .. 'all', e.seq, e.seq)
    redis.call('ZADD', qp .. 'pending', e.seq, e.seq)
    redis.call('HINCRBY', qp .. 'counts', 'pending', 1)
    if e.order == '' or redis.call('RPUSH', qp .. 'conv:' .. e.order, e.seq) == 1 then
      redis.call('ZADD', qp .. 'due', e.at, e.seq)
    end
    local keys = e.keys
    if not first then
      first = e
      for _, k in ipairs(shared) do table.insert(keys, k) end
    end
    if #keys > 0 then
      redis.call('RPUSH', P .. 'keys:' .. e.seq, untilMs)
      for _, k in ipairs(keys) do
        redis.call('SET', P .. 'key:' .. k, e.id)
        redis.call('RPUSH', P .. 'keys:' .. e.seq, k)
      end
    end
  end
end
if not first and not sharedHolder and #shared > 0 and tonumber(untilMs) > 0 then
  for _, k in ipairs(shared) do redis.call('SET', P .. 'key:' .. k, '?', 'PXAT', untilMs) end
end
redis.call('SADD', P .. 'queues', Q)
return out
`)

// releaseKeys is the Lua that gives a settled event's keys their time
// (shared by the scripts that take an event out of pending).
const releaseKeys = `
local function releaseKeys(P, seq, nowMs)
  local kl = P .. 'keys:' .. seq
  local ks = redis.call('LRANGE', kl, 0, -1)
  if #ks == 0 then return end
  local untilMs = tonumber(ks[1])
  for i = 2, #ks do
    if untilMs > tonumber(nowMs) then
      redis.call('PEXPIREAT', P .. 'key:' .. ks[i], untilMs)
    else
      redis.call('DEL', P .. 'key:' .. ks[i])
    end
  end
  redis.call('DEL', kl)
end
`

// leavePending is the Lua that moves a pending event to its final state:
// counts, the next event of its conversation made due, its keys released.
const leavePending = releaseKeys + `
local function leavePending(P, qp, seq, state, order, nowMs)
  redis.call('SET', P .. 'state:' .. seq, state)
  redis.call('ZREM', qp .. 'due', seq)
  redis.call('ZREM', qp .. 'pending', seq)
  redis.call('HINCRBY', qp .. 'counts', 'pending', -1)
  redis.call('HINCRBY', qp .. 'counts', state, 1)
  if order ~= '' then
    local ck = qp .. 'conv:' .. order
    redis.call('LREM', ck, 1, seq)
    local nxt = redis.call('LINDEX', ck, 0)
    if nxt then redis.call('ZADD', qp .. 'due', nowMs, nxt) end
  end
  releaseKeys(P, seq, nowMs)
end
`

// Append stores events of one queue as pending, all or none, in one
// script (a handler appends its own queue's events only), deduplicating
// on their keys and shared as Store.Append does.
func (s *RedisStore) Append(events []*Event, shared ...string) error {
	if len(events) == 0 {
		return nil
	}
	queue := events[0].Queue
	var until time.Time
	for _, e := range events {
		if e.Queue != queue {
			return errors.New("inbox: redis: one Append holds one queue's events")
		}
		until = maxTime(until, e.KeysUntil)
		e.Duplicate, e.DuplicateOf = false, ""
	}
	ctx, cancel := s.ctx()
	defer cancel()
	last, err := s.client.IncrBy(ctx, s.prefix+"seq", int64(len(events))).Result()
	if err != nil {
		return fmt.Errorf("inbox: redis: %w", err)
	}
	args := []any{s.prefix, queue, len(events), ms(until), len(shared)}
	for _, k := range shared {
		args = append(args, hex.EncodeToString([]byte(k)))
	}
	for i, e := range events {
		e.Seq = uint64(last) - uint64(len(events)) + uint64(i) + 1
		e.Pos, e.State, e.BodySum = e.Seq, Pending, bodySum(e.Body)
		if e.NextAt.IsZero() {
			e.NextAt = e.ReceivedAt
		}
		args = append(args, e.Seq, e.ID, e.OrderKey, ms(e.NextAt), encodeEvent(e), e.Body, len(e.Keys))
		for _, k := range e.Keys {
			args = append(args, hex.EncodeToString([]byte(k)))
		}
	}
	res, err := appendScript.Run(ctx, s.client, nil, args...).StringSlice()
	if err != nil {
		return fmt.Errorf("inbox: redis: %w", err)
	}
	for i, holder := range res {
		if i < len(events) && holder != "" {
			events[i].Duplicate, events[i].DuplicateOf = true, strings.TrimPrefix(holder, "?")
		}
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
//
// A head whose blob does not decode, or whose body does not match its
// checksum, is set aside as Damaged (under its lease) and reported; the
// other heads taken in the same call are returned all the same.
func (s *RedisStore) Due(queue string, now time.Time, limit int, _ func(string, uint64) bool) (due []*Event, damaged []Damage, next time.Time, err error) {
	if limit <= 0 {
		return nil, nil, time.Time{}, nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	res, err := claimScript.Run(ctx, s.client, nil, s.prefix, queue, ms(now), limit, s.owner, s.lease.Milliseconds()).StringSlice()
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("inbox: redis: %w", err)
	}
	for i := 0; i+2 < len(res); i += 3 {
		seq, blob, body := res[i], res[i+1], res[i+2]
		s.hold(queue, seq)
		e, derr := decodeEvent([]byte(blob))
		if derr == nil && e.summed && bodySum([]byte(body)) != e.BodySum {
			derr = errBodyDamaged
		}
		if derr != nil {
			n, _ := strconv.ParseUint(seq, 10, 64)
			d := Damage{Queue: queue, Seq: n, ID: peekEvent([]byte(blob)).ID, Reason: derr.Error(), At: now}
			if qerr := s.quarantine(ctx, &d); qerr != nil {
				err = errors.Join(err, fmt.Errorf("inbox: redis: setting aside damaged event %s: %w", seq, qerr))
			} else {
				damaged = append(damaged, d)
			}
			s.release(queue, seq)
			continue
		}
		e.Body = []byte(body)
		due = append(due, e)
	}
	if at, perr := strconv.ParseFloat(res[len(res)-1], 64); perr == nil {
		next = time.UnixMilli(int64(at))
	}
	return due, damaged, next, err
}

var quarantineScript = redis.NewScript(leavePending + `
local P, Q, seq, owner, reason, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local qp = P .. 'q:' .. Q .. ':'
if redis.call('GET', qp .. 'lease:' .. seq) ~= owner or redis.call('GET', P .. 'state:' .. seq) ~= 'pending' then
  return 0
end
redis.call('SET', P .. 'damage:' .. seq, reason)
redis.call('DEL', qp .. 'lease:' .. seq)
leavePending(P, qp, seq, 'damaged', redis.call('GET', P .. 'order:' .. seq) or '', now)
return 1
`)

// quarantine sets a leased head aside as Damaged and makes the next event
// of its conversation due.
func (s *RedisStore) quarantine(ctx context.Context, d *Damage) error {
	seq := strconv.FormatUint(d.Seq, 10)
	d.OrderKey, _ = s.client.Get(ctx, s.prefix+"order:"+seq).Result()
	return quarantineScript.Run(ctx, s.client, nil, s.prefix, d.Queue, seq, s.owner, d.Reason, ms(d.At)).Err()
}

var settleScript = redis.NewScript(leavePending + `
local P, Q, seq, owner, order, state, at, blob, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local qp = P .. 'q:' .. Q .. ':'
local holder = redis.call('GET', qp .. 'lease:' .. seq)
if redis.call('GET', P .. 'ev:' .. seq) == blob then
  return 1 -- this very result is stored already: a resent pipeline
end
if (holder and holder ~= owner) or redis.call('GET', P .. 'state:' .. seq) ~= 'pending' then
  return redis.error_reply('LEASE another instance took this event')
end
redis.call('SET', P .. 'ev:' .. seq, blob)
redis.call('DEL', qp .. 'lease:' .. seq)
if state == 'pending' then
  redis.call('ZADD', qp .. 'due', at, seq)
  return 1
end
leavePending(P, qp, seq, state, order, now)
return 1
`)

// ErrLate is a result that came after the attempt's lease had lapsed:
// another instance took the event over, and the result was not taken.
var ErrLate = errors.New("the attempt ended after this instance's lease on the event had lapsed (was the process paused?); " +
	"another instance took it over, so its result was not taken; the attempt is in the event's log as late")

// Settle records an attempt's result on a head this store leased. A
// result that comes too late is not taken, but the attempt is still
// added to the event's log as late, since the app received it.
func (s *RedisStore) Settle(e *Event) error {
	seq := strconv.FormatUint(e.Seq, 10)
	defer s.release(e.Queue, seq)
	if n := len(e.Log); n > 0 && e.Log[n-1].Instance == "" {
		e.Log[n-1].Instance = s.instance
	}
	err := s.settleInGroup(s.prefix, e.Queue, seq, s.owner, e.OrderKey, string(e.State), ms(e.NextAt), encodeEvent(e), ms(time.Now()))
	for _, wait := range settleRetries {
		if err == nil || redisAnswered(err) || errors.Is(err, ErrClosed) {
			break
		}
		// Redis did not answer (a dropped connection, a timeout): the
		// lease is still renewed, so trying again costs nothing, and a
		// settle lost here would have the event delivered again once
		// the lease lapsed. One that did land is taken as done.
		time.Sleep(wait)
		err = s.settleInGroup(s.prefix, e.Queue, seq, s.owner, e.OrderKey, string(e.State), ms(e.NextAt), encodeEvent(e), ms(time.Now()))
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if err != nil && strings.Contains(err.Error(), "LEASE") && len(e.Log) > 0 {
		late := e.Log[len(e.Log)-1]
		late.Late = true
		if rerr := s.recordLate(ctx, seq, late); rerr != nil {
			return fmt.Errorf("inbox: redis: event %s: %w (and recording it failed: %v)", e.ID, ErrLate, rerr)
		}
		return fmt.Errorf("inbox: redis: event %s: %w", e.ID, ErrLate)
	}
	if err != nil {
		return fmt.Errorf("inbox: redis: settling %s: %w", e.ID, err)
	}
	return nil
}

// settleRetries are the waits before a settle that Redis did not answer
// is sent again.
var settleRetries = []time.Duration{100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second}

// redisAnswered reports whether err is Redis's own answer (a script's
// error reply, LEASE among them) rather than a failure to reach it.
func redisAnswered(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply) && !errors.Is(err, context.DeadlineExceeded)
}

// maxSettleGroup bounds how many settles share one round trip.
const maxSettleGroup = 256

// settleCall is one Settle waiting for its group's round trip.
type settleCall struct {
	args []any
	done chan error
}

// settleInGroup runs settleScript with args in the next settle group and
// returns its own result.
func (s *RedisStore) settleInGroup(args ...any) error {
	call := settleCall{args: args, done: make(chan error, 1)}
	if !s.settles.send(call) {
		return ErrClosed
	}
	return <-call.done
}

// settleGroups is the store's one settle writer: each round trip carries
// the settles that queued during the previous one, pipelined, so that
// concurrent attempts share a round trip and, with appendfsync always,
// one fsync of Redis's. Each settle is still its own script: atomic, and
// answered on its own (a lease another instance took fails only its
// settle). An idle store sends a lone settle at once.
func (s *RedisStore) settleGroups() {
	defer close(s.settlesDone)
	for first := range s.settles.ch {
		group := []settleCall{first}
	gather:
		for len(group) < maxSettleGroup {
			select {
			case c, ok := <-s.settles.ch:
				if !ok {
					break gather
				}
				group = append(group, c)
			default:
				break gather
			}
		}
		s.runSettles(group)
	}
}

// runSettles sends one group; a settle that finds its script not loaded
// (a Redis restarted since) runs it again on its own, which loads it.
// go-redis sends a pipeline again when its answer is lost, so the
// script takes a result it finds stored already as done.
func (s *RedisStore) runSettles(group []settleCall) {
	ctx, cancel := s.ctx()
	defer cancel()
	cmds := make([]*redis.Cmd, len(group))
	_, _ = s.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range group {
			cmds[i] = p.EvalSha(ctx, settleScript.Hash(), nil, c.args...)
		}
		return nil
	})
	for i, c := range group {
		err := cmds[i].Err()
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			err = s.settleAlone(c.args)
		}
		c.done <- err
	}
}

// settleAlone runs one settle on its own, with a timeout of its own
// (Run loads the script).
func (s *RedisStore) settleAlone(args []any) error {
	ctx, cancel := s.ctx()
	defer cancel()
	return settleScript.Run(ctx, s.client, nil, args...).Err()
}

// recordLate keeps a late attempt beside the event, in a list of its
// own, which Lookup adds to the attempt log: the instance that took the
// event over writes the event's record when it settles, and would write
// over a late attempt put in that record.
func (s *RedisStore) recordLate(ctx context.Context, seq string, a Attempt) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return s.client.RPush(ctx, s.prefix+"late:"+seq, b).Err()
}

// withLate adds to e's attempt log the late attempts kept beside it,
// after the others, in the order they were recorded.
func (s *RedisStore) withLate(ctx context.Context, e *Event) error {
	lates, err := s.client.LRange(ctx, s.prefix+"late:"+strconv.FormatUint(e.Seq, 10), 0, -1).Result()
	if err != nil || len(lates) == 0 {
		return err
	}
	for _, l := range lates {
		var a Attempt
		if json.Unmarshal([]byte(l), &a) == nil {
			e.Log = append(e.Log, a)
		}
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
id = redis.call('GET', P .. 'eid:' .. seq) or id
redis.call('DEL', P .. 'ev:' .. seq, P .. 'body:' .. seq, P .. 'id:' .. id, P .. 'eid:' .. seq, P .. 'state:' .. seq,
  P .. 'order:' .. seq, P .. 'damage:' .. seq, P .. 'keys:' .. seq, P .. 'late:' .. seq)
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
// ones are skipped). A blob that does not decode, or an event set aside,
// is returned Damaged with what could be read of it and why.
func (s *RedisStore) events(ctx context.Context, seqs []string) ([]*Event, error) {
	keys := make([]string, 0, 2*len(seqs))
	for _, seq := range seqs {
		keys = append(keys, s.prefix+"ev:"+seq)
	}
	for _, seq := range seqs {
		keys = append(keys, s.prefix+"damage:"+seq)
	}
	for _, seq := range seqs {
		keys = append(keys, s.prefix+"eid:"+seq)
	}
	vals, err := s.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]*Event, 0, len(seqs))
	for i, seq := range seqs {
		blob, ok := vals[i].(string)
		if !ok {
			continue
		}
		reason, damaged := vals[len(seqs)+i].(string)
		e, err := decodeEvent([]byte(blob))
		if err != nil {
			e = peekEvent([]byte(blob))
			if id, ok := vals[2*len(seqs)+i].(string); ok {
				e.ID = id
			}
			e.Seq, _ = strconv.ParseUint(seq, 10, 64)
			e.State, e.LastError = Damaged, err.Error()
			if e.ReceivedAt.IsZero() {
				e.ReceivedAt = idTime(e.ID)
			}
		}
		if damaged {
			e.State, e.LastError = Damaged, reason
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
	e, err := s.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	return e, s.withLate(ctx, e)
}

// lookup is Lookup without the late attempts kept beside the event: the
// record as it is stored, to be written back.
func (s *RedisStore) lookup(ctx context.Context, id string) (*Event, error) {
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
	last := "" // the id of the last event read: a page cut short by scan goes on from there
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
		found, err := s.bodiesWith(ctx, q, events)
		if err != nil {
			return nil, "", err
		}
		for _, e := range events {
			if e.Queue == "" {
				e.Queue = q.Queue // a damaged blob's
			}
			if !q.selects(e) || (q.Text != "" && !q.textIn(e) && !found[e.Seq]) {
				continue
			}
			if len(out) == limit {
				return out, out[len(out)-1].ID, nil
			}
			out = append(out, e)
		}
		if n := len(events); n > 0 {
			last = events[n-1].ID
		}
		upper = "(" + seqs[len(seqs)-1]
	}
	return out, last, nil
}

// bodiesWith reports which of events (those q selects whose metadata
// lacks q's text) have a body that contains q's text: one MGET a page.
func (s *RedisStore) bodiesWith(ctx context.Context, q Query, events []*Event) (map[uint64]bool, error) {
	if q.Text == "" {
		return nil, nil
	}
	var keys []string
	var seqs []uint64
	for _, e := range events {
		if q.selects(e) && !q.textIn(e) {
			keys = append(keys, s.prefix+"body:"+strconv.FormatUint(e.Seq, 10))
			seqs = append(seqs, e.Seq)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	bodies, err := s.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, err
	}
	found := map[uint64]bool{}
	for i, b := range bodies {
		if body, ok := b.(string); ok && strings.Contains(body, q.Text) {
			found[seqs[i]] = true
		}
	}
	return found, nil
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
	ctx, cancel := s.ctx()
	defer cancel()
	e, err := s.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	if e.State != Delivered && e.State != Dead {
		return nil, fmt.Errorf("%w (event %s is %s)", ErrNotReplayable, e.ID, e.State)
	}
	e.State, e.Manual, e.NextAt, e.DeliveredAt = Pending, true, now, time.Time{}
	err = replayScript.Run(ctx, s.client, nil, s.prefix, e.Queue, e.Seq, e.OrderKey, encodeEvent(e), ms(now)).Err()
	if err != nil && strings.Contains(err.Error(), "NOTREPLAYABLE") {
		return nil, ErrNotReplayable
	}
	if err != nil {
		return nil, fmt.Errorf("inbox: redis: %w", err)
	}
	return e, nil
}

// ReplayMatching acts on every event q selects, as the file store's
// does: a dead (or delivered) one is replayed, a failed one waiting for
// its next attempt made due now. Event by event: each is atomic. busy is
// not needed: an event in flight is leased, and the script leaves a
// leased event alone.
func (s *RedisStore) ReplayMatching(q Query, now time.Time, _ func(queue, order string, seq uint64) bool) (int, error) {
	if err := q.replayable(); err != nil {
		return 0, err
	}
	var matches []*Event
	for before := ""; ; {
		page := q
		page.Limit, page.Before = 500, before
		events, next, err := s.List(page)
		if err != nil {
			return 0, err
		}
		matches = append(matches, events...)
		if next == "" {
			break
		}
		before = next
	}
	n := 0
	for _, e := range matches {
		var err error
		if e.State == Pending {
			err = s.retryNow(e, now)
		} else {
			_, err = s.Replay(e.ID, now)
		}
		switch {
		case err == nil:
			n++
		case !errors.Is(err, ErrNotReplayable):
			return n, err
		}
	}
	return n, nil
}

var retryNowScript = redis.NewScript(`
local P, Q, seq, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local qp = P .. 'q:' .. Q .. ':'
if redis.call('GET', P .. 'state:' .. seq) ~= 'pending' or redis.call('EXISTS', qp .. 'lease:' .. seq) == 1 then return 0 end
local at = redis.call('ZSCORE', qp .. 'due', seq)
if not at or tonumber(at) <= now then return 0 end
redis.call('ZADD', qp .. 'due', now, seq)
return 1
`)

// retryNow makes a failed head that waits for its next attempt due now;
// one that is due already, leased or no longer pending is left alone.
func (s *RedisStore) retryNow(e *Event, now time.Time) error {
	ctx, cancel := s.ctx()
	defer cancel()
	n, err := retryNowScript.Run(ctx, s.client, nil, s.prefix, e.Queue, e.Seq, ms(now)).Int()
	if err != nil {
		return fmt.Errorf("inbox: redis: %w", err)
	}
	if n == 0 {
		return ErrNotReplayable
	}
	return nil
}

var moveScript = redis.NewScript(`
local P, from, to, seq, blob = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local fp, tp = P .. 'q:' .. from .. ':', P .. 'q:' .. to .. ':'
if redis.call('ZREM', fp .. 'all', seq) == 0 then return 0 end
redis.call('SET', P .. 'ev:' .. seq, blob)
redis.call('ZADD', tp .. 'all', seq, seq)
local st = redis.call('GET', P .. 'state:' .. seq) or 'unknown'
redis.call('HINCRBY', fp .. 'counts', st, -1)
redis.call('HINCRBY', tp .. 'counts', st, 1)
if st == 'pending' then
  redis.call('ZREM', fp .. 'pending', seq)
  redis.call('ZADD', tp .. 'pending', seq, seq)
  local at = redis.call('ZSCORE', fp .. 'due', seq)
  redis.call('ZREM', fp .. 'due', seq)
  local order = redis.call('GET', P .. 'order:' .. seq)
  if order then
    redis.call('LREM', fp .. 'conv:' .. order, 1, seq)
    if redis.call('RPUSH', tp .. 'conv:' .. order, seq) == 1 then redis.call('ZADD', tp .. 'due', at or ARGV[6], seq) end
  else
    redis.call('ZADD', tp .. 'due', at or ARGV[6], seq)
  end
end
redis.call('SADD', P .. 'queues', to)
return 1
`)

// Move gives every event of queue from to queue to, as Store.Move does.
func (s *RedisStore) Move(from, to string, now time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := 0
	for {
		seqs, err := s.client.ZRange(ctx, s.prefix+"q:"+from+":all", 0, 199).Result()
		if err != nil || len(seqs) == 0 {
			return n, err
		}
		blobs, err := s.client.MGet(ctx, prefixed(s.prefix+"ev:", seqs)...).Result()
		if err != nil {
			return n, err
		}
		for i, seq := range seqs {
			blob, _ := blobs[i].(string)
			if e, err := decodeEvent([]byte(blob)); err == nil {
				e.Queue = to
				blob = string(encodeEvent(e))
			}
			moved, err := moveScript.Run(ctx, s.client, nil, s.prefix, from, to, seq, blob, ms(now)).Int()
			if err != nil {
				return n, err
			}
			n += moved
		}
	}
}

func prefixed(prefix string, names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = prefix + n
	}
	return out
}

// Close stops renewing leases (those still held expire, and their events
// are taken by another instance or by this one after a restart) and
// answers the settles queued; a later Settle fails with ErrClosed. The
// client is the caller's.
func (s *RedisStore) Close() error {
	s.settles.close()
	<-s.settlesDone // the settles queued land while their leases are still renewed
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return nil
}

var _ Backend = (*RedisStore)(nil)
