package payload

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// makeBatch builds a Kapso batch envelope of n messages in one
// conversation, as compact JSON.
func makeBatch(n int, idPrefix string) []byte {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"message":{"id":"%s%d","type":"text","text":{"body":"msg %d"}},`+
			`"conversation":{"id":"conv_123"},"phone_number_id":"123456789012345"}`, idPrefix, i, i)
	}
	return []byte(`{"type":"whatsapp.message.received","batch":true,"data":[` + strings.Join(items, ",") +
		`],"batch_info":{"size":` + strconv.Itoa(n) + `,"window_ms":5000,"first_sequence":101,"conversation_id":"conv_123"}}`)
}

// dataItems extracts the raw items of body's data with encoding/json,
// independently of the scanner.
func dataItems(t *testing.T, body []byte) []json.RawMessage {
	t.Helper()
	var env struct{ Data []json.RawMessage }
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	return env.Data
}

// TestParseBatchScanner guards the scanner against encoding/json on
// awkward but valid envelopes: escaped keys, white space, nested arrays.
func TestParseBatchScanner(t *testing.T) {
	t.Parallel()
	bodies := []string{
		`{"type":"e","data":[{"a":[1,2,{"b":"]}"}]},{"c":"\"}"}]}`,
		" {\n \"d\\u0061ta\" : [ {\"x\":null} , {\"y\":true} ] , \"type\":\"e\"} ",
		`{"data":[{"a":1}],"data":[{"b":2},{"c":3}]}`,
	}
	for i, b := range bodies {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			env, bad := ParseBatch([]byte(b), 10)
			if bad != nil {
				t.Fatalf("rejected: %s", bad.Message)
			}
			want := dataItems(t, []byte(b))
			if len(env.Items) != len(want) {
				t.Fatalf("%d items, want %d", len(env.Items), len(want))
			}
			for j, it := range env.Items {
				if got := b[it.Start:it.End]; got != string(want[j]) {
					t.Errorf("item %d = %q, want %q", j, got, want[j])
				}
			}
		})
	}
}

// BenchmarkParseBatch measures envelope parsing for 1, 10 and 100 items.
func BenchmarkParseBatch(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		body := makeBatch(n, "wamid.bench.")
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, bad := ParseBatch(body, 1000); bad != nil {
					b.Fatal(bad.Message)
				}
			}
		})
	}
}

// FuzzParseBatch guards the batch scanner: no body panics, and an
// accepted batch's items are exactly the elements of its "data" array as
// encoding/json reads them, each a JSON object.
func FuzzParseBatch(f *testing.F) {
	for _, seed := range []string{
		string(makeBatch(2, "wamid.seed.")), `{"data":[{}]}`, `{"data":[]}`, `{"data":{}}`, `[]`, `{"data":[{"a":"]}"}],"data":[{"b":1}]}`,
		`{"d\u0061ta":[{"x":null}]}`, `{"data":[{"a":[[[[]]]]}]}`, "{\"data\":[{\"t\":\"\xff\"}]}", `{"data":[1]}`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		env, bad := ParseBatch(body, 1000)
		if bad != nil {
			return
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal(body, &top); err != nil {
			t.Fatalf("accepted a body encoding/json rejects: %v", err)
		}
		var items []json.RawMessage
		if err := json.Unmarshal(top["data"], &items); err != nil {
			t.Fatalf("accepted a data encoding/json cannot read as an array: %v", err)
		}
		if len(items) != len(env.Items) {
			t.Fatalf("%d items, encoding/json sees %d", len(env.Items), len(items))
		}
		for i, it := range env.Items {
			got := body[it.Start:it.End]
			if !bytes.Equal(got, items[i]) || got[0] != '{' {
				t.Fatalf("item %d = %q, encoding/json sees %q", i, got, items[i])
			}
		}
	})
}

// TestEventNames guards where an event's name comes from: the header
// first, then a body's top-level type, then a raw Meta payload's change
// fields (each once, in order); anything else has no name.
func TestEventNames(t *testing.T) {
	t.Parallel()
	meta := `{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{}},` +
		`{"field":"account_alerts","value":{}}]},{"changes":[{"value":{},"field":"messages"}]}]}`
	for _, tc := range []struct {
		name, header, body string
		want               []string
	}{
		{"header", "whatsapp.message.received", `{"type":"other"}`, []string{"whatsapp.message.received"}},
		{"body type", "", `{"id":"evt_1","type":"message.report","data":{}}`, []string{"message.report"}},
		{"meta fields", "", meta, []string{"messages", "account_alerts"}},
		{"type not a string", "", `{"type":3}`, nil},
		{"nothing", "", `{"message":{"id":"x"}}`, nil},
		{"not JSON", "", `form=1`, nil},
		{"empty", "", ``, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := EventNames(tc.header, []byte(tc.body)); !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestContentKey guards which deliveries get a content key: Kapso message
// events with a message id, keyed by event so status events of one
// message stay distinct.
func TestContentKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		event, body, want string
	}{
		{"whatsapp.message.received", `{"message":{"id":"wamid.1"}}`, "whatsapp.message.received:wamid.1"},
		{"whatsapp.message.delivered", `{"message":{"type":"text","id":"wamid.1"}}`, "whatsapp.message.delivered:wamid.1"},
		{"whatsapp.message.received", `{"message":{"id":"wamid.\u0031"}}`, "whatsapp.message.received:wamid.1"},
		{"whatsapp.message.received", `{"message":{"id":""}}`, ""},
		{"whatsapp.message.received", `{"message":{"id":7}}`, ""},
		{"whatsapp.message.received", `{"conversation":{"id":"conv"}}`, ""},
		{"whatsapp.message.received", `not json`, ""},
		{"whatsapp.message.received", `{"message":{"id":"wamid.1"`, ""},
		{"whatsapp.conversation.created", `{"message":{"id":"wamid.1"}}`, ""},
		{"", `{"message":{"id":"wamid.1"}}`, ""},
		{"message.incoming", `{"id":"evt_1","type":"message.incoming","data":{"object":{"id":"msg_1"}}}`, "envelope:evt_1"},
		{"message.report", `{"id":"evt_2","type":"message.report","data":{"object":{}}}`, "envelope:evt_2"},
		{"message.report", `{"id":"evt_2","type":"message.report","data":{"other":{}}}`, ""},
		{"message.report", `{"id":"evt_2","data":{"object":{}}}`, ""},
		{"message.report", `{"id":"","type":"message.report","data":{"object":{}}}`, ""},
		{"message.report", `{"id":"msg_1","type":"message.report","data":{"object":{}}}`, ""},
		{"message.report", `{"id":"evt_","type":"message.report","data":{"object":{}}}`, ""},
	}
	for _, tc := range tests {
		t.Run(tc.event+" "+tc.body, func(t *testing.T) {
			if got := ContentKey(tc.event, []byte(tc.body)); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestConversationKey guards the default order key: Kapso's conversation
// id, else an event envelope's customer, else a raw Meta payload's
// business number and customer (wa_id, then the BSUID), else none.
func TestConversationKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, body, want string }{
		{"kapso", `{"conversation":{"id":"c1"},"message":{"id":"m"}}`, "conversation:c1"},
		{"meta wa_id", `{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"P"},"contacts":[{"wa_id":"W"}]}}]}]}`, "meta:P:W"},
		{"meta bsuid", `{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"P"},"contacts":[{"user_id":"U"}]}}]}]}`, "meta:P:U"},
		{"meta status", `{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"P"},"statuses":[{"recipient_id":"R"}]}}]}]}`, "meta:P:R"},
		{"incoming: its sender", `{"id":"evt_1","type":"message.incoming","data":{"object":{"from":{"phone_number":"+1555","customer_id":"cus_1"}}}}`, "customer:cus_1"},
		{"report: its recipient", `{"id":"evt_2","type":"message.report","data":{"object":{"status":"read","recipient":{"customer_id":"cus_2"}}}}`, "customer:cus_2"},
		{"form: its customer", `{"id":"evt_3","type":"form.submitted","data":{"object":{"customer":{"customer_id":"cus_3"}}}}`, "customer:cus_3"},
		{"report: phone only", `{"id":"evt_4","type":"message.report","data":{"object":{"recipient":{"phone_number":"+1555"}}}}`, "phone:+1555"},
		{"envelope, no customer", `{"id":"evt_5","type":"message.report","data":{"object":{}}}`, ""},
		{"none", `{"message":{"id":"m"}}`, ""},
		{"not JSON", `x`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ConversationKey([]byte(tc.body)); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
