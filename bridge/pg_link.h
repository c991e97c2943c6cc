/*
 * pg_link.h
 *	  One asynchronous libpq connection driven by the lws loop: a dup() of
 *	  its socket is adopted as a raw file descriptor (lws closes what it
 *	  adopts, libpq keeps its own), re-adopted whenever libpq's socket
 *	  changes, and the connection is re-made with exponential backoff and
 *	  jitter when it fails. One query at a time.
 */
#ifndef BRIDGE_PG_LINK_H
#define BRIDGE_PG_LINK_H

#include <stdbool.h>

#include <libpq-fe.h>
#include <libwebsockets.h>

typedef struct pg_link pg_link;

#define PG_LINK_MAX_PREPARED 8 /* statement names per connection */

typedef struct pg_link_ops
{
	void (*connected)(pg_link *link);                   /* ready for queries */
	void (*result)(pg_link *link, const PGresult *res); /* each result of the current query */
	void (*query_done)(pg_link *link);   /* the current query finished; link is idle */
	void (*disconnected)(pg_link *link); /* connection lost; a query in flight is abandoned */
	void (*notify)(pg_link *link, const PGnotify *notify);
} pg_link_ops;

struct pg_link
{
	const char *name; /* for log lines: "database", "authorize" */
	const char *conninfo;
	const pg_link_ops *ops;
	PGconn *conn;
	struct lws *wsi;    /* the adopted dup() of PQsocket(conn) */
	int adopted_socket; /* libpq's socket number the wsi watches */
	bool connecting;
	bool ready;
	bool busy;
	bool stopped;
	int failures;         /* consecutive, for the backoff */
	int pipeline_syncs;   /* pipeline in flight: its syncs still to come */
	bool pipeline_failed; /* a statement of the pipeline in flight failed */
	bool deallocate;      /* forget every prepared statement first (after a failure) */
	int nprepared;        /* statements prepared on this connection (names) */
	const char *prepared[PG_LINK_MAX_PREPARED];
	int npreparing; /* prepared by the pipeline in flight, kept if it succeeds */
	const char *preparing[PG_LINK_MAX_PREPARED];
	long long query_timeout_us; /* 0: QUERY_TIMEOUT_US */
	bool was_connected;
	lws_sorted_usec_list_t retry;
	lws_sorted_usec_list_t watchdog; /* a connect or query taking too long */
};

/* The lws protocol callback of adopted database sockets. */
int pg_link_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                     size_t len);
#define PG_LINK_PROTOCOL "fhir-notify-database"

void pg_link_start(pg_link *link);
void pg_link_stop(pg_link *link);
/*
 * Sends a query with text parameters (none: sql may hold several statements);
 * false (and the link reconnects) if it could not be sent.
 */
bool pg_link_send(pg_link *link, const char *sql, int nparams, const char *const *values);
/*
 * One statement of a pipeline: prepared (as name, a string that outlives
 * the link) on its first use on each connection, then run with text
 * parameters; name NULL: parsed and planned each time.
 */
typedef struct pg_link_query
{
	const char *name;
	const char *sql;
	int nparams;
	const char *const *values;
	bool then_sync; /* a sync after it (ends the implicit transaction); the last has one */
} pg_link_query;
/*
 * Sends statements in one round trip (libpq's pipeline mode). Up to each
 * sync they run as one implicit transaction (explicit BEGIN and COMMIT
 * statements split it) and a failure skips the rest; the statements after
 * a sync run regardless. Their results come in order, then query_done
 * once. False (and the link reconnects) if they could not be sent.
 */
bool pg_link_send_pipeline(pg_link *link, const pg_link_query *queries, int n);

#endif /* BRIDGE_PG_LINK_H */
