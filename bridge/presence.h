/*
 * presence.h
 *	  Who has which patient's chart open, what they edit, and conflict
 *	  warnings to editors (docs/protocol.md, "Presence"). Presence is kept
 *	  in the database (fhir_notify.presence_*) so that every bridge on it
 *	  shows the same people; this bridge's own connections are known
 *	  locally and shown at once, other bridges' are read from the database
 *	  when its doorbell rings (and on a safety poll).
 */
#ifndef BRIDGE_PRESENCE_H
#define BRIDGE_PRESENCE_H

#include <jansson.h>

#include "change.h"
#include "client.h"
#include "subscription.h"

void presence_start(void);
/* Takes this bridge's rows out of the database (a short blocking call). */
void presence_stop(void);

/* A subscription with "presence": true was accepted: join its patients' rooms. */
void presence_subscribed(subscription *sub);
/* It is going away (unsubscribe, replaced, connection closed). */
void presence_unsubscribed(subscription *sub);
/* A live connection's token was replaced (same user): its name and role may have changed. */
void presence_client_reauthenticated(client *c);
/* The editing / stop_editing messages. */
void presence_handle_editing(client *c, json_t *root, bool start);
/*
 * A change read from the log, before its updates are queued: warns the
 * local connections editing that resource at another version.
 */
void presence_on_change(change *ch);

/* For the metrics: presence messages sent, conflicts sent. */
extern long long presence_messages_sent;
extern long long presence_conflicts_sent;

#endif /* BRIDGE_PRESENCE_H */
