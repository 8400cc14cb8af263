package main

import (
	"bufio"
	"fmt"
	"io"
	"time"

	"github.com/webhookguard/webhookguard/internal/metanorm"
)

// serveNormalizeTurns times the normalizer in the turns compareWithSDK asks for,
// one line each: "corpus MS" or "text MS" normalizes the payloads the SDK
// accepts, or the text message, for at least MS milliseconds and answers
// the mean time per payload in ns. The Kapso SDK gets the same
// turns in between: on a machine whose speed changes from one second to
// the next, only turns a fraction of a second apart can be compared.
func serveNormalizeTurns(corpusDir string, in io.Reader, out io.Writer) error {
	cases, err := metanorm.ReadCorpus(corpusDir)
	if err != nil {
		return err
	}
	var corpus [][]byte
	var text []byte
	for _, tc := range cases {
		if !tc.Throws {
			corpus = append(corpus, tc.Input)
		}
		if tc.Name == "in_text.json" {
			text = tc.Input
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
			out, err := metanorm.Append((*buf)[:0], bodies[ops%len(bodies)])
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
