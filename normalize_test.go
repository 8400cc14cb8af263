package webhookguard

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// corpusCase is one conformance payload with the SDK's answer for it.
type corpusCase struct {
	name   string
	input  []byte
	golden []byte
	throws bool
}

func loadCorpus(t testing.TB) []corpusCase {
	t.Helper()
	cases, err := readCorpus()
	if err != nil {
		t.Fatal(err)
	}
	return cases
}

// readCorpus reads every conformance payload with its golden output.
func readCorpus() ([]corpusCase, error) {
	files, err := filepath.Glob("testdata/normalize/corpus/*.json")
	if err != nil || len(files) < 40 {
		return nil, fmt.Errorf("the conformance corpus needs at least 40 payloads, found %d (%v)", len(files), err)
	}
	var cases []corpusCase
	for _, f := range files {
		name := filepath.Base(f)
		golden, err := os.ReadFile(filepath.Join("testdata/normalize/golden", name))
		if err != nil {
			return nil, fmt.Errorf("%s has no golden output; regenerate them (README, Normalization): %w", name, err)
		}
		input, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var probe struct {
			Throws *string `json:"__throws"`
		}
		_ = json.Unmarshal(golden, &probe)
		cases = append(cases, corpusCase{name: name, input: input, golden: golden, throws: probe.Throws != nil})
	}
	return cases, nil
}

// TestNormalizeConformance guards equality with the reference SDK: for
// every corpus payload the output must equal normalizeWebhook()'s, token
// by token in the SDK's key order. Numbers compare as JavaScript holds
// them (float64), so an integer whose digits the gateway keeps while
// JavaScript rounds them still matches. Payloads on which the SDK throws
// must be refused (and are then forwarded unchanged).
func TestNormalizeConformance(t *testing.T) {
	for _, tc := range loadCorpus(t) {
		t.Run(tc.name, func(t *testing.T) {
			out, err := normalizeMeta(nil, tc.input)
			if tc.throws {
				if !errors.Is(err, errSDKThrows) {
					t.Fatalf("the SDK throws on this payload (%s) but normalizeMeta returned err=%v", tc.golden, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("normalizeMeta: %v", err)
			}
			if !json.Valid(out) {
				t.Fatalf("output is not valid JSON: %s", out)
			}
			if diff := jsonTokenDiff(out, tc.golden); diff != "" {
				t.Fatalf("%s\n got: %s\nwant: %s", diff, out, tc.golden)
			}
		})
	}
}

// jsonTokenDiff compares two JSON texts as token streams: same structure,
// same keys in the same order, same strings, numbers equal as float64.
func jsonTokenDiff(got, want []byte) string {
	dg, dw := json.NewDecoder(bytes.NewReader(got)), json.NewDecoder(bytes.NewReader(want))
	for i := 0; ; i++ {
		tg, eg := dg.Token()
		tw, ew := dw.Token()
		if eg == io.EOF && ew == io.EOF {
			return ""
		}
		if eg != nil || ew != nil {
			return fmt.Sprintf("token %d: errors %v / %v", i, eg, ew)
		}
		if fmt.Sprintf("%T %v", tg, tg) != fmt.Sprintf("%T %v", tw, tw) {
			return fmt.Sprintf("token %d: got %T %v, want %T %v", i, tg, tg, tw, tw)
		}
	}
}

// TestNormalizeKeepsBigIntegerDigits guards the one intended difference
// from JavaScript: integers beyond 2^53 keep their digits.
func TestNormalizeKeepsBigIntegerDigits(t *testing.T) {
	in := []byte(`{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"x","value":{"big_id":12345678901234567890123,"neg":-0,"f":1.50}}]}]}`)
	out, err := normalizeMeta(nil, in)
	if err != nil {
		t.Fatal(err)
	}
	want := `"raw":{"x":[{"bigId":12345678901234567890123,"neg":0,"f":1.5}]}`
	if !strings.Contains(string(out), want) {
		t.Fatalf("got %s, want it to contain %s", out, want)
	}
}

// TestNormalizeRefusesNonObjects guards the pass-through policy: bodies
// that are not JSON objects are not rewritten.
func TestNormalizeRefusesNonObjects(t *testing.T) {
	for _, body := range []string{``, `[]`, `"s"`, `12`, `null`, `{"a":`, `{"a":1} x`, "{\"a\":\"\x01\"}"} {
		if _, err := normalizeMeta(nil, []byte(body)); !errors.Is(err, errNotNormalizable) {
			t.Errorf("%q: err=%v, want errNotNormalizable", body, err)
		}
	}
}

// FuzzNormalize guards robustness: any input either is refused or yields
// valid JSON, and never panics.
func FuzzNormalize(f *testing.F) {
	for _, tc := range loadCorpus(f) {
		f.Add(tc.input)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, err := normalizeMeta(nil, body)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON out of %q: %q", body, out)
		}
	})
}

// BenchmarkNormalize measures normalization over the conformance corpus
// and over the plain text message the SDK timing is quoted for.
func BenchmarkNormalize(b *testing.B) {
	var bodies [][]byte
	var total int64
	for _, tc := range loadCorpus(b) {
		if !tc.throws {
			bodies = append(bodies, tc.input)
			total += int64(len(tc.input))
		}
	}
	var buf []byte
	b.Run("corpus", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(total / int64(len(bodies)))
		i := 0
		for b.Loop() {
			out, err := normalizeMeta(buf[:0], bodies[i%len(bodies)])
			if err != nil {
				b.Fatal(err)
			}
			buf = out
			i++
		}
	})
	text := mustRead(b, "testdata/normalize/corpus/in_text.json")
	b.Run("text-message", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(text)))
		for b.Loop() {
			out, err := normalizeMeta(buf[:0], text)
			if err != nil {
				b.Fatal(err)
			}
			buf = out
		}
	})
}

// normalizeTurnsEnv makes the test binary serve timing turns to bench/
// instead of running tests (see TestMain and serveNormalizeTurns).
const normalizeTurnsEnv = "WEBHOOKGUARD_NORMALIZE_TURNS"

// serveNormalizeTurns times the normalizer in the turns bench/ asks for,
// one line each: "corpus MS" or "text MS" normalizes the payloads the SDK
// accepts, or the text message, for at least MS milliseconds and answers
// the mean time per payload in ns. bench/ gives the Kapso SDK the same
// turns in between: on a machine whose speed changes from one second to
// the next, only turns a fraction of a second apart can be compared.
func serveNormalizeTurns(in io.Reader, out io.Writer) error {
	cases, err := readCorpus()
	if err != nil {
		return err
	}
	var corpus [][]byte
	var text []byte
	for _, tc := range cases {
		if !tc.throws {
			corpus = append(corpus, tc.input)
		}
		if tc.name == "in_text.json" {
			text = tc.input
		}
	}
	sc := bufio.NewScanner(in)
	var buf []byte
	for sc.Scan() {
		var what string
		var ms int
		if _, err := fmt.Sscan(sc.Text(), &what, &ms); err != nil || ms <= 0 {
			return fmt.Errorf("turn %q: want \"corpus MS\" or \"text MS\"", sc.Text())
		}
		bodies := corpus
		switch what {
		case "corpus":
		case "text":
			bodies = [][]byte{text}
		default:
			return fmt.Errorf("turn %q: unknown set %q", sc.Text(), what)
		}
		ns, err := timeNormalize(bodies, time.Duration(ms)*time.Millisecond, &buf)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(out, "%.1f\n", ns); err != nil {
			return err
		}
	}
	return sc.Err()
}

// timeNormalize normalizes bodies in turn for at least d and returns the
// mean time per payload in ns. The clock is read every 64 payloads, so
// that reading it costs nothing measurable.
func timeNormalize(bodies [][]byte, d time.Duration, buf *[]byte) (float64, error) {
	start := time.Now()
	ops := 0
	for {
		for range 64 {
			out, err := normalizeMeta((*buf)[:0], bodies[ops%len(bodies)])
			if err != nil {
				return 0, err
			}
			*buf = out
			ops++
		}
		if took := time.Since(start); took >= d {
			return float64(took.Nanoseconds()) / float64(ops), nil
		}
	}
}

// TestServeNormalizeTurns guards the Go side of bench/'s SDK comparison:
// each turn is answered with a plausible time per payload, and a turn it
// does not understand stops it with an error instead of a made-up figure.
func TestServeNormalizeTurns(t *testing.T) {
	var out bytes.Buffer
	if err := serveNormalizeTurns(strings.NewReader("corpus 20\ntext 20\n"), &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(out.String())
	if len(lines) != 2 {
		t.Fatalf("want one answer per turn, got %q", out.String())
	}
	for i, l := range lines {
		var ns float64
		if _, err := fmt.Sscan(l, &ns); err != nil || ns < 10 || ns > 1e7 {
			t.Errorf("turn %d: %q is not a time per payload in ns", i, l)
		}
	}
	for _, bad := range []string{"corpus\n", "corpus -5\n", "everything 20\n"} {
		if err := serveNormalizeTurns(strings.NewReader(bad), io.Discard); err == nil {
			t.Errorf("turn %q was accepted", bad)
		}
	}
}

// TestNormalizeThroughCaddy guards the feature end to end: every corpus
// payload, signed with a Meta app secret and sent through a real Caddy,
// reaches the upstream as the SDK's output, re-signed with the forward
// secret and stripped of the Meta signature; payloads the SDK rejects and
// bodies that are not JSON objects arrive unchanged and marked so.
func TestNormalizeThroughCaddy(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	webhook_guard {
		verify meta meta-app-secret
		normalize meta
		forward_secret fwd-secret
	}
	reverse_proxy `+up.Addr())
	cases := loadCorpus(t)
	cases = append(cases,
		corpusCase{name: "array body", input: []byte(`[{"object":"whatsapp_business_account"}]`), throws: true},
		corpusCase{name: "not JSON", input: []byte(`object=whatsapp`), throws: true})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := up.count()
			status, _, resp := post(t, c.URL, tc.input, map[string]string{
				"X-Hub-Signature-256": "sha256=" + signHex("meta-app-secret", tc.input),
				"Content-Type":        "text/plain",
			})
			if status != 200 || up.count() != before+1 {
				t.Fatalf("status %d %s, forwarded %d", status, resp, up.count()-before)
			}
			got := up.requests()[before]
			if tc.throws {
				if !bytes.Equal(got.Body, tc.input) || got.Header.Get("X-Webhook-Normalized") != "false" {
					t.Fatalf("want the body unchanged with X-Webhook-Normalized: false, got %q (%q)",
						got.Header.Get("X-Webhook-Normalized"), got.Body)
				}
				if got.Header.Get("X-Hub-Signature-256") == "" {
					t.Error("the original signature was dropped from an unchanged body")
				}
				return
			}
			if diff := jsonTokenDiff(got.Body, tc.golden); diff != "" {
				t.Fatalf("upstream body differs from the SDK's output: %s\n got: %s", diff, got.Body)
			}
			want := map[string]string{
				"X-Webhook-Normalized": "true",
				"Content-Type":         "application/json",
				"Content-Length":       fmt.Sprint(len(got.Body)),
				"X-Webhook-Signature":  signHex("fwd-secret", got.Body),
				"X-Hub-Signature-256":  "",
				"X-Webhook-Verified":   "meta",
			}
			for k, v := range want {
				if g := got.Header.Get(k); g != v {
					t.Errorf("header %s = %q, want %q", k, g, v)
				}
			}
		})
	}
	if !strings.Contains(c.Logs(), "forwarded unchanged") {
		t.Error("pass-through of a body that cannot be normalized was not logged")
	}
}

// TestKnownKeys guards the table of Meta's keys: every listed key is found
// and written camelCased, and keys that differ from a listed one in any
// single byte, or in length, are not taken for it.
func TestKnownKeys(t *testing.T) {
	for _, k := range metaKeyNames {
		out, ok := knownCamelKey([]byte(k))
		if want := string(appendCamelQuoted(nil, []byte(k))); !ok || string(out) != want {
			t.Fatalf("%q: got %q %v, want %q", k, out, ok, want)
		}
		for i := range len(k) {
			for _, c := range []byte{'_', 'x', 'A', '0'} {
				if c == k[i] {
					continue
				}
				other := []byte(k)
				other[i] = c
				if out, ok := knownCamelKey(other); ok && !slices.Contains(metaKeyNames, string(other)) {
					t.Fatalf("%q taken for a known key, written %q", other, out)
				}
			}
		}
		if _, ok := knownCamelKey([]byte(k + "s")); ok && !slices.Contains(metaKeyNames, k+"s") {
			t.Fatalf("%q taken for a known key", k+"s")
		}
	}
}
