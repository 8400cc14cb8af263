package webhookguard

import (
	"testing"
)

// TestWordScanners guards the eight-bytes-at-a-time string scanners
// against the byte tables they stand for: a byte missed would copy a
// quote, a backslash or invalid UTF-8 into the output unchecked, and a
// wrong position would cut a string short. Every byte value is tried at
// every position, alone and after another special byte (where a borrow
// between bytes could mislead the word arithmetic).
func TestWordScanners(t *testing.T) {
	for _, tc := range []struct {
		name  string
		scan  func([]byte, int) int
		table *[256]bool
	}{
		{"str copy", strCopyEnd, &strCopySpecial},
		{"skip string", strEnd, &strSpecial},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := func(b []byte) int {
				for i, c := range b {
					if tc.table[c] {
						return i
					}
				}
				return len(b)
			}
			seconds := []byte{0x00, 0x01, 0x1f, 0x20, '"', '\\', 'a', 0x7f, 0x80, 0xff}
			for c := range 256 {
				for pos := range 19 {
					for _, c2 := range seconds {
						for pos2 := pos + 1; pos2 <= 19; pos2++ {
							b := []byte("abcdefghijklmnopqrs") // two words and a tail
							b[pos] = byte(c)
							if pos2 < 19 {
								b[pos2] = c2
							}
							if got := tc.scan(b, 0); got != want(b) {
								t.Fatalf("%q: scanner stops at %d, table at %d", b, got, want(b))
							}
						}
					}
				}
			}
		})
	}
}
