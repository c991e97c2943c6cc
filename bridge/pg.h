/*
 * pg.h
 *	  The change log reader: LISTEN for the doorbell, tick and read the log
 *	  after the last tick fanned out, hand each change to the reader's
 *	  consumer; and, on the same connection, catch-up reads for whoever
 *	  asks (a request with callbacks, cancellable). It knows nothing of
 *	  clients or subscriptions. Its socket is polled by the lws loop
 *	  (pg_link.h).
 */
#ifndef BRIDGE_PG_H
#define BRIDGE_PG_H

#include <stdbool.h>

#include "change.h"
#include "util.h"

/* What the reader tells its consumer. */
typedef struct reader_events
{
	/* A change read from the log, already in the ring; called in log order. */
	void (*change)(change *c);
	/*
	 * Changes were lost to the bridge: every live subscription must resync.
	 * reason: log_pruned (the bridge's position was pruned), reader_dropped
	 * (its registered reader lagged past fhir_notify.reader_max_lag),
	 * log_reset (its position names no tick of this log: ticks lost in a
	 * crash, a restored or another database).
	 */
	void (*log_reset)(const char *reason);
} reader_events;

/* Starts connecting; everything else follows from the lws loop. */
void pg_start(const reader_events *events);
void pg_stop(void);
/* Reads the change log soon (the doorbell rang, or the safety poll). */
void pg_request_fetch(void);

/* A catch-up read: the changes after since of some patients. */
typedef struct catch_up_query
{
	cursor since;
	char *const *patient_ids;
	int npatients;
	char *const *types; /* none: every type */
	int ntypes;
	int limit;        /* rows at most */
	bool oldest_only; /* only ask for the oldest readable tick (the ring has the changes) */
} catch_up_query;

typedef struct catch_up_answer
{
	bool failed;      /* the read failed: nothing else is set */
	long long oldest; /* the oldest readable tick (0: none) */
	long long
	    since_epoch;     /* the log's epoch of since's tick (cursor_epoch_tick); 0: no such tick */
	long long upto_tick; /* the read covered the log up to this tick */
	bool oldest_only;    /* as asked */
	change **changes;    /* in log order; the reader drops them after the callback */
	int nchanges;
} catch_up_answer;

typedef struct pg_request pg_request;

typedef struct catch_up_ops
{
	/*
	 * The reader's turn for this request came, after a read of the log up
	 * to now: fill in q and return true to read, or false when the
	 * requester settled it without the database (the request is over).
	 */
	bool (*prepare)(void *arg, catch_up_query *q);
	/* The answer; the request is over (its handle freed after this returns). */
	void (*done)(void *arg, const catch_up_answer *answer);
} catch_up_ops;

/*
 * Queues a catch-up read; the log is read up to now first. Returns the
 * handle to cancel it with until prepare() said false or done() ran.
 */
pg_request *pg_catch_up(const catch_up_ops *ops, void *arg);
/* Forgets the request: none of its callbacks runs after this. */
void pg_request_cancel(pg_request *req);

#endif /* BRIDGE_PG_H */
