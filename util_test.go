package webhookguard

import (
	"encoding/json"
	"os"
	"testing"
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
