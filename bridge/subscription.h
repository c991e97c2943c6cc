/*
 * subscription.h
 *	  The one owner of subscriptions: their lifecycle (authorizing,
 *	  catching up, live, closed), the resume policy, and the fan-out of
 *	  changes to them. Every change of a subscription's state happens in
 *	  subscription.c; the database side (pg.h, authorize.h) is asked for
 *	  work through requests with callbacks and never sees a subscription,
 *	  and client.c only carries the connection and its queue.
 */
#ifndef BRIDGE_SUBSCRIPTION_H
#define BRIDGE_SUBSCRIPTION_H

#include <stdbool.h>

#include "authorize.h"
#include "change.h"
#include "pg.h"
#include "util.h"

struct client;

typedef enum subscription_state
{
	SUB_AUTHORIZING, /* --authorize-sql answers awaited; nothing delivered */
	SUB_CATCHING_UP, /* a resume's replay is being read; no live updates yet */
	SUB_LIVE,        /* takes live updates (a named room: takes nothing, nothing flows there) */
	SUB_CLOSED       /* removed; never seen by anyone but subscription.c */
} subscription_state;

typedef struct subscription
{
	struct client *client;
	subscription_state state;
	char *id;
	char **patient_ids;
	int npatients;
	char **types; /* empty: every type the token allows */
	int ntypes;
	char *room;         /* a named room (nothing flows there yet) */
	cursor active_from; /* live: every change it takes from this cursor on reached the client */
	bool has_since;
	cursor since;
	int replayed;                   /* updates sent by its catch-up so far */
	cursor replayed_last;           /* the cursor of the last of them */
	authorize_request *authorizing; /* while SUB_AUTHORIZING with questions out */
	pg_request *catch_up;           /* while SUB_CATCHING_UP with a read queued or in flight */
	bool presence;                  /* "presence": true: visible in its patients' rooms */
	bool presence_joined;           /* accepted and in its presence rooms (presence.c) */
} subscription;

/*
 * A validated subscribe request (ws.c parses it); subscription_subscribe
 * takes ownership of the arrays and strings.
 */
typedef struct subscribe_request
{
	char *id;
	char *room; /* NULL: a patient subscription */
	char **patient_ids;
	int npatients;
	char **types;
	int ntypes;
	bool has_since;
	cursor since;
	bool presence;
} subscribe_request;

/*
 * Creates the subscription (replacing one of the same id on the client),
 * and starts it: authorization, then the confirmation, then catch-up or
 * live delivery.
 */
void subscription_subscribe(struct client *c, subscribe_request *req);
/* Removes (unsubscribe) the client's subscription of this id, if any. */
void subscription_unsubscribe(struct client *c, const char *id);
subscription *subscription_find(struct client *c, const char *id);
/* Removes every subscription of a client whose connection is gone. */
void subscriptions_client_closed(struct client *c);

/* Whether sub takes resource_type changes of patient_id (whatever its state). */
bool subscription_matches(const subscription *sub, const char *patient_id,
                          const char *resource_type);

/* What the change log reader tells the subscriptions (pg_start). */
extern const reader_events subscription_feed;

#endif /* BRIDGE_SUBSCRIPTION_H */
