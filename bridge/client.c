/*
 * client.c
 *	  Client connections: send queues, flow control and deadlines.
 */
#include "client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <jansson.h>

#include "bridge.h"
#include "log.h"
#include "metrics.h"
#include "resume_points.h"

static void
queue_push(client *c, message *msg)
{
	if (c->queue_len == c->queue_cap)
	{
		int new_cap = c->queue_cap ? c->queue_cap * 2 : 16;
		message **fresh = xcalloc((size_t) new_cap, sizeof(message *));

		for (int i = 0; i < c->queue_len; i++)
			fresh[i] = c->queue[(c->queue_head + i) % c->queue_cap];
		free(c->queue);
		c->queue = fresh;
		c->queue_cap = new_cap;
		c->queue_head = 0;
	}
	if (c->queue_len == 0)
		c->last_progress_us = now_monotonic_us();
	c->queue[(c->queue_head + c->queue_len) % c->queue_cap] = msg;
	c->queue_len++;
	if (msg->kind == MESSAGE_UPDATE)
		c->queued_updates++;
	else if (msg->kind == MESSAGE_CONTROL)
		c->queued_replies++;
}

/* See client.h. */
void
client_send(client *c, message *msg)
{
	if (msg->kind == MESSAGE_RESYNC)
		the_metrics.resyncs++;
	queue_push(c, message_ref(msg));
	lws_callback_on_writable(c->wsi);
}

/* See client.h. */
void
client_drop_queued_updates(client *c)
{
	int kept = 0;

	resume_points_before_drop(c); /* the dropped ones were not served */

	for (int i = 0; i < c->queue_len; i++)
	{
		message *msg = c->queue[(c->queue_head + i) % c->queue_cap];

		if (msg->kind == MESSAGE_UPDATE)
		{
			the_metrics.queue_drops++;
			message_unref(msg);
		}
		else
			c->queue[(c->queue_head + kept++) % c->queue_cap] = msg;
	}
	c->queue_len = kept;
	c->queued_updates = 0;
}

/* See client.h. */
bool
client_send_update(client *c, message *msg, bool catch_up)
{
	if (!catch_up && c->queued_updates >= the_bridge.settings.send_queue_limit &&
	    (now_monotonic_us() - c->last_progress_us > STALLED_CLIENT_US ||
	     c->queued_updates >= (long long) the_bridge.settings.send_queue_limit * QUEUE_HARD_FACTOR))
	{
		bool tell = !c->resync_queued;

		the_metrics.queue_drops++; /* this one */
		client_drop_queued_updates(c);
		if (tell)
			log_warning("client %s: not keeping up with %d queued updates, dropped them and asked "
			            "for a resync",
			            c->id, the_bridge.settings.send_queue_limit);
		/*
		 * A resync still queued covers this drop too: the client reloads
		 * only after reading it. Once one has been written, a new drop
		 * needs a new resync.
		 */
		c->resync_queued = true;
		if (!c->stuck_since_us)
			c->stuck_since_us = now_monotonic_us();
		return tell;
	}
	client_send(c, msg);
	return false;
}

/* See client.h. */
void
client_send_error(client *c, const char *code, const char *text, const char *subscription_id)
{
	message *msg = message_error(code, text, subscription_id);

	client_send(c, msg);
	message_unref(msg);
}

/* See client.h. */
void
client_send_json(client *c, json_t *object)
{
	char *text = json_dumps(object, JSON_COMPACT);
	message *msg;

	json_decref(object);
	if (!text)
		return;
	msg = message_new(MESSAGE_CONTROL, text, strlen(text));
	free(text);
	client_send(c, msg);
	message_unref(msg);
}

/* See client.h. */
void
client_close(client *c, int code, const char *reason)
{
	if (c->close_code)
		return;
	c->close_code = code;
	snprintf(c->close_reason, sizeof(c->close_reason), "%s", reason);
	c->close_deadline_us = now_monotonic_us() + CLOSE_FLUSH_US;
	lws_callback_on_writable(c->wsi);
}

/*
 * Queued frames are written whole, as many as fit in this many bytes, in
 * one write per writeable callback: copied side by side into one buffer
 * (a memcpy of a few kilobytes costs far less than a send() and lws's
 * poll() check of a choked pipe per message). A single queued frame, or
 * one larger than this, is written straight from the shared message.
 */
#define WRITE_BATCH_BYTES 65536

static unsigned char write_batch[LWS_PRE + WRITE_BATCH_BYTES];

/* Takes the head off c's queue, with its counts; the queue's reference passes to the caller. */
static message *
queue_pop(client *c)
{
	message *msg = c->queue[c->queue_head];

	c->queue_head = (c->queue_head + 1) % c->queue_cap;
	c->queue_len--;
	if (msg->kind == MESSAGE_UPDATE)
		c->queued_updates--;
	else if (msg->kind == MESSAGE_CONTROL)
		c->queued_replies--;
	return msg;
}

/*
 * Writes the frames at the head of the queue in one write and takes them
 * off; -1 if the connection failed. The frames are pre-built (see
 * message.h) and sent with LWS_WRITE_RAW: lws adds nothing, which is right
 * because the bridge negotiates no WebSocket extension (permessage-deflate
 * would have to frame each message itself) and a server's frames are not
 * masked. lws keeps what the kernel does not take and sends it before the
 * next writeable callback, so a write is whole or fails.
 */
static int
write_queued_frames(client *c)
{
	message *first = c->queue[c->queue_head];
	unsigned char *out = first->frame;
	size_t out_len = first->frame_len;
	int nframes = 1;
	long long now_wall;

	if (c->queue_len > 1 && first->frame_len < WRITE_BATCH_BYTES)
	{
		out = write_batch + LWS_PRE;
		out_len = 0;
		nframes = 0;
		while (nframes < c->queue_len)
		{
			message *msg = c->queue[(c->queue_head + nframes) % c->queue_cap];

			if (out_len + msg->frame_len > WRITE_BATCH_BYTES)
				break;
			memcpy(out + out_len, msg->frame, msg->frame_len);
			out_len += msg->frame_len;
			nframes++;
		}
	}
	if (lws_write(c->wsi, out, out_len, LWS_WRITE_RAW) < (int) out_len)
	{
		log_info("client %s: write failed, closing", c->id);
		return -1;
	}
	now_wall = now_wall_us();
	c->last_progress_us = now_monotonic_us();
	for (int i = 0; i < nframes; i++)
	{
		message *msg = queue_pop(c);

		the_metrics.messages_sent++;
		if (msg->kind == MESSAGE_RESYNC)
			c->resync_queued = false;
		if (msg->kind == MESSAGE_UPDATE)
		{
			the_metrics.updates_sent++;
			metrics_observe_delay((double) (now_wall - msg->changed_at_us) / 1e6);
		}
		message_unref(msg);
	}
	return 0;
}

/* See client.h. */
int
client_write_next(client *c)
{
	if (c->ping_pending)
	{
		/* not empty: lws 4.1 drops an empty pong before LWS_CALLBACK_RECEIVE_PONG */
		unsigned char ping[LWS_PRE + 4] = {0};

		c->ping_pending = false;
		c->last_ping_us = now_monotonic_us();
		if (lws_write(c->wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 0)
			return -1;
		if (c->queue_len > 0 || c->close_code)
			lws_callback_on_writable(c->wsi);
		return 0;
	}
	if (c->queue_len > 0 && write_queued_frames(c) < 0)
		return -1;
	if (c->rx_paused && c->queued_replies <= MAX_UNREAD_REPLIES / 2)
	{
		c->rx_paused = false;
		lws_rx_flow_control(c->wsi, 1);
	}
	if (c->queue_len > 0)
	{
		lws_callback_on_writable(c->wsi);
		return 0;
	}
	c->stuck_since_us = 0;
	if (c->close_code)
	{
		/* the close frame goes in a callback of its own, after the last message */
		if (!c->close_sent_pending)
		{
			c->close_sent_pending = true;
			lws_callback_on_writable(c->wsi);
			return 0;
		}
		lws_close_reason(c->wsi, (enum lws_close_status) c->close_code,
		                 (unsigned char *) c->close_reason, strlen(c->close_reason));
		return -1;
	}
	return 0;
}

/*
 * Asks for a hard close from inside the connection's own callback, where
 * the close code can still be set: an lws timer due at once. Timers due
 * soon sit at the head of lws's sorted list, so this is cheap, unlike a
 * timer per connection for a far deadline such as the token's expiry.
 */
static void
request_hard_close(client *c, int code, const char *reason)
{
	if (c->hard_close_code)
		return;
	c->hard_close_code = code;
	snprintf(c->hard_close_reason, sizeof(c->hard_close_reason), "%s", reason);
	lws_set_timer_usecs(c->wsi, 1);
}

/* See client.h. */
int
client_timer_fired(client *c)
{
	if (!c->hard_close_code)
		return 0; /* a spent timer: never re-armed or cancelled from here */
	lws_close_reason(c->wsi, (enum lws_close_status) c->hard_close_code,
	                 (unsigned char *) c->hard_close_reason, strlen(c->hard_close_reason));
	return -1;
}

/* Checks one connection's deadlines; see clients_sweep(). */
static void
sweep_client(client *c, long long now_mono, long long now_wall)
{
	if (c->hard_close_code)
		return;
	if (c->close_code)
	{
		if (now_mono >= c->close_deadline_us)
		{
			log_info("client %s: could not flush before closing, dropping the connection", c->id);
			request_hard_close(c, c->close_code, c->close_reason);
		}
		return;
	}
	if (c->stuck_since_us && now_mono >= c->stuck_since_us + STUCK_CLIENT_US)
	{
		the_metrics.slow_client_closes++;
		log_warning("client %s: not reading its updates, closing with 1013", c->id);
		request_hard_close(c, 1013, "client too slow");
		return;
	}
	if (now_mono - c->last_rx_us >= IDLE_HANGUP_US)
	{
		log_info("client %s: silent for %lld seconds, not even answering pings; dropping it", c->id,
		         IDLE_HANGUP_US / 1000000);
		request_hard_close(c, LWS_CLOSE_STATUS_GOINGAWAY, "no answer to pings");
		return;
	}
	if (!c->authenticated && now_mono >= c->connected_us + AUTH_TIMEOUT_US)
	{
		log_info("client %s: no token within %lld seconds, closing", c->id,
		         AUTH_TIMEOUT_US / 1000000);
		client_send_error(c, "AUTH_REQUIRED", "no token was given in time", NULL);
		client_close(c, 4001, "Unauthorized");
		return;
	}
	if (c->authenticated && c->expires_us && now_wall >= c->expires_us)
	{
		log_info("client %s: token expired, closing", c->id);
		/* nothing more is delivered on an expired token */
		client_drop_queued_updates(c);
		client_send_error(c, "TOKEN_EXPIRED", "the token has expired", NULL);
		client_close(c, 4001, "Unauthorized");
		return;
	}
	if (now_mono - c->last_rx_us >= IDLE_PING_US && now_mono - c->last_ping_us >= IDLE_PING_US)
	{
		c->ping_pending = true;
		lws_callback_on_writable(c->wsi);
	}
}

/* See client.h. */
void
clients_sweep(void)
{
	long long now_mono = now_monotonic_us();
	long long now_wall = now_wall_us();

	for (client *c = the_bridge.clients; c; c = c->next)
		sweep_client(c, now_mono, now_wall);
}

/* See client.h. */
void
client_release(client *c)
{
	for (int i = 0; i < c->queue_len; i++)
		message_unref(c->queue[(c->queue_head + i) % c->queue_cap]);
	free(c->queue);
	c->queue = NULL;
	c->queue_len = 0;
	c->queued_replies = 0;
	free(c->rx);
	c->rx = NULL;
	if (c->authenticated)
		auth_grant_clear(&c->grant);
	c->authenticated = false;
	if (c->prev)
		c->prev->next = c->next;
	else if (the_bridge.clients == c)
		the_bridge.clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	the_bridge.nclients--;
}

/*
 * Open files the bridge needs besides its connections: stdio, the listener,
 * the event loop's, its database connections and the files it reads; and
 * room for connections over --max-connections, which are accepted to be
 * refused with 503 at the upgrade.
 */
#define FD_RESERVE_FIXED 64
#define FD_RESERVE_SHARE 64 /* one more for every this many connections */
/*
 * Accepted sockets this close to the limit are closed at once, so that
 * accept() never fails for want of a descriptor: lws 4.1 logs that and
 * returns, and the listener, still readable, is retried at once, for ever.
 */
#define FD_GUARD 16
/* At most one "open-files limit reached" warning in this long. */
#define FD_WARNING_US (10 * 1000000LL)

static rlim_t fd_limit; /* the soft limit the bridge runs with */

static long long
fds_for(long long connections)
{
	return connections + connections / FD_RESERVE_SHARE + FD_RESERVE_FIXED;
}

/*
 * See client.h. Not simply the hard limit, as nginx and pgbouncer raise
 * it: lws 4.1 sizes two tables by the soft limit (a pointer and a pollfd
 * per possible descriptor) and Debian's build, with lws's debug checks,
 * walks the whole pointer table on every accept, so a soft limit raised to
 * systemd's default hard limit (524,288) would cost about a millisecond per
 * accepted connection. A soft limit above the need is lowered for the same
 * reason.
 */
void
clients_size_fd_limit(void)
{
	int *max_connections = &the_bridge.settings.max_connections;
	struct rlimit rl;
	rlim_t was;
	long long room;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
	{
		log_warning("cannot read the open-files limit: %s", strerror(errno));
		return;
	}
	was = rl.rlim_cur;
	rl.rlim_cur = (rlim_t) fds_for(*max_connections);
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_cur > rl.rlim_max)
		rl.rlim_cur = rl.rlim_max;
	if (rl.rlim_cur != was && setrlimit(RLIMIT_NOFILE, &rl) != 0)
	{
		log_warning("cannot set the open-files limit to %llu: %s", (unsigned long long) rl.rlim_cur,
		            strerror(errno));
		rl.rlim_cur = was;
	}
	fd_limit = rl.rlim_cur;
	/* the most connections n with fds_for(n) <= the limit */
	room = ((long long) fd_limit - FD_RESERVE_FIXED) * FD_RESERVE_SHARE / (FD_RESERVE_SHARE + 1);
	while (fds_for(room + 1) <= (long long) fd_limit)
		room++;
	if (room < 1)
		room = 1;
	if (room < *max_connections)
	{
		log_warning("--max-connections %d needs %lld open files but the hard limit is %llu "
		            "(ulimit -Hn; LimitNOFILE= in a systemd unit): holding at most %lld "
		            "connections, refusing more with 503",
		            *max_connections, fds_for(*max_connections), (unsigned long long) rl.rlim_max,
		            room);
		*max_connections = (int) room;
	}
	log_info("open files: limit %llu (was %llu, hard %s%llu): room for %d connections",
	         (unsigned long long) fd_limit, (unsigned long long) was,
	         rl.rlim_max == RLIM_INFINITY ? "unlimited, " : "",
	         (unsigned long long) (rl.rlim_max == RLIM_INFINITY ? 0 : rl.rlim_max),
	         *max_connections);
}

/* See client.h. */
bool
client_fd_has_room(int fd)
{
	static long long last_warning_us;

	if (fd_limit == 0 || (rlim_t) fd + FD_GUARD < fd_limit)
		return true;
	the_metrics.connections_refused_fd_limit++;
	if (now_monotonic_us() - last_warning_us >= FD_WARNING_US)
	{
		last_warning_us = now_monotonic_us();
		log_warning("refused a connection: descriptor %d of an open-files limit of %llu "
		            "(%d connections open); raise the limit or lower --max-connections",
		            fd, (unsigned long long) fd_limit, the_bridge.nclients);
	}
	return false;
}
