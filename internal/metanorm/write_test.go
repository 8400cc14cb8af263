package metanorm

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestShortDecimal guards the float shortcut of appendJSNumber: for every
// decimal it takes, it must print what the float conversion prints, and it
// must leave exponents, long fractions and tiny values to the conversion.
func TestShortDecimal(t *testing.T) {
	viaFloat := func(num string) string {
		f, err := strconv.ParseFloat(num, 64)
		if err != nil {
			t.Fatalf("%s: %v", num, err)
		}
		return string(appendJSFloat(nil, f))
	}
	fixed := []string{"1.0", "9.50", "0.1", "-0.0", "0.0", "-1.25", "37.483307", "-122.148981", "0.000001",
		"0.0000010", "123456789012345.0", "12345678901234.5", "100.000", "0.100000000000000"}
	declined := []string{"1e2", "1E+21", "1.5e300", "0.0000001", "3.14159265358979323846", "1234567890123456.0",
		"0.1234567890123456", "00.5", "1.", ".5", "-", "12", "1.2.3", "7.000000000000001"}
	for _, num := range fixed {
		got, ok := appendShortDecimal(nil, []byte(num))
		if want := viaFloat(num); !ok || string(got) != want {
			t.Errorf("%s: got %q %v, want %q", num, got, ok, want)
		}
	}
	for _, num := range declined {
		if got, ok := appendShortDecimal(nil, []byte(num)); ok {
			t.Errorf("%s: taken, printed %q", num, got)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	taken := 0
	for range 200000 {
		whole := "0"
		if rng.IntN(3) > 0 {
			whole = strconv.FormatUint(100_000_000_000+rng.Uint64N(900_000_000_000), 10)[:1+rng.IntN(12)]
		}
		frac := make([]byte, 1+rng.IntN(16))
		for i := range frac {
			frac[i] = byte('0' + rng.IntN(10))
			if rng.IntN(3) == 0 {
				frac[i] = '0'
			}
		}
		num := whole + "." + string(frac)
		if rng.IntN(2) == 0 {
			num = "-" + num
		}
		if got, ok := appendShortDecimal(nil, []byte(num)); ok {
			taken++
			if want := viaFloat(num); string(got) != want {
				t.Fatalf("%s: got %q, want %q", num, got, want)
			}
		}
	}
	if taken < 50000 {
		t.Fatalf("only %d of 200000 random decimals took the shortcut", taken)
	}
}
