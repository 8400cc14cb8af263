package webhookguard

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/webhookguard/webhookguard/internal/metanorm"
)

// metanormTestdata holds the normalizer's conformance corpus and goldens.
const metanormTestdata = "internal/metanorm/testdata"

// TestNormalizeThroughCaddy guards the feature end to end: every corpus
// payload, signed with a Meta app secret and sent through a real Caddy,
// reaches the upstream as the SDK's output, re-signed with the forward
// secret and stripped of the Meta signature; payloads the SDK rejects and
// bodies that are not JSON objects arrive unchanged and marked so.
func TestNormalizeThroughCaddy(t *testing.T) {
	up := newUpstream(t)
	c := startCaddy(t, `
	webhook_guard {
		verify meta meta-app-secret
		normalize meta
		forward_secret fwd-secret
	}
	reverse_proxy `+up.Addr())
	cases, err := metanorm.ReadCorpus(metanormTestdata)
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases,
		metanorm.CorpusCase{Name: "array body", Input: []byte(`[{"object":"whatsapp_business_account"}]`), Throws: true},
		metanorm.CorpusCase{Name: "not JSON", Input: []byte(`object=whatsapp`), Throws: true})
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			before := up.count()
			status, _, resp := post(t, c.URL, tc.Input, map[string]string{
				"X-Hub-Signature-256": "sha256=" + signHex("meta-app-secret", tc.Input),
				"Content-Type":        "text/plain",
			})
			if status != 200 || up.count() != before+1 {
				t.Fatalf("status %d %s, forwarded %d", status, resp, up.count()-before)
			}
			got := up.requests()[before]
			if tc.Throws {
				if !bytes.Equal(got.Body, tc.Input) || got.Header.Get("X-Webhook-Normalized") != "false" {
					t.Fatalf("want the body unchanged with X-Webhook-Normalized: false, got %q (%q)",
						got.Header.Get("X-Webhook-Normalized"), got.Body)
				}
				if got.Header.Get("X-Hub-Signature-256") == "" {
					t.Error("the original signature was dropped from an unchanged body")
				}
				return
			}
			if diff := metanorm.TokenDiff(got.Body, tc.Golden); diff != "" {
				t.Fatalf("upstream body differs from the SDK's output: %s\n got: %s", diff, got.Body)
			}
			want := map[string]string{
				"X-Webhook-Normalized": "true",
				"Content-Type":         "application/json",
				"Content-Length":       fmt.Sprint(len(got.Body)),
				"X-Webhook-Signature":  signHex("fwd-secret", got.Body),
				"X-Hub-Signature-256":  "",
				"X-Webhook-Verified":   "meta",
			}
			for k, v := range want {
				if g := got.Header.Get(k); g != v {
					t.Errorf("header %s = %q, want %q", k, g, v)
				}
			}
		})
	}
	if !strings.Contains(c.Logs(), "forwarded unchanged") {
		t.Error("pass-through of a body that cannot be normalized was not logged")
	}
}
