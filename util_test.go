package webhookguard

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func writeFile(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o600)
}

// errorCode decodes a JSON refusal and returns its error code, failing
// the test when the body is not the documented shape.
func errorCode(t testing.TB, body []byte) (code, message string) {
	t.Helper()
	var e struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" || e.Message == "" {
		t.Fatalf("want a JSON error body with error and message, got %q", body)
	}
	return e.Error, e.Message
}

// benchHandler provisions h for an in-process benchmark, quiet (the test
// logger would print every delivery line, which would be most of what is
// measured; bench/ measures the whole thing with Caddy's own logger), and
// cleans it up when the benchmark ends.
func benchHandler(b *testing.B, h *Handler) *Handler {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	h.outsideConfig = true
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	h.logger = zap.NewNop()
	if h.Dedupe != nil {
		h.Dedupe.logger = h.logger
	}
	b.Cleanup(func() { _ = h.Cleanup() })
	return h
}

// drainingNext is a next handler that reads the body and answers 200;
// with closeBody it also closes the body, as a transport does.
func drainingNext(closeBody bool) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		if closeBody {
			_ = r.Body.Close()
		}
		w.WriteHeader(http.StatusOK)
		return nil
	})
}
