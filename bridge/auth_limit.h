/*
 * auth_limit.h
 *	  Failed authentications per source address: the threshold past which
 *	  they are answered 429 instead of 401, and the summary of their log
 *	  lines (one per address per interval, with a count).
 */
#ifndef BRIDGE_AUTH_LIMIT_H
#define BRIDGE_AUTH_LIMIT_H

#include <stdbool.h>

/* The interval failures are counted (and their log lines summarised) in. */
#define AUTH_FAILURE_INTERVAL_US (10 * 1000000LL)
/* Addresses tracked at once; failures from further ones share one entry. */
#define AUTH_FAILURE_MAX_ADDRESSES 4096

/*
 * Records a failed authentication from address (how: "upgrade" or
 * "authenticate"; why: the verifier's reason) at monotonic time now_us,
 * with limit failures per interval allowed (0: no limit). The first
 * failure of an address in an interval is logged in full; later ones are
 * counted and logged as one summary line when the interval ends. Returns
 * true when the address is past the limit in this interval; then
 * *retry_after_s (when not NULL) holds the seconds until the interval
 * ends.
 */
bool auth_failure_record(const char *address, const char *how, const char *why, int limit,
                         long long now_us, int *retry_after_s);

/*
 * Logs the summaries of intervals that ended by now_us and forgets
 * addresses with no failure for an interval. Runs on its own timer while
 * any address is tracked; exposed for tests.
 */
void auth_failures_sweep(long long now_us);

/* How many addresses are tracked (for tests). */
int auth_failures_tracked(void);

/* Logs what is pending and forgets everything (at shutdown). */
void auth_failures_free(void);

#endif /* BRIDGE_AUTH_LIMIT_H */
