/*
 * pg.c
 *	  The change log reader. NOTIFY is only a doorbell: on each doorbell
 *	  and each safety poll the reader asks fhir_notify.tick() for the newest
 *	  snapshot tick and, in the same round trip, reads every tick after the
 *	  last one it fanned out with fhir_notify.read(), in (tick, position)
 *	  order. The facts come from the log, so a forged NOTIFY delivers
 *	  nothing, a lost one is caught by the poll, and after a reconnect the
 *	  reader carries on from its last tick: every committed change is fanned
 *	  out exactly once. The same connection serves catch-up reads for
 *	  whoever asks (pg_catch_up); the reader knows nothing of clients.
 *
 *	  The reader is a state machine; reader_state says what it is doing,
 *	  and next() alone decides what it does when it has nothing to do:
 *
 *	    DISCONNECTED --connected--> LISTENING --done--> next()
 *	    next(): a doorbell (or the poll) wanted -> TICKING (first start:
 *	            where to begin) or READING (tick(); read() in one round trip)
 *	            else a catch-up request queued -> CATCHING_UP
 *	            else IDLE
 *	    TICKING --done--> READING (the log is ahead) or next()
 *	    READING --done--> FANNING_OUT (its changes, a batch per loop turn)
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
	READER_IDLE,
	READER_TICKING,     /* tick() alone in flight: the first start */
	READER_READING,     /* tick(); read() in flight, or a read() continuing */
	READER_FANNING_OUT, /* the last read's changes going out */
	READER_CATCHING_UP  /* a catch-up read in flight */
} reader_state;

static const char *const reader_state_names[] = {
    "disconnected", "listening", "idle", "ticking", "reading", "fanning out", "catching up"};

struct pg_request
{
	const catch_up_ops *ops;
	void *arg;
	bool cancelled; /* freed when the reader next looks at it */
	bool orphaned;  /* the reader stopped: freed by pg_request_cancel */
	long long upto_tick;
	bool oldest_only;
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
static bool listening;         /* LISTEN done on the current connection */
static bool fetch_wanted;      /* a doorbell or the poll since the last read began */
static bool with_tick;         /* the read in flight began with tick() */
static long long newest_tick;  /* from the last tick() */
static long long reading_upto; /* the read in flight covers ticks up to this */
static bool query_failed;
static int query_results;  /* results of the query in flight so far */
static bool catch_up_turn; /* reads and catch-ups alternate */
static pg_request *requests_head, *requests_tail;
static pg_request *request_in_flight;
static catch_up_answer answer; /* of the request in flight */
static lws_sorted_usec_list_t poll_timer;

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

static void
set_state(reader_state to)
{
	if (to != state)
		log_debug("database: reader %s -> %s", reader_state_names[state], reader_state_names[to]);
	state = to;
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
	lws_sul_cancel(&fan_out_timer);
	drop_pending();
	free(pending);
	pending = NULL;
	pg_link_stop(&reader);
	set_state(READER_DISCONNECTED);
	while (requests_head)
	{
		pg_request *req = requests_head;

		requests_head = req->next;
		orphan(req);
	}
	requests_tail = NULL;
	if (request_in_flight)
		orphan(request_in_flight);
	request_in_flight = NULL;
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

/* Sends a read of the ticks after the last one fanned out, up to newest_tick. */
static void
send_read(void)
{
	char after[32], count[32];
	const char *values[2] = {after, count};
	long long n = newest_tick - the_bridge.last_tick;

	if (n > MAX_TICKS_PER_READ)
		n = MAX_TICKS_PER_READ;
	reading_upto = the_bridge.last_tick + n;
	snprintf(after, sizeof(after), "%lld", the_bridge.last_tick);
	snprintf(count, sizeof(count), "%lld", n);
	with_tick = false;
	query_results = 0;
	set_state(READER_READING);
	pg_link_send(&reader,
	             "SELECT " CHANGE_COLUMNS " FROM fhir_notify.read($1::bigint, $2::integer) r "
	             "ORDER BY r.tick_id, (r.change).position",
	             2, values);
}

/*
 * tick() and the read after the last tick in one round trip: the read is
 * a second statement, so it sees the tick the first one made. Ticks past
 * the newest are simply not there yet.
 */
static void
send_tick_read(void)
{
	strbuf sql;

	strbuf_init(&sql, 1024);
	strbuf_appendf(&sql,
	               "SELECT fhir_notify.tick(); SELECT " CHANGE_COLUMNS
	               " FROM fhir_notify.read(%lld, %d) r ORDER BY r.tick_id, (r.change).position",
	               the_bridge.last_tick, MAX_TICKS_PER_READ);
	with_tick = true;
	query_results = 0;
	reading_upto = the_bridge.last_tick + MAX_TICKS_PER_READ;
	set_state(READER_READING);
	pg_link_send(&reader, sql.data, 0, NULL);
	strbuf_free(&sql);
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
	char after[32], ticks[32], since_tick[32], since_position[32], limit[32];
	strbuf patients, types;
	const char *values[7];
	long long first_tick = q->since.tick > 0 ? q->since.tick - 1 : 0;

	req->upto_tick = the_bridge.last_tick;
	req->oldest_only = q->oldest_only;
	request_in_flight = req;
	query_results = 0;
	answer_clear();
	set_state(READER_CATCHING_UP);
	if (q->oldest_only)
	{
		pg_link_send(&reader, "SELECT fhir_notify.oldest_tick()", 0, NULL);
		return;
	}
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
	/*
	 * The first column is the oldest readable tick, on a row of its own
	 * when nothing matches, so a pruned log is told from a quiet one.
	 */
	pg_link_send(&reader,
	             "SELECT o.oldest, " CHANGE_COLUMNS
	             " FROM (SELECT fhir_notify.oldest_tick() AS oldest) o "
	             "LEFT JOIN LATERAL (SELECT * FROM fhir_notify.read($1::bigint, $2::integer) r "
	             " WHERE (r.change).patient_ids OPERATOR(pg_catalog.&&) $3::text[] "
	             "   AND (r.tick_id, (r.change).position) > ($4::bigint, $5::bigint) "
	             "   AND (pg_catalog.cardinality($6::text[]) = 0 "
	             "        OR (r.change).resource_type OPERATOR(pg_catalog.=) ANY ($6::text[])) "
	             " ORDER BY r.tick_id, (r.change).position LIMIT $7::integer) r ON true",
	             7, values);
	strbuf_free(&patients);
	strbuf_free(&types);
}

/* Starts the next catch-up request whose turn came; false if none did. */
static bool
start_catch_up(void)
{
	while (requests_head && the_bridge.last_tick > 0)
	{
		pg_request *req = requests_head;
		catch_up_query q;

		requests_head = req->next;
		if (!requests_head)
			requests_tail = NULL;
		req->next = NULL;
		memset(&q, 0, sizeof(q));
		if (req->cancelled || !req->ops->prepare(req->arg, &q))
		{
			free(req); /* cancelled, or settled without the database */
			continue;
		}
		send_catch_up(req, &q);
		return true;
	}
	return false;
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
		if (the_bridge.last_tick == 0)
		{
			query_results = 0;
			set_state(READER_TICKING);
			pg_link_send(&reader, "SELECT fhir_notify.tick()", 0, NULL);
		}
		else
			send_tick_read();
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
	if (state == READER_FANNING_OUT)
		return; /* its changes were read whole: they go out, then the reader waits */
	/* a read answered but not finished is read again after the reconnect */
	drop_pending();
	if (request_in_flight)
	{
		/* asked again after the reconnect */
		if (request_in_flight->cancelled)
			free(request_in_flight);
		else
		{
			request_in_flight->next = requests_head;
			requests_head = request_in_flight;
			if (!requests_tail)
				requests_tail = request_in_flight;
		}
		request_in_flight = NULL;
		answer_clear();
	}
	set_state(READER_DISCONNECTED);
}

static void
reader_notify(pg_link *link, const PGnotify *notify)
{
	/* a doorbell only: whatever the payload, the log says what happened */
	pg_request_fetch();
}

/* Turns the rows of a read into changes waiting to be fanned out. */
static void
collect_changes(const PGresult *res)
{
	int rows = PQntuples(res);

	pending = xrealloc(pending, (size_t) (npending + rows + 1) * sizeof(change *));
	for (int i = 0; i < rows; i++)
	{
		change *c = change_from_row(res, i, 0);

		if (c)
			pending[npending++] = c;
	}
}

/* Turns a catch-up read's rows (the oldest tick, then a change or NULLs) into its answer. */
static void
collect_answer(const PGresult *res)
{
	int rows = PQntuples(res);

	answer.oldest = rows > 0 && !PQgetisnull(res, 0, 0) ? atoll(PQgetvalue(res, 0, 0)) : 0;
	if (request_in_flight->oldest_only)
		return;
	answer.changes = xcalloc((size_t) rows + 1, sizeof(change *));
	for (int i = 0; i < rows; i++)
	{
		change *c;

		if (PQgetisnull(res, i, 1))
			continue;
		c = change_from_row(res, i, 1);
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
		case READER_TICKING:
			if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
				newest_tick = atoll(PQgetvalue(res, 0, 0));
			break;
		case READER_READING:
			if (with_tick && query_results == 1)
			{
				if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
					newest_tick = atoll(PQgetvalue(res, 0, 0));
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

/* What tick() said, on its own or before a read that cannot be trusted. */
static void
tick_done(void)
{
	if (the_bridge.last_tick == 0)
	{
		/* first start: deliver what commits from now on */
		the_bridge.last_tick = newest_tick;
		ring_set_floor((cursor){newest_tick + 1, 0});
		log_info("database: reading the change log after tick %lld", newest_tick);
	}
	else if (newest_tick < the_bridge.last_tick)
	{
		log_warning("database: the change log is behind the bridge (tick %lld < %lld); was it "
		            "recreated?",
		            newest_tick, the_bridge.last_tick);
		the_bridge.last_tick = newest_tick;
		ring_set_floor((cursor){newest_tick + 1, 0});
		consumer->log_reset();
	}
	if (newest_tick > the_bridge.last_tick)
		send_read();
	else
		next();
}

static void
catch_up_done(bool failed)
{
	pg_request *req = request_in_flight;

	request_in_flight = NULL;
	if (req && !req->cancelled)
	{
		answer.failed = failed || query_results < 1;
		answer.upto_tick = req->upto_tick;
		answer.oldest_only = req->oldest_only;
		req->cancelled = true; /* a cancel from the callback is a no-op */
		req->ops->done(req->arg, &answer);
	}
	free(req);
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
		case READER_TICKING:
			note_log_read(failed);
			if (failed)
				next();
			else
				tick_done();
			return;
		case READER_READING:
			note_log_read(failed);
			if (failed)
			{
				/* nothing of a failed read is delivered: it is read again */
				drop_pending();
				next();
				return;
			}
			if (!with_tick)
			{
				fan_out();
				return;
			}
			if (query_results == 2 && newest_tick >= the_bridge.last_tick)
			{
				/* the read may have asked past the newest tick: those come next time */
				if (reading_upto > newest_tick)
					reading_upto = newest_tick;
				fan_out();
				return;
			}
			/* the log went back in time: the read's rows are not to be trusted */
			drop_pending();
			tick_done();
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
