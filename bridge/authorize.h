/*
 * authorize.h
 *	  --authorize-sql: whether a user may see some patients, asked on a
 *	  connection of its own, answers cached for --authorize-cache-seconds.
 *	  An error counts as "no". Knows nothing of clients or subscriptions:
 *	  a request names a user and patients, and has a callback.
 */
#ifndef BRIDGE_AUTHORIZE_H
#define BRIDGE_AUTHORIZE_H

#include <stdbool.h>

typedef struct authorize_request authorize_request;

/* allowed: every patient was allowed. */
typedef void (*authorize_done_fn)(void *arg, bool allowed);

/*
 * Asks whether user may see every one of the patients. When the cache
 * answers them all, returns NULL and sets *allowed (done is not called);
 * else returns a handle, and done(arg, allowed) follows once every answer
 * is in, unless the request is cancelled first.
 */
authorize_request *authorize_patients(const char *user, char *const *patient_ids, int npatients,
                                      authorize_done_fn done, void *arg, bool *allowed);
/* Forgets the request: done is not called. */
void authorize_cancel(authorize_request *req);
/* Connects (with --authorize-sql only). */
void authorize_start(void);
void authorize_stop(void);

#endif /* BRIDGE_AUTHORIZE_H */
