/*
 * pg.h
 *	  The database side: the change log reader (LISTEN, tick, read, fan
 *	  out), catch-up reads for resuming subscriptions, and --authorize-sql
 *	  checks, each on an asynchronous libpq connection whose socket is
 *	  polled by the lws loop.
 */
#ifndef BRIDGE_PG_H
#define BRIDGE_PG_H

#include <stdbool.h>

#include "client.h"

/* Starts connecting; everything else follows from the lws loop. */
void pg_start(void);
void pg_stop(void);
/* Reads the change log soon (the doorbell rang, or the safety poll). */
void pg_request_fetch(void);

/*
 * Queues a read of the changes after sub->since for sub from the database;
 * resume_database_done() continues when it is answered.
 */
void pg_queue_resume(subscription *sub);
/* Forgets queued work for sub (unsubscribed or its client left). */
void pg_cancel_for_subscription(subscription *sub);

/*
 * Asks --authorize-sql whether the client's user may see each patient of
 * sub (answers are cached); subscribe_authorized() continues.
 */
void authorize_subscription(subscription *sub);
void authorize_cancel_for_subscription(subscription *sub);
void authorize_start(void);
void authorize_stop(void);

/* Continuations, in ws.c / resume.c. */
void subscribe_authorized(subscription *sub);
void resume_start(subscription *sub);
/* Settles a resume that needs no database (a cursor from the future); false: ask the database. */
bool resume_from_memory(subscription *sub);
/*
 * The database's answer to a catch-up read (first column: the oldest
 * readable tick; with from_ring only that, the changes coming from the ring).
 */
void resume_database_done(subscription *sub, const PGresult *res, long long upto_tick,
                          bool from_ring);
/* Whether the ring holds every change after sub's cursor. */
bool resume_ring_covers(const subscription *sub);

#endif /* BRIDGE_PG_H */
