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
 * Deletes WintEHR's chart-review hook applies: it removes a Condition only
 * on the event "condition.deleted" and an AllergyIntolerance only on
 * "allergy.deleted", and ignores an event whose resource is missing or has
 * no resourceType. The service takes the event name from data.event_type.
 * So a delete of these types carries that event_type and a resource with
 * at least resourceType and id: the last body the bridge read for it, else
 * a stub. Deletes of every other type keep resource null, which the hook
 * ignores (with a resource it would insert the deleted item again).
 */
static const char *const delete_events[][2] = {
    {"AllergyIntolerance", "allergy.deleted"},
    {"Condition", "condition.deleted"},
};

/* See change.h. */
const char *
change_delete_event(const char *resource_type)
{
	for (size_t i = 0; i < sizeof(delete_events) / sizeof(delete_events[0]); i++)
	{
		if (strcmp(delete_events[i][0], resource_type) == 0)
			return delete_events[i][1];
	}
	return NULL;
}

/*
 * The last body read of each resource of those types, for their deletes
 * (the change log records a delete without one). Bounded: the entries
 * least recently written are forgotten first, and a delete of a forgotten
 * resource gets the stub.
 */
#define BODIES_MAX_ENTRIES 10000
#define BODIES_MAX_BYTES   (32LL * 1024 * 1024)
#define BODIES_BUCKETS     4096

typedef struct body_entry
{
	char *key; /* "Type/id" */
	cursor at; /* the change the body is from */
	char **patient_ids;
	int npatients;
	char *body;
	size_t body_len;
	struct body_entry *hash_next;
	struct body_entry *newer, *older; /* by write */
} body_entry;

static body_entry *body_buckets[BODIES_BUCKETS];
static body_entry *newest_body, *oldest_body;
static int nbodies;
static long long body_bytes;

static unsigned int
hash_key(const char *key)
{
	unsigned int h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *) key; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % BODIES_BUCKETS;
}

static body_entry *
find_body(const char *key)
{
	for (body_entry *e = body_buckets[hash_key(key)]; e; e = e->hash_next)
	{
		if (strcmp(e->key, key) == 0)
			return e;
	}
	return NULL;
}

static void
unlink_body_order(body_entry *e)
{
	if (e->newer)
		e->newer->older = e->older;
	else
		newest_body = e->older;
	if (e->older)
		e->older->newer = e->newer;
	else
		oldest_body = e->newer;
	e->newer = e->older = NULL;
}

static void
free_body_contents(body_entry *e)
{
	for (int i = 0; i < e->npatients; i++)
		free(e->patient_ids[i]);
	free(e->patient_ids);
	body_bytes -= (long long) e->body_len;
	free(e->body);
	e->patient_ids = NULL;
	e->npatients = 0;
	e->body = NULL;
	e->body_len = 0;
}

static void
remove_body(body_entry *e)
{
	body_entry **link = &body_buckets[hash_key(e->key)];

	while (*link != e)
		link = &(*link)->hash_next;
	*link = e->hash_next;
	unlink_body_order(e);
	free_body_contents(e);
	free(e->key);
	free(e);
	nbodies--;
}

/* Remembers body as the newest of key unless a later one is known. */
static void
remember_body(const char *key, cursor at, json_t *patients, const char *body)
{
	body_entry *e = find_body(key);
	size_t n = json_array_size(patients);

	if (e && cursor_compare(e->at, at) >= 0)
		return; /* an older change (a catch-up from the database) */
	if (!e)
	{
		unsigned int h = hash_key(key);

		e = xcalloc(1, sizeof(body_entry));
		e->key = xstrdup(key);
		e->hash_next = body_buckets[h];
		body_buckets[h] = e;
		nbodies++;
	}
	else
	{
		unlink_body_order(e);
		free_body_contents(e);
	}
	e->at = at;
	e->body_len = strlen(body);
	e->body = xstrdup(body);
	body_bytes += (long long) e->body_len;
	e->patient_ids = xcalloc(n + 1, sizeof(char *));
	for (size_t i = 0; i < n; i++)
	{
		const char *pid = json_string_value(json_array_get(patients, i));

		if (pid)
			e->patient_ids[e->npatients++] = xstrdup(pid);
	}
	e->older = newest_body;
	if (newest_body)
		newest_body->newer = e;
	newest_body = e;
	if (!oldest_body)
		oldest_body = e;
	while (oldest_body && oldest_body != e &&
	       (nbodies > BODIES_MAX_ENTRIES || body_bytes > BODIES_MAX_BYTES))
		remove_body(oldest_body);
}

/*
 * The body to send with a delete of key at cursor at in patient_id's room:
 * the last one read before it, if that one was already in that patient's
 * room (never another patient's version of a resource that moved); else
 * NULL.
 */
static const char *
last_body(const char *key, cursor at, const char *patient_id)
{
	body_entry *e = find_body(key);

	if (!e || cursor_compare(e->at, at) >= 0)
		return NULL;
	for (int i = 0; i < e->npatients; i++)
	{
		if (strcmp(e->patient_ids[i], patient_id) == 0)
			return e->body;
	}
	return NULL;
}

/* See change.h. */
void
change_bodies_free(void)
{
	while (oldest_body)
		remove_body(oldest_body);
}

/* See change.h. */
int
change_bodies_count(void)
{
	return nbodies;
}

/*
 * The update message for one patient, in the WintEHR seed's format plus our
 * extras. The resource is embedded as the database's JSON text, unparsed.
 * A delete of a type in delete_events carries its event_type and the
 * resource deleted_body (the last body, or a stub).
 */
static message *
build_update(const PGresult *res, int row, int first, const char *patient_id,
             const char *cursor_text, long long now, const char *delete_event,
             const char *deleted_body)
{
	const char *action = column(res, row, first + 2);
	const char *resource = column(res, row, first + 7);
	char stamp[40];
	strbuf buf;

	strbuf_init(&buf, 256 + (resource ? strlen(resource) : 0) +
	                      (deleted_body ? strlen(deleted_body) : 0));
	strbuf_append(&buf, "{\"type\":\"update\",\"data\":{\"action\":");
	strbuf_append_json_string(&buf, action);
	if (delete_event)
	{
		strbuf_append(&buf, ",\"event_type\":");
		strbuf_append_json_string(&buf, delete_event);
	}
	strbuf_append(&buf, ",\"resource_type\":");
	strbuf_append_json_string(&buf, column(res, row, first + 3));
	strbuf_append(&buf, ",\"resource_id\":");
	strbuf_append_json_string(&buf, column(res, row, first + 4));
	strbuf_append(&buf, ",\"patient_id\":");
	strbuf_append_json_string(&buf, patient_id);
	strbuf_append(&buf, ",\"resource\":");
	if (delete_event)
		strbuf_append(&buf, deleted_body);
	else if (resource && strcmp(action, "deleted") != 0)
		strbuf_append(&buf, resource);
	else
		strbuf_append(&buf, "null");
	/*
	 * The JSON null (not SQL NULL) as the resource of a created or updated
	 * change: its version was read back by version and is gone (expunged
	 * before delivery). Clients re-read the resource.
	 */
	if (!delete_event && resource && strcmp(resource, "null") == 0 &&
	    strcmp(action, "deleted") != 0)
		strbuf_append(&buf, ",\"resource_gone\":true");
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

/* {"resourceType":T,"id":I}: what a delete carries when no body is known. */
static char *
stub_body(const char *type, const char *id)
{
	strbuf buf;

	strbuf_init(&buf, 64);
	strbuf_append(&buf, "{\"resourceType\":");
	strbuf_append_json_string(&buf, type);
	strbuf_append(&buf, ",\"id\":");
	strbuf_append_json_string(&buf, id);
	strbuf_append(&buf, "}");
	return buf.data;
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
	const char *delete_event = NULL, *action, *type, *id, *resource;
	char *key = NULL, *stub = NULL;

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
	action = column(res, row, first + 2);
	type = column(res, row, first + 3);
	id = column(res, row, first + 4);
	resource = column(res, row, first + 7);
	if (change_delete_event(type))
	{
		strbuf k;

		strbuf_init(&k, 64);
		strbuf_append(&k, type);
		strbuf_append(&k, "/");
		strbuf_append(&k, id);
		key = k.data;
		if (strcmp(action, "deleted") == 0)
		{
			delete_event = change_delete_event(type);
			stub = stub_body(type, id);
		}
		else if (resource && strcmp(resource, "null") != 0)
			remember_body(key, c->at, patients, resource);
	}
	n = json_array_size(patients);
	c->patient_ids = xcalloc(n, sizeof(char *));
	c->messages = xcalloc(n, sizeof(message *));
	for (i = 0; i < n; i++)
	{
		const char *pid = json_string_value(json_array_get(patients, i));
		const char *body = NULL;
		bool duplicate = false;

		if (!pid)
			continue;
		/* the same patient twice in one change is still one update */
		for (int j = 0; j < c->npatients; j++)
			duplicate = duplicate || strcmp(c->patient_ids[j], pid) == 0;
		if (duplicate)
			continue;
		if (delete_event && !(body = last_body(key, c->at, pid)))
			body = stub;
		c->patient_ids[c->npatients] = xstrdup(pid);
		c->messages[c->npatients] =
		    build_update(res, row, first, pid, cursor_text, now, delete_event, body);
		c->messages[c->npatients]->changed_at_us = c->changed_at_us;
		c->messages[c->npatients]->at = c->at;
		c->npatients++;
	}
	free(key);
	free(stub);
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
	change_bodies_free();
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
