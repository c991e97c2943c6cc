/*
 * subscription.c
 *	  Subscriptions: the one place that changes their state.
 *
 *	    subscribe --> AUTHORIZING (--authorize-sql answers awaited)
 *	              --> the confirmation ("created") is queued
 *	              --> CATCHING_UP (with since: the changes after the cursor
 *	                  come from the ring of recent changes when it holds
 *	                  them all, else from the database)
 *	              --> LIVE (caught_up queued; or at once without since; or
 *	                  a resync told the client to reload instead)
 *	    unsubscribe, replaced, forbidden or the client gone --> CLOSED
 *	    (pending requests cancelled, rooms left, freed)
 *
 *	  Live delivery to a subscription starts only after its catch-up, so
 *	  nothing arrives twice or out of order; a client gets one copy of a
 *	  change per patient however many of its subscriptions take it.
 */
#include "subscription.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bridge.h"
#include "client.h"
#include "log.h"
#include "message.h"
#include "presence.h"
#include "resume_points.h"
#include "rooms.h"

static void catch_up_start(subscription *sub);

/*
 * The one place a subscription's state changes. The legal moves:
 * AUTHORIZING -> CATCHING_UP, LIVE or CLOSED; CATCHING_UP -> LIVE or
 * CLOSED; LIVE -> LIVE (a resync starts it again from now) or CLOSED.
 * Going live sets the cursor it takes live changes from.
 */
static void
set_state(subscription *sub, subscription_state to, cursor live_from)
{
	if (sub->state == SUB_CLOSED || (to == SUB_CATCHING_UP && sub->state != SUB_AUTHORIZING) ||
	    to == SUB_AUTHORIZING)
		log_warning("client %s: subscription state %d -> %d is not a move it makes",
		            sub->client->id, (int) sub->state, (int) to);
	sub->state = to;
	if (to == SUB_LIVE)
		sub->active_from = live_from;
}

/* See subscription.h. */
bool
subscription_matches(const subscription *sub, const char *patient_id, const char *resource_type)
{
	bool patient = false;

	if (sub->room)
		return false;
	for (int i = 0; i < sub->npatients && !patient; i++)
		patient = strcmp(sub->patient_ids[i], patient_id) == 0;
	if (!patient)
		return false;
	if (sub->ntypes == 0)
		return true;
	for (int i = 0; i < sub->ntypes; i++)
	{
		if (strcmp(sub->types[i], resource_type) == 0)
			return true;
	}
	return false;
}

/* See subscription.h. */
subscription *
subscription_find(client *c, const char *id)
{
	for (int i = 0; i < c->nsubs; i++)
	{
		if (strcmp(c->subs[i]->id, id) == 0)
			return c->subs[i];
	}
	return NULL;
}

static void
subscription_free(subscription *sub)
{
	for (int i = 0; i < sub->npatients; i++)
		free(sub->patient_ids[i]);
	for (int i = 0; i < sub->ntypes; i++)
		free(sub->types[i]);
	free(sub->patient_ids);
	free(sub->types);
	free(sub->room);
	free(sub->id);
	free(sub);
}

/* Any state -> CLOSED: cancels its requests, leaves its rooms and frees it. */
static void
subscription_close(subscription *sub)
{
	client *c = sub->client;

	for (int i = 0; i < c->nsubs; i++)
	{
		if (c->subs[i] != sub)
			continue;
		memmove(&c->subs[i], &c->subs[i + 1], (size_t) (c->nsubs - i - 1) * sizeof(subscription *));
		c->nsubs--;
		break;
	}
	for (int i = 0; i < sub->npatients; i++)
		rooms_leave(sub->patient_ids[i], c);
	presence_unsubscribed(sub);
	authorize_cancel(sub->authorizing);
	pg_request_cancel(sub->catch_up);
	resume_points_cancel(sub->point_lookup);
	sub->point_lookup = NULL;
	sub->authorizing = NULL;
	sub->catch_up = NULL;
	set_state(sub, SUB_CLOSED, sub->active_from);
	subscription_free(sub);
}

/* -> LIVE from the current cursor. */
static void
go_live(subscription *sub)
{
	set_state(sub, SUB_LIVE, bridge_live_from());
}

/*
 * CATCHING_UP -> LIVE after a complete catch-up from sub->since; queues
 * the caught_up message that ends the replay for the client.
 */
static void
go_live_caught_up(subscription *sub)
{
	char cursor_text[CURSOR_TEXT_LEN];
	message *msg;

	set_state(sub, SUB_LIVE, (cursor){sub->since.tick, sub->since.position + 1});
	/*
	 * Queued behind the replayed updates and, since the subscription only
	 * now takes live updates, ahead of every live one: the client knows
	 * exactly when it has caught up instead of guessing from a pause.
	 */
	if (sub->quiet_catch_up)
		return; /* the client asked for no replay: it gets no marker either */
	cursor_format(sub->replayed > 0 ? sub->replayed_last : sub->since, cursor_text,
	              sizeof(cursor_text));
	msg = message_caught_up(sub->id, cursor_text, sub->replayed);
	client_send(sub->client, msg);
	message_unref(msg);
}

/* Sends a resync for every patient of sub; -> LIVE from the current cursor. */
static void
resync(subscription *sub, const char *reason)
{
	char cursor_text[CURSOR_TEXT_LEN];

	bridge_current_cursor_text(cursor_text, sizeof(cursor_text));
	log_info("client %s: subscription resync (%s)", sub->client->id, reason);
	for (int i = 0; i < sub->npatients; i++)
	{
		message *msg = message_resync(sub->patient_ids[i], sub->id, reason, cursor_text);

		client_send(sub->client, msg);
		message_unref(msg);
	}
	pg_request_cancel(sub->catch_up);
	sub->catch_up = NULL;
	go_live(sub);
}

/*
 * The client's queue overflowed and its updates were dropped: each live
 * subscription is told to resync. The cursor is at or before every dropped
 * change, so a client resuming from it misses nothing.
 */
static void
queue_overflowed(client *c)
{
	char cursor_text[CURSOR_TEXT_LEN];

	cursor_format(bridge_read_cursor(), cursor_text, sizeof(cursor_text));
	for (int i = 0; i < c->nsubs; i++)
	{
		subscription *sub = c->subs[i];

		if (sub->state != SUB_LIVE)
			continue;
		for (int j = 0; j < sub->npatients; j++)
		{
			message *msg =
			    message_resync(sub->patient_ids[j], sub->id, "queue_overflow", cursor_text);

			client_send(c, msg);
			message_unref(msg);
		}
	}
}

/* Queues an update for c; an overflow tells its subscriptions to resync. */
static void
send_update(client *c, message *msg, bool catch_up)
{
	if (client_send_update(c, msg, catch_up))
		queue_overflowed(c);
}

/* ---- fan-out ---- */

/* Whether c takes this change for this patient live, through any live subscription. */
static bool
client_wants_live(const client *c, const char *patient_id, const char *resource_type)
{
	bool wanted = false;

	for (int i = 0; i < c->nsubs && !wanted; i++)
		wanted = c->subs[i]->state == SUB_LIVE &&
		         subscription_matches(c->subs[i], patient_id, resource_type);
	return wanted && auth_grant_allows(&c->grant, patient_id, resource_type);
}

/* A freshly read change: to the clients in its patients' rooms. */
static void
fan_out_change(change *ch)
{
	/* a conflict warning goes out ahead of the update that caused it */
	presence_on_change(ch);
	for (int i = 0; i < ch->npatients; i++)
	{
		room *r = rooms_find(ch->patient_ids[i]);

		if (!r)
			continue;
		for (int m = 0; m < r->nmembers; m++)
		{
			client *c = r->members[m];

			if (!c->authenticated || c->close_code)
				continue;
			if (client_wants_live(c, ch->patient_ids[i], ch->resource_type))
				send_update(c, ch->messages[i], false);
		}
	}
}

/* Changes were lost to the bridge (see reader_events): nobody's chart can be trusted. */
static void
log_reset(const char *reason)
{
	for (client *c = the_bridge.clients; c; c = c->next)
	{
		for (int i = 0; i < c->nsubs; i++)
		{
			if (c->subs[i]->state == SUB_LIVE && !c->subs[i]->room)
				resync(c->subs[i], reason);
		}
	}
}

/* See subscription.h. */
const reader_events subscription_feed = {fan_out_change, log_reset};

/*
 * Sends the part of change ch that sub takes, during its catch-up; skips
 * what the client already got live from another subscription. Returns the
 * number of messages sent (or, with count_only, that would be).
 */
static int
catch_up_change(subscription *sub, change *ch, bool count_only)
{
	client *c = sub->client;
	int sent = 0;

	for (int i = 0; i < ch->npatients; i++)
	{
		const char *pid = ch->patient_ids[i];
		bool had_it = false;

		if (!subscription_matches(sub, pid, ch->resource_type) ||
		    !auth_grant_allows(&c->grant, pid, ch->resource_type))
			continue;
		/* one copy per client: skip what another subscription delivered live */
		for (int s = 0; s < c->nsubs && !had_it; s++)
		{
			subscription *other = c->subs[s];

			had_it = other != sub && other->state == SUB_LIVE &&
			         cursor_compare(ch->at, other->active_from) >= 0 &&
			         subscription_matches(other, pid, ch->resource_type);
		}
		if (had_it)
			continue;
		if (!count_only)
		{
			send_update(c, ch->messages[i], true);
			sub->replayed++;
			sub->replayed_last = ch->at;
		}
		sent++;
	}
	return sent;
}

/* ---- the resume policy ---- */

static bool
too_old(long long oldest_us)
{
	return the_bridge.settings.resume_max_age > 0 && oldest_us &&
	       now_wall_us() - oldest_us > (long long) the_bridge.settings.resume_max_age * 1000000;
}

/*
 * Sends the ring's changes after `after` that sub takes, within the
 * limits; false if the limits say resync instead (sent then).
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
			int n = catch_up_change(sub, c, true);

			if (n > 0 && !oldest_us)
				oldest_us = c->changed_at_us;
			count += n;
		}
		if (count > the_bridge.settings.resume_max_changes)
		{
			resync(sub, "too_many_changes");
			return false;
		}
		if (too_old(oldest_us))
		{
			resync(sub, "cursor_too_old");
			return false;
		}
	}
	for (int i = first; i < total; i++)
		catch_up_change(sub, ring_get(i), false);
	return true;
}

/*
 * Settles sub's resume without the database when it can: a cursor from the
 * future (another database, or a restored one) cannot be resumed. Returns
 * false when the database must be asked: even when the ring holds every
 * change after the cursor, the database says whether the log was pruned
 * past it, so that a pruned cursor gets a resync whichever bridge it is
 * shown to.
 */
static bool
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
		resync(sub, "cursor_unknown");
		return true;
	}
	return false;
}

/* Whether the ring holds every change after sub's cursor. */
static bool
ring_covers(const subscription *sub)
{
	return cursor_compare(sub->since, ring_floor()) >= 0;
}

/* The reader's turn for sub's catch-up read. */
static bool
catch_up_prepare(void *arg, catch_up_query *q)
{
	subscription *sub = arg;

	if (resume_from_memory(sub))
		return false; /* the resync cancelled the request */
	q->since = sub->since;
	q->patient_ids = sub->patient_ids;
	q->npatients = sub->npatients;
	q->types = sub->types;
	q->ntypes = sub->ntypes;
	q->limit = the_bridge.settings.resume_max_changes + 1;
	q->oldest_only = ring_covers(sub);
	return true;
}

/* The database's answer to sub's catch-up read, which covered the log up to a->upto_tick. */
static void
catch_up_done(void *arg, const catch_up_answer *a)
{
	subscription *sub = arg;
	int count = 0;
	long long oldest_us = 0;

	sub->catch_up = NULL;
	if (a->failed)
	{
		resync(sub, "catch_up_failed");
		return;
	}
	if (sub->since.tick - 1 < a->oldest)
	{
		resync(sub, "cursor_too_old");
		return;
	}
	/* the cursor's tick is not the one it was made at (or the cursor has no epoch) */
	if (a->since_epoch == 0 || a->since_epoch != sub->since.epoch)
	{
		resync(sub, "cursor_unknown");
		return;
	}
	if (a->oldest_only && ring_covers(sub))
	{
		if (send_from_ring(sub, sub->since, true))
			go_live_caught_up(sub);
		return;
	}
	for (int i = 0; i < a->nchanges; i++)
	{
		if (!oldest_us)
			oldest_us = a->changes[i]->changed_at_us;
		count += catch_up_change(sub, a->changes[i], true);
	}
	/* the read stops one row past the limit: a full answer means there may be more */
	if (count > the_bridge.settings.resume_max_changes ||
	    a->nchanges > the_bridge.settings.resume_max_changes)
		resync(sub, "too_many_changes");
	else if (too_old(oldest_us))
		resync(sub, "cursor_too_old");
	else if (cursor_compare(ring_floor(), (cursor){a->upto_tick + 1, 0}) > 0)
		resync(sub, "too_many_changes"); /* the ring moved past what the read covered */
	else
	{
		for (int i = 0; i < a->nchanges; i++)
			catch_up_change(sub, a->changes[i], false);
		/* what was fanned out while the read was answered */
		send_from_ring(sub, (cursor){a->upto_tick, LLONG_MAX}, false);
		go_live_caught_up(sub);
		log_debug("client %s: caught up %d updates from the database", sub->client->id, count);
	}
}

static const catch_up_ops catch_up_callbacks = {catch_up_prepare, catch_up_done};

/* -> CATCHING_UP: the reader is asked, unless the cursor settles it at once. */
static void
catch_up_start(subscription *sub)
{
	set_state(sub, SUB_CATCHING_UP, sub->active_from);
	if (!resume_from_memory(sub))
		sub->catch_up = pg_catch_up(&catch_up_callbacks, sub);
}

/* ---- subscribe ---- */

static json_t *
strings_json(char **list, int n)
{
	json_t *array = json_array();

	for (int i = 0; i < n; i++)
		json_array_append_new(array, json_string(list[i]));
	return array;
}

/*
 * The point of a subscription made without since: with one, it resumes from
 * there as if the client had sent it (replay, then caught_up); without, it
 * starts where its confirmation said, replaying quietly what came during
 * the lookup.
 */
static void
point_answered(void *arg, bool claimed, bool found, cursor at)
{
	subscription *sub = arg;

	sub->point_lookup = NULL;
	sub->has_since = true;
	if (found)
	{
		char text[CURSOR_TEXT_LEN];

		cursor_format(at, text, sizeof(text));
		log_info("client %s: subscription %s of user %s resumes where it was served to (%s)",
		         sub->client->id, sub->id,
		         sub->client->grant.subject ? sub->client->grant.subject : "(unknown)", text);
		sub->since = at;
	}
	else
	{
		sub->since = sub->confirmed_at;
		sub->quiet_catch_up = true;
	}
	/*
	 * The database saved the confirmation's cursor as the point of every
	 * patient that had none before it answered, so the subscription goes
	 * live only once a crash of this bridge costs duplicates, never a gap.
	 */
	if (claimed && !found)
	{
		sub->saved_point = sub->since;
		sub->point_saved = true;
	}
	catch_up_start(sub);
	/* a point found: saved for all of its patients; unanswered: saved soon */
	if (sub->state != SUB_CLOSED)
		resume_points_note(sub);
}

/* AUTHORIZING -> confirmed, then CATCHING_UP or LIVE; or CLOSED when forbidden. */
static void
authorized(subscription *sub, bool allowed)
{
	client *c = sub->client;
	json_t *data;
	char cursor_text[CURSOR_TEXT_LEN];

	sub->authorizing = NULL;
	if (!allowed)
	{
		log_info("client %s: subscription %s refused for user %s: --authorize-sql did not allow "
		         "one of its patients",
		         c->id, sub->id, c->grant.subject ? c->grant.subject : "(unknown)");
		client_send_error(c, "FORBIDDEN", "not allowed to see one of these patients", sub->id);
		subscription_close(sub);
		return;
	}
	data = json_pack("{s:s, s:s}", "action", "created", "subscription_id", sub->id);
	if (sub->room)
		json_object_set_new(data, "room", json_string(sub->room));
	else
	{
		json_object_set_new(data, "patient_ids", strings_json(sub->patient_ids, sub->npatients));
		json_object_set_new(data, "resource_types", strings_json(sub->types, sub->ntypes));
		if (sub->has_since)
			cursor_format(sub->since, cursor_text, sizeof(cursor_text));
		if (sub->has_since || bridge_current_cursor_text(cursor_text, sizeof(cursor_text)))
			json_object_set_new(data, "cursor", json_string(cursor_text));
		else
			json_object_set_new(data, "cursor", json_null());
	}
	client_send_json(c, json_pack("{s:s, s:o}", "type", "subscription", "data", data));
	if (sub->room)
	{
		/* a named room: nothing flows there yet, so it takes nothing */
		go_live(sub);
		return;
	}
	if (sub->presence)
		presence_subscribed(sub); /* its first presence snapshot follows the confirmation */
	if (sub->has_since)
		catch_up_start(sub);
	else if (resume_points_enabled() && the_bridge.last_tick > 0 && !sub->replaced_live)
	{
		/* no cursor: where was this user's subscription served to? */
		sub->record_point = true;
		sub->confirmed_at = bridge_current_cursor();
		sub->state = SUB_CATCHING_UP;
		sub->point_lookup = resume_points_lookup(c->grant.subject, sub->patient_ids, sub->npatients,
		                                         sub->id, sub->confirmed_at, point_answered, sub);
	}
	else
	{
		sub->record_point = the_bridge.settings.resume_without_cursor;
		go_live(sub);
	}
}

static void
authorize_answered(void *arg, bool allowed)
{
	authorized(arg, allowed);
}

/* Whether req, for the id of existing, is the same subscription's second half
 * (SUBSCRIPTION_MERGE_US). */
static bool
mergeable(const subscription *existing, const subscribe_request *req)
{
	if (existing->room || req->room || existing->since_from_client || req->has_since ||
	    existing->state == SUB_CLOSED || existing->npatients != req->npatients ||
	    now_monotonic_us() - existing->created_us > SUBSCRIPTION_MERGE_US)
		return false;
	for (int i = 0; i < req->npatients; i++)
	{
		bool found = false;

		for (int j = 0; j < existing->npatients && !found; j++)
			found = strcmp(existing->patient_ids[j], req->patient_ids[i]) == 0;
		if (!found)
			return false;
	}
	return true;
}

static void
free_request(subscribe_request *req)
{
	for (int i = 0; i < req->npatients; i++)
		free(req->patient_ids[i]);
	for (int i = 0; i < req->ntypes; i++)
		free(req->types[i]);
	free(req->patient_ids);
	free(req->types);
	free(req->room);
	free(req->id);
	memset(req, 0, sizeof(*req));
}

/*
 * Adds req's types to sub (no types on either side: every type) and
 * confirms again with the merged list; the new types are live from now.
 */
static void
merge_into(subscription *sub, subscribe_request *req)
{
	json_t *data;

	if (sub->ntypes > 0 && req->ntypes == 0)
	{
		for (int i = 0; i < sub->ntypes; i++)
			free(sub->types[i]);
		sub->ntypes = 0;
	}
	else if (sub->ntypes > 0)
	{
		for (int i = 0; i < req->ntypes; i++)
		{
			bool known = false;

			for (int j = 0; j < sub->ntypes && !known; j++)
				known = strcmp(sub->types[j], req->types[i]) == 0;
			if (known)
				continue;
			sub->types = xrealloc(sub->types, (size_t) (sub->ntypes + 2) * sizeof(char *));
			sub->types[sub->ntypes++] = xstrdup(req->types[i]);
		}
	}
	log_debug("client %s: subscription %s repeated within a second: types merged (%d)",
	          sub->client->id, sub->id, sub->ntypes);
	free_request(req);
	/* the new types were not delivered before now: claim no more than that */
	if (sub->state == SUB_LIVE)
		sub->active_from = bridge_current_cursor();
	if (sub->state == SUB_AUTHORIZING)
		return; /* its confirmation, with the merged types, is still to come */
	data = json_pack("{s:s, s:s, s:o, s:o}", "action", "created", "subscription_id", sub->id,
	                 "patient_ids", strings_json(sub->patient_ids, sub->npatients),
	                 "resource_types", strings_json(sub->types, sub->ntypes));
	client_send_json(sub->client, json_pack("{s:s, s:o}", "type", "subscription", "data", data));
}

/* See subscription.h. */
void
subscription_subscribe(client *c, subscribe_request *req)
{
	subscription *existing = subscription_find(c, req->id);
	subscription *sub;
	bool replaced = existing != NULL;

	if (existing && mergeable(existing, req))
	{
		merge_into(existing, req);
		return;
	}
	if (existing)
		subscription_close(existing);
	sub = xcalloc(1, sizeof(subscription));
	sub->client = c;
	sub->state = SUB_AUTHORIZING;
	sub->id = req->id;
	sub->room = req->room;
	sub->patient_ids = req->patient_ids;
	sub->npatients = req->npatients;
	sub->types = req->types;
	sub->ntypes = req->ntypes;
	sub->has_since = req->has_since;
	sub->since_from_client = req->has_since;
	/* this connection got what the one it replaces took: no replay from its point */
	sub->replaced_live = replaced;
	sub->since = req->since;
	sub->created_us = now_monotonic_us();
	sub->presence = req->presence;
	memset(req, 0, sizeof(*req));
	c->subs = xrealloc(c->subs, (size_t) (c->nsubs + 1) * sizeof(subscription *));
	c->subs[c->nsubs++] = sub;
	for (int i = 0; i < sub->npatients; i++)
		rooms_join(sub->patient_ids[i], c);
	log_debug("client %s: subscribing %s to %d patients", c->id, sub->id, sub->npatients);
	if (the_bridge.settings.authorize_sql && sub->npatients > 0)
	{
		bool allowed = false;

		sub->authorizing =
		    authorize_patients(c->grant.subject ? c->grant.subject : "", sub->patient_ids,
		                       sub->npatients, authorize_answered, sub, &allowed);
		if (!sub->authorizing)
			authorized(sub, allowed);
	}
	else
		authorized(sub, true);
}

/* See subscription.h. */
void
subscription_unsubscribe(client *c, const char *id)
{
	subscription *sub = subscription_find(c, id);

	if (sub)
		subscription_close(sub);
}

/* See subscription.h. */
void
subscriptions_client_closed(client *c)
{
	for (int i = 0; i < c->nsubs; i++)
		resume_points_note(c->subs[i]);
	while (c->nsubs > 0)
		subscription_close(c->subs[c->nsubs - 1]);
	free(c->subs);
	c->subs = NULL;
}
