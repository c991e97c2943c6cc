/*
 * resume_points.h
 *	  Resume for clients that send no cursor (--resume-without-cursor):
 *	  how far each user's subscription to each patient was served, kept in
 *	  the database (fhir_notify.resume_points) so that a reconnect to this
 *	  or another bridge, even after a restart, is replayed what it missed.
 */
#ifndef BRIDGE_RESUME_POINTS_H
#define BRIDGE_RESUME_POINTS_H

#include <stdbool.h>

#include "util.h"

struct client;
struct subscription;

/* Points of live connections are saved this often (a crash costs duplicates since). */
#define RESUME_POINTS_SAVE_US (10 * 1000000LL)
/* A lookup not answered in this long is taken as "no point" (database away). */
#define RESUME_POINTS_LOOKUP_TIMEOUT_US (3 * 1000000LL)

typedef struct resume_lookup resume_lookup;

/*
 * claimed: the database answered, so every patient without a point now has
 * the claim saved as its point (a crash from then on costs duplicates, never
 * a gap); false when it did not answer in time. found: a point within
 * --resume-max-age; at: the earliest of the subscription's patients'.
 */
typedef void (*resume_lookup_cb)(void *arg, bool claimed, bool found, cursor at);

/* Whether cursorless subscriptions are resumed (setting on, database functions usable). */
bool resume_points_enabled(void);

/*
 * Asks for the point of (user, each patient, subscription id), saving claim
 * as the point of the patients that have none; cb is called later, never
 * from inside this call. Cancel with resume_points_cancel.
 */
resume_lookup *resume_points_lookup(const char *user, char **patient_ids, int npatients,
                                    const char *subscription_id, cursor claim, resume_lookup_cb cb,
                                    void *arg);
void resume_points_cancel(resume_lookup *lookup);

/*
 * Queues the point of sub for saving (when it has one: a subscription made
 * without a cursor, live, or catching up from a point).
 */
void resume_points_note(struct subscription *sub);
/*
 * Before c's queued updates are dropped (overflow, expiry, shutdown): its
 * subscriptions' points stop where the first dropped update was, so that
 * the drop is replayed after a reconnect rather than skipped.
 */
void resume_points_before_drop(struct client *c);

void resume_points_start(void);
/* Saves what is pending on a connection of its own (blocking, bounded), then stops. */
void resume_points_stop(void);

#endif /* BRIDGE_RESUME_POINTS_H */
