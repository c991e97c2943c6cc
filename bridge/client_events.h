/*
 * client_events.h
 *	  Client events (a message type with a dot, e.g. "order.placed", as
 *	  WintEHR's publish() sends them), relayed with --relay-client-events to
 *	  the other connections following the event's patient.
 */
#ifndef BRIDGE_CLIENT_EVENTS_H
#define BRIDGE_CLIENT_EVENTS_H

#include <stddef.h>

#include <jansson.h>

#include "client.h"

/* Largest client event relayed, as received (bytes). */
#define CLIENT_EVENT_MAX_BYTES 8192
/* Per connection: events per second, and the burst allowed above it. */
#define CLIENT_EVENT_RATE  5
#define CLIENT_EVENT_BURST 20

/*
 * Handles a client event from c (root: the parsed message, len: its size):
 * without --relay-client-events it is ignored; else it is relayed to every
 * other connection with a live subscription to payload.patientId that may
 * see that patient, stamped with c's user, or refused with an error to c.
 */
void client_event_received(client *c, json_t *root, const char *type, size_t len);

#endif /* BRIDGE_CLIENT_EVENTS_H */
