/*
 * prune.c
 *	  Log retention (--prune-keep): every min(60 s, prune-keep) the bridge
 *	  calls fhir_notify.prune() on a connection of its own, so a prune
 *	  deleting many rows never holds up the reader and change delivery.
 *	  A failure (typically a role made with grant_reader(), which has no
 *	  EXECUTE on prune) is logged once with what to do, then retried only
 *	  rarely; it never touches delivery or /healthz.
 */
#include "prune.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "log.h"
#include "metrics.h"
#include "pg_link.h"

#define PRUNE_PERIOD_MAX_S 60
#define PRUNE_BACKOFF_S    (15 * 60) /* after a failure: the cause needs a person */
#define CHECK_EVERY_US     LWS_US_PER_SEC

static void prune_connected(pg_link *link);
static void prune_result(pg_link *link, const PGresult *res);
static void prune_query_done(pg_link *link);
static void prune_disconnected(pg_link *link);
static void prune_notify(pg_link *link, const PGnotify *notify);

static const pg_link_ops prune_ops = {prune_connected, prune_result, prune_query_done,
                                      prune_disconnected, prune_notify};

/* a first prune of a long-unpruned log may take minutes: not a hung server */
#define PRUNE_QUERY_TIMEOUT_US (10 * 60 * 1000000LL)

static pg_link link_ = {.name = "prune",
                        .ops = &prune_ops,
                        .adopted_socket = -1,
                        .query_timeout_us = PRUNE_QUERY_TIMEOUT_US};
static bool link_started;
static lws_sorted_usec_list_t check_timer;
static long long next_prune_us; /* monotonic: no prune before this */
static bool failed_before;      /* the last prune failed: warn only once in a row */
static int seen_keep = -1;      /* settings last judged by warn_if_short() */
static int seen_max_age = -1;

/*
 * A client may resume up to resume-max-age after its cursor; a log pruned
 * sooner tells it to resync before that. Said once per change of settings.
 */
static void
warn_if_short(void)
{
	int keep = the_bridge.settings.prune_keep;
	int max_age = the_bridge.settings.resume_max_age;

	if (keep == seen_keep && max_age == seen_max_age)
		return;
	seen_keep = keep;
	seen_max_age = max_age;
	if (keep > 0 && max_age > 0 && keep < max_age)
		log_warning("prune: prune-keep (%d s) is shorter than resume-max-age (%d s): clients "
		            "resuming after more than %d s are told to resync",
		            keep, max_age, keep);
}

/* Seconds between prunes: a short keep prunes as often as it keeps. */
static int
prune_period(void)
{
	int keep = the_bridge.settings.prune_keep;

	return keep < PRUNE_PERIOD_MAX_S ? keep : PRUNE_PERIOD_MAX_S;
}

/* Once a second: follows reloads of prune-keep and sends a prune when one is due. */
static void
check_cb(lws_sorted_usec_list_t *sul)
{
	char keep[32];
	const char *values[1] = {keep};

	lws_sul_schedule(the_bridge.context, 0, &check_timer, check_cb, CHECK_EVERY_US);
	warn_if_short();
	if (the_bridge.settings.prune_keep <= 0)
	{
		if (link_started)
		{
			/* turned off on reload: no connection kept for nothing */
			pg_link_stop(&link_);
			link_started = false;
			log_info("prune: off");
		}
		return;
	}
	if (!link_started)
	{
		link_.conninfo = the_bridge.settings.db;
		link_.stopped = false;
		link_started = true;
		next_prune_us = 0;
		pg_link_start(&link_);
		return;
	}
	if (!link_.ready || link_.busy || now_monotonic_us() < next_prune_us)
		return;
	snprintf(keep, sizeof(keep), "%d", the_bridge.settings.prune_keep);
	if (pg_link_send(&link_, "SELECT fhir_notify.prune(pg_catalog.make_interval(secs => $1))", 1,
	                 values))
		next_prune_us = now_monotonic_us() + (long long) prune_period() * 1000000;
}

static void
prune_connected(pg_link *link)
{
	/* the check timer sends the first prune within a second */
}

static void
prune_result(pg_link *link, const PGresult *res)
{
	ExecStatusType status = PQresultStatus(res);

	if (status != PGRES_TUPLES_OK)
	{
		const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		bool denied = sqlstate && strcmp(sqlstate, "42501") == 0;

		if (!failed_before)
			log_warning("prune: pruning the change log failed: %s (sqlstate %s)%s; retrying in "
			            "%d minutes",
			            primary ? primary : "unknown error", sqlstate ? sqlstate : "none",
			            denied ? "; grant EXECUTE on fhir_notify.prune(interval) to the bridge's "
			                     "role, or set prune-keep to 0 and prune otherwise"
			                   : "",
			            PRUNE_BACKOFF_S / 60);
		else
			log_debug("prune: failed again: %s (sqlstate %s)", primary ? primary : "unknown error",
			          sqlstate ? sqlstate : "none");
		failed_before = true;
		next_prune_us = now_monotonic_us() + (long long) PRUNE_BACKOFF_S * 1000000;
		return;
	}
	if (failed_before)
		log_info("prune: pruning the change log works again");
	failed_before = false;
	if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
	{
		long long deleted = atoll(PQgetvalue(res, 0, 0));

		if (deleted > 0)
		{
			the_metrics.pruned_changes += deleted;
			log_info("prune: deleted %lld changes older than %d s from the change log", deleted,
			         the_bridge.settings.prune_keep);
		}
	}
}

static void
prune_query_done(pg_link *link)
{
}

static void
prune_disconnected(pg_link *link)
{
	/* a prune in flight is sent again at the next period (or after the backoff) */
}

static void
prune_notify(pg_link *link, const PGnotify *notify)
{
}

/* See prune.h. */
void
prune_start(void)
{
	lws_sul_schedule(the_bridge.context, 0, &check_timer, check_cb, 1);
}

/* See prune.h. */
void
prune_stop(void)
{
	lws_sul_cancel(&check_timer);
	if (link_started)
		pg_link_stop(&link_);
	link_started = false;
}
