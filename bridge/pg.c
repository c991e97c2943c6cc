/*
 * pg.c
 *	  The change log reader. NOTIFY is only a doorbell: on each doorbell
 *	  and each safety poll the reader asks fhir_notify.tick() for the newest
 *	  snapshot tick and reads every tick after the last one it fanned out
 *	  with fhir_notify.read(), in (tick, position) order. The facts come
 *	  from the log, so a forged NOTIFY delivers nothing, a lost one is
 *	  caught by the poll, and after a reconnect the reader carries on from
 *	  its last tick: every committed change is fanned out exactly once.
 *	  The same connection serves catch-up reads for resuming clients.
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

typedef enum reader_step
{
	STEP_IDLE,
	STEP_LISTEN,
	STEP_TICK,
	STEP_TICK_READ, /* tick() and the read after the last tick in one round trip */
	STEP_READ,
	STEP_RESUME
} reader_step;

typedef struct resume_job
{
	subscription *sub; /* NULL once cancelled */
	long long upto_tick;
	bool from_ring; /* the ring has the changes: only ask whether the log was pruned */
	struct resume_job *next;
} resume_job;

static void reader_connected(pg_link *link);
static void reader_result(pg_link *link, const PGresult *res);
static void reader_query_done(pg_link *link);
static void reader_disconnected(pg_link *link);
static void reader_notify(pg_link *link, const PGnotify *notify);

static const pg_link_ops reader_ops = {reader_connected, reader_result, reader_query_done,
                                       reader_disconnected, reader_notify};

static pg_link reader = {.name = "database", .ops = &reader_ops, .adopted_socket = -1};
static reader_step step = STEP_IDLE;
static bool fetch_wanted;
static long long newest_tick;  /* from the last tick() */
static long long reading_upto; /* the read in flight covers ticks up to this */
static bool step_failed;
static int step_results; /* results of the current query so far */
static bool job_turn;    /* reads and catch-ups alternate: a busy log never starves resumes */
static resume_job *jobs_head, *jobs_tail;
static resume_job *job_in_flight;
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
static bool fanning_out; /* no new reads (or catch-ups) until the last read is out */
static lws_sorted_usec_list_t fan_out_timer;

static void kick(void);
static void after_fan_out(void);
static void drop_pending(void);

static void
poll_cb(lws_sorted_usec_list_t *sul)
{
	pg_request_fetch();
	lws_sul_schedule(the_bridge.context, 0, &poll_timer, poll_cb,
	                 (lws_usec_t) the_bridge.settings.poll_interval * LWS_US_PER_SEC);
}

/* See pg.h. */
void
pg_start(void)
{
	reader.conninfo = the_bridge.settings.db;
	pg_link_start(&reader);
	lws_sul_schedule(the_bridge.context, 0, &poll_timer, poll_cb,
	                 (lws_usec_t) the_bridge.settings.poll_interval * LWS_US_PER_SEC);
}

/* See pg.h. */
void
pg_stop(void)
{
	lws_sul_cancel(&poll_timer);
	lws_sul_cancel(&fan_out_timer);
	fanning_out = false;
	drop_pending();
	free(pending);
	pending = NULL;
	pg_link_stop(&reader);
	while (jobs_head)
	{
		resume_job *next = jobs_head->next;

		free(jobs_head);
		jobs_head = next;
	}
	jobs_tail = NULL;
	free(job_in_flight);
	job_in_flight = NULL;
}

/* See pg.h. */
void
pg_request_fetch(void)
{
	fetch_wanted = true;
	kick();
}

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
	step = STEP_READ;
	pg_link_send(&reader,
	             "SELECT " CHANGE_COLUMNS " FROM fhir_notify.read($1::bigint, $2::integer) r "
	             "ORDER BY r.tick_id, (r.change).position",
	             2, values);
}

/* A text[] literal of ids already checked to be [A-Za-z0-9.-]. */
static void
array_literal(strbuf *buf, char **items, int n)
{
	strbuf_append(buf, "{");
	for (int i = 0; i < n; i++)
		strbuf_appendf(buf, "%s\"%s\"", i ? "," : "", items[i]);
	strbuf_append(buf, "}");
}

static void
send_resume(resume_job *job)
{
	subscription *sub = job->sub;
	char after[32], ticks[32], since_tick[32], since_position[32], limit[32];
	strbuf patients, types;
	const char *values[7];
	long long first_tick = sub->since.tick > 0 ? sub->since.tick - 1 : 0;

	job->upto_tick = the_bridge.last_tick;
	step = STEP_RESUME;
	job_in_flight = job;
	job->from_ring = resume_ring_covers(sub);
	if (job->from_ring)
	{
		pg_link_send(&reader, "SELECT fhir_notify.oldest_tick()", 0, NULL);
		return;
	}
	snprintf(after, sizeof(after), "%lld", first_tick);
	snprintf(ticks, sizeof(ticks), "%lld", job->upto_tick - first_tick);
	snprintf(since_tick, sizeof(since_tick), "%lld", sub->since.tick);
	snprintf(since_position, sizeof(since_position), "%lld", sub->since.position);
	snprintf(limit, sizeof(limit), "%d", the_bridge.settings.resume_max_changes + 1);
	strbuf_init(&patients, 64);
	strbuf_init(&types, 64);
	array_literal(&patients, sub->patient_ids, sub->npatients);
	array_literal(&types, sub->types, sub->ntypes);
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

/* Starts the next piece of work if the connection is free. */
static void
kick(void)
{
	if (!reader.ready || reader.busy || fanning_out)
		return;
	if (fetch_wanted && !(job_turn && jobs_head))
	{
		fetch_wanted = false;
		job_turn = true;
		step_results = 0;
		if (the_bridge.last_tick == 0)
		{
			step = STEP_TICK;
			pg_link_send(&reader, "SELECT fhir_notify.tick()", 0, NULL);
		}
		else
		{
			strbuf sql;

			/*
			 * The read is a second statement of the same round trip: it
			 * sees the tick the first one made. Ticks past the newest are
			 * simply not there yet.
			 */
			strbuf_init(&sql, 1024);
			strbuf_appendf(
			    &sql,
			    "SELECT fhir_notify.tick(); SELECT " CHANGE_COLUMNS
			    " FROM fhir_notify.read(%lld, %d) r ORDER BY r.tick_id, (r.change).position",
			    the_bridge.last_tick, MAX_TICKS_PER_READ);
			step = STEP_TICK_READ;
			reading_upto = the_bridge.last_tick + MAX_TICKS_PER_READ;
			pg_link_send(&reader, sql.data, 0, NULL);
			strbuf_free(&sql);
		}
		return;
	}
	job_turn = false;
	while (jobs_head && the_bridge.last_tick > 0)
	{
		resume_job *job = jobs_head;

		jobs_head = job->next;
		if (!jobs_head)
			jobs_tail = NULL;
		if (!job->sub || resume_from_memory(job->sub))
		{
			free(job);
			continue;
		}
		send_resume(job);
		return;
	}
	step = STEP_IDLE;
}

static void
reader_connected(pg_link *link)
{
	char *channel = PQescapeIdentifier(link->conn, the_bridge.settings.channel,
	                                   strlen(the_bridge.settings.channel));
	strbuf sql;

	strbuf_init(&sql, 64);
	strbuf_appendf(&sql, "LISTEN %s", channel ? channel : "fhir_notify");
	PQfreemem(channel);
	step = STEP_LISTEN;
	step_failed = false;
	pg_link_send(link, sql.data, 0, NULL);
	strbuf_free(&sql);
	fetch_wanted = true;
}

/* Drops changes collected from a read that was not (or not wholly) answered. */
static void
drop_pending(void)
{
	for (int i = pending_next; i < npending; i++)
		change_unref(pending[i]);
	npending = pending_next = 0;
}

static void
reader_disconnected(pg_link *link)
{
	the_bridge.database_connected = false;
	/* a read answered but not finished is read again after the reconnect */
	if (!fanning_out)
		drop_pending();
	if (job_in_flight)
	{
		/* asked again after the reconnect */
		if (job_in_flight->sub)
		{
			job_in_flight->next = jobs_head;
			jobs_head = job_in_flight;
			if (!jobs_tail)
				jobs_tail = job_in_flight;
		}
		else
			free(job_in_flight);
		job_in_flight = NULL;
	}
	step = STEP_IDLE;
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
		deliver_change(c);
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
reader_result(pg_link *link, const PGresult *res)
{
	ExecStatusType status = PQresultStatus(res);

	if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
	{
		const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		step_failed = true;
		log_error("database: %s failed: %s (sqlstate %s)",
		          step == STEP_LISTEN   ? "listen"
		          : step == STEP_RESUME ? "catch-up read"
		                                : "reading the change log",
		          primary ? primary : "unknown error", sqlstate ? sqlstate : "none");
		return;
	}
	step_results++;
	switch (step)
	{
		case STEP_TICK:
			if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
				newest_tick = atoll(PQgetvalue(res, 0, 0));
			break;
		case STEP_TICK_READ:
			if (step_results == 1 && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
				newest_tick = atoll(PQgetvalue(res, 0, 0));
			else if (step_results == 2)
				collect_changes(res);
			break;
		case STEP_READ:
			collect_changes(res);
			break;
		case STEP_RESUME:
			if (job_in_flight && job_in_flight->sub)
			{
				subscription *sub = job_in_flight->sub;

				job_in_flight->sub = NULL;
				resume_database_done(sub, res, job_in_flight->upto_tick, job_in_flight->from_ring);
			}
			break;
		default:
			break;
	}
}

static void
reader_query_done(pg_link *link)
{
	reader_step done = step;
	bool failed = step_failed;

	step_failed = false;
	step = STEP_IDLE;
	if (done == STEP_RESUME)
	{
		if (job_in_flight && job_in_flight->sub && failed)
			subscription_resync(job_in_flight->sub, "catch_up_failed");
		free(job_in_flight);
		job_in_flight = NULL;
	}
	else if (done == STEP_TICK || done == STEP_TICK_READ || done == STEP_READ)
	{
		/* healthy means the change log can be read, not only that a socket is open */
		if (failed && the_bridge.database_connected)
			log_warning("database: the change log cannot be read; reporting unhealthy");
		the_bridge.database_connected = !failed;
		if (!failed)
			the_bridge.last_tick_ok_us = now_monotonic_us();
	}
	if (done == STEP_TICK_READ && !failed && step_results == 2 &&
	    newest_tick >= the_bridge.last_tick)
	{
		/* the read may have asked past the newest tick: those come next time */
		if (reading_upto > newest_tick)
			reading_upto = newest_tick;
		fanning_out = true;
		fan_out_step(&fan_out_timer);
		return;
	}
	if (done == STEP_TICK_READ)
	{
		/* failed, or the log went back in time: the read's rows are not to be trusted */
		drop_pending();
		if (failed)
		{
			kick();
			return;
		}
		done = STEP_TICK;
	}
	if (done == STEP_TICK && !failed)
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
			/* nobody's chart can be trusted to match the new log */
			for (client *c = the_bridge.clients; c; c = c->next)
			{
				for (int i = 0; i < c->nsubs; i++)
				{
					if (c->subs[i]->active)
						subscription_resync(c->subs[i], "log_reset");
				}
			}
		}
		if (newest_tick > the_bridge.last_tick)
		{
			send_read();
			return;
		}
	}
	else if (done == STEP_READ)
	{
		if (failed)
		{
			/* nothing of a failed read is delivered: it is read again */
			drop_pending();
		}
		else
		{
			fanning_out = true;
			fan_out_step(&fan_out_timer);
			return;
		}
	}
	kick();
}

/* A read is fanned out: read on if the log has more, else other work. */
static void
after_fan_out(void)
{
	fanning_out = false;
	if (reader.ready && !reader.busy && newest_tick > the_bridge.last_tick)
	{
		send_read();
		return;
	}
	kick();
}

/* See pg.h. */
void
pg_queue_resume(subscription *sub)
{
	resume_job *job = xcalloc(1, sizeof(resume_job));

	job->sub = sub;
	/*
	 * Read the log up to now first, so that the limits are judged against
	 * everything committed before the subscribe, not only what the bridge
	 * happened to have read.
	 */
	fetch_wanted = true;
	job_turn = false;
	if (jobs_tail)
		jobs_tail->next = job;
	else
		jobs_head = job;
	jobs_tail = job;
	kick();
}

/* See pg.h. */
void
pg_cancel_for_subscription(subscription *sub)
{
	for (resume_job *job = jobs_head; job; job = job->next)
	{
		if (job->sub == sub)
			job->sub = NULL;
	}
	if (job_in_flight && job_in_flight->sub == sub)
		job_in_flight->sub = NULL;
}
