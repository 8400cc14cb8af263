package webhookguard

import (
	"bytes"

	"go.uber.org/zap"

	"github.com/webhookguard/webhookguard/internal/metanorm"
)

// normalizeFormatMeta is the one format normalize knows: raw Meta
// WhatsApp payloads, rewritten by internal/metanorm.
const normalizeFormatMeta = "meta"

// attachBody puts the body to forward on the request: the received bytes,
// or their normalized form when normalize meta is on. A rewritten body
// loses the signature headers (they no longer match) and is re-signed
// with forward_secret when one is set.
func (d *delivery) attachBody() {
	if d.h.Normalize != normalizeFormatMeta {
		d.body.attach(d.r, d.bodyReader())
		return
	}
	out, err := normalizeInto(d.body.bytes())
	if err != nil {
		d.h.logger.Warn("meta payload forwarded unchanged: it cannot be normalized",
			zap.String("reason", err.Error()), zap.String("remote_addr", d.r.RemoteAddr))
		d.r.Header.Set(headerNormalized, "false")
		d.body.attach(d.r, d.bodyReader())
		return
	}
	out.attach(d.r, d.bodyReader())
	out.release() // the request's readers hold it from here
	d.r.Header.Set("Content-Type", "application/json")
	d.r.Header.Set(headerNormalized, "true")
	d.h.dropSignatures(d.r.Header)
	if d.h.forwardKey != nil {
		d.r.Header.Set(headerKapsoSignature, d.h.forwardKey.sign(out.bytes()))
	}
}

// normalizeInto normalizes into a pooled buffer, recycled like a body.
func normalizeInto(body []byte) (*pooledBody, error) {
	pb := getPooledBody()
	out, err := metanorm.Append(pb.buf.AvailableBuffer(), body)
	if err != nil {
		pb.release()
		return nil, err
	}
	pb.buf = *bytes.NewBuffer(out) // the same array when it had the room
	return pb, nil
}
