/*
 * pg.c
 *	  The change log reader. NOTIFY is only a doorbell: on each doorbell
 *	  and each safety poll the reader asks fhir_notify.tick() for the newest
 *	  snapshot tick (a transaction of its own) and, in the same round trip,
 *	  reads every tick after the last one it fanned out with
 *	  fhir_notify.read_next(), in (tick, position) order, as a registered
 *	  reader (--reader-name): the log keeps what it has not read whoever
 *	  prunes, and says when its position is no longer readable (pruned,
 *	  dropped, or of another epoch), which every live subscription is told
 *	  as a resync. The facts come from the log, so a forged NOTIFY delivers
 *	  nothing, a lost one is caught by the poll, and after a reconnect the
 *	  reader carries on from its last tick: every committed change is fanned
 *	  out exactly once, or a resync says otherwise. The same connection
 *	  serves catch-up reads for whoever asks (pg_catch_up); the reader knows
 *	  nothing of clients.
 *
 *	  The reader is a state machine; reader_state says what it is doing,
 *	  and next() alone decides what it does when it has nothing to do:
 *
 *	    DISCONNECTED --connected--> LISTENING --done--> next()
 *	    next(): a doorbell (or the poll) wanted -> READING (tick(), then
 *	            read_next() in one round trip; the first, after tick 0,
 *	            starts at the newest tick)
 *	            else a catch-up request queued -> CATCHING_UP (a full read, or
 *	            the oldest-only checks of up to OLDEST_ONLY_BATCH requests queued
 *	            in a row, in one query: a reconnect storm of a thousand
 *	            subscriptions costs two round trips, not a thousand)
 *	            else IDLE
 *	    READING --done--> FANNING_OUT (its changes, a batch per loop turn),
 *	            or next() after a resync (the position was lost)
 *	    FANNING_OUT --all out--> READING at once while the log has more
 *	                             (a read stops at MAX_TICKS_PER_READ; with a
 *	                             doorbell waiting, tick(); read()), else next()
 *	    CATCHING_UP --done--> the requester's callback, next()
 *
 *	  Doorbells that ring while a query is in flight or a read is being
 *	  fanned out set one flag: however many they are, one read follows.
 *	  Reads and catch-ups alternate, so a busy log never starves resumes.
 *	  A lost connection goes to DISCONNECTED (a fan-out in progress
 *	  finishes first: its changes were read whole).
 */
#include "pg.h"

#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "change.h"
#include "log.h"
#include "metrics.h"
#include "pg_link.h"

#define MAX_TICKS_PER_READ 100

typedef enum reader_state
{
	READER_DISCONNECTED, /* connecting, or waiting to reconnect */
	READER_LISTENING,    /* LISTEN in flight */
	READER_ROLLING_BACK, /* ROLLBACK of a transaction a failed read left open */
	READER_IDLE,
	READER_READING,     /* tick(); read_next() in flight, or a read_next() continuing */
	READER_FANNING_OUT, /* the last read's changes going out */
	READER_CATCHING_UP  /* a catch-up read in flight */
} reader_state;

static const char *const reader_state_names[] = {
    "disconnected", "listening", "rolling back", "idle", "reading", "fanning out", "catching up"};

struct pg_request
{
	const catch_up_ops *ops;
	void *arg;
	bool cancelled; /* freed when the reader next looks at it */
	bool orphaned;  /* the reader stopped: freed by pg_request_cancel */
	long long upto_tick;
	bool oldest_only;
	long long since_epoch_tick; /* oldest-only: the tick whose epoch is asked */
	bool answered;              /* oldest-only: its row of the batch came */
	long long oldest, since_epoch;
	struct pg_request *next;
};

static void reader_connected(pg_link *link);
static void reader_result(pg_link *link, const PGresult *res);
static void reader_query_done(pg_link *link);
static void reader_disconnected(pg_link *link);
static void reader_notify(pg_link *link, const PGnotify *notify);

static const pg_link_ops reader_ops = {reader_connected, reader_result, reader_query_done,
                                       reader_disconnected, reader_notify};

static pg_link reader = {.name = "database", .ops = &reader_ops, .adopted_socket = -1};
static const reader_events *consumer;
static reader_state state = READER_DISCONNECTED;
static bool listening;          /* LISTEN done on the current connection */
static bool fetch_wanted;       /* a doorbell or the poll since the last read began */
static long long newest_tick;   /* from the last tick() */
static long long reading_upto;  /* the read in flight covers ticks up to this */
static long long reading_epoch; /* the epoch of reading_upto */
static bool read_header_seen;   /* the read's header row (status, position) came */
static char read_status[16];    /* its status: ok, started, pruned, dropped, reset */
static bool query_failed;
static int query_results;  /* results of the query in flight so far */
static bool catch_up_turn; /* reads and catch-ups alternate */
static pg_request *requests_head, *requests_tail;
/*
 * The catch-up in flight: one full read, or a batch of oldest-only checks
 * (a subscription the ring can serve asks only whether its cursor is still
 * readable; a reconnect storm queues hundreds of them, answered together).
 */
static pg_request *request_in_flight; /* the first; ->next links a batch */
static catch_up_answer answer;        /* of a full read in flight */

#define OLDEST_ONLY_BATCH 500
static lws_sorted_usec_list_t poll_timer;

/*
 * A read that failed (a serialization failure when a prune commits during
 * it, a revoked grant, a statement timeout) is made again after
 * READ_RETRY_FIRST_US, the wait doubling up to the poll interval while it
 * keeps failing: what it was to deliver does not wait for the next
 * doorbell or poll, and a lasting failure does not become a busy loop.
 */
#define READ_RETRY_FIRST_US (50 * 1000LL)
static lws_sorted_usec_list_t retry_timer;
static long long retry_wait_us; /* 0: the last read did not fail */

/*
 * The snapshot taken just before the last tick() (pg_current_snapshot(),
 * in the tick's statement): a transaction visible in it has its changes in
 * that tick or an earlier one, which the reader has read or reads on to
 * (it reads while newest_tick is ahead). A doorbell naming such a
 * transaction (its payload, see extension/doorbell.c) asks for nothing new
 * and is skipped; a read that fails after one was skipped is made again.
 * A doorbell that comes while a tick() is in flight is held until its
 * snapshot comes: the commits rung just before a read (after the read was
 * sent, before the server took the snapshot) are in that read, and were
 * about one read in eight, each an empty read of its own after it.
 */
static struct
{
	bool known;
	unsigned long long xmin, xmax;
	unsigned long long *xip;
	int nxip;
} seen;
static bool doorbell_skipped; /* since the reader last read up to the newest tick */
static bool tick_in_flight;   /* its snapshot not yet come */
#define HELD_DOORBELLS 64
static unsigned long long held[HELD_DOORBELLS]; /* their transactions */
static int nheld;

/* Forgets the snapshot of the last tick (a new connection, a failed read). */
static void
seen_forget(void)
{
	free(seen.xip);
	memset(&seen, 0, sizeof(seen));
}

/* Notes the snapshot "xmin:xmax:xip,..." taken before the tick just read. */
static void
seen_set(const char *text)
{
	char *end;
	const char *p;

	seen_forget();
	seen.xmin = strtoull(text, &end, 10);
	if (*end != ':')
		return;
	seen.xmax = strtoull(end + 1, &end, 10);
	if (*end != ':')
		return;
	p = end + 1;
	while (*p)
	{
		unsigned long long xid = strtoull(p, &end, 10);

		if (end == p || (*end != ',' && *end != '\0'))
			return; /* not a snapshot: nothing is skipped */
		seen.xip = xrealloc(seen.xip, (size_t) (seen.nxip + 1) * sizeof(*seen.xip));
		seen.xip[seen.nxip++] = xid;
		p = *end == ',' ? end + 1 : end;
	}
	seen.known = seen.xmin <= seen.xmax;
}

/* A doorbell's payload as a transaction id; 0 if it is not one. */
static unsigned long long
payload_xid(const char *payload)
{
	char *end;
	unsigned long long xid;

	if (!payload || *payload < '0' || *payload > '9')
		return 0;
	xid = strtoull(payload, &end, 10);
	return *end == '\0' ? xid : 0;
}

/* Whether transaction xid (0: unknown) is visible in the snapshot seen. */
static bool
seen_covers(unsigned long long xid)
{
	if (!seen.known || xid == 0)
		return false;
	if (xid < seen.xmin)
		return true;
	if (xid >= seen.xmax)
		return false;
	for (int i = 0; i < seen.nxip; i++)
	{
		if (seen.xip[i] == xid)
			return false;
	}
	return true;
}

/*
 * A read's changes are fanned out a few at a time, one batch per turn of
 * the event loop, so that clients write between batches: a big read (a
 * bulk import, a catch-up after an outage) must not fill the queue of a
 * client that is reading as fast as it can and make it look slow.
 */
#define FAN_OUT_BATCH 16
static change **pending;
static int npending;
static int pending_next;
static lws_sorted_usec_list_t fan_out_timer;

static void next(void);
static void doorbells_unanswered(void);

static void
set_state(reader_state to)
{
	if (to != state)
		log_debug("database: reader %s -> %s", reader_state_names[state], reader_state_names[to]);
	state = to;
}

static void
retry_cb(lws_sorted_usec_list_t *sul)
{
	pg_request_fetch();
}

/* The read failed: again after a wait that grows while it keeps failing. */
static void
read_failed(void)
{
	long long longest = (long long) the_bridge.settings.poll_interval * LWS_US_PER_SEC;

	retry_wait_us = retry_wait_us ? retry_wait_us * 2 : READ_RETRY_FIRST_US;
	if (retry_wait_us > longest)
		retry_wait_us = longest;
	lws_sul_schedule(the_bridge.context, 0, &retry_timer, retry_cb, (lws_usec_t) retry_wait_us);
}

static void
poll_cb(lws_sorted_usec_list_t *sul)
{
	pg_request_fetch();
	lws_sul_schedule(the_bridge.context, 0, &poll_timer, poll_cb,
	                 (lws_usec_t) the_bridge.settings.poll_interval * LWS_US_PER_SEC);
}

/* See pg.h. */
void
pg_start(const reader_events *events)
{
	consumer = events;
	reader.conninfo = the_bridge.settings.db;
	pg_link_start(&reader);
	lws_sul_schedule(the_bridge.context, 0, &poll_timer, poll_cb,
	                 (lws_usec_t) the_bridge.settings.poll_interval * LWS_US_PER_SEC);
}

static void
answer_clear(void)
{
	for (int i = 0; i < answer.nchanges; i++)
		change_unref(answer.changes[i]);
	free(answer.changes);
	memset(&answer, 0, sizeof(answer));
}

/* Drops changes collected from a read that was not (or not wholly) fanned out. */
static void
drop_pending(void)
{
	for (int i = pending_next; i < npending; i++)
		change_unref(pending[i]);
	npending = pending_next = 0;
}

/* The reader stops: requests still held by their requesters wait for pg_request_cancel. */
static void
orphan(pg_request *req)
{
	if (req->cancelled)
		free(req);
	else
		req->orphaned = true;
}

/* See pg.h. */
void
pg_stop(void)
{
	lws_sul_cancel(&poll_timer);
	lws_sul_cancel(&retry_timer);
	lws_sul_cancel(&fan_out_timer);
	drop_pending();
	free(pending);
	pending = NULL;
	pg_link_stop(&reader);
	seen_forget();
	set_state(READER_DISCONNECTED);
	while (requests_head)
	{
		pg_request *req = requests_head;

		requests_head = req->next;
		orphan(req);
	}
	requests_tail = NULL;
	while (request_in_flight)
	{
		pg_request *req = request_in_flight;

		request_in_flight = req->next;
		orphan(req);
	}
	answer_clear();
}

/* See pg.h. */
void
pg_request_fetch(void)
{
	fetch_wanted = true;
	if (state == READER_IDLE)
		next();
}

/*
 * The registered reader's read (fhir_notify.read_next): the header row
 * (status, the position after the read), then the changes. Its status
 * column comes first, then CHANGE_COLUMNS.
 */
#define READ_NEXT_COLUMNS "r.status, " CHANGE_COLUMNS

/*
 * The reader's two statements, prepared once per connection: parsing,
 * analysing and planning them took about a fifth of the server's time per
 * doorbell when they were sent as text each time.
 */
static const char tick_sql[] = "SELECT fhir_notify.tick(), pg_catalog.pg_current_snapshot()::text";
static const char read_next_sql[] =
    "SELECT " READ_NEXT_COLUMNS " FROM fhir_notify.read_next($1::text, $2::bigint, "
    "$3::bigint, $4::integer) r";

/*
 * Sends a read of the ticks after the last one fanned out, with a tick
 * first or without (the log has more), in one round trip.
 *
 * With the tick, as two transactions (BEGIN, tick, COMMIT, then the read,
 * and one sync: one answer to wait for): the tick commits (asynchronously)
 * before the read, so the lock that serialises ticks is not held while the
 * read runs and its rows travel, and the read, a later transaction, sees
 * the tick. A failed tick leaves its transaction aborted (and skips the
 * read): next() rolls it back. The read confirms the position the bridge
 * has fanned out to the log (registered readers): a prune by anyone keeps
 * what this bridge has not read.
 */
static void
send_reads(bool with_tick)
{
	char epoch[32], after[32], count[32];
	const char *values[4] = {the_bridge.settings.reader_name, epoch, after, count};
	pg_link_query queries[4] = {
	    {NULL, "BEGIN", 0, NULL, false},
	    {"fhir_notify_tick", tick_sql, 0, NULL, false},
	    {NULL, "COMMIT", 0, NULL, false},
	    {"fhir_notify_read_next", read_next_sql, 4, values, true},
	};

	snprintf(epoch, sizeof(epoch), "%lld", the_bridge.last_epoch);
	snprintf(after, sizeof(after), "%lld", the_bridge.last_tick);
	snprintf(count, sizeof(count), "%d", MAX_TICKS_PER_READ);
	query_results = 0;
	read_header_seen = false;
	tick_in_flight = with_tick;
	nheld = 0;
	set_state(READER_READING);
	the_metrics.log_reads++;
	if (with_tick)
		pg_link_send_pipeline(&reader, queries, 4);
	else
		pg_link_send_pipeline(&reader, queries + 3, 1);
}

static void
send_read(void)
{
	send_reads(false);
}

static void
send_tick_read(void)
{
	send_reads(true);
}

/* A text[] literal of ids already checked to be [A-Za-z0-9.-]. */
static void
array_literal(strbuf *buf, char *const *items, int n)
{
	strbuf_append(buf, "{");
	for (int i = 0; i < n; i++)
		strbuf_appendf(buf, "%s\"%s\"", i ? "," : "", items[i]);
	strbuf_append(buf, "}");
}

static void
send_catch_up(pg_request *req, const catch_up_query *q)
{
	char after[32], ticks[32], since_tick[32], since_position[32], limit[32], epoch_tick[32];
	strbuf patients, types;
	const char *values[8];
	long long first_tick = q->since.tick > 0 ? q->since.tick - 1 : 0;

	req->upto_tick = the_bridge.last_tick;
	req->oldest_only = false;
	req->next = NULL;
	request_in_flight = req;
	query_results = 0;
	answer_clear();
	set_state(READER_CATCHING_UP);
	snprintf(epoch_tick, sizeof(epoch_tick), "%lld", cursor_epoch_tick(q->since));
	snprintf(after, sizeof(after), "%lld", first_tick);
	snprintf(ticks, sizeof(ticks), "%lld", req->upto_tick - first_tick);
	snprintf(since_tick, sizeof(since_tick), "%lld", q->since.tick);
	snprintf(since_position, sizeof(since_position), "%lld", q->since.position);
	snprintf(limit, sizeof(limit), "%d", q->limit);
	strbuf_init(&patients, 64);
	strbuf_init(&types, 64);
	array_literal(&patients, q->patient_ids, q->npatients);
	array_literal(&types, q->types, q->ntypes);
	values[0] = after;
	values[1] = ticks;
	values[2] = patients.data;
	values[3] = since_tick;
	values[4] = since_position;
	values[5] = types.data;
	values[6] = limit;
	values[7] = epoch_tick;
	/*
	 * The first column is the oldest readable tick, on a row of its own
	 * when nothing matches, so a pruned log is told from a quiet one; the
	 * second the epoch of the cursor's tick, so a cursor of another epoch
	 * (ticks lost in a crash and taken again, a restored or another
	 * database) is told from one of this log.
	 */
	pg_link_send(&reader,
	             "SELECT o.oldest, o.since_epoch, " CHANGE_COLUMNS
	             " FROM (SELECT fhir_notify.oldest_tick() AS oldest, "
	             "              fhir_notify.tick_epoch($8::bigint) AS since_epoch) o "
	             "LEFT JOIN LATERAL (SELECT x.tick_id, x.change, "
	             "                          fhir_notify.tick_epoch(x.tick_id) AS epoch "
	             " FROM fhir_notify.read($1::bigint, $2::integer) x "
	             " WHERE (x.change).patient_ids OPERATOR(pg_catalog.&&) $3::text[] "
	             "   AND (x.tick_id, (x.change).position) > ($4::bigint, $5::bigint) "
	             "   AND (pg_catalog.cardinality($6::text[]) = 0 "
	             "        OR (x.change).resource_type OPERATOR(pg_catalog.=) ANY ($6::text[])) "
	             " ORDER BY x.tick_id, (x.change).position LIMIT $7::integer) r ON true",
	             8, values);
	strbuf_free(&patients);
	strbuf_free(&types);
}

/*
 * Sends the oldest-only checks of the batch in request_in_flight: the
 * oldest readable tick, and the epoch of each cursor's tick, a row per
 * request in its order.
 */
static void
send_oldest_only(int n)
{
	strbuf ticks;
	const char *values[1];
	int i = 0;

	strbuf_init(&ticks, 16 + 24 * (size_t) n);
	strbuf_append(&ticks, "{");
	for (pg_request *req = request_in_flight; req; req = req->next)
		strbuf_appendf(&ticks, "%s%lld", i++ ? "," : "", req->since_epoch_tick);
	strbuf_append(&ticks, "}");
	values[0] = ticks.data;
	log_debug("database: %d oldest-only catch-up checks in one read", n);
	query_results = 0;
	answer_clear();
	set_state(READER_CATCHING_UP);
	pg_link_send(&reader,
	             "SELECT o.oldest, fhir_notify.tick_epoch(t.tick) "
	             "FROM (SELECT fhir_notify.oldest_tick() AS oldest) o, "
	             "     unnest($1::bigint[]) WITH ORDINALITY t(tick, i) ORDER BY t.i",
	             1, values);
	strbuf_free(&ticks);
}

/* Takes the next request off the queue. */
static pg_request *
dequeue(void)
{
	pg_request *req = requests_head;

	requests_head = req->next;
	if (!requests_head)
		requests_tail = NULL;
	req->next = NULL;
	return req;
}

/*
 * Starts the next catch-up whose turn came: a full read, or the
 * oldest-only checks of up to OLDEST_ONLY_BATCH requests queued one after
 * another, in one query. False if nothing was to be read.
 */
static bool
start_catch_up(void)
{
	pg_request *batch_tail = NULL;
	int nbatch = 0;

	while (requests_head && the_bridge.last_tick > 0 && nbatch < OLDEST_ONLY_BATCH)
	{
		pg_request *req = dequeue();
		catch_up_query q;

		memset(&q, 0, sizeof(q));
		if (req->cancelled || !req->ops->prepare(req->arg, &q))
		{
			free(req); /* cancelled, or settled without the database */
			continue;
		}
		if (!q.oldest_only)
		{
			if (nbatch == 0)
			{
				send_catch_up(req, &q);
				return true;
			}
			/* its turn comes after the batch (prepare() is asked again then) */
			req->next = requests_head;
			requests_head = req;
			if (!requests_tail)
				requests_tail = req;
			break;
		}
		req->upto_tick = the_bridge.last_tick;
		req->oldest_only = true;
		req->since_epoch_tick = cursor_epoch_tick(q.since);
		req->answered = false;
		if (batch_tail)
			batch_tail->next = req;
		else
			request_in_flight = req;
		batch_tail = req;
		nbatch++;
	}
	if (nbatch == 0)
		return false;
	send_oldest_only(nbatch);
	return true;
}

/* The reader has nothing in flight: picks its next work. */
static void
next(void)
{
	if (!reader.ready)
	{
		set_state(READER_DISCONNECTED);
		return;
	}
	if (PQtransactionStatus(reader.conn) != PQTRANS_IDLE)
	{
		/* a read whose tick failed stops inside its BEGIN: close that transaction first */
		query_results = 0;
		set_state(READER_ROLLING_BACK);
		pg_link_send(&reader, "ROLLBACK", 0, NULL);
		return;
	}
	if (!listening)
	{
		char *channel = PQescapeIdentifier(reader.conn, the_bridge.settings.channel,
		                                   strlen(the_bridge.settings.channel));
		strbuf sql;

		strbuf_init(&sql, 64);
		strbuf_appendf(&sql, "LISTEN %s", channel ? channel : "fhir_notify");
		PQfreemem(channel);
		query_results = 0;
		set_state(READER_LISTENING);
		pg_link_send(&reader, sql.data, 0, NULL);
		strbuf_free(&sql);
		return;
	}
	if (fetch_wanted && !(catch_up_turn && requests_head))
	{
		fetch_wanted = false;
		catch_up_turn = true;
		send_tick_read(); /* the first (last_tick 0) starts at the newest tick */
		return;
	}
	catch_up_turn = false;
	if (start_catch_up())
		return;
	set_state(READER_IDLE);
}

static void
reader_connected(pg_link *link)
{
	listening = false;
	fetch_wanted = true;
	if (state != READER_FANNING_OUT)
		next();
}

static void
reader_disconnected(pg_link *link)
{
	the_bridge.database_connected = false;
	listening = false;
	query_failed = false;
	doorbells_unanswered();
	if (state == READER_FANNING_OUT)
		return; /* its changes were read whole: they go out, then the reader waits */
	/* a read answered but not finished is read again after the reconnect */
	drop_pending();
	if (request_in_flight)
	{
		/* asked again after the reconnect, first and in their order */
		pg_request *again = NULL, *again_tail = NULL;

		while (request_in_flight)
		{
			pg_request *req = request_in_flight;

			request_in_flight = req->next;
			req->next = NULL;
			if (req->cancelled)
			{
				free(req);
				continue;
			}
			if (again_tail)
				again_tail->next = req;
			else
				again = req;
			again_tail = req;
		}
		if (again)
		{
			again_tail->next = requests_head;
			requests_head = again;
			if (!requests_tail)
				requests_tail = again_tail;
		}
		answer_clear();
	}
	set_state(READER_DISCONNECTED);
}

static void
reader_notify(pg_link *link, const PGnotify *notify)
{
	/* a doorbell only: the log says what happened; the payload may say it is read already */
	unsigned long long xid = payload_xid(notify->extra);

	if (tick_in_flight && xid != 0 && nheld < HELD_DOORBELLS)
	{
		held[nheld++] = xid; /* judged by the snapshot on its way */
		return;
	}
	if (seen_covers(xid))
	{
		doorbell_skipped = true;
		the_metrics.doorbells_skipped++;
		return;
	}
	pg_request_fetch();
}

/* The tick's snapshot came: the doorbells held meanwhile are judged by it. */
static void
judge_held(void)
{
	tick_in_flight = false;
	for (int i = 0; i < nheld; i++)
	{
		if (seen_covers(held[i]))
		{
			doorbell_skipped = true;
			the_metrics.doorbells_skipped++;
		}
		else
			fetch_wanted = true;
	}
	nheld = 0;
}

/* The read did not come to its end: every doorbell it was to answer is read for. */
static void
doorbells_unanswered(void)
{
	if (doorbell_skipped || nheld > 0)
		fetch_wanted = true;
	doorbell_skipped = tick_in_flight = false;
	nheld = 0;
	seen_forget();
}

/*
 * Turns the rows of a read_next() into its header (status and the position
 * after the read) and changes waiting to be fanned out.
 */
static void
collect_changes(const PGresult *res)
{
	int rows = PQntuples(res);

	pending = xrealloc(pending, (size_t) (npending + rows + 1) * sizeof(change *));
	for (int i = 0; i < rows; i++)
	{
		change *c;

		if (!PQgetisnull(res, i, 0))
		{
			snprintf(read_status, sizeof(read_status), "%s", PQgetvalue(res, i, 0));
			reading_upto = atoll(PQgetvalue(res, i, 1));
			reading_epoch = PQgetisnull(res, i, 1 + 11) ? 0 : atoll(PQgetvalue(res, i, 1 + 11));
			read_header_seen = true;
			continue;
		}
		c = change_from_row(res, i, 1);
		if (c)
			pending[npending++] = c;
	}
}

/*
 * Turns a catch-up read's rows (the oldest tick, then a change or NULLs)
 * into its answer; or an oldest-only batch's rows (the oldest tick, the
 * epoch of the cursor's tick) into the answers of its requests, in order.
 */
static void
collect_answer(const PGresult *res)
{
	int rows = PQntuples(res);

	if (request_in_flight->oldest_only)
	{
		int i = 0;

		for (pg_request *req = request_in_flight; req && i < rows; req = req->next, i++)
		{
			req->oldest = PQgetisnull(res, i, 0) ? 0 : atoll(PQgetvalue(res, i, 0));
			req->since_epoch = PQgetisnull(res, i, 1) ? 0 : atoll(PQgetvalue(res, i, 1));
			req->answered = true;
		}
		return;
	}
	answer.oldest = rows > 0 && !PQgetisnull(res, 0, 0) ? atoll(PQgetvalue(res, 0, 0)) : 0;
	answer.since_epoch = rows > 0 && !PQgetisnull(res, 0, 1) ? atoll(PQgetvalue(res, 0, 1)) : 0;
	answer.changes = xcalloc((size_t) rows + 1, sizeof(change *));
	for (int i = 0; i < rows; i++)
	{
		change *c;

		if (PQgetisnull(res, i, 2))
			continue;
		c = change_from_row(res, i, 2);
		if (c)
			answer.changes[answer.nchanges++] = c;
	}
}

static void after_fan_out(void);

/* Fans out the next batch; the read counts as done once the last one is out. */
static void
fan_out_step(lws_sorted_usec_list_t *sul)
{
	int end = pending_next + FAN_OUT_BATCH;

	the_bridge.last_tick_ok_us = now_monotonic_us(); /* a long fan-out is progress, not staleness */

	for (; pending_next < npending && pending_next < end; pending_next++)
	{
		change *c = pending[pending_next];

		the_metrics.changes_read++;
		ring_push(c);
		consumer->change(c);
		change_unref(c);
		pending[pending_next] = NULL;
	}
	if (pending_next < npending)
	{
		lws_sul_schedule(the_bridge.context, 0, &fan_out_timer, fan_out_step, 1);
		return;
	}
	npending = pending_next = 0;
	/* only now is everything up to reading_upto in the ring and in the queues */
	the_bridge.last_tick = reading_upto;
	the_bridge.last_epoch = reading_epoch;
	after_fan_out();
}

static void
fan_out(void)
{
	set_state(READER_FANNING_OUT);
	fan_out_step(&fan_out_timer);
}

/*
 * A read is fanned out: read on at once if the log has more (with a tick
 * in the same round trip when a doorbell rang meanwhile: it would
 * otherwise cost a round trip of its own after this read), else other
 * work.
 */
static void
after_fan_out(void)
{
	if (reader.ready && listening && newest_tick > the_bridge.last_tick)
	{
		if (fetch_wanted)
		{
			fetch_wanted = false;
			send_tick_read();
		}
		else
			send_read();
		return;
	}
	/* the state is left only here: next() may pick a doorbell that rang meanwhile */
	doorbell_skipped = false; /* read up to the newest tick */
	state = READER_IDLE;
	next();
}

static void
reader_result(pg_link *link, const PGresult *res)
{
	ExecStatusType status = PQresultStatus(res);

	if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
	{
		const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		query_failed = true;
		log_error("database: %s failed: %s (sqlstate %s)",
		          state == READER_LISTENING     ? "listen"
		          : state == READER_CATCHING_UP ? "catch-up read"
		                                        : "reading the change log",
		          primary ? primary : "unknown error", sqlstate ? sqlstate : "none");
		return;
	}
	query_results++;
	switch (state)
	{
		case READER_READING:
			if (status != PGRES_TUPLES_OK)
				break; /* BEGIN, COMMIT */
			if (PQnfields(res) == 2)
			{
				/* tick(): the newest tick, and the snapshot taken before it */
				if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
					newest_tick = atoll(PQgetvalue(res, 0, 0));
				if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 1))
					seen_set(PQgetvalue(res, 0, 1));
				else
					seen_forget();
				judge_held();
			}
			else
				collect_changes(res);
			break;
		case READER_CATCHING_UP:
			if (request_in_flight && query_results == 1)
				collect_answer(res);
			break;
		default:
			break;
	}
}

/* Healthy means the change log can be read, not only that a socket is open. */
static void
note_log_read(bool failed)
{
	if (failed && the_bridge.database_connected)
		log_warning("database: the change log cannot be read; reporting unhealthy");
	the_bridge.database_connected = !failed;
	if (!failed)
		the_bridge.last_tick_ok_us = now_monotonic_us();
}

/*
 * What read_next() said of the bridge's position before its changes go out.
 * ok: they go out. started (first start): nothing to send, the bridge
 * delivers what commits from now on. pruned, dropped, reset: changes were
 * lost to the bridge (its position was pruned, its registered reader was
 * dropped for lagging past fhir_notify.reader_max_lag, or the position
 * names no tick of this log: a crash lost ticks, a restored or another
 * database): every live subscription is told to resync and the bridge
 * carries on after the newest tick read; the rows read are not sent, as
 * the clients' reload covers them. Returns whether to fan out.
 */
static bool
read_position_checked(void)
{
	const char *reason = NULL;

	if (newest_tick < reading_upto)
		newest_tick = reading_upto;
	if (strcmp(read_status, "ok") == 0)
		return true;
	if (strcmp(read_status, "started") == 0)
	{
		log_info("database: reading the change log after tick %lld as reader \"%s\"", reading_upto,
		         the_bridge.settings.reader_name);
	}
	else
	{
		reason = strcmp(read_status, "pruned") == 0    ? "log_pruned"
		         : strcmp(read_status, "dropped") == 0 ? "reader_dropped"
		                                               : "log_reset";
		log_warning("database: changes after tick %lld are lost to this bridge (%s: %s); "
		            "every subscription is told to resync, reading on after tick %lld",
		            the_bridge.last_tick, read_status,
		            strcmp(read_status, "pruned") == 0 ? "the log was pruned past it"
		            : strcmp(read_status, "dropped") == 0
		                ? "its reader lagged past fhir_notify.reader_max_lag and was dropped"
		                : "it names no tick of this log: lost in a crash, or a restored or "
		                  "another database",
		            reading_upto);
	}
	drop_pending();
	the_bridge.last_tick = reading_upto;
	the_bridge.last_epoch = reading_epoch;
	ring_set_floor((cursor){reading_upto + 1, 0});
	if (reason)
		consumer->log_reset(reason);
	return false;
}

static void
catch_up_done(bool failed)
{
	pg_request *req = request_in_flight;

	request_in_flight = NULL; /* callbacks may queue requests: this batch is apart */
	if (req && !req->oldest_only)
	{
		if (!req->cancelled)
		{
			answer.failed = failed || query_results < 1;
			answer.upto_tick = req->upto_tick;
			answer.oldest_only = false;
			req->cancelled = true; /* a cancel from the callback is a no-op */
			req->ops->done(req->arg, &answer);
		}
		free(req);
		req = NULL;
	}
	while (req)
	{
		pg_request *done = req;

		req = req->next;
		if (!done->cancelled)
		{
			catch_up_answer a;

			memset(&a, 0, sizeof(a));
			a.failed = failed || !done->answered;
			a.oldest = done->oldest;
			a.since_epoch = done->since_epoch;
			a.upto_tick = done->upto_tick;
			a.oldest_only = true;
			done->cancelled = true; /* a cancel from the callback is a no-op */
			done->ops->done(done->arg, &a);
		}
		free(done);
	}
	answer_clear();
	next();
}

static void
reader_query_done(pg_link *link)
{
	bool failed = query_failed;

	query_failed = false;
	switch (state)
	{
		case READER_LISTENING:
			listening = !failed;
			next();
			return;
		case READER_ROLLING_BACK:
			next();
			return;
		case READER_READING:
			note_log_read(failed);
			if (failed || !read_header_seen)
			{
				if (!failed)
					log_warning("database: the change log's read_next() answered no position");
				/* nothing of a failed read is delivered: it is read again */
				drop_pending();
				doorbells_unanswered();
				read_failed();
				next();
				return;
			}
			retry_wait_us = 0;
			if (read_position_checked())
				fan_out();
			else
				after_fan_out();
			return;
		case READER_CATCHING_UP:
			catch_up_done(failed);
			return;
		default:
			next();
			return;
	}
}

/* See pg.h. */
pg_request *
pg_catch_up(const catch_up_ops *ops, void *arg)
{
	pg_request *req = xcalloc(1, sizeof(pg_request));

	req->ops = ops;
	req->arg = arg;
	/*
	 * Read the log up to now first, so that the limits are judged against
	 * everything committed before the request, not only what the bridge
	 * happened to have read.
	 */
	fetch_wanted = true;
	catch_up_turn = false;
	if (requests_tail)
		requests_tail->next = req;
	else
		requests_head = req;
	requests_tail = req;
	if (state == READER_IDLE)
		next();
	return req;
}

/* See pg.h. */
void
pg_request_cancel(pg_request *req)
{
	if (!req)
		return;
	if (req->orphaned)
		free(req);
	else
		req->cancelled = true;
}
