package webhookguard

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sample deliveries for `caddy webhook send`, shaped like the documented
// Kapso v2 events and Meta payloads. Message ids are random so that two
// runs are two events, not duplicates.

func randomID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func randomUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

const sampleConversation = `{"id":"conv_test_123","phone_number":"+15551234567","status":"active",` +
	`"last_active_at":"%[1]s","created_at":"%[1]s","updated_at":"%[1]s","metadata":{},` +
	`"phone_number_id":"123456789012345"}`

// kapsoEvents are the events kapsoSample builds.
var kapsoEvents = []string{"whatsapp.message.received", "whatsapp.message.sent", "whatsapp.message.delivered",
	"whatsapp.message.read", "whatsapp.message.failed", "whatsapp.conversation.created", "whatsapp.conversation.ended",
	"whatsapp.conversation.inactive", "whatsapp.phone_number.created"}

// kapsoSample returns the body of a single Kapso v2 delivery of event.
func kapsoSample(event string, now time.Time) []byte {
	ts := strconv.FormatInt(now.Unix(), 10)
	iso := now.UTC().Format(time.RFC3339)
	conv := fmt.Sprintf(sampleConversation, iso)
	id := randomID("wamid.test.")
	message := func(direction, status, processing, extra string) string {
		return fmt.Sprintf(`{"id":%q,"timestamp":%q,"type":"text","text":{"body":"Hello from caddy webhook send"},`+
			`"kapso":{"direction":%q,"status":%q,"processing_status":%q,"origin":"cloud_api","has_media":false%s}}`,
			id, ts, direction, status, processing, extra)
	}
	statuses := func(states ...string) string {
		parts := make([]string, len(states))
		for i, s := range states {
			parts[i] = fmt.Sprintf(`{"id":%q,"status":%q,"timestamp":%q,"recipient_id":"15551234567"}`, id, s, ts)
		}
		return `,"statuses":[` + strings.Join(parts, ",") + `]`
	}
	var body string
	switch event {
	case "whatsapp.message.sent":
		body = `{"message":` + message("outbound", "sent", "completed", statuses("sent")) + `,"conversation":` + conv +
			`,"is_new_conversation":false,"phone_number_id":"123456789012345"}`
	case "whatsapp.message.delivered", "whatsapp.message.read":
		state := strings.TrimPrefix(event, "whatsapp.message.")
		body = `{"message":` + message("outbound", state, "completed", statuses("sent", state)) + `,"conversation":` + conv +
			`,"is_new_conversation":false,"phone_number_id":"123456789012345"}`
	case "whatsapp.message.failed":
		failed := fmt.Sprintf(`,"statuses":[{"id":%q,"status":"failed","timestamp":%q,"recipient_id":"15551234567",`+
			`"errors":[{"code":131047,"title":"Re-engagement message","message":"More than 24 hours have passed since the recipient last replied"}]}]`, id, ts)
		body = `{"message":` + message("outbound", "failed", "completed", failed) + `,"conversation":` + conv +
			`,"is_new_conversation":false,"phone_number_id":"123456789012345"}`
	case "whatsapp.conversation.created", "whatsapp.conversation.ended":
		body = `{"conversation":` + conv + `,"phone_number_id":"123456789012345"}`
	case "whatsapp.conversation.inactive":
		body = `{"conversation":` + conv + `,"since_message":{"id":"msg_anchor","whatsapp_message_id":` + strconv.Quote(id) +
			`,"direction":"inbound","created_at":` + strconv.Quote(iso) + `},"inactivity":{"minutes":60},"phone_number_id":"123456789012345"}`
	case "whatsapp.phone_number.created":
		body = `{"phone_number_id":"123456789012345","project":{"id":` + strconv.Quote(randomUUID()) +
			`},"customer":{"id":` + strconv.Quote(randomUUID()) + `}}`
	default:
		body = `{"message":` + message("inbound", "received", "pending", `,"content":"Hello from caddy webhook send"`) +
			`,"conversation":` + conv + `,"is_new_conversation":false,"phone_number_id":"123456789012345"}`
	}
	return []byte(body)
}

// kapsoBatchSample returns a batched delivery of n received messages in
// one conversation.
func kapsoBatchSample(n int, now time.Time) []byte {
	items := make([]string, n)
	iso := now.UTC().Format(time.RFC3339)
	for i := range items {
		items[i] = fmt.Sprintf(`{"message":{"id":%q,"timestamp":"%d","type":"text","text":{"body":"Batch message %d"},`+
			`"kapso":{"direction":"inbound","status":"received","processing_status":"pending","origin":"cloud_api",`+
			`"phone_number":"+15551234567","phone_number_id":"123456789012345"}},"conversation":%s,`+
			`"is_new_conversation":false,"phone_number_id":"123456789012345"}`,
			randomID("wamid.test."), now.Unix()+int64(i), i+1, fmt.Sprintf(sampleConversation, iso))
	}
	return []byte(fmt.Sprintf(`{"type":"whatsapp.message.received","batch":true,"data":[%s],`+
		`"batch_info":{"size":%d,"window_ms":5000,"first_sequence":1,"last_sequence":%d,"conversation_id":"conv_test_123"}}`,
		strings.Join(items, ","), n, n))
}

// metaSample returns a raw Meta payload: a text message, or a delivered
// status when kind is "status".
func metaSample(kind string, now time.Time) []byte {
	value := fmt.Sprintf(`{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881",`+
		`"phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Test User"},"wa_id":"16505551234"}],`+
		`"messages":[{"from":"16505551234","id":%q,"timestamp":"%d","type":"text","text":{"body":"Hello from caddy webhook send"}}]}`,
		randomID("wamid.test."), now.Unix())
	if kind == "status" {
		value = fmt.Sprintf(`{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881",`+
			`"phone_number_id":"106540352242922"},"statuses":[{"id":%q,"status":"delivered","timestamp":"%d",`+
			`"recipient_id":"16505551234","pricing":{"billable":true,"pricing_model":"PMP","type":"regular","category":"utility"}}]}`,
			randomID("wamid.test."), now.Unix())
	}
	return []byte(`{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":` +
		value + `,"field":"messages"}]}]}`)
}

// platformEvents are the events of the second WhatsApp platform (seed
// 003), which wraps each in an envelope and signs it like Kapso.
var platformEvents = []string{"message.incoming", "message.report", "form.submitted"}

// platformSample returns one event envelope of the second platform:
// message.incoming (a customer wrote), message.report (a sent message
// was delivered) or form.submitted.
func platformSample(event string, now time.Time) []byte {
	ts := now.Unix()
	customer := `{"customer_id":"cus_test_123","phone_number":"+15551234567","name":"Test User"}`
	var object string
	switch event {
	case "message.report":
		object = fmt.Sprintf(`{"id":%q,"wamid":%q,"status":"delivered","recipient":%s,"created_at":%d}`,
			randomID("msg_"), randomID("wamid.test."), customer, ts)
	case "form.submitted":
		object = fmt.Sprintf(`{"id":%q,"form_id":"form_test_1","customer":%s,`+
			`"answers":[{"question":"Name","answer":"Test User"}],"submitted_at":%d}`, randomID("fsub_"), customer, ts)
	default:
		event = "message.incoming"
		object = fmt.Sprintf(`{"id":%q,"wamid":%q,"type":"text","text":{"body":"Hello from caddy webhook send"},`+
			`"from":%s,"to":{"phone_number":"+15550783881"},"created_at":%d}`, randomID("msg_"), randomID("wamid.test."), customer, ts)
	}
	return fmt.Appendf(nil, `{"id":%q,"type":%q,"api_version":"2026-02-04","created_at":%d,"liveMode":false,"data":{"object":%s}}`,
		randomID("evt_"), event, ts, object)
}
