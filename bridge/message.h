/*
 * message.h
 *	  Outgoing WebSocket text messages. One update message is built per
 *	  change and patient and shared, reference-counted, by every client
 *	  queue it goes to; the buffer has LWS_PRE bytes of headroom so it can
 *	  be written as is.
 */
#ifndef BRIDGE_MESSAGE_H
#define BRIDGE_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

typedef enum message_kind
{
	MESSAGE_CONTROL, /* welcome, subscription, pong, error, ... */
	MESSAGE_UPDATE,  /* counts towards the send queue limit */
	MESSAGE_RESYNC,
	MESSAGE_EVENT /* a relayed client event: best effort, counts towards no limit */
} message_kind;

typedef struct message
{
	int refs;
	message_kind kind;
	long long changed_at_us; /* updates: commit-to-send delay is measured from here */
	cursor at;               /* updates: the change's cursor (resume_points.c) */
	size_t len;
	/*
	 * The whole WebSocket frame a server sends (unmasked, FIN, text):
	 * built once at creation, the header in the headroom just before the
	 * JSON, so every client it goes to is written the same bytes with no
	 * per-client framing.
	 */
	unsigned char *frame;
	size_t frame_len;
	unsigned char data[]; /* LWS_PRE headroom, then len bytes of JSON, then NUL */
} message;

/* A new message holding a copy of json, with one reference. */
message *message_new(message_kind kind, const char *json, size_t len);
message *message_from_strbuf(message_kind kind, strbuf *buf);
unsigned char *message_payload(message *msg);
message *message_ref(message *msg);
void message_unref(message *msg);

/* {"type":"error","error":code,"message":text[,"subscription_id":id]} */
message *message_error(const char *code, const char *text, const char *subscription_id);
/* {"type":"resync","data":{...}} */
message *message_resync(const char *patient_id, const char *subscription_id, const char *reason,
                        const char *cursor);
/* {"type":"caught_up","data":{...}}: a resume's replay is complete */
message *message_caught_up(const char *subscription_id, const char *cursor, int replayed);

#endif /* BRIDGE_MESSAGE_H */
