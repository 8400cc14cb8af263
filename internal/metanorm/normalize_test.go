package metanorm

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

func loadCorpus(t testing.TB) []CorpusCase {
	t.Helper()
	cases, err := ReadCorpus("testdata")
	if err != nil {
		t.Fatal(err)
	}
	return cases
}

// TestNormalizeConformance guards equality with the reference SDK: for
// every corpus payload the output must equal normalizeWebhook()'s, token
// by token in the SDK's key order. Numbers compare as JavaScript holds
// them (float64), so an integer whose digits the gateway keeps while
// JavaScript rounds them still matches. Payloads on which the SDK throws
// must be refused (and are then forwarded unchanged).
func TestNormalizeConformance(t *testing.T) {
	t.Parallel()
	for _, tc := range loadCorpus(t) {
		t.Run(tc.Name, func(t *testing.T) {
			out, err := Append(nil, tc.Input)
			if tc.Throws {
				if !errors.Is(err, ErrSDKThrows) {
					t.Fatalf("the SDK throws on this payload (%s) but Append returned err=%v", tc.Golden, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if !json.Valid(out) {
				t.Fatalf("output is not valid JSON: %s", out)
			}
			if diff := TokenDiff(out, tc.Golden); diff != "" {
				t.Fatalf("%s\n got: %s\nwant: %s", diff, out, tc.Golden)
			}
		})
	}
}

// TestNormalizeKeepsBigIntegerDigits guards the one intended difference
// from JavaScript: integers beyond 2^53 keep their digits.
func TestNormalizeKeepsBigIntegerDigits(t *testing.T) {
	t.Parallel()
	in := []byte(`{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"x","value":{"big_id":12345678901234567890123,"neg":-0,"f":1.50}}]}]}`)
	out, err := Append(nil, in)
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
	t.Parallel()
	for _, body := range []string{``, `[]`, `"s"`, `12`, `null`, `{"a":`, `{"a":1} x`, "{\"a\":\"\x01\"}"} {
		if _, err := Append(nil, []byte(body)); !errors.Is(err, ErrNotNormalizable) {
			t.Errorf("%q: err=%v, want ErrNotNormalizable", body, err)
		}
	}
}

// FuzzNormalize guards robustness: any input either is refused or yields
// valid JSON, and never panics.
func FuzzNormalize(f *testing.F) {
	for _, tc := range loadCorpus(f) {
		f.Add(tc.Input)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		out, err := Append(nil, body)
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
		if !tc.Throws {
			bodies = append(bodies, tc.Input)
			total += int64(len(tc.Input))
		}
	}
	var buf []byte
	b.Run("corpus", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(total / int64(len(bodies)))
		i := 0
		for b.Loop() {
			out, err := Append(buf[:0], bodies[i%len(bodies)])
			if err != nil {
				b.Fatal(err)
			}
			buf = out
			i++
		}
	})
	text, err := os.ReadFile("testdata/corpus/in_text.json")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("text-message", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(text)))
		for b.Loop() {
			out, err := Append(buf[:0], text)
			if err != nil {
				b.Fatal(err)
			}
			buf = out
		}
	})
}

// TestKnownKeys guards the table of Meta's keys: every listed key is found
// and written camelCased, and keys that differ from a listed one in any
// single byte, or in length, are not taken for it.
func TestKnownKeys(t *testing.T) {
	t.Parallel()
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
