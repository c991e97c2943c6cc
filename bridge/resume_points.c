/*
 * resume_points.c
 *	  Resume for clients that send no cursor.
 *
 * WintEHR's client re-subscribes after every reconnect with the same
 * subscription id (patient-<pid>-<ms>, kept in its map) and no cursor, so
 * what committed while it was away would never reach it. For every
 * subscription made without `since`, the bridge keeps a point per user,
 * patient and subscription id: every change up to it that the subscription
 * takes has been written to the connection. When the same user subscribes
 * to the same patient with the same id again without `since`, within
 * --resume-max-age, the point becomes its `since`: the missed changes are
 * replayed, then `caught_up`, exactly as if the cursor had been sent.
 *
 * The points live in fhir_notify.resume_points, so they survive a restart
 * and serve another bridge. The lookup itself saves the starting point of
 * every patient that has none (fhir_notify.claim_resume_points), so a
 * subscription is live only once a point of it is in the database. Later
 * points are written cheaply, in batches on a
 * connection of their own: a disconnecting client's points within a second,
 * every live one's every RESUME_POINTS_SAVE_US when it moved, and all of
 * them at shutdown. A point is never ahead of what was written to the
 * socket: updates still queued, or dropped (overflow, expiry, shutdown),
 * hold it back. A crash loses at most the last period's progress: the
 * client then gets duplicates (WintEHR's chart upserts by id), never a gap.
 *
 * Keyed by the subscription id as well as user and patient: two tabs of one
 * user on one patient are two charts, and one's progress must not move the
 * other's point past what it missed.
 */
#include "resume_points.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "client.h"
#include "log.h"
#include "message.h"
#include "pg_link.h"
#include "subscription.h"

#define CHECK_EVERY_US      (LWS_US_PER_SEC / 2)
#define DISCONNECT_SAVE_US  LWS_US_PER_SEC
#define BATCH_MAX           2000
#define UNAVAILABLE_RETRY_S (5 * 60)

struct resume_lookup
{
	char *user;
	char **patient_ids;
	int npatients;
	char *subscription_id;
	cursor claim; /* saved for the patients without a point */
	resume_lookup_cb cb;
	void *arg; /* NULL once cancelled */
	long long deadline_us;
	bool answered;
	bool claimed; /* the database answered: the claim is saved */
	bool found;
	cursor at;
	struct resume_lookup *next;
};

typedef struct saved_point
{
	char *user;
	char *patient_id;
	char *subscription_id;
	cursor at;
} saved_point;

static void link_connected(pg_link *link);
static void link_result(pg_link *link, const PGresult *res);
static void link_query_done(pg_link *link);
static void link_disconnected(pg_link *link);
static void link_notify(pg_link *link, const PGnotify *notify);
static void check_cb(lws_sorted_usec_list_t *sul);

static const pg_link_ops link_ops = {link_connected, link_result, link_query_done,
                                     link_disconnected, link_notify};
static pg_link link_ = {.name = "resume points", .ops = &link_ops, .adopted_socket = -1};
static bool link_started;
static lws_sorted_usec_list_t check_timer;

static resume_lookup *waiting, *waiting_tail; /* not sent yet */
static resume_lookup **in_flight;             /* the batch sent, by ord - 1 (one per patient) */
static int nin_flight;
static resume_lookup *answered; /* callbacks to make from the timer */

static saved_point *pending; /* to save */
static int npending, cap_pending;
static saved_point *sending; /* the save in flight */
static int nsending;
static long long save_due_us; /* monotonic: send pending saves from then on (0: none due) */
static long long next_periodic_us;
static long long unavailable_until_us; /* the functions are missing or denied: retry then */
static bool warned;

/* ---- points ---- */

/*
 * Everything up to this cursor that c's live subscriptions take has been
 * written: the bridge's position, or just before c's oldest queued update.
 */
static cursor
connection_served(const client *c)
{
	cursor served = bridge_current_cursor();

	for (int i = 0; i < c->queue_len; i++)
	{
		const message *msg = c->queue[(c->queue_head + i) % c->queue_cap];
		cursor before;

		if (msg->kind != MESSAGE_UPDATE || msg->at.tick == 0)
			continue;
		/* the same epoch: a log reset between two ticks is a resync, never a gap */
		before = msg->at.position > 0 ? (cursor){msg->at.tick, msg->at.position - 1, msg->at.epoch}
		                              : (cursor){msg->at.tick - 1, LLONG_MAX, msg->at.epoch};
		if (cursor_compare(before, served) < 0)
			served = before;
	}
	return served;
}

/* sub's point now, if it has one. */
static bool
subscription_point(const subscription *sub, cursor *at)
{
	if (!sub->record_point || sub->room || !sub->client->authenticated)
		return false;
	if (sub->point_frozen)
	{
		*at = sub->frozen_point;
		return true;
	}
	if (sub->state == SUB_LIVE && the_bridge.last_tick > 0)
	{
		*at = connection_served(sub->client);
		return true;
	}
	if (sub->state == SUB_CATCHING_UP && sub->has_since)
	{
		*at = sub->since; /* its replay has not been written yet */
		return true;
	}
	return false;
}

static void
queue_save(const char *user, const char *patient_id, const char *sid, cursor at)
{
	if (npending == cap_pending)
	{
		cap_pending = cap_pending ? cap_pending * 2 : 64;
		pending = xrealloc(pending, (size_t) cap_pending * sizeof(saved_point));
	}
	pending[npending].user = xstrdup(user);
	pending[npending].patient_id = xstrdup(patient_id);
	pending[npending].subscription_id = xstrdup(sid);
	pending[npending].at = at;
	npending++;
}

/* Queues sub's point when it moved since it was last queued. */
static bool
note_subscription(subscription *sub)
{
	cursor at;

	if (!subscription_point(sub, &at))
		return false;
	if (sub->point_saved && cursor_compare(sub->saved_point, at) == 0)
		return false;
	for (int i = 0; i < sub->npatients; i++)
		queue_save(sub->client->grant.subject ? sub->client->grant.subject : "",
		           sub->patient_ids[i], sub->id, at);
	sub->saved_point = at;
	sub->point_saved = true;
	return true;
}

/* See resume_points.h. */
void
resume_points_note(subscription *sub)
{
	if (note_subscription(sub) && !save_due_us)
		save_due_us = now_monotonic_us() + DISCONNECT_SAVE_US;
}

/* See resume_points.h. */
void
resume_points_before_drop(client *c)
{
	for (int i = 0; i < c->nsubs; i++)
	{
		subscription *sub = c->subs[i];
		cursor at;

		if (sub->point_frozen || !subscription_point(sub, &at))
			continue;
		sub->point_frozen = true;
		sub->frozen_point = at;
		resume_points_note(sub);
	}
}

/* ---- the database side ---- */

static void
free_points(saved_point *points, int n)
{
	for (int i = 0; i < n; i++)
	{
		free(points[i].user);
		free(points[i].patient_id);
		free(points[i].subscription_id);
	}
}

/* A text[] literal of n strings taken by get(i). */
static char *
text_array(int n, const char *(*get)(int i, void *arg), void *arg)
{
	strbuf buf;

	strbuf_init(&buf, 64 + (size_t) n * 48);
	strbuf_append(&buf, "{");
	for (int i = 0; i < n; i++)
	{
		const char *s = get(i, arg);

		if (i > 0)
			strbuf_append(&buf, ",");
		strbuf_append(&buf, "\"");
		for (const char *p = s; *p; p++)
		{
			if (*p == '"' || *p == '\\')
				strbuf_append(&buf, "\\");
			strbuf_append_len(&buf, p, 1);
		}
		strbuf_append(&buf, "\"");
	}
	strbuf_append(&buf, "}");
	return buf.data;
}

static const char *
point_user(int i, void *arg)
{
	return ((saved_point *) arg)[i].user;
}

static const char *
point_patient(int i, void *arg)
{
	return ((saved_point *) arg)[i].patient_id;
}

static const char *
point_sid(int i, void *arg)
{
	return ((saved_point *) arg)[i].subscription_id;
}

static cursor
point_at(int i, void *arg)
{
	return ((saved_point *) arg)[i].at;
}

/* The ticks, positions and epochs of n cursors taken by get(i), as three bigint[] literals. */
static void
cursor_arrays(int n, cursor (*get)(int i, void *arg), void *arg, char *values[3])
{
	strbuf buf[3];

	for (int w = 0; w < 3; w++)
	{
		strbuf_init(&buf[w], 16 + (size_t) n * 12);
		strbuf_append(&buf[w], "{");
	}
	for (int i = 0; i < n; i++)
	{
		cursor c = get(i, arg);

		strbuf_appendf(&buf[0], "%s%lld", i > 0 ? "," : "", c.tick);
		strbuf_appendf(&buf[1], "%s%lld", i > 0 ? "," : "", c.position);
		strbuf_appendf(&buf[2], "%s%lld", i > 0 ? "," : "", c.epoch);
	}
	for (int w = 0; w < 3; w++)
	{
		strbuf_append(&buf[w], "}");
		values[w] = buf[w].data;
	}
}

static void
max_age_text(char *out, size_t outlen)
{
	/* 0: no age limit */
	if (the_bridge.settings.resume_max_age > 0)
		snprintf(out, outlen, "%d seconds", the_bridge.settings.resume_max_age);
	else
		snprintf(out, outlen, "100 years");
}

/* The SQL and parameters that save points[0..n). */
static void
save_params(saved_point *points, int n, char *values[7], char *age, size_t agelen)
{
	values[0] = text_array(n, point_user, points);
	values[1] = text_array(n, point_patient, points);
	values[2] = text_array(n, point_sid, points);
	cursor_arrays(n, point_at, points, &values[3]);
	max_age_text(age, agelen);
	values[6] = age;
}

#define SAVE_SQL                                                                                   \
	"SELECT fhir_notify.save_resume_points($1::text[], $2::text[], $3::text[], $4::bigint[], "     \
	"$5::bigint[], $6::bigint[], $7::interval)"
#define CLAIM_SQL                                                                                  \
	"SELECT ord, tick, \"position\", epoch FROM fhir_notify.claim_resume_points($1::text[], "      \
	"$2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::interval)"

/* Flattened (user, patient, id) of the lookups in flight, for the query. */
typedef struct lookup_keys
{
	resume_lookup **lookups; /* per row */
	int *patient;            /* per row: which of the lookup's patients */
} lookup_keys;

static const char *
key_user(int i, void *arg)
{
	return ((lookup_keys *) arg)->lookups[i]->user;
}

static const char *
key_patient(int i, void *arg)
{
	lookup_keys *k = arg;

	return k->lookups[i]->patient_ids[k->patient[i]];
}

static const char *
key_sid(int i, void *arg)
{
	return ((lookup_keys *) arg)->lookups[i]->subscription_id;
}

/* The claim of the lookup filling row i. */
static cursor
key_claim(int i, void *arg)
{
	return ((lookup_keys *) arg)->lookups[i]->claim;
}

static int *in_flight_patient;

/* Sends the waiting lookups as one query; true if sent. */
static bool
send_lookups(void)
{
	int rows = 0;
	lookup_keys keys;
	char *values[7];
	char age[64];
	bool sent;

	for (resume_lookup *l = waiting; l && rows < BATCH_MAX; l = l->next)
		rows += l->npatients;
	if (rows == 0)
		return false;
	in_flight = xcalloc((size_t) rows, sizeof(resume_lookup *));
	in_flight_patient = xcalloc((size_t) rows, sizeof(int));
	nin_flight = 0;
	while (waiting && nin_flight < BATCH_MAX)
	{
		resume_lookup *l = waiting;

		waiting = l->next;
		l->next = NULL;
		for (int i = 0; i < l->npatients && nin_flight < rows; i++)
		{
			in_flight[nin_flight] = l;
			in_flight_patient[nin_flight++] = i;
		}
	}
	if (!waiting)
		waiting_tail = NULL;
	keys.lookups = in_flight;
	keys.patient = in_flight_patient;
	values[0] = text_array(nin_flight, key_user, &keys);
	values[1] = text_array(nin_flight, key_patient, &keys);
	values[2] = text_array(nin_flight, key_sid, &keys);
	cursor_arrays(nin_flight, key_claim, &keys, &values[3]);
	max_age_text(age, sizeof(age));
	values[6] = age;
	sent = pg_link_send(&link_, CLAIM_SQL, 7, (const char *const *) values);
	for (int i = 0; i < 6; i++)
		free(values[i]);
	return sent;
}

static bool
send_saves(void)
{
	char *values[7];
	char age[64];
	bool sent;
	int n = npending < BATCH_MAX ? npending : BATCH_MAX;

	sending = xcalloc((size_t) n, sizeof(saved_point));
	memcpy(sending, pending, (size_t) n * sizeof(saved_point));
	memmove(pending, pending + n, (size_t) (npending - n) * sizeof(saved_point));
	npending -= n;
	nsending = n;
	save_params(sending, n, values, age, sizeof(age));
	sent = pg_link_send(&link_, SAVE_SQL, 7, (const char *const *) values);
	for (int i = 0; i < 6; i++)
		free(values[i]);
	return sent;
}

/* Settles a lookup: its callback runs from the timer (never inside a caller's stack). */
static void
settle(resume_lookup *l, bool claimed, bool found, cursor at)
{
	if (l->answered)
		return;
	l->answered = true;
	l->claimed = claimed;
	l->found = found;
	l->at = at;
	l->next = answered;
	answered = l;
}

static void
free_lookup(resume_lookup *l)
{
	for (int i = 0; i < l->npatients; i++)
		free(l->patient_ids[i]);
	free(l->patient_ids);
	free(l->user);
	free(l->subscription_id);
	free(l);
}

/* Ends the lookups of the batch in flight: what was not found is not there. */
static void
end_lookup_batch(void)
{
	for (int i = 0; i < nin_flight; i++)
	{
		resume_lookup *l = in_flight[i];

		if (l && !l->answered)
			settle(l, true, l->found, l->at);
		/* the same lookup may fill several rows */
		for (int j = i + 1; j < nin_flight; j++)
		{
			if (in_flight[j] == l)
				in_flight[j] = NULL;
		}
	}
	free(in_flight);
	free(in_flight_patient);
	in_flight = NULL;
	in_flight_patient = NULL;
	nin_flight = 0;
}

static void
run_callbacks(void)
{
	while (answered)
	{
		resume_lookup *l = answered;

		answered = l->next;
		if (l->arg)
			l->cb(l->arg, l->claimed, l->found, l->at);
		free_lookup(l);
	}
}

static void
mark_unavailable(const PGresult *res)
{
	const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

	if (!warned)
		log_warning("resume points: %s (sqlstate %s): subscriptions without a cursor are not "
		            "resumed; %s; retrying in %d minutes",
		            primary ? primary : "unknown error", sqlstate ? sqlstate : "none",
		            sqlstate && strcmp(sqlstate, "42501") == 0
		                ? "run SELECT fhir_notify.grant_reader('<the bridge's role>')"
		                : "update the extension (ALTER EXTENSION fhir_notify UPDATE)",
		            UNAVAILABLE_RETRY_S / 60);
	warned = true;
	unavailable_until_us = now_monotonic_us() + (long long) UNAVAILABLE_RETRY_S * 1000000;
}

static void
link_result(pg_link *link, const PGresult *res)
{
	ExecStatusType status = PQresultStatus(res);

	if (status != PGRES_TUPLES_OK)
	{
		mark_unavailable(res);
		return;
	}
	if (warned)
		log_info("resume points: available again");
	warned = false;
	if (nin_flight == 0)
		return;
	for (int r = 0; r < PQntuples(res); r++)
	{
		int ord = atoi(PQgetvalue(res, r, 0));
		cursor at = {atoll(PQgetvalue(res, r, 1)), atoll(PQgetvalue(res, r, 2)),
		             atoll(PQgetvalue(res, r, 3))};
		resume_lookup *l;

		if (ord < 1 || ord > nin_flight || !(l = in_flight[ord - 1]))
			continue;
		/* several patients: the earliest point serves them all */
		if (!l->found || cursor_compare(at, l->at) < 0)
			l->at = at;
		l->found = true;
	}
}

static void
link_query_done(pg_link *link)
{
	if (nin_flight > 0)
		end_lookup_batch();
	if (nsending > 0)
	{
		free_points(sending, nsending);
		free(sending);
		sending = NULL;
		nsending = 0;
	}
	run_callbacks();
	/*
	 * More lookups queued meanwhile (a restarted bridge's clients all
	 * reconnect at once): the next batch goes now, not at the next check,
	 * since each of them waits for its answer to go live.
	 */
	if (waiting)
		lws_sul_schedule(the_bridge.context, 0, &check_timer, check_cb, 1);
}

static void
link_connected(pg_link *link)
{
}

/* The save in flight may not have landed: its points go back to the pending ones. */
static void
requeue_sending(void)
{
	for (int i = 0; i < nsending; i++)
		queue_save(sending[i].user, sending[i].patient_id, sending[i].subscription_id,
		           sending[i].at);
	free_points(sending, nsending);
	free(sending);
	sending = NULL;
	nsending = 0;
}

static void
link_disconnected(pg_link *link)
{
	/* the lookups in flight: not answered (they time out); the saves: again */
	for (int i = 0; i < nin_flight; i++)
	{
		resume_lookup *l = in_flight[i];

		if (l && !l->answered)
		{
			for (int j = i + 1; j < nin_flight; j++)
			{
				if (in_flight[j] == l)
					in_flight[j] = NULL;
			}
			settle(l, false, false, (cursor){0, 0});
		}
	}
	free(in_flight);
	free(in_flight_patient);
	in_flight = NULL;
	in_flight_patient = NULL;
	nin_flight = 0;
	requeue_sending();
	if (!save_due_us)
		save_due_us = now_monotonic_us() + DISCONNECT_SAVE_US;
}

static void
link_notify(pg_link *link, const PGnotify *notify)
{
}

/* Every live subscription's point, when it moved. */
static void
note_all(void)
{
	for (client *c = the_bridge.clients; c; c = c->next)
	{
		for (int i = 0; i < c->nsubs; i++)
			note_subscription(c->subs[i]);
	}
}

static void
check_cb(lws_sorted_usec_list_t *sul)
{
	long long now = now_monotonic_us();

	lws_sul_schedule(the_bridge.context, 0, &check_timer, check_cb, CHECK_EVERY_US);
	/* lookups the database did not answer in time: no point */
	for (resume_lookup **lp = &waiting; *lp;)
	{
		resume_lookup *l = *lp;

		if (now < l->deadline_us && resume_points_enabled())
		{
			lp = &l->next;
			continue;
		}
		*lp = l->next;
		l->next = NULL;
		settle(l, false, false, (cursor){0, 0});
	}
	waiting_tail = NULL;
	for (resume_lookup *l = waiting; l; l = l->next)
		waiting_tail = l;
	if (now >= next_periodic_us)
	{
		next_periodic_us = now + RESUME_POINTS_SAVE_US;
		note_all();
		if (npending > 0 && !save_due_us)
			save_due_us = now;
	}
	if (link_.ready && !link_.busy && now >= unavailable_until_us)
	{
		if (waiting)
			send_lookups();
		else if (npending > 0 && save_due_us && now >= save_due_us)
		{
			send_saves();
			if (npending == 0)
				save_due_us = 0;
		}
	}
	run_callbacks();
}

/* See resume_points.h. */
bool
resume_points_enabled(void)
{
	return the_bridge.settings.resume_without_cursor && link_started &&
	       now_monotonic_us() >= unavailable_until_us;
}

/* See resume_points.h. */
resume_lookup *
resume_points_lookup(const char *user, char **patient_ids, int npatients,
                     const char *subscription_id, cursor claim, resume_lookup_cb cb, void *arg)
{
	resume_lookup *l = xcalloc(1, sizeof(resume_lookup));

	l->user = xstrdup(user ? user : "");
	l->patient_ids = xcalloc((size_t) npatients + 1, sizeof(char *));
	for (int i = 0; i < npatients; i++)
		l->patient_ids[i] = xstrdup(patient_ids[i]);
	l->npatients = npatients;
	l->subscription_id = xstrdup(subscription_id);
	l->claim = claim;
	l->cb = cb;
	l->arg = arg;
	l->deadline_us = now_monotonic_us() + RESUME_POINTS_LOOKUP_TIMEOUT_US;
	if (waiting_tail)
		waiting_tail->next = l;
	else
		waiting = l;
	waiting_tail = l;
	/* answered at the next check (at most half a second), batched with others */
	if (link_.ready && !link_.busy)
		lws_sul_schedule(the_bridge.context, 0, &check_timer, check_cb, 1);
	return l;
}

/* See resume_points.h. */
void
resume_points_cancel(resume_lookup *l)
{
	if (l)
		l->arg = NULL; /* freed when its answer (or timeout) comes */
}

/* See resume_points.h. */
void
resume_points_start(void)
{
	link_.conninfo = the_bridge.settings.db;
	link_.stopped = false;
	link_started = true;
	next_periodic_us = now_monotonic_us() + RESUME_POINTS_SAVE_US;
	pg_link_start(&link_);
	lws_sul_schedule(the_bridge.context, 0, &check_timer, check_cb, CHECK_EVERY_US);
}

/* Saves pending on a fresh blocking connection: the loop has stopped. */
static void
save_at_shutdown(void)
{
	const char *keys[] = {"dbname", "connect_timeout", "options", NULL};
	const char *vals[] = {the_bridge.settings.db, "3", "-c statement_timeout=3000", NULL};
	PGconn *conn;
	int saved = 0;

	if (npending == 0)
		return;
	conn = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		log_warning("resume points: could not save %d points at shutdown: %s", npending,
		            PQerrorMessage(conn));
		PQfinish(conn);
		free_points(pending, npending); /* not saved: they resume from their last saved point */
		npending = 0;
		return;
	}
	while (npending > 0)
	{
		char *values[7];
		char age[64];
		int n = npending < BATCH_MAX ? npending : BATCH_MAX;
		PGresult *res;

		save_params(pending, n, values, age, sizeof(age));
		res = PQexecParams(conn, SAVE_SQL, 7, NULL, (const char *const *) values, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			log_warning("resume points: could not save %d points at shutdown: %s", n,
			            PQresultErrorMessage(res));
		else
			saved += n;
		PQclear(res);
		for (int i = 0; i < 6; i++)
			free(values[i]);
		free_points(pending, n);
		memmove(pending, pending + n, (size_t) (npending - n) * sizeof(saved_point));
		npending -= n;
	}
	PQfinish(conn);
	log_info("resume points: saved %d at shutdown", saved);
}

/* See resume_points.h. */
void
resume_points_stop(void)
{
	if (!link_started)
		return;
	note_all(); /* whoever is still connected */
	lws_sul_cancel(&check_timer);
	pg_link_stop(&link_);
	link_started = false;
	/* a save in flight may not have landed: again */
	requeue_sending();
	save_at_shutdown();
	free(pending);
	pending = NULL;
	cap_pending = 0;
	for (int i = 0; i < nin_flight; i++)
	{
		for (int j = i + 1; j < nin_flight; j++)
			if (in_flight[j] == in_flight[i])
				in_flight[j] = NULL;
		if (in_flight[i])
			free_lookup(in_flight[i]);
	}
	free(in_flight);
	free(in_flight_patient);
	in_flight = NULL;
	nin_flight = 0;
	while (waiting)
	{
		resume_lookup *l = waiting;

		waiting = l->next;
		free_lookup(l);
	}
	waiting_tail = NULL;
	while (answered)
	{
		resume_lookup *l = answered;

		answered = l->next;
		free_lookup(l);
	}
}
