/*
 * resume.c
 *	  Catch-up for a subscription with `since`: the changes after the
 *	  cursor come from the ring buffer of recent changes when it still
 *	  holds them all, else from the database (fhir_notify.read); when
 *	  neither can guarantee completeness (log pruned, too many, too old)
 *	  the client gets a resync instead. Live delivery to the subscription
 *	  starts only after its catch-up, so nothing arrives twice or out of
 *	  order.
 */
#include <limits.h>
#include <stdlib.h>

#include "bridge.h"
#include "change.h"
#include "client.h"
#include "log.h"
#include "pg.h"

/*
 * Sends the ring's changes after `after` that sub takes, within the
 * limits; false if the limits say resync instead (nothing sent then).
 */
static bool
send_from_ring(subscription *sub, cursor after, bool check_limits)
{
	int first = ring_first_after(after);
	int total = ring_count();
	int count = 0;
	long long oldest_us = 0;

	if (check_limits)
	{
		for (int i = first; i < total; i++)
		{
			change *c = ring_get(i);
			int n = deliver_catch_up(sub, c, true);

			if (n > 0 && !oldest_us)
				oldest_us = c->changed_at_us;
			count += n;
		}
		if (count > the_bridge.settings.resume_max_changes)
		{
			subscription_resync(sub, "too_many_changes");
			return false;
		}
		if (the_bridge.settings.resume_max_age > 0 && oldest_us &&
		    now_wall_us() - oldest_us > (long long) the_bridge.settings.resume_max_age * 1000000)
		{
			subscription_resync(sub, "cursor_too_old");
			return false;
		}
	}
	for (int i = first; i < total; i++)
		deliver_catch_up(sub, ring_get(i), false);
	return true;
}

/*
 * Handles sub's resume without the database when it can: a cursor from the
 * future (another database, or a restored one) cannot be resumed. Returns
 * false when the database must be asked: even when the ring holds every
 * change after the cursor, the database says whether the log was pruned
 * past it, so that a pruned cursor gets a resync whichever bridge it is
 * shown to.
 */
bool
resume_from_memory(subscription *sub)
{
	cursor known = bridge_current_cursor();

	if (the_bridge.last_tick == 0)
		return false;
	/* a read being fanned out is ahead of last_tick: its cursors are known too */
	if (ring_count() > 0 && cursor_compare(ring_get(ring_count() - 1)->at, known) > 0)
		known = ring_get(ring_count() - 1)->at;
	if (cursor_compare(sub->since, known) > 0)
	{
		subscription_resync(sub, "cursor_unknown");
		return true;
	}
	return false;
}

/* See pg.h. */
void
resume_start(subscription *sub)
{
	if (!resume_from_memory(sub))
		pg_queue_resume(sub);
}

/* See pg.h. */
bool
resume_ring_covers(const subscription *sub)
{
	return cursor_compare(sub->since, ring_floor()) >= 0;
}

/* See pg.h: the database's answer for sub's catch-up, read up to upto_tick. */
void
resume_database_done(subscription *sub, const PGresult *res, long long upto_tick, bool from_ring)
{
	int rows = PQntuples(res);
	long long oldest = rows > 0 && !PQgetisnull(res, 0, 0) ? atoll(PQgetvalue(res, 0, 0)) : 0;
	int count = 0;
	long long oldest_us = 0;
	change **changes;
	int nchanges = 0;

	if (sub->since.tick - 1 < oldest)
	{
		subscription_resync(sub, "cursor_too_old");
		return;
	}
	if (from_ring && resume_ring_covers(sub))
	{
		if (send_from_ring(sub, sub->since, true))
			subscription_activate_caught_up(sub);
		return;
	}
	changes = xcalloc((size_t) rows + 1, sizeof(change *));
	for (int i = 0; i < rows; i++)
	{
		change *c;

		if (PQgetisnull(res, i, 1))
			continue;
		c = change_from_row(res, i, 1);
		if (!c)
			continue;
		changes[nchanges++] = c;
		if (!oldest_us)
			oldest_us = c->changed_at_us;
		count += deliver_catch_up(sub, c, true);
	}
	/* the read stops one row past the limit: a full answer means there may be more */
	if (count > the_bridge.settings.resume_max_changes ||
	    nchanges > the_bridge.settings.resume_max_changes)
		subscription_resync(sub, "too_many_changes");
	else if (the_bridge.settings.resume_max_age > 0 && oldest_us &&
	         now_wall_us() - oldest_us > (long long) the_bridge.settings.resume_max_age * 1000000)
		subscription_resync(sub, "cursor_too_old");
	else if (cursor_compare(ring_floor(), (cursor){upto_tick + 1, 0}) > 0)
		subscription_resync(sub,
		                    "too_many_changes"); /* the ring moved past what the read covered */
	else
	{
		for (int i = 0; i < nchanges; i++)
			deliver_catch_up(sub, changes[i], false);
		/* what was fanned out while the read was answered */
		send_from_ring(sub, (cursor){upto_tick, LLONG_MAX}, false);
		subscription_activate_caught_up(sub);
		log_debug("client %s: caught up %d updates from the database", sub->client->id, count);
	}
	for (int i = 0; i < nchanges; i++)
		change_unref(changes[i]);
	free(changes);
}
