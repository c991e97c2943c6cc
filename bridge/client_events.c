/*
 * client_events.c
 *	  Relaying client events by patient.
 *
 * WintEHR's publish() sends {"type":"order.placed","payload":{...,
 * "patientId", "userId"},"timestamp"} and its old server relayed it to
 * every other client, whoever and wherever they were. Here, with
 * --relay-client-events, an event goes only to the other connections that
 * have a live subscription to payload.patientId and whose token allows that
 * patient; the sender must itself have a live subscription to the patient
 * (which passed the same checks, --authorize-sql included). payload.userId
 * is replaced by the sender's authenticated user and the event carries
 * "sender": {"user": ...}: a client cannot speak for someone else. It is
 * never echoed to its sender, it is limited in size and rate per
 * connection, and a recipient that is behind with its queue does not get
 * it (events are best effort; changes are what the bridge guarantees).
 */
#include "client_events.h"

#include <string.h>

#include "bridge.h"
#include "log.h"
#include "message.h"
#include "metrics.h"
#include "request.h"
#include "rooms.h"
#include "subscription.h"
#include "util.h"

/* Whether c follows patient_id: a live patient subscription naming it, and a token allowing it. */
static bool
follows_patient(const client *c, const char *patient_id)
{
	if (!c->authenticated || c->close_code || !auth_grant_allows(&c->grant, patient_id, NULL))
		return false;
	for (int i = 0; i < c->nsubs; i++)
	{
		const subscription *sub = c->subs[i];

		if (sub->state != SUB_LIVE && sub->state != SUB_CATCHING_UP)
			continue;
		for (int j = 0; j < sub->npatients; j++)
		{
			if (strcmp(sub->patient_ids[j], patient_id) == 0)
				return true;
		}
	}
	return false;
}

/* Takes one event from c's allowance (CLIENT_EVENT_RATE a second, CLIENT_EVENT_BURST at once). */
static bool
take_allowance(client *c)
{
	long long now = now_monotonic_us();

	if (c->event_refill_us == 0)
	{
		c->event_allowance = CLIENT_EVENT_BURST;
		c->event_refill_us = now;
	}
	c->event_allowance += (double) (now - c->event_refill_us) * CLIENT_EVENT_RATE / 1e6;
	if (c->event_allowance > CLIENT_EVENT_BURST)
		c->event_allowance = CLIENT_EVENT_BURST;
	c->event_refill_us = now;
	if (c->event_allowance < 1)
		return false;
	c->event_allowance -= 1;
	return true;
}

static void
refuse(client *c, const char *code, const char *text)
{
	the_metrics.client_events_refused++;
	client_send_error(c, code, text, NULL);
}

/* See client_events.h. */
void
client_event_received(client *c, json_t *root, const char *type, size_t len)
{
	json_t *payload = json_object_get(root, "payload");
	json_t *stamp = json_object_get(root, "timestamp");
	const char *patient_id = json_string_value(json_object_get(payload, "patientId"));
	const char *user = c->grant.subject ? c->grant.subject : "unknown";
	json_t *out;
	char *text;
	message *msg;
	room *r;
	int relayed = 0;

	if (!the_bridge.settings.relay_client_events)
	{
		log_debug("client %s: ignoring client event (--relay-client-events is off)", c->id);
		return;
	}
	if (len > CLIENT_EVENT_MAX_BYTES)
	{
		refuse(c, "TOO_LARGE", "client events are limited to 8192 bytes");
		return;
	}
	if (!take_allowance(c))
	{
		refuse(c, "RATE_LIMITED", "too many client events: at most 5 a second");
		return;
	}
	if (!json_is_object(payload) || !patient_id || !request_valid_patient_id(patient_id))
	{
		refuse(c, "BAD_REQUEST",
		       "a client event needs a payload object with a patientId (a bare patient id)");
		return;
	}
	if (!follows_patient(c, patient_id))
	{
		refuse(c, "FORBIDDEN",
		       "client events go only to a patient this connection is subscribed to");
		return;
	}

	payload = json_deep_copy(payload);
	json_object_set_new(payload, "userId", json_string(user));
	out =
	    json_pack("{s:s, s:o, s:{s:s}}", "type", type, "payload", payload, "sender", "user", user);
	if (json_is_string(stamp))
		json_object_set(out, "timestamp", stamp);
	text = json_dumps(out, JSON_COMPACT);
	json_decref(out);
	if (!text)
		return;
	msg = message_new(MESSAGE_EVENT, text, strlen(text));
	free(text);
	r = rooms_find(patient_id);
	for (int i = 0; r && i < r->nmembers; i++)
	{
		client *m = r->members[i];

		if (m == c || !follows_patient(m, patient_id))
			continue;
		if (m->queue_len >= the_bridge.settings.send_queue_limit)
		{
			the_metrics.client_events_dropped++;
			continue;
		}
		client_send(m, msg);
		relayed++;
	}
	message_unref(msg);
	the_metrics.client_events_relayed += relayed;
	log_debug("client %s: client event %s relayed to %d connections", c->id, type, relayed);
}
