// Command bench compares webhook_guard with plain reverse_proxy, end to end,
// on this machine: it builds cmd/caddy, starts a minimal upstream on
// loopback, and drives each case with wrk (bounded in time, loopback only).
//
//	bench/run.sh                # installs wrk when missing, then runs this
//	go run ./bench -duration 10s -connections 32
//
// Cases, all in one Caddy process, one site (port) each:
//
//	baseline   reverse_proxy only
//	verify     webhook_guard { verify kapso } with 1 KB signed bodies
//	dedupe     the same plus dedupe, every request a new key
//	unbatch    Kapso batches of 50 items; reported as items per second
//	normalize  Meta payloads with verify meta + normalize meta
//
// -inbox runs the inbox suite instead (bench/inbox.go): durable acceptance,
// the drain of a backlog and the heap over a large one.
// Each case is reported as requests per second, p50 and p99 latency and its
// throughput as a ratio to the baseline measured in the same run. When
// Node is present it also times Kapso's normalizeWebhook() over the
// conformance corpus against the Go normalizer, the two taking short
// alternating turns on one CPU (-sdk-only runs that alone).
package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

var (
	duration    = flag.Duration("duration", 10*time.Second, "how long wrk drives each case")
	connections = flag.Int("connections", 32, "wrk connections")
	threads     = flag.Int("threads", 2, "wrk threads")
	batchSize   = flag.Int("batch", 50, "items per batch in the unbatch case")
	skipNode    = flag.Bool("skip-node", false, "do not time the Kapso SDK")
	sdkOnly     = flag.Bool("sdk-only", false, "only compare the normalizer with the Kapso SDK (no load test)")
	rounds      = flag.Int("rounds", 3, "rounds; cases alternate within each round and medians are reported")
	outFile     = flag.String("json", "", "also write the results as JSON to this file")
	sdkRounds   = flag.Int("sdk-rounds", 20, "rounds of alternating turns in the SDK comparison")
	turnMs      = flag.Int("turn-ms", 200, "length of one timing turn in the SDK comparison, in ms")
	pairs       = flag.Int("pairs", 0, "after the rounds, alternate the baseline and -pair-case in this many pairs of short windows")
	pairCase    = flag.String("pair-case", "verify+dedupe", "the case -pairs compares with the baseline")
	pairWindow  = flag.Duration("pair-window", time.Second, "length of one window in -pairs (whole seconds)")
)

const (
	kapsoSecret = "bench-kapso-secret"
	metaSecret  = "bench-meta-secret"
)

type benchCase struct {
	name    string
	site    string // directives inside the site block
	body    []byte
	headers map[string]string
	unique  bool // a new X-Idempotency-Key per request
	items   int  // requests carry this many items (unbatch)
	port    int
	// variants, when set, are sent in turn instead of body and headers
	// (events of many conversations, each signed).
	variants []variant
}

type variant struct {
	body    []byte
	headers map[string]string
}

type result struct {
	Name      string  `json:"name"`
	RPS       float64 `json:"requests_per_second"`
	ItemsPerS float64 `json:"items_per_second,omitempty"`
	P50Micros float64 `json:"p50_us"`
	P99Micros float64 `json:"p99_us"`
	// Latency of single requests with one connection (no queueing).
	IdleP50 float64 `json:"idle_p50_us"`
	IdleP99 float64 `json:"idle_p99_us"`
	Ratio   float64 `json:"throughput_ratio_to_baseline"`
	// CPU time the server side (Caddy and the upstream, not wrk) spent
	// per request under load, and the throughput that implies against
	// the baseline's (per item for unbatch): what a machine whose load
	// generator has cores of its own would see.
	ServerCPUMicros float64 `json:"server_cpu_us_per_request,omitempty"`
	CPURatio        float64 `json:"cpu_throughput_ratio_to_baseline,omitempty"`
	Errors          int     `json:"non_2xx_or_errors"`
	Requests        int     `json:"requests"`
	DurationS       float64 `json:"duration_s"`
	Connection      int     `json:"connections"`
	items           int
}

func main() {
	flag.Parse()
	if dir := os.Getenv(normalizeTurnsEnv); dir != "" {
		// The Go side of compareWithSDK: this program, started again.
		if err := serveNormalizeTurns(dir, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench: normalize turns:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	if *sdkOnly {
		fmt.Println(compareWithSDK(root))
		return nil
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("wrk is not installed (bench/run.sh installs it): %w", err)
	}
	work, err := os.MkdirTemp("", "webhookguard-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fmt.Println("== building cmd/caddy")
	caddyBin := filepath.Join(work, "caddy")
	build := exec.Command("go", "build", "-o", caddyBin, "./cmd/caddy")
	build.Dir, build.Stdout, build.Stderr = root, os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building caddy: %w", err)
	}

	if *inboxSuite {
		return runInboxSuite(work, caddyBin)
	}
	upstream, err := startUpstream()
	if err != nil {
		return err
	}
	defer upstream.Close()

	cases, err := makeCases(root, work, upstream.Addr().String())
	if err != nil {
		return err
	}
	proc, err := startCaddy(caddyBin, work, cases)
	if err != nil {
		return err
	}
	defer proc.stop()
	caddyPID := proc.pid

	// Cases alternate within each round, so that drift on a shared machine
	// hits them alike, and each round starts one case later, so that no
	// case always runs first; each figure is the median over the rounds.
	perCase := make([][]result, len(cases))
	for round := 1; round <= *rounds; round++ {
		for k := range cases {
			i := (k + round - 1) % len(cases)
			c := cases[i]
			fmt.Printf("== round %d/%d: %s\n", round, *rounds, c.name)
			r, err := drive(work, c, caddyPID, *connections, *duration, true)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			idle, err := drive(work, c, caddyPID, 1, *duration/2, true)
			if err != nil {
				return fmt.Errorf("%s (one connection): %w", c.name, err)
			}
			r.IdleP50, r.IdleP99 = idle.P50Micros, idle.P99Micros
			perCase[i] = append(perCase[i], r)
		}
	}
	var results []result
	if *rounds > 0 {
		results = make([]result, len(cases))
		for i := range cases {
			results[i] = medianResult(perCase[i])
			results[i].Ratio = medianRatio(perCase[i], perCase[0])
			results[i].CPURatio = medianCPURatio(perCase[i], perCase[0])
		}
		printResults(results)
	}
	var pairLine string
	if *pairs > 0 {
		if pairLine, err = comparePaired(work, cases, caddyPID); err != nil {
			return err
		}
		fmt.Println(pairLine)
	}

	var nodeLine string
	if !*skipNode {
		nodeLine = compareWithSDK(root)
		fmt.Println(nodeLine)
	}
	fmt.Printf("\nmachine: %s/%s, %d CPUs, %s; wrk -t%d -c%d -d%s, medians of %d rounds\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), *threads, *connections, *duration, *rounds)
	if *outFile != "" {
		b, _ := json.MarshalIndent(map[string]any{"results": results, "paired": pairLine, "sdk": nodeLine}, "", "  ")
		return os.WriteFile(*outFile, b, 0o644)
	}
	return nil
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// startUpstream is the minimal app behind every case: it reads the body
// and answers 200 "ok".
func startUpstream() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok"))
	})}
	go func() { _ = srv.Serve(ln) }()
	return ln, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func signHex(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// kapsoBody is a 1 KB Kapso-like event without a message id, so that the
// idempotency key alone tells deliveries apart.
func kapsoBody() []byte {
	b := []byte(`{"conversation":{"id":"conv_bench","phone_number":"+15551234567","status":"active",` +
		`"phone_number_id":"123456789012345"},"phone_number_id":"123456789012345","note":"`)
	for len(b) < 1022 {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

func batchBody(n int) []byte {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"message":{"timestamp":"17300928%02d","type":"text","text":{"body":"item %d"},`+
			`"kapso":{"direction":"inbound"}},"conversation":{"id":"conv_bench"},"phone_number_id":"123456789012345"}`, i%100, i)
	}
	return []byte(`{"type":"whatsapp.message.received","batch":true,"data":[` + strings.Join(items, ",") +
		`],"batch_info":{"size":` + strconv.Itoa(n) + `,"window_ms":5000,"first_sequence":1,"conversation_id":"conv_bench"}}`)
}

func makeCases(root, work, upstream string) ([]*benchCase, error) {
	meta, err := os.ReadFile(filepath.Join(root, metanormTestdata, "corpus/in_text.json"))
	if err != nil {
		return nil, err
	}
	body := kapsoBody()
	kapsoHeaders := map[string]string{"X-Webhook-Signature": signHex(kapsoSecret, body), "X-Webhook-Event": "whatsapp.conversation.created"}
	batch := batchBody(*batchSize)
	proxy := "reverse_proxy " + upstream
	cases := []*benchCase{
		{name: "baseline", site: proxy, body: body, headers: kapsoHeaders, unique: true},
		{name: "verify", site: "webhook_guard {\n\t\tverify kapso " + kapsoSecret + "\n\t}\n\t" + proxy, body: body, headers: kapsoHeaders, unique: true},
		{name: "verify+dedupe", site: "webhook_guard {\n\t\tverify kapso " + kapsoSecret + "\n\t\tdedupe {\n\t\t\tscope bench\n\t\t}\n\t}\n\t" + proxy,
			body: body, headers: kapsoHeaders, unique: true},
		{name: "unbatch", site: "webhook_guard {\n\t\tverify kapso " + kapsoSecret + "\n\t\tunbatch {\n\t\t\tmax_items 1000\n\t\t}\n\t\tdedupe {\n\t\t\tscope batch\n\t\t}\n\t}\n\t" + proxy,
			body: batch, headers: map[string]string{"X-Webhook-Signature": signHex(kapsoSecret, batch), "X-Webhook-Batch": "true",
				"X-Webhook-Event": "whatsapp.message.received"}, unique: true, items: *batchSize},
		{name: "normalize", site: "webhook_guard {\n\t\tverify meta " + metaSecret + "\n\t\tnormalize meta\n\t}\n\t" + proxy,
			body: meta, headers: map[string]string{"X-Hub-Signature-256": "sha256=" + signHex(metaSecret, meta)}},
	}
	for _, c := range cases {
		if c.port, err = freePort(); err != nil {
			return nil, err
		}
	}
	return cases, nil
}

// caddyProc is a running Caddy.
type caddyProc struct {
	stop  func()
	pid   int
	admin string // its admin listener, host:port
}

// startCaddy runs one Caddy process with a site per case.
func startCaddy(bin, work string, cases []*benchCase) (*caddyProc, error) {
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "{\n\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tauto_https off\n\tlog {\n\t\tlevel WARN\n\t}\n}\n", admin)
	for _, c := range cases {
		fmt.Fprintf(&cfg, "\nhttp://127.0.0.1:%d {\n\t%s\n}\n", c.port, c.site)
	}
	path := filepath.Join(work, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+work, "XDG_CONFIG_HOME="+work, "XDG_DATA_HOME="+work)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range cases {
		for {
			conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(c.port), 200*time.Millisecond)
			if err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				stop()
				return nil, fmt.Errorf("caddy did not start:\n%s", logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return &caddyProc{stop: stop, pid: cmd.Process.Pid, admin: "127.0.0.1:" + strconv.Itoa(admin)}, nil
}

// luaScript makes wrk send c's body and headers, with a fresh idempotency
// key per request when the case needs one.
func luaScript(c *benchCase, runID string) string {
	var b strings.Builder
	variants := c.variants
	if len(variants) == 0 {
		variants = []variant{{c.body, c.headers}}
	}
	b.WriteString("local variants = {\n")
	for _, v := range variants {
		b.WriteString("  {body = [==[" + string(v.body) + "]==], headers = {")
		for k, val := range v.headers {
			fmt.Fprintf(&b, "[%q] = %q, ", k, val)
		}
		b.WriteString("}},\n")
	}
	b.WriteString("}\nlocal headers = {}\n")
	b.WriteString(`headers["Content-Type"] = "application/json"` + "\n")
	fmt.Fprintf(&b, "local unique = %v\nlocal prefix = %q\n", c.unique, runID+"-"+c.name+"-")
	b.WriteString(`
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
function request()
  n = n + 1
  local v = variants[(n % #variants) + 1]
  for k, val in pairs(v.headers) do headers[k] = val end
  if unique then
    headers["X-Idempotency-Key"] = prefix .. tid .. "-" .. n
  end
  return wrk.format("POST", "/", headers, v.body)
end
local bad = 0
function response(status, hdrs, b)
  if status < 200 or status > 299 then bad = bad + 1 end
end
function done(summary, latency, requests)
  io.write(string.format("BENCH requests=%d errors=%d p50=%d p99=%d duration_us=%d\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout + summary.errors.status,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
`)
	return b.String()
}

var benchLine = regexp.MustCompile(`BENCH requests=(\d+) errors=(\d+) p50=(\d+) p99=(\d+) duration_us=(\d+)`)

// wrkSeconds formats d for wrk, which takes whole seconds only ("1.5s"
// is refused): rounded, and at least one.
func wrkSeconds(d time.Duration) string {
	return strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))) + "s"
}

// writeScript writes c's wrk script with idempotency keys no other run
// uses, and returns its path.
func writeScript(work string, c *benchCase, tag string) (string, error) {
	script := filepath.Join(work, c.name+"-"+tag+".lua")
	runID := tag + strconv.FormatInt(time.Now().UnixNano(), 36)
	return script, os.WriteFile(script, []byte(luaScript(c, runID)), 0o600)
}

func drive(work string, c *benchCase, caddyPID, conns int, d time.Duration, warmUp bool) (result, error) {
	if warmUp {
		// A short warm-up so that connection set-up and the first GC
		// cycles are not measured. Its script has keys of its own: sharing
		// the measured run's would make part of that run duplicates,
		// which the dedupe case answers without the upstream.
		warmScript, err := writeScript(work, c, "warm")
		if err != nil {
			return result{}, err
		}
		warm := exec.Command("wrk", "-t1", "-c4", "-d1s", "-s", warmScript, "http://127.0.0.1:"+strconv.Itoa(c.port)+"/")
		_ = warm.Run()
	}
	script, err := writeScript(work, c, "run")
	if err != nil {
		return result{}, err
	}
	t := min(*threads, conns)
	cmd := exec.Command("wrk", "-t"+strconv.Itoa(t), "-c"+strconv.Itoa(conns),
		"-d"+wrkSeconds(d), "--timeout", "5s", "-s", script, "http://127.0.0.1:"+strconv.Itoa(c.port)+"/")
	cpuBefore, cpuOK := serverCPU(caddyPID)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	cpuAfter, cpuOK2 := serverCPU(caddyPID)
	m := benchLine.FindSubmatch(out)
	if m == nil {
		return result{}, fmt.Errorf("no summary in wrk output:\n%s", out)
	}
	num := func(i int) float64 { v, _ := strconv.ParseFloat(string(m[i]), 64); return v }
	r := result{Name: c.name, Requests: int(num(1)), Errors: int(num(2)), P50Micros: num(3), P99Micros: num(4),
		DurationS: num(5) / 1e6, Connection: conns}
	r.RPS = float64(r.Requests) / r.DurationS
	if c.items > 0 {
		r.ItemsPerS = r.RPS * float64(c.items)
		r.items = c.items
	}
	if cpuOK && cpuOK2 && r.Requests > 0 {
		r.ServerCPUMicros = float64((cpuAfter - cpuBefore).Microseconds()) / float64(r.Requests)
	}
	if r.Errors > 0 {
		fmt.Printf("   warning: %d requests failed or answered non-2xx\n", r.Errors)
	}
	return r, nil
}

// comparePaired alternates the baseline and -pair-case in short windows,
// each pair starting with the other one than the last, and reports the
// median and quartiles of the per-pair throughput ratios: this VM's speed
// changes from one second to the next, and windows minutes apart (the
// rounds) measure that as much as the gateway.
func comparePaired(work string, cases []*benchCase, caddyPID int) (string, error) {
	base := cases[0]
	i := slices.IndexFunc(cases, func(c *benchCase) bool { return c.name == *pairCase })
	if i <= 0 {
		return "", fmt.Errorf("-pair-case %q: no such case besides the baseline", *pairCase)
	}
	other := cases[i]
	fmt.Printf("== %d pairs of %s windows: baseline and %s\n", *pairs, wrkSeconds(*pairWindow), other.name)
	for _, c := range []*benchCase{base, other} { // warm both once
		if _, err := drive(work, c, caddyPID, *connections, time.Second, true); err != nil {
			return "", fmt.Errorf("%s: %w", c.name, err)
		}
	}
	var ratios, cpuRatios []float64
	for p := range *pairs {
		first, second := base, other
		if p%2 == 1 {
			first, second = other, base
		}
		a, err := drive(work, first, caddyPID, *connections, *pairWindow, false)
		if err != nil {
			return "", fmt.Errorf("%s: %w", first.name, err)
		}
		b, err := drive(work, second, caddyPID, *connections, *pairWindow, false)
		if err != nil {
			return "", fmt.Errorf("%s: %w", second.name, err)
		}
		if first != base {
			a, b = b, a
		}
		ratios = append(ratios, b.RPS/a.RPS)
		if a.ServerCPUMicros > 0 && b.ServerCPUMicros > 0 {
			cpuRatios = append(cpuRatios, a.ServerCPUMicros/b.ServerCPUMicros)
		}
	}
	return fmt.Sprintf("%s vs baseline, %d alternating pairs of %s windows: throughput %.2fx (quartiles %.2f-%.2fx); "+
		"from server CPU per request %.2fx (quartiles %.2f-%.2fx)",
		other.name, *pairs, wrkSeconds(*pairWindow), median(ratios), quantile(ratios, 0.25), quantile(ratios, 0.75),
		median(cpuRatios), quantile(cpuRatios, 0.25), quantile(cpuRatios, 0.75)), nil
}

// medianResult takes the median of each figure over the rounds.
func medianResult(rs []result) result {
	pick := func(f func(result) float64) float64 {
		vals := make([]float64, len(rs))
		for i, r := range rs {
			vals[i] = f(r)
		}
		return median(vals)
	}
	out := rs[0]
	out.RPS = pick(func(r result) float64 { return r.RPS })
	out.ItemsPerS = pick(func(r result) float64 { return r.ItemsPerS })
	out.P50Micros = pick(func(r result) float64 { return r.P50Micros })
	out.P99Micros = pick(func(r result) float64 { return r.P99Micros })
	out.IdleP50 = pick(func(r result) float64 { return r.IdleP50 })
	out.IdleP99 = pick(func(r result) float64 { return r.IdleP99 })
	out.ServerCPUMicros = pick(func(r result) float64 { return r.ServerCPUMicros })
	out.Errors = 0
	out.Requests = 0
	for _, r := range rs {
		out.Errors += r.Errors
		out.Requests += r.Requests
	}
	return out
}

// medianRatio is the median over the rounds of a case's throughput (items
// per second for unbatch) against the baseline's in the same round: the
// rounds are minutes apart, and the machine's speed can change in between.
func medianRatio(rs, base []result) float64 {
	return medianOfRounds(rs, base, func(r, b result) float64 {
		if r.ItemsPerS > 0 {
			return r.ItemsPerS / b.RPS
		}
		return r.RPS / b.RPS
	})
}

// medianCPURatio is medianRatio for the throughput implied by CPU per
// request: the baseline's CPU per request over the case's, per item for
// unbatch. It is 0 when CPU could not be read.
func medianCPURatio(rs, base []result) float64 {
	return medianOfRounds(rs, base, func(r, b result) float64 {
		if r.ServerCPUMicros <= 0 || b.ServerCPUMicros <= 0 {
			return 0
		}
		return b.ServerCPUMicros / (r.ServerCPUMicros / float64(max(1, r.items)))
	})
}

// medianOfRounds is the median of ratio(case, baseline) taken round by
// round, or 0 when any round's ratio is 0 (not measured).
func medianOfRounds(rs, base []result, ratio func(r, b result) float64) float64 {
	ratios := make([]float64, len(rs))
	for i, r := range rs {
		if ratios[i] = ratio(r, base[i]); ratios[i] == 0 {
			return 0
		}
	}
	return median(ratios)
}

// median is the upper median.
func median(vals []float64) float64 { return quantile(vals, 0.5) }

func printResults(rs []result) {
	fmt.Printf("\nthroughput with %d connections; latency of single requests with 1 connection; CPU/request is the\n"+
		"server side's (Caddy and the upstream, not wrk) under load, and CPU vs base the throughput it implies\n", *connections)
	fmt.Printf("%-14s %10s %10s %9s %11s %11s %11s %11s %12s %9s\n", "case", "req/s", "items/s", "vs base",
		"loaded p50", "loaded p99", "1-conn p50", "1-conn p99", "CPU/request", "CPU vs base")
	var base result
	for _, r := range rs {
		if r.Name == "baseline" {
			base = r
		}
		items := "-"
		if r.ItemsPerS > 0 {
			items = fmt.Sprintf("%.0f", r.ItemsPerS)
		}
		cpu, cpuRatio := "-", "-"
		if r.ServerCPUMicros > 0 {
			cpu = fmt.Sprintf("%.1fµs", r.ServerCPUMicros)
		}
		if r.CPURatio > 0 {
			cpuRatio = fmt.Sprintf("%.2fx", r.CPURatio)
		}
		fmt.Printf("%-14s %10.0f %10s %8.2fx %9.0fµs %9.0fµs %9.0fµs %9.0fµs %12s %9s\n", r.Name, r.RPS, items, r.Ratio,
			r.P50Micros, r.P99Micros, r.IdleP50, r.IdleP99, cpu, cpuRatio)
	}
	for _, r := range rs {
		if r.Name != "baseline" && r.items == 0 {
			fmt.Printf("%s adds %.0fµs at p50 and %.0fµs at p99 to a single request\n", r.Name, r.IdleP50-base.IdleP50, r.IdleP99-base.IdleP99)
		}
	}
}

// compareWithSDK times the Kapso SDK (Node) and the Go normalizer on the
// same corpus and returns a one-line summary.
func compareWithSDK(root string) string {
	if _, err := exec.LookPath("node"); err != nil {
		return "SDK comparison skipped: node is not installed"
	}
	gen := filepath.Join(root, metanormTestdata, "generate")
	if _, err := os.Stat(filepath.Join(gen, "node_modules/@kapso/whatsapp-cloud-api")); err != nil {
		install := exec.Command("npm", "install", "--no-audit", "--no-fund")
		install.Dir = gen
		if out, err := install.CombinedOutput(); err != nil {
			return "SDK comparison skipped: npm install failed: " + lastLine(out)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return "SDK comparison skipped: " + err.Error()
	}

	// Both sides stay running and take turns a fraction of a second long,
	// on the same CPU, and each ratio is taken between two neighbouring
	// turns: this VM's speed changes from one second to the next, so
	// turns seconds apart would mostly measure that.
	node, err := startTurns(gen, nil, "node", "bench.mjs", "--serve")
	if err != nil {
		return "SDK comparison skipped: " + err.Error()
	}
	defer node.stop()
	goSide, err := startTurns(root, []string{normalizeTurnsEnv + "=" + filepath.Join(root, metanormTestdata)}, self)
	if err != nil {
		return "SDK comparison skipped: " + err.Error()
	}
	defer goSide.stop()
	for _, t := range []*turnServer{node, goSide} { // warm both up
		if _, err := t.turn("corpus", 1000); err != nil {
			return "SDK comparison skipped: " + err.Error()
		}
	}
	// Per set, one round is three turns, the Go normalizer's, the SDK's
	// (bytes in and out, like the gateway) and the SDK's on JavaScript
	// strings (for reference), started one turn later each round.
	type turnKind struct {
		server *turnServer
		set    string // suffix of the set name the server is asked for
	}
	kinds := []turnKind{{goSide, ""}, {node, ""}, {node, "-str"}}
	type series struct{ goNs, sdkNs, strNs, ratio, strRatio []float64 }
	results := map[string]*series{"corpus": {}, "text": {}}
	for round := range *sdkRounds {
		for _, set := range []string{"corpus", "text"} {
			var ns [3]float64
			for k := range kinds {
				i := (k + round) % len(kinds)
				v, err := kinds[i].server.turn(set+kinds[i].set, *turnMs)
				if err != nil {
					return "SDK comparison skipped: " + err.Error()
				}
				ns[i] = v
			}
			r := results[set]
			r.goNs, r.sdkNs, r.strNs = append(r.goNs, ns[0]), append(r.sdkNs, ns[1]), append(r.strNs, ns[2])
			r.ratio, r.strRatio = append(r.ratio, ns[1]/ns[0]), append(r.strRatio, ns[2]/ns[0])
		}
	}
	nodeVersion, _ := exec.Command("node", "--version").Output()
	line := fmt.Sprintf("normalize vs Kapso SDK (node %s, %d rounds of %d ms turns%s; medians, ratios taken per round):",
		strings.TrimSpace(string(nodeVersion)), *sdkRounds, *turnMs, pinnedNote())
	for _, set := range []string{"corpus", "text"} {
		r := results[set]
		label := "corpus, per payload"
		if set == "text" {
			label = "text message"
		}
		line += fmt.Sprintf("\n  %s: Go %.0f ns, SDK bytes to bytes %.0f ns = %.1fx (quartiles %.1f-%.1fx); SDK strings to string %.0f ns = %.1fx",
			label, median(r.goNs), median(r.sdkNs), median(r.ratio), quantile(r.ratio, 0.25), quantile(r.ratio, 0.75),
			median(r.strNs), median(r.strRatio))
	}
	return line
}

// normalizeTurnsEnv, set to the corpus directory, makes this program
// serve timing turns of the Go normalizer (turns.go) instead of running.
const normalizeTurnsEnv = "WEBHOOKGUARD_NORMALIZE_TURNS"

// metanormTestdata holds the normalizer's corpus, goldens and the SDK
// generator, relative to the repository root.
const metanormTestdata = "internal/metanorm/testdata"

// turnServer is a running timing process: it reads "SET MS" lines and
// answers each with the mean time per payload in ns.
type turnServer struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startTurns starts a timing process, pinned to the last CPU when taskset
// is there, so that both sides run on the same core.
func startTurns(dir string, env []string, name string, args ...string) (*turnServer, error) {
	if cpu := runtime.NumCPU() - 1; cpu > 0 {
		if taskset, err := exec.LookPath("taskset"); err == nil {
			args = append([]string{"-c", strconv.Itoa(cpu), name}, args...)
			name = taskset
		}
	}
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Stderr = dir, os.Stderr
	cmd.Env = append(os.Environ(), env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return &turnServer{cmd: cmd, in: in, out: bufio.NewScanner(out)}, nil
}

func (t *turnServer) turn(set string, ms int) (float64, error) {
	if _, err := fmt.Fprintf(t.in, "%s %d\n", set, ms); err != nil {
		return 0, fmt.Errorf("%s: %w", t.cmd.Path, err)
	}
	if !t.out.Scan() {
		return 0, fmt.Errorf("%s gave no answer (%v)", filepath.Base(t.cmd.Args[len(t.cmd.Args)-1]), t.out.Err())
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(t.out.Text()), 64)
	if err != nil || ns <= 0 {
		return 0, fmt.Errorf("unreadable time %q", t.out.Text())
	}
	return ns, nil
}

func (t *turnServer) stop() {
	t.in.Close()
	if err := t.cmd.Wait(); err != nil {
		t.cmd.Process.Kill()
	}
}

func pinnedNote() string {
	if _, err := exec.LookPath("taskset"); err == nil && runtime.NumCPU() > 1 {
		return fmt.Sprintf(", both on CPU %d", runtime.NumCPU()-1)
	}
	return ""
}

// quantile is the q-quantile of vals by the nearest rank.
func quantile(vals []float64, q float64) float64 {
	if len(vals) == 0 {
		return 0
	}
	s := slices.Clone(vals)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1)+0.5)]
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
