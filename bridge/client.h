/*
 * client.h
 *	  A WebSocket client: its token's rights, its subscriptions, and its
 *	  bounded send queue.
 */
#ifndef BRIDGE_CLIENT_H
#define BRIDGE_CLIENT_H

#include <stdbool.h>

#include <libwebsockets.h>

#include "auth.h"
#include "change.h"
#include "message.h"
#include "util.h"

struct client;

typedef struct subscription
{
	struct client *client;
	char *id;
	char **patient_ids;
	int npatients;
	char **types; /* empty: every type the token allows */
	int ntypes;
	char *room;         /* a named room (nothing flows there yet) */
	bool active;        /* receives live updates */
	cursor active_from; /* every change it takes from this cursor on reached the client */
	bool has_since;
	cursor since;
	int pending_authorizations; /* --authorize-sql answers still awaited */
	bool forbidden;             /* an --authorize-sql answer said no */
} subscription;

typedef struct client
{
	struct lws *wsi;
	char id[37];
	char peer[64];
	bool established;
	bool authenticated;
	auth_grant grant;
	long long connected_us;
	long long expires_us; /* token expiry (wall clock), 0 if none */

	subscription **subs;
	int nsubs;

	message **queue; /* circular */
	int queue_head;
	int queue_len;
	int queue_cap;
	int queued_updates;
	long long stuck_since_us; /* monotonic; set when the queue overflowed */
	bool resync_queued;       /* an overflow's resyncs are queued, not yet written */
	long long
	    last_progress_us; /* monotonic: the last write, or when the queue last filled from empty */

	long long last_rx_us; /* monotonic: the last frame or pong from the peer */
	bool ping_wanted;     /* silent for IDLE_PING_US: a ping goes out in the next write */
	bool ping_sent;       /* and went out; cleared by anything the peer sends */

	int close_code; /* pending close, sent once the queue is flushed */
	char close_reason[64];
	long long close_deadline_us; /* monotonic: past it the connection is dropped unflushed */
	bool close_sent_pending;     /* the queue is flushed; the close goes in the next callback */

	char *rx; /* the message being reassembled from fragments */
	size_t rx_len;

	/* plain HTTP responses (healthz, metrics) */
	char *http_body;
	size_t http_len;

	struct client *prev;
	struct client *next;
} client;

/* Queues msg (taking a reference) and asks for a writeable callback. */
void client_send(client *c, message *msg);
/*
 * Queues an update; past --send-queue-limit the queue is dropped and the
 * client told to resync. catch_up: part of a bounded resume, not limited.
 */
void client_send_update(client *c, message *msg, bool catch_up);
/* Drops the queued updates (control messages stay), counting them as drops. */
void client_drop_queued_updates(client *c);
void client_send_error(client *c, const char *code, const char *text, const char *subscription_id);
/* Flushes what is queued, then closes with code. */
void client_close(client *c, int code, const char *reason);
/* Writes the next queued message; called in LWS_CALLBACK_SERVER_WRITEABLE. */
int client_write_next(client *c);
/* Re-arms the per-connection timer for the nearest deadline. */
void client_arm_timer(client *c);
/* Closes connections past a near deadline (unflushed close, stuck queue); -1: close now. */
int client_timer_fired(client *c);
/*
 * Once a second, over every client: closes those past the authentication
 * timeout or their token's expiry, pings silent ones and drops those that
 * stay silent.
 */
void clients_sweep(void);
/* The peer sent something (a frame, a pong): it is alive. */
void client_heard_from(client *c);

/* Unauthenticated connections are closed after this. */
#define AUTH_TIMEOUT_US (10 * 1000000LL)
/* A pending close that cannot flush the queue (the peer does not read) is forced after this. */
#define CLOSE_FLUSH_US (5 * 1000000LL)
/*
 * Past --send-queue-limit a client's queue overflows if nothing was written
 * to it for this long (it is not reading), or at once when it is this many
 * times over the limit: a client that reads as fast as it can but is
 * behind a burst (a bulk import, large resources) is not a slow client.
 */
#define STALLED_CLIENT_US (1 * 1000000LL)
#define QUEUE_HARD_FACTOR 8
/*
 * A connection silent for this long gets a WebSocket ping; one silent for
 * IDLE_HANGUP_US (a peer that vanished without closing) is dropped.
 */
#define IDLE_PING_US   (30 * 1000000LL)
#define IDLE_HANGUP_US (75 * 1000000LL)
/* A client that has not emptied an overflowed queue for this long is closed with 1013. */
#define STUCK_CLIENT_US (10 * 1000000LL)
void client_release(client *c);

/* Whether sub takes resource_type changes of patient_id (ignoring whether it is active). */
bool subscription_matches(const subscription *sub, const char *patient_id,
                          const char *resource_type);
subscription *client_find_subscription(client *c, const char *id);
void subscription_free(subscription *sub);
void client_remove_subscription(client *c, subscription *sub);
/* Starts live delivery for sub from the current cursor. */
void subscription_activate(subscription *sub);
/* Starts live delivery for sub after a complete catch-up from sub->since. */
void subscription_activate_caught_up(subscription *sub);
/* Sends a resync for every patient of sub and activates it. */
void subscription_resync(subscription *sub, const char *reason);

/* Fans a freshly read change out to the clients in its patients' rooms. */
void deliver_change(change *c);
/*
 * Sends the part of change c that subscription sub takes, during its
 * catch-up; skips what the client already got live from another
 * subscription. Returns the number of messages sent.
 */
int deliver_catch_up(subscription *sub, change *c, bool count_only);

#endif /* BRIDGE_CLIENT_H */
