/*
 * metrics.c
 *	  Prometheus text exposition and the health check.
 */
#include "metrics.h"

#include "bridge.h"
#include "client.h"
#include "presence.h"
#include "rooms.h"

bridge_metrics the_metrics;

static const double delay_bounds[DELAY_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                   0.1,   0.25,   0.5,   1,    2.5,   10};

/* See metrics.h. */
void
metrics_observe_delay(double seconds)
{
	int i;

	if (seconds < 0)
		seconds = 0;
	for (i = 0; i < DELAY_BUCKETS; i++)
	{
		if (seconds <= delay_bounds[i])
			break;
	}
	the_metrics.delay_buckets[i]++;
	the_metrics.delay_sum += seconds;
	the_metrics.delay_count++;
}

static void
counter(strbuf *out, const char *name, const char *help, long long value)
{
	strbuf_appendf(out, "# HELP %s %s\n# TYPE %s counter\n%s %lld\n", name, help, name, name,
	               value);
}

static void
gauge(strbuf *out, const char *name, const char *help, long long value)
{
	strbuf_appendf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, value);
}

/* Every metric in the Prometheus text format (version 0.0.4). */
void
metrics_render(strbuf *out)
{
	long long subscriptions = 0, cumulative = 0;

	for (client *c = the_bridge.clients; c; c = c->next)
		subscriptions += c->nsubs;
	gauge(out, "fhir_notify_bridge_connections", "WebSocket connections open", the_bridge.nclients);
	counter(out, "fhir_notify_bridge_connections_total", "WebSocket connections accepted",
	        the_metrics.connections_total);
	counter(out, "fhir_notify_bridge_connections_refused_fd_limit_total",
	        "connections closed at accept because the open-files limit was near",
	        the_metrics.connections_refused_fd_limit);
	gauge(out, "fhir_notify_bridge_subscriptions", "subscriptions of open connections",
	      subscriptions);
	gauge(out, "fhir_notify_bridge_rooms", "patient rooms with at least one member", rooms_count());
	gauge(out, "fhir_notify_bridge_database_connected", "1 while the change log connection is up",
	      the_bridge.database_connected ? 1 : 0);
	gauge(out, "fhir_notify_bridge_last_tick", "newest change log tick fanned out",
	      the_bridge.last_tick);
	counter(out, "fhir_notify_bridge_changes_read_total", "changes read from the change log",
	        the_metrics.changes_read);
	counter(out, "fhir_notify_bridge_log_reads_total", "reads of the change log",
	        the_metrics.log_reads);
	counter(out, "fhir_notify_bridge_doorbells_skipped_total",
	        "doorbells for transactions a read had covered already, not read for",
	        the_metrics.doorbells_skipped);
	counter(out, "fhir_notify_bridge_messages_sent_total", "WebSocket messages written",
	        the_metrics.messages_sent);
	counter(out, "fhir_notify_bridge_updates_sent_total", "update messages written",
	        the_metrics.updates_sent);
	counter(out, "fhir_notify_bridge_queue_drops_total",
	        "updates dropped from overflowing send queues", the_metrics.queue_drops);
	counter(out, "fhir_notify_bridge_resyncs_total", "resync messages sent", the_metrics.resyncs);
	counter(out, "fhir_notify_bridge_database_reconnects_total", "reconnections to the database",
	        the_metrics.database_reconnects);
	counter(out, "fhir_notify_bridge_auth_failures_total", "rejected tokens",
	        the_metrics.auth_failures);
	counter(out, "fhir_notify_bridge_auth_rate_limited_total",
	        "rejected tokens answered 429 (or close 4029) past --auth-failure-limit",
	        the_metrics.auth_rate_limited);
	counter(out, "fhir_notify_bridge_client_events_relayed_total",
	        "client event copies relayed (--relay-client-events)",
	        the_metrics.client_events_relayed);
	counter(out, "fhir_notify_bridge_client_events_refused_total",
	        "client events refused (size, rate, patientId, not subscribed)",
	        the_metrics.client_events_refused);
	counter(out, "fhir_notify_bridge_client_events_dropped_total",
	        "client event copies not sent to a recipient behind with its queue",
	        the_metrics.client_events_dropped);
	counter(out, "fhir_notify_bridge_slow_client_closes_total",
	        "clients closed with 1013 for not reading", the_metrics.slow_client_closes);
	counter(out, "fhir_notify_bridge_pruned_changes_total",
	        "changes deleted from the change log by --prune-keep", the_metrics.pruned_changes);
	counter(out, "fhir_notify_bridge_presence_messages_total", "presence snapshots queued",
	        presence_messages_sent);
	counter(out, "fhir_notify_bridge_conflicts_total", "conflict warnings sent to editors",
	        presence_conflicts_sent);
	strbuf_append(out,
	              "# HELP fhir_notify_bridge_commit_to_send_seconds time from the change's commit "
	              "(changed_at) to its update being written\n"
	              "# TYPE fhir_notify_bridge_commit_to_send_seconds histogram\n");
	for (int i = 0; i < DELAY_BUCKETS; i++)
	{
		cumulative += the_metrics.delay_buckets[i];
		strbuf_appendf(out, "fhir_notify_bridge_commit_to_send_seconds_bucket{le=\"%g\"} %lld\n",
		               delay_bounds[i], cumulative);
	}
	cumulative += the_metrics.delay_buckets[DELAY_BUCKETS];
	strbuf_appendf(out,
	               "fhir_notify_bridge_commit_to_send_seconds_bucket{le=\"+Inf\"} %lld\n"
	               "fhir_notify_bridge_commit_to_send_seconds_sum %.6f\n"
	               "fhir_notify_bridge_commit_to_send_seconds_count %lld\n",
	               cumulative, the_metrics.delay_sum, the_metrics.delay_count);
}

/* 200 while the change log connection is up, 503 otherwise. */
int
healthz_render(strbuf *out)
{
	char cursor_text[CURSOR_TEXT_LEN];
	bool have_cursor = bridge_current_cursor_text(cursor_text, sizeof(cursor_text));
	/* stale: the safety poll should have read the log several times by now */
	long long stale_after_us = (long long) the_bridge.settings.poll_interval * 3 * 1000000;
	bool fresh;
	bool ok;

	if (stale_after_us < 15 * 1000000LL)
		stale_after_us = 15 * 1000000LL;
	fresh = now_monotonic_us() - the_bridge.last_tick_ok_us < stale_after_us;
	ok = the_bridge.database_connected && fresh && !the_bridge.draining;

	strbuf_appendf(out, "{\"status\":\"%s\",\"database\":\"%s\",\"connections\":%d,\"cursor\":",
	               ok ? "ok" : "unavailable",
	               !the_bridge.database_connected ? "disconnected"
	               : fresh                        ? "connected"
	                                              : "not answering",
	               the_bridge.nclients);
	strbuf_append_json_string(out, have_cursor ? cursor_text : NULL);
	strbuf_append(out, "}\n");
	return ok ? 200 : 503;
}
