package webhookguard

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// The integration tests run real Caddy processes: this test binary, started
// again with asCaddyEnv set, is a Caddy with the standard modules and this
// one. Each instance has its own ports and admin endpoint, so tests can run
// two instances, reload one, or kill one, and a build with -race checks the
// Caddy processes too.
const asCaddyEnv = "WEBHOOKGUARD_TEST_AS_CADDY"

func TestMain(m *testing.M) {
	if os.Getenv(asCaddyEnv) == "1" {
		caddycmd.Main()
		return
	}
	os.Exit(m.Run())
}

// caddyInstance is one running Caddy process.
type caddyInstance struct {
	t        *testing.T
	cmd      *exec.Cmd
	URL      string // the site, e.g. http://127.0.0.1:41234
	AdminURL string
	port     int
	admin    int
	dir      string
	log      *syncBuffer
	done     chan struct{}
}

// freePort hands out a loopback port that is free now and that no other
// caller in this process has been given. Ports the kernel picks for
// listen(":0") are ephemeral and come back soon after they are closed, so
// two instances could be handed the same one; and Caddy binds with
// SO_REUSEPORT, so two Caddy processes on one port share its connections
// silently instead of failing. Handing out ports below the ephemeral range,
// once each, from an offset that differs per process, avoids both.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	if nextPort == 0 {
		nextPort = portsLow + os.Getpid()*97%(portsHigh-portsLow)
	}
	for range portsHigh - portsLow {
		p := nextPort
		nextPort++
		if nextPort >= portsHigh {
			nextPort = portsLow
		}
		if portsGiven[p] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		l.Close()
		portsGiven[p] = true
		return p
	}
	t.Fatal("no free port left below the ephemeral range")
	return 0
}

// The range freePort draws from: below Linux's default ephemeral range
// (32768 and up), which outgoing connections and listen(":0") use.
const portsLow, portsHigh = 20000, 32000

var (
	portsMu    sync.Mutex
	nextPort   int
	portsGiven = map[int]bool{}
)

// siteCaddyfile wraps site directives into a full Caddyfile for one
// instance: loopback only, no HTTPS, no autosave.
func siteCaddyfile(adminPort, sitePort int, site string) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	grace_period 2s
	log {
		output stderr
		format json
		level DEBUG
	}
}

http://127.0.0.1:%d {
%s
}
`, adminPort, sitePort, site)
}

// startCaddy starts a Caddy process serving site (the directives inside
// the site block) and waits until it answers.
func startCaddy(t *testing.T, site string, env ...string) *caddyInstance {
	t.Helper()
	c := &caddyInstance{t: t, port: freePort(t), admin: freePort(t), dir: t.TempDir(), log: &syncBuffer{}}
	c.URL = "http://127.0.0.1:" + strconv.Itoa(c.port)
	c.AdminURL = "http://127.0.0.1:" + strconv.Itoa(c.admin)
	if err := c.start(site, env); err != nil {
		t.Fatalf("caddy did not start: %v\n%s", err, c.log.String())
	}
	t.Cleanup(c.stop)
	return c
}

// startCaddyErr starts Caddy with a config expected to fail and returns
// its output once it exited.
func startCaddyErr(t *testing.T, site string, env ...string) string {
	t.Helper()
	c := &caddyInstance{t: t, port: freePort(t), admin: freePort(t), dir: t.TempDir(), log: &syncBuffer{}}
	cfg := filepath.Join(c.dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(siteCaddyfile(c.admin, c.port, site)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := c.command(cfg, env)
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("caddy exited cleanly; expected a config error\n%s", c.log.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("caddy kept running; expected a config error\n%s", c.log.String())
	}
	return c.log.String()
}

// caddyValidate runs caddy validate on site, as a CI pipeline does
// before it deploys, and returns its output and whether it refused.
func caddyValidate(t *testing.T, site string) (string, bool) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(siteCaddyfile(freePort(t), freePort(t), site)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "validate", "--config", cfg, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), asCaddyEnv+"=1", "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	out, err := cmd.CombinedOutput()
	return string(out), err != nil
}

func (c *caddyInstance) command(cfg string, env []string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(exe, "run", "--config", cfg, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(),
		asCaddyEnv+"=1",
		"HOME="+c.dir,
		"XDG_CONFIG_HOME="+filepath.Join(c.dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(c.dir, "data"),
	)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout = c.log
	cmd.Stderr = c.log
	return cmd
}

func (c *caddyInstance) start(site string, env []string) error {
	cfg := filepath.Join(c.dir, "Caddyfile")
	if err := os.WriteFile(cfg, []byte(siteCaddyfile(c.admin, c.port, site)), 0o600); err != nil {
		return err
	}
	c.cmd = c.command(cfg, env)
	if err := c.cmd.Start(); err != nil {
		return err
	}
	c.done = make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-c.done:
			return fmt.Errorf("caddy exited early")
		default:
		}
		if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(c.port), 200*time.Millisecond); err == nil {
			conn.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("caddy did not listen within 60s")
}

// stop ends the process gracefully and fails the test if the race
// detector reported anything inside it.
func (c *caddyInstance) stop() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	if strings.Contains(c.log.String(), "DATA RACE") {
		c.t.Errorf("the race detector reported a data race inside Caddy:\n%s", c.log.String())
	}
}

// kill ends the process with SIGKILL: no shutdown, nothing flushed.
func (c *caddyInstance) kill() {
	c.t.Helper()
	_ = c.cmd.Process.Kill()
	<-c.done
}

// restart starts the process again on the same directory (data, inbox
// files) with site.
func (c *caddyInstance) restart(site string) {
	c.t.Helper()
	if err := c.start(site, nil); err != nil {
		c.t.Fatalf("caddy did not restart: %v\n%s", err, c.log.String())
	}
}

// reload loads a new site config through the admin API, as `caddy reload`
// does.
func (c *caddyInstance) reload(site string) {
	c.t.Helper()
	if status, answer := c.tryReload(site); status != http.StatusOK {
		c.t.Fatalf("reload: %d %s", status, answer)
	}
}

// tryReload loads site through the admin API and returns its answer.
func (c *caddyInstance) tryReload(site string) (int, string) {
	c.t.Helper()
	cfg := siteCaddyfile(c.admin, c.port, site)
	req, _ := http.NewRequest(http.MethodPost, c.AdminURL+"/load", strings.NewReader(cfg))
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("reload: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Logs returns everything the process wrote so far.
func (c *caddyInstance) Logs() string { return c.log.String() }

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// recorded is one request as the upstream saw it.
type recorded struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// upstream is a real HTTP server on loopback that records what reaches
// it. respond decides each answer; the default is 200 "ok".
type upstream struct {
	srv     *httptest.Server
	mu      sync.Mutex
	reqs    []recorded
	respond func(n int, r recorded) (int, time.Duration)
}

func newUpstream(t *testing.T) *upstream {
	u := newUnstartedUpstream(t)
	u.srv.Start()
	return u
}

// newUnstartedUpstream is an upstream that answers nothing (connections
// refused) until startOn.
func newUnstartedUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec := recorded{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: body}
		u.mu.Lock()
		n := len(u.reqs)
		u.reqs = append(u.reqs, rec)
		respond := u.respond
		u.mu.Unlock()
		status, delay := http.StatusOK, time.Duration(0)
		if respond != nil {
			status, delay = respond(n, rec)
		}
		time.Sleep(delay)
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(status)
		fmt.Fprintf(w, "upstream %d", status)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// startOn starts an unstarted upstream on addr (host:port).
func (u *upstream) startOn(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u.srv.Listener.Close()
	u.srv.Listener = ln
	u.srv.Start()
}

// Addr is the host:port for reverse_proxy.
func (u *upstream) Addr() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) setRespond(f func(n int, r recorded) (int, time.Duration)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.respond = f
}

func (u *upstream) requests() []recorded {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recorded(nil), u.reqs...)
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.reqs)
}

// signHex is hex(HMAC-SHA256(secret, body)), computed independently of
// the code under test.
func signHex(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// post sends body with the given headers and returns status, headers and
// the response body.
func post(t testing.TB, url string, body []byte, headers map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// kapsoHeaders are the headers of a signed Kapso delivery.
func kapsoHeaders(secret string, body []byte, event, key string) map[string]string {
	h := map[string]string{
		"Content-Type":              "application/json",
		"X-Webhook-Signature":       signHex(secret, body),
		"X-Webhook-Payload-Version": "v2",
	}
	if event != "" {
		h["X-Webhook-Event"] = event
	}
	if key != "" {
		h["X-Idempotency-Key"] = key
	}
	return h
}

// compactFixture loads a shared fixture as compact JSON, as Kapso sends it.
func compactFixture(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out.Bytes()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// never polls cond for d and fails as soon as it holds: the proof that
// something did not happen (a forward of a partial body, say), which
// fails at once when it does instead of after a fixed sleep.
func never(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			t.Fatal(what)
		}
	}
}
