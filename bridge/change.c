/*
 * change.c
 *	  Changes read from the log, their update messages, and the ring buffer
 *	  of recent changes.
 */
#include "change.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"

static const char *
column(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/*
 * The update message for one patient, in the WintEHR seed's format plus our
 * extras. The resource is embedded as the database's JSON text, unparsed.
 */
static message *
build_update(const PGresult *res, int row, int first, const char *patient_id,
             const char *cursor_text, long long now)
{
	const char *action = column(res, row, first + 2);
	const char *resource = column(res, row, first + 7);
	char stamp[40];
	strbuf buf;

	strbuf_init(&buf, 256 + (resource ? strlen(resource) : 0));
	strbuf_append(&buf, "{\"type\":\"update\",\"data\":{\"action\":");
	strbuf_append_json_string(&buf, action);
	strbuf_append(&buf, ",\"resource_type\":");
	strbuf_append_json_string(&buf, column(res, row, first + 3));
	strbuf_append(&buf, ",\"resource_id\":");
	strbuf_append_json_string(&buf, column(res, row, first + 4));
	strbuf_append(&buf, ",\"patient_id\":");
	strbuf_append_json_string(&buf, patient_id);
	strbuf_append(&buf, ",\"resource\":");
	if (resource && strcmp(action, "deleted") != 0)
		strbuf_append(&buf, resource);
	else
		strbuf_append(&buf, "null");
	strbuf_append(&buf, ",\"version_id\":");
	strbuf_append_json_string(&buf, column(res, row, first + 5));
	strbuf_append(&buf, ",\"actor\":");
	strbuf_append_json_string(&buf, column(res, row, first + 8));
	strbuf_append(&buf, ",\"cursor\":");
	strbuf_append_json_string(&buf, cursor_text);
	strbuf_append(&buf, ",\"changed_at\":");
	strbuf_append_json_string(&buf, column(res, row, first + 9));
	format_timestamp(now, stamp, sizeof(stamp));
	strbuf_append(&buf, "},\"timestamp\":");
	strbuf_append_json_string(&buf, stamp);
	strbuf_append(&buf, "}");
	return message_from_strbuf(MESSAGE_UPDATE, &buf);
}

/* See change.h. */
change *
change_from_row(const PGresult *res, int row, int first)
{
	const char *patients_json = column(res, row, first + 6);
	json_t *patients;
	json_error_t error;
	change *c;
	char cursor_text[CURSOR_TEXT_LEN];
	long long now = now_wall_us();
	size_t i, n;

	if (PQgetisnull(res, row, first) || PQgetisnull(res, row, first + 1) ||
	    !column(res, row, first + 2) || !column(res, row, first + 3) ||
	    !column(res, row, first + 4) || !patients_json)
		return NULL;
	patients = json_loads(patients_json, 0, &error);
	if (!patients || !json_is_array(patients))
	{
		json_decref(patients);
		log_warning("database: change %s has unreadable patient ids",
		            PQgetvalue(res, row, first + 1));
		return NULL;
	}
	c = xcalloc(1, sizeof(change));
	c->refs = 1;
	c->at.tick = atoll(PQgetvalue(res, row, first));
	c->at.position = atoll(PQgetvalue(res, row, first + 1));
	c->at.epoch = PQgetisnull(res, row, first + 11) ? 0 : atoll(PQgetvalue(res, row, first + 11));
	c->resource_type = xstrdup(PQgetvalue(res, row, first + 3));
	c->changed_at_us =
	    PQgetisnull(res, row, first + 10) ? now : atoll(PQgetvalue(res, row, first + 10));
	cursor_format(c->at, cursor_text, sizeof(cursor_text));
	n = json_array_size(patients);
	c->patient_ids = xcalloc(n, sizeof(char *));
	c->messages = xcalloc(n, sizeof(message *));
	for (i = 0; i < n; i++)
	{
		const char *pid = json_string_value(json_array_get(patients, i));
		bool duplicate = false;

		if (!pid)
			continue;
		/* the same patient twice in one change is still one update */
		for (int j = 0; j < c->npatients; j++)
			duplicate = duplicate || strcmp(c->patient_ids[j], pid) == 0;
		if (duplicate)
			continue;
		c->patient_ids[c->npatients] = xstrdup(pid);
		c->messages[c->npatients] = build_update(res, row, first, pid, cursor_text, now);
		c->messages[c->npatients]->changed_at_us = c->changed_at_us;
		c->npatients++;
	}
	json_decref(patients);
	return c;
}

/* Takes another reference. */
change *
change_ref(change *c)
{
	c->refs++;
	return c;
}

/* Drops a reference; the last frees the change and its messages. */
void
change_unref(change *c)
{
	if (!c || --c->refs > 0)
		return;
	for (int i = 0; i < c->npatients; i++)
	{
		free(c->patient_ids[i]);
		message_unref(c->messages[i]);
	}
	free(c->patient_ids);
	free(c->messages);
	free(c->resource_type);
	free(c);
}

/*
 * Besides its count, the ring is bounded in bytes: resources can be large
 * (a Provenance or ExplanationOfBenefit of hundreds of kilobytes), and
 * 10000 of them must not exhaust memory. Evicted changes are still served
 * to resuming clients, from the database.
 */
#define RING_MAX_BYTES (256LL * 1024 * 1024)

static change **ring;
static long long ring_bytes;
static int ring_capacity;
static int ring_head; /* index of the oldest */
static int ring_len;
static cursor ring_floor_cursor;

/* Allocates the ring; capacity changes at most. */
void
ring_init(int capacity)
{
	ring_capacity = capacity < 1 ? 1 : capacity;
	ring = xcalloc((size_t) ring_capacity, sizeof(change *));
	ring_head = ring_len = 0;
}

/* Releases every change in the ring. */
void
ring_free(void)
{
	for (int i = 0; i < ring_len; i++)
		change_unref(ring_get(i));
	free(ring);
	ring = NULL;
	ring_len = 0;
	ring_bytes = 0;
}

/* See change.h. */
cursor
ring_floor(void)
{
	return ring_floor_cursor;
}

/* Sets the floor (at startup: the first change not yet read). */
void
ring_set_floor(cursor floor)
{
	ring_floor_cursor = floor;
}

static long long
change_bytes(const change *c)
{
	long long bytes = (long long) sizeof(change);

	for (int i = 0; i < c->npatients; i++)
		bytes += (long long) c->messages[i]->len;
	return bytes;
}

static void
ring_evict_oldest(void)
{
	change *oldest = ring[ring_head];

	ring_floor_cursor = oldest->at;
	ring_bytes -= change_bytes(oldest);
	change_unref(oldest);
	ring_head = (ring_head + 1) % ring_capacity;
	ring_len--;
}

/* Appends the newest change, evicting the oldest when full (by count or bytes). */
void
ring_push(change *c)
{
	if (ring_len == ring_capacity)
		ring_evict_oldest();
	ring[(ring_head + ring_len) % ring_capacity] = change_ref(c);
	ring_len++;
	ring_bytes += change_bytes(c);
	while (ring_len > 1 && ring_bytes > RING_MAX_BYTES)
		ring_evict_oldest();
}

/* Number of changes held. */
int
ring_count(void)
{
	return ring_len;
}

/* The change at index (0 = oldest). */
change *
ring_get(int index)
{
	return ring[(ring_head + index) % ring_capacity];
}

/* Binary search: changes are in cursor order. */
int
ring_first_after(cursor after)
{
	int lo = 0, hi = ring_len;

	while (lo < hi)
	{
		int mid = (lo + hi) / 2;

		if (cursor_compare(ring_get(mid)->at, after) <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}
