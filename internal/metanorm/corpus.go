package metanorm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// CorpusCase is one conformance payload with the SDK's answer for it: the
// corpus in testdata/corpus and the goldens in testdata/golden, which the
// real SDK wrote (testdata/generate). The tests of this package and of
// the gateway, and bench/, read it.
type CorpusCase struct {
	Name   string
	Input  []byte
	Golden []byte
	Throws bool // the SDK throws on Input: Append must refuse it
}

// ReadCorpus reads every payload of dir/corpus with its golden output in
// dir/golden.
func ReadCorpus(dir string) ([]CorpusCase, error) {
	files, err := filepath.Glob(filepath.Join(dir, "corpus", "*.json"))
	if err != nil || len(files) < 40 {
		return nil, fmt.Errorf("the conformance corpus needs at least 40 payloads, found %d (%v)", len(files), err)
	}
	var cases []CorpusCase
	for _, f := range files {
		name := filepath.Base(f)
		golden, err := os.ReadFile(filepath.Join(dir, "golden", name))
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
		cases = append(cases, CorpusCase{Name: name, Input: input, Golden: golden, Throws: probe.Throws != nil})
	}
	return cases, nil
}

// TokenDiff compares two JSON texts as token streams (same structure, the
// same keys in the same order, the same strings, numbers equal as
// JavaScript holds them, float64) and describes the first difference, or
// returns "" when there is none.
func TokenDiff(got, want []byte) string {
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
