/*
 * message.c
 *	  Reference-counted outgoing messages with LWS_PRE headroom.
 */
#include "message.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

/*
 * Writes the header of a server-to-client WebSocket frame (RFC 6455 5.2:
 * FIN, opcode text, unmasked, the shortest length form) of a payload of
 * len bytes just before payload; returns the header's length (2, 4 or 10,
 * at most the LWS_PRE headroom).
 */
static size_t
frame_header(unsigned char *payload, size_t len)
{
	unsigned char *h;
	size_t hlen = len < 126 ? 2 : len < 65536 ? 4 : 10;

	h = payload - hlen;
	h[0] = 0x80 | 0x1; /* FIN, text */
	if (len < 126)
		h[1] = (unsigned char) len;
	else if (len < 65536)
	{
		h[1] = 126;
		h[2] = (unsigned char) (len >> 8);
		h[3] = (unsigned char) len;
	}
	else
	{
		h[1] = 127;
		for (int i = 0; i < 8; i++)
			h[2 + i] = (unsigned char) ((uint64_t) len >> (56 - 8 * i));
	}
	return hlen;
}

/* Copies json into a fresh message and frames it once for every client. */
message *
message_new(message_kind kind, const char *json, size_t len)
{
	message *msg = xmalloc(sizeof(message) + LWS_PRE + len + 1);
	size_t hlen;

	msg->refs = 1;
	msg->kind = kind;
	msg->changed_at_us = 0;
	msg->at = (cursor){0, 0};
	msg->len = len;
	memcpy(msg->data + LWS_PRE, json, len);
	msg->data[LWS_PRE + len] = '\0';
	hlen = frame_header(msg->data + LWS_PRE, len);
	msg->frame = msg->data + LWS_PRE - hlen;
	msg->frame_len = hlen + len;
	return msg;
}

/* A message from a string buffer, which is freed. */
message *
message_from_strbuf(message_kind kind, strbuf *buf)
{
	message *msg = message_new(kind, buf->data, buf->len);

	strbuf_free(buf);
	return msg;
}

/* The JSON text (after the headroom). */
unsigned char *
message_payload(message *msg)
{
	return msg->data + LWS_PRE;
}

/* Takes another reference. */
message *
message_ref(message *msg)
{
	msg->refs++;
	return msg;
}

/* Drops a reference, freeing the message with the last. */
void
message_unref(message *msg)
{
	if (msg && --msg->refs == 0)
		free(msg);
}

/* An error reply; subscription_id is added when the error concerns one. */
message *
message_error(const char *code, const char *text, const char *subscription_id)
{
	strbuf buf;

	strbuf_init(&buf, 128);
	strbuf_append(&buf, "{\"type\":\"error\",\"error\":");
	strbuf_append_json_string(&buf, code);
	strbuf_append(&buf, ",\"message\":");
	strbuf_append_json_string(&buf, text);
	if (subscription_id)
	{
		strbuf_append(&buf, ",\"subscription_id\":");
		strbuf_append_json_string(&buf, subscription_id);
	}
	strbuf_append(&buf, "}");
	return message_from_strbuf(MESSAGE_CONTROL, &buf);
}

/* Tells a client to reload a patient's data and continue from cursor. */
message *
message_resync(const char *patient_id, const char *subscription_id, const char *reason,
               const char *cursor_text)
{
	strbuf buf;

	strbuf_init(&buf, 160);
	strbuf_append(&buf, "{\"type\":\"resync\",\"data\":{\"patient_id\":");
	strbuf_append_json_string(&buf, patient_id);
	strbuf_append(&buf, ",\"subscription_id\":");
	strbuf_append_json_string(&buf, subscription_id);
	strbuf_append(&buf, ",\"reason\":");
	strbuf_append_json_string(&buf, reason);
	strbuf_append(&buf, ",\"cursor\":");
	strbuf_append_json_string(&buf, cursor_text);
	strbuf_append(&buf, "}}");
	return message_from_strbuf(MESSAGE_RESYNC, &buf);
}

/*
 * Tells a client that the replay of a resumed subscription is complete:
 * replayed updates were sent, cursor is the last of them (or the since
 * cursor when there were none).
 */
message *
message_caught_up(const char *subscription_id, const char *cursor_text, int replayed)
{
	strbuf buf;
	char count[16];

	snprintf(count, sizeof(count), "%d", replayed);
	strbuf_init(&buf, 128);
	strbuf_append(&buf, "{\"type\":\"caught_up\",\"data\":{\"subscription_id\":");
	strbuf_append_json_string(&buf, subscription_id);
	strbuf_append(&buf, ",\"cursor\":");
	strbuf_append_json_string(&buf, cursor_text);
	strbuf_append(&buf, ",\"replayed\":");
	strbuf_append(&buf, count);
	strbuf_append(&buf, "}}");
	return message_from_strbuf(MESSAGE_CONTROL, &buf);
}
