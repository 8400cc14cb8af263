package webhookguard

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/webhookguard/webhookguard/internal/inbox"
)

const (
	defaultInboxPrefix = "webhookguard:inbox:"
	minInboxLease      = 300 * time.Millisecond
	defaultInboxLease  = 15 * time.Second
)

// provisionStore decides where the inbox keeps its events: the pool key
// that a reload finds the open store by, a label for log lines, and how
// to open it.
func (in *Inbox) provisionStore() error {
	if in.Redis == "" {
		path := in.Path
		if path == "" {
			path = filepath.Join(caddy.AppDataDir(), "webhookguard", "inbox.db")
		}
		in.path, in.storeLabel = path, path
		in.openStore = func() (inbox.Backend, error) { return inbox.Open(path, time.Second) }
		return nil
	}
	url, err := caddy.NewReplacer().ReplaceOrErr(in.Redis, true, true)
	if err != nil {
		return fmt.Errorf("redis url: %w", err)
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return errors.New("redis url could not be parsed") // it may hold a password: not repeated
	}
	// A dead Redis answers the sender 503 within a second or two rather
	// than holding its request.
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.MaxRetries = time.Second, 2*time.Second, 2*time.Second, 1
	prefix := in.Prefix
	if prefix == "" {
		prefix = defaultInboxPrefix
	}
	lease := durationOr(in.Lease, defaultInboxLease)
	in.path = "redis:" + url + "#" + prefix
	in.storeLabel = "redis " + opts.Addr + " " + prefix
	logger := in.h.logger
	in.openStore = func() (inbox.Backend, error) {
		client := redis.NewClient(opts)
		store := inbox.OpenRedis(client, prefix, lease)
		warnWithoutAppendOnly(store, logger)
		return redisBackend{store, client}, nil
	}
	return nil
}

// redisBackend closes its client with the store.
type redisBackend struct {
	*inbox.RedisStore
	client *redis.Client
}

func (b redisBackend) Close() error {
	err := b.RedisStore.Close()
	return errors.Join(err, b.client.Close())
}

// warnWithoutAppendOnly logs a warning when Redis does not persist every
// write: an event acknowledged to the sender could then be lost when
// Redis restarts.
func warnWithoutAppendOnly(store *inbox.RedisStore, logger *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	on, err := store.AppendOnly(ctx)
	switch {
	case err != nil:
		logger.Warn("inbox: could not read Redis's appendonly setting; run Redis with appendonly yes, or an acknowledged event can be lost when Redis restarts",
			zap.Error(err))
	case !on:
		logger.Warn("inbox: Redis runs without appendonly: an acknowledged event can be lost when Redis restarts; run it with appendonly yes")
	}
}
