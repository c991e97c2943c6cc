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
	int failures; /* consecutive, for the backoff */
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
 * Sends statements separated by semicolons (no parameters) in one round
 * trip; they run as one transaction and each one's result comes in turn.
 */
bool pg_link_send_script(pg_link *link, const char *sql);

#endif /* BRIDGE_PG_LINK_H */
