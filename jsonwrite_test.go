package webhookguard

import (
	"encoding/binary"
	"testing"
)

// TestWordScanners guards the eight-bytes-at-a-time string scanners
// against the byte tables they stand for: a missed byte would copy a
// quote, a backslash or invalid UTF-8 into the output unchecked.
func TestWordScanners(t *testing.T) {
	for _, tc := range []struct {
		name  string
		word  func(uint64) bool
		table func(byte) bool
	}{
		{"str copy", hasStrSpecial8, func(c byte) bool { return strCopySpecial[c] }},
		{"skip string", hasStrEnd8, func(c byte) bool { return strSpecial[c] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for c := range 256 {
				for pos := range 8 {
					w := []byte("abcdefgh")
					w[pos] = byte(c)
					if got, want := tc.word(binary.LittleEndian.Uint64(w)), tc.table(byte(c)); got != want {
						t.Fatalf("byte %#x at %d: got %v, want %v", c, pos, got, want)
					}
				}
			}
		})
	}
}
