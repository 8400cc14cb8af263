package webhookguard

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// errorBody is what every refusal carries, so senders and operators can
// tell a bad signature from a body that is too large without reading logs.
type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
}

// writeJSONError answers the request itself rather than returning a Caddy
// error: Caddy would send an empty body, and senders deserve to know what
// was wrong. The message never contains a secret or an expected signature.
func writeJSONError(w http.ResponseWriter, status int, code, message string) error {
	return writeJSON(w, status, errorBody{Error: code, Message: message})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", strconv.Itoa(len(b)))
	hdr.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err = w.Write(b)
	return err
}
