/*
 * pg_link.c
 *	  Asynchronous libpq connections polled by the lws event loop.
 */
#include "pg_link.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge.h"
#include "log.h"
#include "metrics.h"

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS   5000
/*
 * An asynchronous connect has no libpq timeout, and a server that stops
 * answering (a hung host, a partition without RST) would leave a query in
 * flight forever while /healthz still said ok: past these, the connection
 * is given up and made again.
 */
#define CONNECT_TIMEOUT_US (10 * 1000000LL)
#define QUERY_TIMEOUT_US   (30 * 1000000LL)

static void link_fail(pg_link *link, const char *why);

/* libpq messages span lines ("...\n\tThis probably means..."); log lines do not. */
static void
one_line(const char *text, char *out, size_t outlen)
{
	size_t n = 0;
	bool space = false;

	for (const char *p = text; *p && n + 1 < outlen; p++)
	{
		if (*p == '\n' || *p == '\t' || *p == '\r' || *p == ' ')
		{
			space = n > 0;
			continue;
		}
		if (space && n + 2 < outlen)
			out[n++] = ' ';
		space = false;
		out[n++] = *p;
	}
	out[n] = '\0';
}

/* Server notices (and the FATAL before a termination) go to our log, not raw stderr. */
static void
notice_to_log(void *arg, const char *message)
{
	pg_link *link = arg;
	char line[1024];

	one_line(message, line, sizeof(line));
	log_info("%s: server said: %s", link->name, line);
}

/* Stops watching the adopted descriptor; lws closes it asynchronously. */
static void
drop_socket(pg_link *link)
{
	if (!link->wsi)
		return;
	lws_set_opaque_user_data(link->wsi, NULL);
	lws_set_timeout(link->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
	link->wsi = NULL;
	link->adopted_socket = -1;
}

/* Adopts a dup() of libpq's current socket if it is not the one watched already. */
static bool
sync_socket(pg_link *link)
{
	int sock = PQsocket(link->conn);
	lws_sock_file_fd_type fd;
	int copy;

	if (sock < 0)
		return false;
	if (link->wsi && sock == link->adopted_socket)
		return true;
	drop_socket(link);
	copy = dup(sock);
	if (copy < 0)
		return false;
	fd.filefd = copy;
	link->wsi = lws_adopt_descriptor_vhost(the_bridge.vhost, LWS_ADOPT_RAW_FILE_DESC, fd,
	                                       PG_LINK_PROTOCOL, NULL);
	if (!link->wsi)
		return false; /* lws closed the copy */
	lws_set_opaque_user_data(link->wsi, link);
	link->adopted_socket = sock;
	return true;
}

static void
watchdog_cb(lws_sorted_usec_list_t *sul)
{
	pg_link *link = lws_container_of(sul, pg_link, watchdog);

	if (link->connecting)
		link_fail(link, "connecting timed out");
	else if (link->busy)
		link_fail(link, "the server did not answer a query in time");
}

static void
retry_cb(lws_sorted_usec_list_t *sul)
{
	pg_link *link = lws_container_of(sul, pg_link, retry);

	pg_link_start(link);
}

/* Continues the non-blocking connection handshake. */
static void
advance_connect(pg_link *link)
{
	PostgresPollingStatusType status = PQconnectPoll(link->conn);

	if (status == PGRES_POLLING_FAILED)
	{
		link_fail(link, PQerrorMessage(link->conn));
		return;
	}
	if (!sync_socket(link))
	{
		link_fail(link, "could not watch the connection's socket");
		return;
	}
	if (status == PGRES_POLLING_WRITING)
		lws_callback_on_writable(link->wsi);
	else if (status == PGRES_POLLING_OK)
	{
		link->connecting = false;
		link->ready = true;
		lws_sul_cancel(&link->watchdog);
		link->failures = 0;
		PQsetnonblocking(link->conn, 1);
		if (link->was_connected)
			the_metrics.database_reconnects++;
		link->was_connected = true;
		log_info("%s: connected", link->name);
		link->ops->connected(link);
	}
}

/* Opens a connection (or schedules the next attempt). */
void
pg_link_start(pg_link *link)
{
	/* keepalives first: the connection string given (expanded from dbname) overrides them */
	const char *keywords[] = {"keepalives",
	                          "keepalives_idle",
	                          "keepalives_interval",
	                          "keepalives_count",
	                          "dbname",
	                          "fallback_application_name",
	                          NULL};
	const char *values[] = {"1", "10", "5", "3", link->conninfo, "fhir-notify-bridge", NULL};

	if (link->stopped || link->conn)
		return;
	link->conn = PQconnectStartParams(keywords, values, 1);
	if (!link->conn || PQstatus(link->conn) == CONNECTION_BAD)
	{
		link_fail(link, link->conn ? PQerrorMessage(link->conn) : "out of memory");
		return;
	}
	PQsetNoticeProcessor(link->conn, notice_to_log, link);
	link->connecting = true;
	link->adopted_socket = -1;
	lws_sul_schedule(the_bridge.context, 0, &link->watchdog, watchdog_cb, CONNECT_TIMEOUT_US);
	advance_connect(link);
}

/* Closes the connection; with stop, no reconnection follows. */
static void
close_link(pg_link *link)
{
	drop_socket(link);
	if (link->conn)
		PQfinish(link->conn);
	link->conn = NULL;
	link->connecting = link->ready = link->busy = false;
	link->pipeline_syncs = link->nprepared = link->npreparing = 0;
	link->pipeline_failed = link->deallocate = false;
	lws_sul_cancel(&link->watchdog);
}

/* Gives up on the connection and schedules a new one with backoff and jitter. */
static void
link_fail(pg_link *link, const char *why)
{
	bool was_ready = link->ready;
	long long delay_ms;
	char reason[512];

	one_line(why ? why : "unknown error", reason, sizeof(reason));
	close_link(link);
	if (was_ready)
		link->ops->disconnected(link);
	if (link->stopped)
		return;
	delay_ms = (long long) BACKOFF_FIRST_MS << (link->failures < 6 ? link->failures : 6);
	if (delay_ms > BACKOFF_MAX_MS)
		delay_ms = BACKOFF_MAX_MS;
	/* jitter: between half and the full delay, so bridges do not reconnect in step */
	delay_ms = delay_ms / 2 + rand() % (delay_ms / 2 + 1);
	link->failures++;
	if (was_ready || link->failures == 1 || link->failures % 20 == 0)
		log_warning("%s: %s: %s; retrying in %lld ms", link->name,
		            was_ready ? "connection lost" : "could not connect", reason, delay_ms);
	lws_sul_schedule(the_bridge.context, 0, &link->retry, retry_cb, delay_ms * 1000);
}

/* Hands every notification libpq has parsed so far to the owner. */
static void
deliver_notifies(pg_link *link)
{
	PGnotify *notify;

	while (link->conn && (notify = PQnotifies(link->conn)) != NULL)
	{
		link->ops->notify(link, notify);
		PQfreemem(notify);
	}
}

/* The query in flight is over: the link is idle. */
static void
query_over(pg_link *link)
{
	link->busy = false;
	lws_sul_cancel(&link->watchdog);
	link->ops->query_done(link);
}

/*
 * A pipeline's sync came; after the last, the pipeline is over: the
 * statements it prepared are kept if nothing in it failed, else every one
 * is forgotten (which of them the server has is not known).
 */
static void
pipeline_synced(pg_link *link)
{
	if (--link->pipeline_syncs > 0)
		return;
	if (!link->pipeline_failed)
	{
		for (int i = 0; i < link->npreparing && link->nprepared < PG_LINK_MAX_PREPARED; i++)
			link->prepared[link->nprepared++] = link->preparing[i];
	}
	else
	{
		link->nprepared = 0;
		link->deallocate = true;
	}
	link->npreparing = 0;
	link->pipeline_failed = false;
	if (PQexitPipelineMode(link->conn) != 1)
	{
		link_fail(link, PQerrorMessage(link->conn));
		return;
	}
	query_over(link);
}

/* Hands a pipeline's results to the owner, up to its last sync. */
static void
consume_pipeline(pg_link *link)
{
	int nulls = 0;

	while (link->conn && link->busy && link->pipeline_syncs > 0 && !PQisBusy(link->conn))
	{
		PGresult *res = PQgetResult(link->conn);
		ExecStatusType status;

		if (!res)
		{
			/* the end of one statement's results; two in a row: nothing more has come */
			if (++nulls > 1)
				break;
			continue;
		}
		nulls = 0;
		status = PQresultStatus(res);
		if (status == PGRES_PIPELINE_SYNC)
		{
			PQclear(res);
			pipeline_synced(link);
			deliver_notifies(link);
			continue;
		}
		if (status == PGRES_FATAL_ERROR || status == PGRES_PIPELINE_ABORTED)
			link->pipeline_failed = true;
		/* a statement skipped for an earlier one's failure: that one was reported */
		if (status != PGRES_PIPELINE_ABORTED)
			link->ops->result(link, res);
		PQclear(res);
		deliver_notifies(link);
	}
}

/* Reads what arrived: notifications and query results. */
static void
consume(pg_link *link)
{
	if (!PQconsumeInput(link->conn))
	{
		link_fail(link, PQerrorMessage(link->conn));
		return;
	}
	deliver_notifies(link);
	if (link->pipeline_syncs > 0)
		consume_pipeline(link);
	while (link->conn && link->busy && link->pipeline_syncs == 0 && !PQisBusy(link->conn))
	{
		PGresult *res = PQgetResult(link->conn);

		if (!res)
		{
			query_over(link);
			break;
		}
		link->ops->result(link, res);
		PQclear(res);
		deliver_notifies(link);
	}
	/*
	 * libpq parses a notification that arrived behind the results only
	 * while reading them: without this it would wait for the next packet,
	 * that is for the safety poll.
	 */
	deliver_notifies(link);
	if (link->conn && PQstatus(link->conn) == CONNECTION_BAD)
		link_fail(link, PQerrorMessage(link->conn));
}

/* A query was queued: the link is busy until its answer; sends what libpq holds. */
static bool
sent(pg_link *link)
{
	int flushed;

	link->busy = true;
	lws_sul_schedule(the_bridge.context, 0, &link->watchdog, watchdog_cb,
	                 link->query_timeout_us > 0 ? link->query_timeout_us : QUERY_TIMEOUT_US);
	flushed = PQflush(link->conn);
	if (flushed < 0)
	{
		link_fail(link, PQerrorMessage(link->conn));
		return false;
	}
	if (flushed > 0 && link->wsi)
		lws_callback_on_writable(link->wsi);
	return true;
}

/* See pg_link.h. */
bool
pg_link_send(pg_link *link, const char *sql, int nparams, const char *const *values)
{
	if (!link->ready || link->busy)
		return false;
	/* without parameters the simple protocol, which also takes several statements */
	if (!(nparams == 0 ? PQsendQuery(link->conn, sql)
	                   : PQsendQueryParams(link->conn, sql, nparams, NULL, values, NULL, NULL, 0)))
	{
		link_fail(link, PQerrorMessage(link->conn));
		return false;
	}
	return sent(link);
}

static bool
is_prepared(const pg_link *link, const char *name)
{
	for (int i = 0; i < link->nprepared; i++)
	{
		if (strcmp(link->prepared[i], name) == 0)
			return true;
	}
	return false;
}

/* Queues one statement (prepared first if it is not yet), and a sync if asked. */
static bool
queue_statement(pg_link *link, const pg_link_query *q, bool sync)
{
	if (q->name && !is_prepared(link, q->name))
	{
		if (!PQsendPrepare(link->conn, q->name, q->sql, q->nparams, NULL))
			return false;
		if (link->npreparing < PG_LINK_MAX_PREPARED)
			link->preparing[link->npreparing++] = q->name;
	}
	if (!(q->name
	          ? PQsendQueryPrepared(link->conn, q->name, q->nparams, q->values, NULL, NULL, 0)
	          : PQsendQueryParams(link->conn, q->sql, q->nparams, NULL, q->values, NULL, NULL, 0)))
		return false;
	if (!sync)
		return true;
	if (!PQpipelineSync(link->conn))
		return false;
	link->pipeline_syncs++;
	return true;
}

/* See pg_link.h. */
bool
pg_link_send_pipeline(pg_link *link, const pg_link_query *queries, int n)
{
	if (!link->ready || link->busy)
		return false;
	if (PQenterPipelineMode(link->conn) != 1)
	{
		link_fail(link, PQerrorMessage(link->conn));
		return false;
	}
	link->pipeline_syncs = link->npreparing = 0;
	link->pipeline_failed = false;
	if (link->deallocate)
	{
		static const pg_link_query deallocate = {NULL, "DEALLOCATE ALL", 0, NULL, true};

		if (!queue_statement(link, &deallocate, true))
		{
			link_fail(link, PQerrorMessage(link->conn));
			return false;
		}
		link->deallocate = false;
	}
	for (int i = 0; i < n; i++)
	{
		if (!queue_statement(link, &queries[i], queries[i].then_sync || i == n - 1))
		{
			link_fail(link, PQerrorMessage(link->conn));
			return false;
		}
	}
	return sent(link);
}

/* See pg_link.h. */
void
pg_link_stop(pg_link *link)
{
	link->stopped = true;
	lws_sul_cancel(&link->retry);
	close_link(link);
}

/* See pg_link.h. */
int
pg_link_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                 size_t len)
{
	pg_link *link = (pg_link *) lws_get_opaque_user_data(wsi);

	switch (reason)
	{
		case LWS_CALLBACK_RAW_RX_FILE:
			if (!link || link->wsi != wsi)
				return -1; /* a socket we no longer watch */
			if (link->connecting)
				advance_connect(link);
			else
				consume(link);
			return 0;
		case LWS_CALLBACK_RAW_WRITEABLE_FILE:
			if (!link || link->wsi != wsi)
				return -1;
			if (link->connecting)
				advance_connect(link);
			else if (link->conn)
			{
				int flushed = PQflush(link->conn);

				if (flushed < 0)
					link_fail(link, PQerrorMessage(link->conn));
				else if (flushed > 0)
					lws_callback_on_writable(wsi);
			}
			return 0;
		case LWS_CALLBACK_RAW_CLOSE_FILE:
			if (link && link->wsi == wsi)
			{
				/* lws saw the socket hang up: let libpq tell what happened */
				link->wsi = NULL;
				link->adopted_socket = -1;
				if (link->conn && !link->connecting)
					consume(link);
				if (link->conn)
					link_fail(link, "the server closed the connection");
			}
			return 0;
		default:
			return 0;
	}
}
