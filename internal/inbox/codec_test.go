package inbox

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"
)

// TestEventCodecRoundTrip guards the stored form of events: every field
// the dispatcher and the history read comes back as written, zero times
// stay zero, and a header with several values keeps them in order.
func TestEventCodecRoundTrip(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 123456789)
	for _, tc := range []struct {
		name string
		e    Event
	}{
		{"fresh", Event{ID: "evt_1", Queue: "kapso", OrderKey: "conv_1", Seq: 7, Method: "POST", URI: "/hook?x=1",
			Host: "example.com", RemoteAddr: "10.0.0.1:5000", Header: http.Header{"Content-Type": {"application/json"},
				"X-Multi": {"a", "", "c"}}, ReceivedAt: now, State: Pending, NextAt: now, BodySum: 0xdeadbeef, summed: true}},
		{"settled", Event{ID: "evt_2", Queue: "q", Name: "whatsapp.message.received", Key: "k1", Seq: 1 << 40, Pos: 1<<40 + 5,
			Method: "POST", URI: "/", ReceivedAt: now, State: Dead, Manual: true, Attempts: 9, NextAt: now.Add(time.Hour),
			LastStatus: 503, LastError: "timeout: ünïcode", DeliveredAt: now.Add(time.Minute),
			Log: []Attempt{{N: 1, At: now, Status: 503, Duration: 1500 * time.Microsecond},
				{N: 2, At: now.Add(time.Second), Manual: true, Error: "dial tcp: refused", Response: `{"error":"busy"}`},
				{N: 3, At: now.Add(2 * time.Second), Late: true, Instance: "host/42", Status: 200}},
			Keys: []string{"default\x00\x01\x02", "other"}, KeysUntil: now.Add(24 * time.Hour), summed: true}},
		{"empty", Event{summed: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeEvent(encodeEvent(&tc.e))
			if err != nil {
				t.Fatal(err)
			}
			times := []*time.Time{&got.ReceivedAt, &got.NextAt, &got.DeliveredAt, &got.KeysUntil,
				&tc.e.ReceivedAt, &tc.e.NextAt, &tc.e.DeliveredAt, &tc.e.KeysUntil}
			for i := range got.Log {
				times = append(times, &got.Log[i].At, &tc.e.Log[i].At)
			}
			for _, p := range times {
				if !p.IsZero() {
					*p = p.UTC()
				}
			}
			if !reflect.DeepEqual(*got, tc.e) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", *got, tc.e)
			}
		})
	}
}

// TestEventCodecRejectsDamage guards reading a damaged record: every
// truncation and a wrong version is an error, never a panic or a
// half-read event.
func TestEventCodecRejectsDamage(t *testing.T) {
	t.Parallel()
	b := encodeEvent(&Event{ID: "evt_1", Queue: "q", Header: http.Header{"A": {"b"}}, ReceivedAt: time.Now()})
	for n := range len(b) {
		if _, err := decodeEvent(b[:n]); !errors.Is(err, errCorrupt) {
			t.Fatalf("truncated to %d bytes: %v", n, err)
		}
	}
	if _, err := decodeEvent(append([]byte{99}, b[1:]...)); !errors.Is(err, errCorrupt) {
		t.Fatalf("unknown version: %v", err)
	}
	if _, err := decodeEvent(append(b, 0)); !errors.Is(err, errCorrupt) {
		t.Fatalf("trailing byte: %v", err)
	}
	// The checksum finds a change anywhere, even one that would decode
	// (a letter of the id, say).
	for i := range b {
		for _, flip := range []byte{0x01, 0x80} {
			bad := bytes.Clone(b)
			bad[i] ^= flip
			if _, err := decodeEvent(bad); !errors.Is(err, errCorrupt) {
				t.Fatalf("byte %d xor %#x: %v", i, flip, err)
			}
		}
	}
}

// TestEventCodecReadsVersion3 guards files written by the previous
// build: a version 3 record (no keys, no checksums) still decodes.
func TestEventCodecReadsVersion3(t *testing.T) {
	t.Parallel()
	v3, _ := hex.DecodeString("03056576745f3301711977686174736170702e6d6573736167652e7265636569766564026b330e636f6e766572" +
		"736174696f6e3a6304504f5354012f00000964656c69766572656400030300029003aab4feb0d39df1fa31aab4feb0d39df1fa31aab4feb0d39d" +
		"f1fa310101410101620102aab4feb0d39df1fa3100900380897a00026f6b")
	e, err := decodeEvent(v3)
	if err != nil {
		t.Fatal(err)
	}
	if e.ID != "evt_3" || e.OrderKey != "conversation:c" || e.State != Delivered || len(e.Log) != 1 ||
		e.Log[0].Response != "ok" || e.Header.Get("A") != "b" || e.summed {
		t.Fatalf("version 3 record read as %+v", e)
	}
}

// FuzzDecodeEvent guards the decoder against any bytes: no panic, and
// what decodes encodes back to the same event.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(encodeEvent(&Event{ID: "evt_1", Queue: "q", Header: http.Header{"A": {"b", "c"}}, ReceivedAt: time.Unix(1, 0)}))
	f.Add([]byte{codecVersion, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEvent(b)
		if err != nil {
			return
		}
		again, err := decodeEvent(encodeEvent(e))
		if err == nil {
			again.summed = e.summed // an older record, written anew, gains its checksum
		}
		if err != nil || !reflect.DeepEqual(e, again) {
			t.Fatalf("re-encoding changed the event: %v", err)
		}
	})
}
