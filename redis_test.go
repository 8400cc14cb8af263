package webhookguard

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// requireRedisEnv, set to 1, turns a missing redis-server into a test
// failure. scripts/test.sh (and so CI) sets it and installs redis-server:
// a Redis feature that was never run against Redis is not tested. Without
// it, a contributor's plain "go test ./..." skips the Redis tests and says
// how to run them.
const requireRedisEnv = "WEBHOOKGUARD_REQUIRE_REDIS"

// redisServer is a real redis-server on a free loopback port, started for
// one test.
type redisServer struct {
	t    *testing.T
	port int
	cmd  *exec.Cmd
	done chan struct{}
	// persistent servers keep an append-only file, fsynced on every
	// write, in dir, so that a restart (even after kill -9) finds what was
	// acknowledged.
	persistent bool
	dir        string
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	return startRedisServer(t, false)
}

// startPersistentRedis is startRedis with appendonly yes and appendfsync
// always, as the inbox on Redis should be run.
func startPersistentRedis(t *testing.T) *redisServer {
	t.Helper()
	return startRedisServer(t, true)
}

func startRedisServer(t *testing.T, persistent bool) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv(requireRedisEnv) == "1" {
			t.Fatalf("redis-server is not installed and %s=1: %v", requireRedisEnv, err)
		}
		t.Skipf("redis-server is not installed: install it (apt-get install redis-server) or run scripts/test.sh, which does, to run this test")
	}
	s := &redisServer{t: t, port: freePort(t), persistent: persistent, dir: t.TempDir()}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *redisServer) URL() string { return "redis://127.0.0.1:" + strconv.Itoa(s.port) + "/0" }

func (s *redisServer) start() {
	s.t.Helper()
	aof := []string{"--appendonly", "no"}
	if s.persistent {
		aof = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	s.cmd = exec.Command("redis-server", append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--protected-mode", "yes", "--dir", s.dir}, aof...)...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s.ping() == nil {
			return
		}
		time.Sleep(30 * time.Millisecond)
	}
	s.t.Fatal("redis-server did not answer PING within 10s")
}

// stop kills the server (and forgets its data: it saves nothing).
func (s *redisServer) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func (s *redisServer) ping() error {
	_, err := s.do("PING")
	return err
}

// do sends one inline command and returns the first reply line.
func (s *redisServer) do(cmd string) (string, error) {
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.port), 200*time.Millisecond)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(conn, "%s\r\n", cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// dbsize counts the keys in Redis.
func (s *redisServer) dbsize() int {
	s.t.Helper()
	line, err := s.do("DBSIZE")
	if err != nil {
		s.t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(line, ":"))
	return n
}
