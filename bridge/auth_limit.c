/*
 * auth_limit.c
 *	  Failed authentications per source address.
 *
 * A client that keeps presenting a bad token (an expired one it cannot
 * renew, a token signed with another secret) must neither flood the log
 * nor be answered as if each attempt were news. Each address has an
 * interval of AUTH_FAILURE_INTERVAL_US from its first failure: that
 * failure is logged in full, the rest are counted and summarised in one
 * line when the interval ends, and past --auth-failure-limit failures in
 * the interval the address is answered 429 (upgrade) or 4029 (an
 * authenticate message) instead of 401 / AUTH_FAILED.
 *
 * Only failures are limited: a token that verifies is let in whatever its
 * address has done, because behind a reverse proxy or a hospital's NAT
 * every user shares one address, and one tab with a stale token must not
 * lock out the ward. Checking a token costs about as much as reading the
 * upgrade request, so refusing unchecked would save little.
 */
#include "auth_limit.h"

#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "bridge.h"
#include "log.h"
#include "util.h"

#define NBUCKETS      1024
#define ADDRESS_LEN   64
#define REASON_LEN    160
#define OTHER_ADDRESS "(other addresses)"

typedef struct failure_entry
{
	char address[ADDRESS_LEN];
	long long interval_start_us; /* the first failure of the current interval */
	long long last_failure_us;
	int failures;     /* in the current interval */
	bool over_logged; /* the "past the limit" line was written this interval */
	char last_how[16];
	char last_why[REASON_LEN];
	struct failure_entry *next;
} failure_entry;

static failure_entry *buckets[NBUCKETS];
static failure_entry *other; /* failures from addresses past AUTH_FAILURE_MAX_ADDRESSES */
static int tracked;
static lws_sorted_usec_list_t sweep_timer;
static bool timer_scheduled;

static unsigned int
hash_address(const char *address)
{
	unsigned int h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *) address; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % NBUCKETS;
}

static void
copy_text(char *out, size_t outlen, const char *text)
{
	size_t n = strlen(text ? text : "");

	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, text ? text : "", n);
	out[n] = '\0';
}

static failure_entry *
new_entry(const char *address)
{
	failure_entry *e = xcalloc(1, sizeof(failure_entry));

	copy_text(e->address, sizeof(e->address), address);
	return e;
}

/* The entry of address, made when missing (the shared one when the table is full). */
static failure_entry *
find_entry(const char *address)
{
	unsigned int h = hash_address(address);
	failure_entry *e;

	for (e = buckets[h]; e; e = e->next)
	{
		if (strncmp(e->address, address, ADDRESS_LEN - 1) == 0)
			return e;
	}
	if (tracked >= AUTH_FAILURE_MAX_ADDRESSES)
	{
		if (!other)
			other = new_entry(OTHER_ADDRESS);
		return other;
	}
	e = new_entry(address);
	e->next = buckets[h];
	buckets[h] = e;
	tracked++;
	return e;
}

/* Ends e's interval: one line for the failures after the first. */
static void
end_interval(failure_entry *e)
{
	if (e->failures > 1)
		log_info("auth: %d more failed authentications from %s in %lld s (last: %s: %s)",
		         e->failures - 1, e->address, AUTH_FAILURE_INTERVAL_US / 1000000LL, e->last_how,
		         e->last_why);
	e->failures = 0;
	e->over_logged = false;
}

static void sweep_fired(lws_sorted_usec_list_t *sul);

static void
schedule_sweep(void)
{
	if (timer_scheduled || !the_bridge.context)
		return;
	timer_scheduled = true;
	lws_sul_schedule(the_bridge.context, 0, &sweep_timer, sweep_fired, LWS_US_PER_SEC);
}

static void
sweep_fired(lws_sorted_usec_list_t *sul)
{
	timer_scheduled = false;
	auth_failures_sweep(now_monotonic_us());
	if (tracked > 0 || other)
		schedule_sweep();
}

/* See auth_limit.h. */
bool
auth_failure_record(const char *address, const char *how, const char *why, int limit,
                    long long now_us, int *retry_after_s)
{
	failure_entry *e = find_entry(address && *address ? address : "(unknown)");
	bool over;

	if (e->failures > 0 && now_us - e->interval_start_us >= AUTH_FAILURE_INTERVAL_US)
		end_interval(e);
	if (e->failures == 0)
	{
		e->interval_start_us = now_us;
		log_info("auth: refused a token from %s (%s): %s", e->address, how, why);
	}
	e->failures++;
	e->last_failure_us = now_us;
	copy_text(e->last_how, sizeof(e->last_how), how);
	copy_text(e->last_why, sizeof(e->last_why), why);
	over = limit > 0 && e->failures > limit;
	if (over && !e->over_logged)
	{
		e->over_logged = true;
		log_warning("auth: more than %d failed authentications from %s in %lld s: refusing its "
		            "bad tokens with 429 until the interval ends",
		            limit, e->address, AUTH_FAILURE_INTERVAL_US / 1000000LL);
	}
	if (over && retry_after_s)
	{
		long long left = e->interval_start_us + AUTH_FAILURE_INTERVAL_US - now_us;

		*retry_after_s = (int) ((left + 999999) / 1000000);
		if (*retry_after_s < 1)
			*retry_after_s = 1;
	}
	schedule_sweep();
	return over;
}

/* Whether e can be forgotten: its interval ended and it has been quiet since. */
static bool
sweep_entry(failure_entry *e, long long now_us)
{
	if (e->failures > 0 && now_us - e->interval_start_us >= AUTH_FAILURE_INTERVAL_US)
		end_interval(e);
	return e->failures == 0 && now_us - e->last_failure_us >= AUTH_FAILURE_INTERVAL_US;
}

/* See auth_limit.h. */
void
auth_failures_sweep(long long now_us)
{
	for (int i = 0; i < NBUCKETS; i++)
	{
		failure_entry **link = &buckets[i];

		while (*link)
		{
			failure_entry *e = *link;

			if (sweep_entry(e, now_us))
			{
				*link = e->next;
				free(e);
				tracked--;
			}
			else
				link = &e->next;
		}
	}
	if (other && sweep_entry(other, now_us))
	{
		free(other);
		other = NULL;
	}
}

/* See auth_limit.h. */
int
auth_failures_tracked(void)
{
	return tracked + (other ? 1 : 0);
}

/* See auth_limit.h. */
void
auth_failures_free(void)
{
	for (int i = 0; i < NBUCKETS; i++)
	{
		while (buckets[i])
		{
			failure_entry *e = buckets[i];

			buckets[i] = e->next;
			end_interval(e);
			free(e);
		}
	}
	if (other)
	{
		end_interval(other);
		free(other);
		other = NULL;
	}
	tracked = 0;
	if (timer_scheduled)
		lws_sul_cancel(&sweep_timer);
	timer_scheduled = false;
}
