/*
 * client.h
 *	  A WebSocket client: its connection, its token's rights, its bounded
 *	  send queue and flow control. Its subscriptions are subscription.c's.
 */
#ifndef BRIDGE_CLIENT_H
#define BRIDGE_CLIENT_H

#include <stdbool.h>

#include <jansson.h>
#include <libwebsockets.h>

#include "auth.h"
#include "change.h"
#include "message.h"
#include "util.h"

struct subscription;

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

	struct subscription **subs; /* owned by subscription.c */
	int nsubs;

	message **queue; /* circular */
	int queue_head;
	int queue_len;
	int queue_cap;
	int queued_updates;
	int queued_replies; /* MESSAGE_CONTROL messages queued: answers to the client's requests */
	bool rx_paused;     /* not read from until its replies drain (MAX_UNREAD_REPLIES) */
	long long stuck_since_us; /* monotonic; set when the queue overflowed */
	bool resync_queued;       /* an overflow's resyncs are queued, not yet written */
	long long
	    last_progress_us; /* monotonic: the last write, or when the queue last filled from empty */

	int close_code; /* pending close, sent once the queue is flushed */
	char close_reason[64];
	long long close_deadline_us; /* monotonic: past it the connection is dropped unflushed */
	int hard_close_code;         /* the sweep asked for an immediate close with this code */
	char hard_close_reason[64];
	long long last_rx_us;   /* monotonic: the last message or pong from the client */
	long long last_ping_us; /* monotonic: the last ping sent */
	bool ping_pending;
	bool close_sent_pending; /* the queue is flushed; the close goes in the next callback */

	double event_allowance;    /* client events it may still send now (client_events.c) */
	long long event_refill_us; /* monotonic: when the allowance was last topped up */

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
 * Queues an update; past --send-queue-limit the queued updates are dropped
 * instead, and true is returned when the client must now be told to resync
 * (no resync of an earlier drop is still queued). catch_up: part of a
 * bounded resume, not limited.
 */
bool client_send_update(client *c, message *msg, bool catch_up);
/* Drops the queued updates (control messages stay), counting them as drops. */
void client_drop_queued_updates(client *c);
void client_send_error(client *c, const char *code, const char *text, const char *subscription_id);
/* Queues object (a reply, taking its reference) as compact JSON. */
void client_send_json(client *c, json_t *object);
/* Flushes what is queued, then closes with code. */
void client_close(client *c, int code, const char *reason);
/* Writes queued messages (one write); called in LWS_CALLBACK_SERVER_WRITEABLE. */
int client_write_next(client *c);
/*
 * Enforces every connection's deadlines (authentication, token expiry, a
 * stuck queue, a close that cannot flush, idle pings): called every half
 * second from the main loop rather than with an lws timer per connection,
 * whose sorted list would make accepting N connections cost O(N^2).
 */
void clients_sweep(void);
/* LWS_CALLBACK_TIMER: a hard close requested by the sweep; -1 closes. */
int client_timer_fired(client *c);

/* Unauthenticated connections are closed after this. */
#define AUTH_TIMEOUT_US (10 * 1000000LL)
/* A pending close that cannot flush the queue (the peer does not read) is forced after this. */
#define CLOSE_FLUSH_US (5 * 1000000LL)
/* A connection silent this long gets a WebSocket ping; silent this long after, it is dropped. */
#define IDLE_PING_US   (30 * 1000000LL)
#define IDLE_HANGUP_US (75 * 1000000LL)
/*
 * Past --send-queue-limit a client's queue overflows if nothing was written
 * to it for this long (it is not reading), or at once when it is this many
 * times over the limit: a client that reads as fast as it can but is
 * behind a burst (a bulk import, large resources) is not a slow client.
 */
#define STALLED_CLIENT_US (1 * 1000000LL)
#define QUEUE_HARD_FACTOR 8
/* A client that has not emptied an overflowed queue for this long is closed with 1013. */
#define STUCK_CLIENT_US (10 * 1000000LL)
/*
 * A client with this many replies (pongs, errors, confirmations) queued is
 * sending requests faster than it reads the answers: its connection is not
 * read from until half of them are written.
 */
#define MAX_UNREAD_REPLIES 1024
/*
 * lws's receive buffer per connection (protocols[].rx_buffer_size): a
 * client message longer than this arrives in pieces, which ws.c
 * reassembles. Clients send little (subscribe, ping), so 1 KB, not the
 * 4 KB it was: 3 KB less per connection. lws 4.1 also sets the socket's
 * SO_SNDBUF from this size; ws.c puts that back to CLIENT_SNDBUF, what it
 * was with 4 KB, so that sending is unchanged.
 */
#define CLIENT_RX_BUFFER 1024
#define CLIENT_SNDBUF    (4096 + LWS_PRE)

/*
 * Sets the soft open-files limit to what --max-connections needs (up to
 * the hard limit) and lowers --max-connections to what the hard limit can
 * hold, logging both; before the lws context is made, which sizes its
 * tables by that limit.
 */
void clients_size_fd_limit(void);
/*
 * LWS_CALLBACK_FILTER_NETWORK_CONNECTION: false (close it at once) when
 * the accepted socket fd is so close to the open-files limit that the next
 * accept() would fail, which lws 4.1 would retry in a busy loop.
 */
bool client_fd_has_room(int fd);

/*
 * Frees everything the connection holds (its subscriptions must be gone:
 * subscriptions_client_closed); called when it is closed.
 */
void client_release(client *c);

#endif /* BRIDGE_CLIENT_H */
