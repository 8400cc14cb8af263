package metanorm

import (
	"encoding/binary"
	"strings"
)

// The same few hundred keys make up nearly every Meta payload, and each
// one is camelCased (display_phone_number becomes displayPhoneNumber) in
// every copy written. Their converted, quoted forms are worked out once,
// so that writing a known key is a table lookup instead of a scan and a
// conversion. Unknown keys take the general path; the output is the same.

// metaKeyNames are the object keys of Meta's WhatsApp webhook payloads:
// messages, statuses, calls, contacts, and the account-level fields.
var metaKeyNames = strings.Fields(`
	action action_type added_participants address addresses alert_description alert_info alert_severity
	alert_status alert_type animated audio batch_info billable birthday biz_opaque_callback_data body
	button button_reply call_id call_permission_reply calls caption catalog_id category chunk_order city
	click_component click_id code company configuration_name contact contact_name contacts content context
	conversation conversation_id country country_code created_timestamp ctwa_clid currency current
	current_limit customer data decision department description detail details direction disable_info
	display_phone_number document duration email emails emoji end_time entity_id entity_type error_data
	errors event event_name expiration expiration_timestamp filename first_name formatted_name forwarded
	frequently_forwarded from from_parent_user_id from_user_id group_id groups has_media headline history
	id identity_key_hash image image_url interactive item_price last_name latitude list_reply location
	longitude marketing_messages_link_click_data media_type message message_echoes message_id
	message_status message_template_id message_template_language message_template_name messages
	messaging_product metadata middle_name mime_type name new_category new_quality_score nfm_reply order
	org origin original_message_id other_info parent_recipient_user_id parent_user_id payload phase phone
	phone_number phone_number_id phones prefix previous previous_category previous_quality_score price
	pricing pricing_model product_items product_retailer_id profile progress reaction reason recipient_id
	recipient_parent_user_id recipient_participant_id recipient_type recipient_user_id referral
	referred_product rejection_reason requested_verified_name response_json restriction_info
	restriction_type sdp sdp_type sha256 source_id source_type source_url start_time state state_sync
	status statuses sticker street sub_category suffix system text threads timestamp title to to_user_id
	type unsupported url urls user_actions user_id user_preferences username value video violation_info
	violation_type voice wa_id waba_info wacid welcome_message whatsapp_message_id zip`)

// knownKey is one slot of the table: a key as received and as written,
// and the words the key is hashed from, which for keys of up to 16 bytes
// hold every byte: comparing them is comparing the keys.
type knownKey struct {
	in   string
	out  []byte
	x, y uint64
}

const knownKeySlots = 512 // a power of two, over twice the number of keys

var knownCamelKeys = func() *[knownKeySlots]knownKey {
	var t [knownKeySlots]knownKey
	for _, k := range metaKeyNames {
		x, y := keyWords([]byte(k))
		for s := knownKeySlot(x, y, len(k)); ; s = (s + 1) % knownKeySlots {
			if t[s].in == "" {
				t[s] = knownKey{in: k, out: appendCamelQuoted(nil, []byte(k)), x: x, y: y}
				break
			}
			if t[s].in == k {
				break
			}
		}
	}
	return &t
}()

// keyWords packs a non-empty key's first and last bytes into two words:
// the first and last eight, four, or (below four bytes) all of them.
func keyWords(k []byte) (x, y uint64) {
	switch n := len(k); {
	case n >= 8:
		return binary.LittleEndian.Uint64(k), binary.LittleEndian.Uint64(k[n-8:])
	case n >= 4:
		return uint64(binary.LittleEndian.Uint32(k)), uint64(binary.LittleEndian.Uint32(k[n-4:]))
	default:
		return uint64(k[0])<<16 | uint64(k[n/2])<<8 | uint64(k[n-1]), 0
	}
}

// knownKeySlot hashes a key's words and length: cheap, and enough to
// spread the table's keys.
func knownKeySlot(x, y uint64, n int) uint {
	h := (x*0x88afc862bc59abb1 ^ y) * 0x21ea678419d8838d
	return uint((h ^ uint64(n)*0x88afc862bc59abb1) >> (64 - 9))
}

// knownCamelKey returns the written form of a plain key (no escapes) when
// it is one of metaKeyNames.
func knownCamelKey(k []byte) ([]byte, bool) {
	if len(k) == 0 {
		return nil, false
	}
	x, y := keyWords(k)
	for s := knownKeySlot(x, y, len(k)); ; s = (s + 1) % knownKeySlots {
		e := &knownCamelKeys[s]
		switch {
		case e.in == "":
			return nil, false
		case e.x != x || e.y != y || len(e.in) != len(k):
			continue
		case len(k) <= 16 || e.in == string(k):
			return e.out, true
		}
	}
}
