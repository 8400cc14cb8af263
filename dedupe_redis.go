package webhookguard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// redisStore shares claims and committed keys between Caddy instances.
// A key holds either "=" (committed, expiring after the TTL) or a claim
// token "~<random>" (expiring after the lease, in case its instance dies).
type redisStore struct {
	client *redis.Client
	prefix string
	ttl    time.Duration
	lease  time.Duration
}

const committedMark = "="

// claimScript takes every key unless one is committed (returns 1) or
// claimed by someone else (returns 2). Running it as one script makes the
// check and the claim atomic across instances.
var claimScript = redis.NewScript(`
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v == '=' then return 1 end
end
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 2 end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
end
return 0
`)

// commitScript marks every key committed, whoever holds it: the event was
// delivered, so any later copy is a duplicate.
var commitScript = redis.NewScript(`
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], '=', 'PX', ARGV[1])
end
return 0
`)

// releaseScript deletes only keys that still hold this claim's token, so a
// slow instance whose lease ran out can never delete another's claim.
var releaseScript = redis.NewScript(`
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 0
`)

// redisClient is pooled so that a reload keeps its connections.
type redisClient struct{ *redis.Client }

func (c redisClient) Destruct() error { return c.Close() }

func (d *Dedupe) provisionRedis(_ caddy.Context) error {
	url, err := caddy.NewReplacer().ReplaceOrErr(d.Redis, true, true)
	if err != nil {
		return fmt.Errorf("redis url: %w", err)
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		// The URL may hold a password: say what is wrong, not what it is.
		return fmt.Errorf("redis url could not be parsed")
	}
	// Short timeouts keep a dead Redis from eating the sender's answer
	// deadline; on_store_error decides what happens then.
	opts.DialTimeout = time.Second
	opts.ReadTimeout = time.Second
	opts.WriteTimeout = time.Second
	opts.MaxRetries = 1
	key := "redis:" + url
	v, _, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		return redisClient{redis.NewClient(opts)}, nil
	})
	if err != nil {
		return err
	}
	d.poolKey = key
	d.store = &redisStore{
		client: v.(redisClient).Client,
		prefix: d.Prefix + d.Scope + ":",
		ttl:    d.ttl,
		lease:  d.lease,
	}
	return nil
}

func (s *redisStore) names(keys []storeKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = s.prefix + hex.EncodeToString(k[:])
	}
	return out
}

func (s *redisStore) claim(ctx context.Context, keys []storeKey) (claimResult, error) {
	token := "~" + rand.Text()
	n, err := claimScript.Run(ctx, s.client, s.names(keys), token, s.lease.Milliseconds()).Int()
	if err != nil {
		return claimResult{}, fmt.Errorf("redis claim: %w", err)
	}
	switch n {
	case 1:
		return claimResult{state: claimDuplicate}, nil
	case 2:
		return claimResult{state: claimBusy}, nil
	}
	return claimResult{state: claimOwned, claim: &claim{keys: keys, token: token}}, nil
}

func (s *redisStore) commit(ctx context.Context, c *claim) error {
	if err := commitScript.Run(ctx, s.client, s.names(c.keys), s.ttl.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("redis commit: %w", err)
	}
	return nil
}

func (s *redisStore) release(ctx context.Context, c *claim) error {
	if err := releaseScript.Run(ctx, s.client, s.names(c.keys), c.token).Err(); err != nil {
		return fmt.Errorf("redis release: %w", err)
	}
	return nil
}
