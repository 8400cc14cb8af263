package jsonscan

import (
	"errors"
	"strings"
	"testing"
)

// TestFieldPathAndStringValue guards what dedupe and unbatching read out
// of a body: a nested field found at any position, escapes decoded, and a
// missing field, a non-object on the way or a non-string reported as
// absent rather than guessed.
func TestFieldPathAndStringValue(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body string
		path       []string
		want       string
		found      bool
	}{
		{"nested", `{"a":1,"message":{"type":"text","id":"wamid.1"}}`, []string{"message", "id"}, "wamid.1", true},
		{"escaped", `{"message":{"id":"wa\u006did\"x"}}`, []string{"message", "id"}, `wamid"x`, true},
		{"white space", " { \"message\" : { \"id\" : \"x\" } } ", []string{"message", "id"}, "x", true},
		{"missing", `{"message":{"type":"text"}}`, []string{"message", "id"}, "", false},
		{"not an object", `{"message":["id"]}`, []string{"message", "id"}, "", false},
		{"not a string", `{"message":{"id":12}}`, []string{"message", "id"}, "", false},
		{"malformed", `{"message":{"id":"x"`, []string{"message", "id"}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.body)
			v, ok := FieldPath(b, tc.path...)
			got := ""
			if ok {
				got, ok = StringValue(b, v)
			}
			if ok != tc.found || got != tc.want {
				t.Fatalf("got %q, %v; want %q, %v", got, ok, tc.want, tc.found)
			}
		})
	}
}

// TestSkipValueRefusesBadInput guards the scanner's contract on hostile
// bodies: malformed JSON and nesting beyond MaxDepth are errors, never a
// panic or a wrong end, and a valid value's end is exact.
func TestSkipValueRefusesBadInput(t *testing.T) {
	t.Parallel()
	deep := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	for _, body := range []string{``, `{`, `{"a"}`, `{"a":}`, `[1,]`, `"abc`, "\"a\x01\"", `tru`, `01`, `1.`, `-`, deep} {
		if _, err := SkipValue([]byte(body), 0); !errors.Is(err, ErrMalformed) {
			t.Errorf("%.40q: err=%v, want ErrMalformed", body, err)
		}
	}
	for body, end := range map[string]int{`{"a":[1,2,{"b":null}]} `: 22, `"x\"y"z`: 6, `-1.5e3,`: 6, `true]`: 4} {
		if got, err := SkipValue([]byte(body), 0); err != nil || got != end {
			t.Errorf("%q: end %d, %v; want %d", body, got, err, end)
		}
	}
	items, err := ArrayItems([]byte(`[ {"a":1}, "b" ,3 ]`), 0)
	if err != nil || len(items) != 3 || items[1] != (Span{Start: 11, End: 14}) {
		t.Fatalf("ArrayItems: %v, %v", items, err)
	}
}
