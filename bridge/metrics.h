/*
 * metrics.h
 *	  Counters and the commit-to-send delay histogram, rendered as
 *	  Prometheus text at /metrics; the /healthz answer.
 */
#ifndef BRIDGE_METRICS_H
#define BRIDGE_METRICS_H

#include "util.h"

#define DELAY_BUCKETS 12

typedef struct bridge_metrics
{
	long long connections_total;
	long long connections_refused_fd_limit; /* closed at accept: the open-files limit was near */
	long long changes_read;
	long long log_reads;         /* reads of the change log (read_next) */
	long long doorbells_skipped; /* for transactions a read had covered already */
	long long messages_sent;
	long long updates_sent;
	long long queue_drops; /* updates dropped from overflowing queues */
	long long resyncs;     /* resync messages sent */
	long long database_reconnects;
	long long auth_failures;
	long long auth_rate_limited;
	long long client_events_relayed; /* copies sent */
	long long client_events_refused;
	long long client_events_dropped;
	/* recipients behind with their queue */ /* failed authentications answered 429 / 4029 */
	long long slow_client_closes;
	long long pruned_changes;                   /* deleted from the change log by --prune-keep */
	long long delay_buckets[DELAY_BUCKETS + 1]; /* last: +Inf */
	double delay_sum;
	long long delay_count;
} bridge_metrics;

extern bridge_metrics the_metrics;

/* Records the commit-to-send delay of one update. */
void metrics_observe_delay(double seconds);
void metrics_render(strbuf *out);
/* The /healthz body; returns the HTTP status (200 or 503). */
int healthz_render(strbuf *out);

#endif /* BRIDGE_METRICS_H */
