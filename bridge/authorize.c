/*
 * authorize.c
 *	  --authorize-sql: a query in the database decides whether a user may
 *	  see a patient ($1 user, $2 patient id, one boolean). It runs on a
 *	  connection of its own so catch-up and log reads never wait behind it;
 *	  answers are cached for --authorize-cache-seconds. An error counts as
 *	  "no": the bridge fails closed.
 */
#include "authorize.h"

#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "log.h"
#include "pg_link.h"

#define CACHE_SIZE 4096

struct authorize_request
{
	authorize_done_fn done;
	void *arg;
	int pending;    /* checks still queued or in flight */
	bool denied;    /* an answer said no */
	bool cancelled; /* freed once its last check is answered or dropped */
	bool orphaned;  /* the authorizer stopped: freed by authorize_cancel, never answered */
};

/* One question to the database: may user see patient_id? */
typedef struct check
{
	authorize_request *req;
	char *user;
	char *patient_id;
	struct check *next;
} check;

typedef struct cached_answer
{
	char *user;
	char *patient_id;
	bool allowed;
	long long expires_us; /* monotonic */
} cached_answer;

static void authorize_connected(pg_link *link);
static void authorize_result(pg_link *link, const PGresult *res);
static void authorize_query_done(pg_link *link);
static void authorize_disconnected(pg_link *link);
static void authorize_notify(pg_link *link, const PGnotify *notify);

static const pg_link_ops authorize_ops = {authorize_connected, authorize_result,
                                          authorize_query_done, authorize_disconnected,
                                          authorize_notify};
static pg_link authorizer = {.name = "authorize", .ops = &authorize_ops, .adopted_socket = -1};
static check *queue_head, *queue_tail, *in_flight;
static bool in_flight_answer;
static cached_answer cache[CACHE_SIZE];
static int cache_next;

static void
check_free(check *ch)
{
	if (!ch)
		return;
	free(ch->user);
	free(ch->patient_id);
	free(ch);
}

/*
 * One answer (or, with answered false, a check dropped) for req; the last
 * one calls back unless the request was cancelled, and frees it.
 */
static void
request_settle(authorize_request *req, bool answered, bool allowed)
{
	if (answered && !allowed)
		req->denied = true;
	if (--req->pending > 0)
		return;
	if (!req->cancelled)
		req->done(req->arg, !req->denied);
	free(req);
}

/* At stop: a check dropped; the requester still holds its handle. */
static void
request_orphan(authorize_request *req)
{
	if (--req->pending > 0)
		return;
	if (req->cancelled)
		free(req);
	else
		req->orphaned = true;
}

static cached_answer *
cache_find(const char *user, const char *patient_id)
{
	long long now = now_monotonic_us();

	for (int i = 0; i < CACHE_SIZE; i++)
	{
		cached_answer *a = &cache[i];

		if (a->user && a->expires_us > now && strcmp(a->user, user) == 0 &&
		    strcmp(a->patient_id, patient_id) == 0)
			return a;
	}
	return NULL;
}

static void
cache_store(const char *user, const char *patient_id, bool allowed)
{
	cached_answer *a = &cache[cache_next];

	cache_next = (cache_next + 1) % CACHE_SIZE;
	free(a->user);
	free(a->patient_id);
	a->user = xstrdup(user);
	a->patient_id = xstrdup(patient_id);
	a->allowed = allowed;
	a->expires_us =
	    now_monotonic_us() + (long long) the_bridge.settings.authorize_cache_seconds * 1000000;
}

static void
kick(void)
{
	while (authorizer.ready && !authorizer.busy && queue_head)
	{
		check *ch = queue_head;
		const char *values[2];

		queue_head = ch->next;
		if (!queue_head)
			queue_tail = NULL;
		if (ch->req->cancelled)
		{
			request_settle(ch->req, false, false);
			check_free(ch);
			continue;
		}
		values[0] = ch->user;
		values[1] = ch->patient_id;
		in_flight = ch;
		in_flight_answer = false;
		if (!pg_link_send(&authorizer, the_bridge.settings.authorize_sql, 2, values))
			return; /* the link reconnects; the check is retried from authorize_disconnected */
	}
}

/* See authorize.h. */
authorize_request *
authorize_patients(const char *user, char *const *patient_ids, int npatients,
                   authorize_done_fn done, void *arg, bool *allowed)
{
	authorize_request *req = xcalloc(1, sizeof(authorize_request));

	req->done = done;
	req->arg = arg;
	for (int i = 0; i < npatients; i++)
	{
		cached_answer *a = cache_find(user, patient_ids[i]);
		check *ch;

		if (a)
		{
			req->denied = req->denied || !a->allowed;
			continue;
		}
		ch = xcalloc(1, sizeof(check));
		ch->req = req;
		ch->user = xstrdup(user);
		ch->patient_id = xstrdup(patient_ids[i]);
		if (queue_tail)
			queue_tail->next = ch;
		else
			queue_head = ch;
		queue_tail = ch;
		req->pending++;
	}
	if (req->pending == 0)
	{
		*allowed = !req->denied;
		free(req);
		return NULL;
	}
	kick();
	return req;
}

/* See authorize.h. */
void
authorize_cancel(authorize_request *req)
{
	if (!req)
		return;
	if (req->orphaned)
		free(req);
	else
		req->cancelled = true;
}

static void
authorize_connected(pg_link *link)
{
	kick();
}

static void
authorize_result(pg_link *link, const PGresult *res)
{
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

		log_error("authorize: --authorize-sql failed: %s", primary ? primary : "unknown error");
		return;
	}
	in_flight_answer = PQntuples(res) == 1 && PQnfields(res) == 1 && !PQgetisnull(res, 0, 0) &&
	                   strcmp(PQgetvalue(res, 0, 0), "t") == 0;
}

static void
authorize_query_done(pg_link *link)
{
	check *ch = in_flight;

	in_flight = NULL;
	if (ch)
	{
		cache_store(ch->user, ch->patient_id, in_flight_answer);
		request_settle(ch->req, true, in_flight_answer);
		check_free(ch);
	}
	kick();
}

static void
authorize_disconnected(pg_link *link)
{
	/* ask again once reconnected */
	if (in_flight)
	{
		in_flight->next = queue_head;
		queue_head = in_flight;
		if (!queue_tail)
			queue_tail = in_flight;
		in_flight = NULL;
	}
}

static void
authorize_notify(pg_link *link, const PGnotify *notify)
{
}

/* See authorize.h. */
void
authorize_start(void)
{
	if (!the_bridge.settings.authorize_sql)
		return;
	authorizer.conninfo = the_bridge.settings.db;
	pg_link_start(&authorizer);
}

/* See authorize.h. */
void
authorize_stop(void)
{
	pg_link_stop(&authorizer);
	while (queue_head)
	{
		check *next = queue_head->next;

		request_orphan(queue_head->req);
		check_free(queue_head);
		queue_head = next;
	}
	queue_tail = NULL;
	if (in_flight)
		request_orphan(in_flight->req);
	check_free(in_flight);
	in_flight = NULL;
	for (int i = 0; i < CACHE_SIZE; i++)
	{
		free(cache[i].user);
		free(cache[i].patient_id);
		cache[i].user = cache[i].patient_id = NULL;
	}
}
