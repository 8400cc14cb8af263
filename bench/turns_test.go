package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestServeNormalizeTurns guards the Go side of bench/'s SDK comparison:
// each turn is answered with a plausible time per payload, and a turn it
// does not understand stops it with an error instead of a made-up figure.
func TestServeNormalizeTurns(t *testing.T) {
	const corpusDir = "../internal/metanorm/testdata"
	var out bytes.Buffer
	if err := serveNormalizeTurns(corpusDir, strings.NewReader("corpus 20\ntext 20\n"), &out); err != nil {
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
		if err := serveNormalizeTurns(corpusDir, strings.NewReader(bad), io.Discard); err == nil {
			t.Errorf("turn %q was accepted", bad)
		}
	}
}
