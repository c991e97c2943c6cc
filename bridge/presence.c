/*
 * presence.c
 *	  Presence rooms, editing declarations and conflict warnings; see
 *	  presence.h and docs/protocol.md.
 *
 *	  A presence room exists while this bridge has a connection in it. Its
 *	  people are this bridge's members (known at once) plus the rows of
 *	  other bridges read from fhir_notify.presence_read(), which returns
 *	  only rooms whose seq changed since the last read. Changes of a room
 *	  are coalesced: its snapshot is built once and shared by its viewers,
 *	  at most once per presence-interval. Local changes are written to the
 *	  database in batches (one fhir_notify.presence_set() per round trip,
 *	  however many joins happened meanwhile) on a connection of its own, so
 *	  presence never holds up change delivery.
 */
#include "presence.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "bridge.h"
#include "log.h"
#include "message.h"
#include "pg_link.h"
#include "request.h"

#define MAX_EDITING        8  /* resources one connection edits in one patient */
#define MAX_PERSON_EDITING 16 /* resources listed per person */
#define NBUCKETS           4096
#define CLAIM_MAX          128
#define POLL_US            (2 * 1000000LL) /* the safety read, in case a doorbell is lost */
#define HOUSEKEEPING_US    (LWS_US_PER_SEC / 2)

long long presence_messages_sent;
long long presence_conflicts_sent;

typedef struct editing_entry
{
	char resource[136]; /* Type/id */
	char type[72];
	char id[72];
	char version[72]; /* "" when none was declared */
	bool reported;    /* a conflict was sent for the change at reported_at */
	cursor reported_at;
} editing_entry;

typedef struct member
{
	client *c;
	int subs; /* presence subscriptions of c naming this patient */
	long long since_us;
	editing_entry editing[MAX_EDITING];
	int nediting;
	bool db_dirty; /* not yet written to the database as it is now */
} member;

typedef struct remote_row
{
	char *user;
	char *name;
	char *role;
	char *fhir_user;
	char **editing;
	int nediting;
	long long since_us;
} remote_row;

typedef struct proom
{
	char *patient_id;
	member **members;
	int nmembers;
	int cap;
	int neditors; /* members editing something: conflicts are looked for only then */
	remote_row *remote;
	int nremote;
	long long seq; /* the database's seq of the room at the last read; -1: read it */
	char **gone;   /* connections that left, to delete from the database */
	int ngone;
	bool db_dirty;
	bool due;                    /* the snapshot may have changed since the last broadcast */
	long long last_broadcast_us; /* monotonic */
	char *last_json;             /* the last snapshot broadcast: count and users */
	char **last_users;           /* its users, sorted */
	int nlast;
	struct proom *next;
} proom;

typedef enum presence_step
{
	PSTEP_IDLE,
	PSTEP_LISTEN,
	PSTEP_SET,
	PSTEP_HEARTBEAT,
	PSTEP_READ
} presence_step;

static void link_connected(pg_link *link);
static void link_result(pg_link *link, const PGresult *res);
static void link_query_done(pg_link *link);
static void link_disconnected(pg_link *link);
static void link_notify(pg_link *link, const PGnotify *notify);

static const pg_link_ops presence_ops = {link_connected, link_result, link_query_done,
                                         link_disconnected, link_notify};
static pg_link db = {.name = "presence", .ops = &presence_ops, .adopted_socket = -1};
static bool db_started;
static bool db_failed_before;
static presence_step step;
static char bridge_name[160];

static proom *buckets[NBUCKETS];
static int nrooms;
static bool any_db_dirty;
static bool read_wanted;
static long long next_read_us;
static long long next_write_us; /* after a failed write: not again before this */
static long long next_heartbeat_us;
static long long next_poll_us;
static lws_sorted_usec_list_t broadcast_timer;
static long long broadcast_at_us; /* 0: not scheduled */
static lws_sorted_usec_list_t housekeeping_timer;
static bool full_write_needed = true; /* the next write replaces every row of this bridge */
static bool step_failed;

static void kick(void);
static void schedule_broadcast(long long at_us);
static void housekeeping_cb(lws_sorted_usec_list_t *sul);

/* ---------- small helpers ---------- */

static unsigned
bucket_of(const char *s)
{
	unsigned long long h = 1469598103934665603ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char) *s) * 1099511628211ULL;
	return (unsigned) (h % NBUCKETS);
}

static proom *
room_find(const char *patient_id)
{
	for (proom *r = buckets[bucket_of(patient_id)]; r; r = r->next)
	{
		if (strcmp(r->patient_id, patient_id) == 0)
			return r;
	}
	return NULL;
}

static proom *
room_get(const char *patient_id)
{
	proom *r = room_find(patient_id);
	unsigned b;

	if (r)
		return r;
	r = xcalloc(1, sizeof(proom));
	r->patient_id = xstrdup(patient_id);
	r->seq = -1;
	b = bucket_of(patient_id);
	r->next = buckets[b];
	buckets[b] = r;
	nrooms++;
	read_wanted = true;
	return r;
}

static void
remote_clear(proom *r)
{
	for (int i = 0; i < r->nremote; i++)
	{
		remote_row *row = &r->remote[i];

		free(row->user);
		free(row->name);
		free(row->role);
		free(row->fhir_user);
		request_free_strings(row->editing, row->nediting);
	}
	free(r->remote);
	r->remote = NULL;
	r->nremote = 0;
}

/* Frees a room nobody here is in any more, once the database knows they left. */
static void
room_maybe_free(proom *r)
{
	proom **link;

	if (r->nmembers > 0 || r->ngone > 0 || r->db_dirty)
		return;
	for (link = &buckets[bucket_of(r->patient_id)]; *link; link = &(*link)->next)
	{
		if (*link == r)
		{
			*link = r->next;
			break;
		}
	}
	nrooms--;
	remote_clear(r);
	free(r->members);
	request_free_strings(r->gone, r->ngone);
	request_free_strings(r->last_users, r->nlast);
	free(r->last_json);
	free(r->patient_id);
	free(r);
}

static member *
member_find(proom *r, const client *c)
{
	for (int i = 0; i < r->nmembers; i++)
	{
		if (r->members[i]->c == c)
			return r->members[i];
	}
	return NULL;
}

/* A claim as text: a string, or the first string of an array; NULL otherwise. */
static const char *
claim_text(const client *c, const char *name)
{
	json_t *value;

	if (!name || !*name || !c->grant.claims)
		return NULL;
	value = json_object_get(c->grant.claims, name);
	if (json_is_array(value))
	{
		size_t i;
		json_t *item;

		json_array_foreach(value, i, item)
		{
			if (json_is_string(item))
				return json_string_value(item);
		}
		return NULL;
	}
	return json_string_value(value);
}

/* Copies at most CLAIM_MAX bytes of s, not cutting a UTF-8 character; NULL stays NULL. */
static char *
claim_copy(const char *s)
{
	size_t len;
	char *out;

	if (!s)
		return NULL;
	len = strlen(s);
	if (len > CLAIM_MAX)
	{
		len = CLAIM_MAX;
		while (len > 0 && ((unsigned char) s[len] & 0xC0) == 0x80)
			len--;
	}
	out = xmalloc(len + 1);
	memcpy(out, s, len);
	out[len] = '\0';
	return out;
}

/* A claim for the database, cut at CLAIM_MAX bytes: a JSON string or null. */
static json_t *
claim_json(const client *c, const char *name)
{
	char *copy = claim_copy(claim_text(c, name));
	json_t *out = copy ? json_string(copy) : json_null();

	free(copy);
	return out ? out : json_null();
}

static const char *
user_of(const client *c)
{
	return c->grant.subject ? c->grant.subject : "unknown";
}

static void
mark_due(proom *r)
{
	long long now = now_monotonic_us();
	long long at = r->last_broadcast_us + (long long) the_bridge.settings.presence_interval * 1000;

	r->due = true;
	schedule_broadcast(at > now ? at : now);
}

static void
mark_db_dirty(proom *r, member *m)
{
	if (m)
		m->db_dirty = true;
	r->db_dirty = true;
	any_db_dirty = true;
	kick();
}

/* ---------- snapshots ---------- */

typedef struct person
{
	const char *user;
	const char *name;
	const char *role;
	const char *fhir_user;
	int connections;
	long long since_us;
	const char *editing[MAX_PERSON_EDITING];
	int nediting;
} person;

static int
compare_user(const void *a, const void *b)
{
	return strcmp(((const person *) a)->user, ((const person *) b)->user);
}

/* Editors first, then the longest present, then by user id. */
static int
compare_person(const void *a, const void *b)
{
	const person *x = a, *y = b;

	if ((x->nediting > 0) != (y->nediting > 0))
		return x->nediting > 0 ? -1 : 1;
	if (x->since_us != y->since_us)
		return x->since_us < y->since_us ? -1 : 1;
	return strcmp(x->user, y->user);
}

static void
person_add_editing(person *p, const char *resource)
{
	for (int i = 0; i < p->nediting; i++)
	{
		if (strcmp(p->editing[i], resource) == 0)
			return;
	}
	if (p->nediting < MAX_PERSON_EDITING)
		p->editing[p->nediting++] = resource;
}

/*
 * The people of a room, one per user (connections summed, the earliest
 * since, editing merged), sorted for display. Strings point into the room
 * and its members' grants. Returns the count; *out is to be freed.
 */
static int
room_people(proom *r, person **out)
{
	int n = r->nmembers + r->nremote, k = 0;
	person *raw = xcalloc((size_t) (n ? n : 1), sizeof(person));
	person *merged;

	for (int i = 0; i < r->nmembers; i++)
	{
		member *m = r->members[i];
		person *p = &raw[k++];

		p->user = user_of(m->c);
		p->name = claim_text(m->c, the_bridge.settings.presence_name_claim);
		p->role = claim_text(m->c, the_bridge.settings.presence_role_claim);
		p->fhir_user = claim_text(m->c, the_bridge.settings.presence_user_claim);
		p->connections = 1;
		p->since_us = m->since_us;
		for (int e = 0; e < m->nediting; e++)
			person_add_editing(p, m->editing[e].resource);
	}
	for (int i = 0; i < r->nremote; i++)
	{
		remote_row *row = &r->remote[i];
		person *p = &raw[k++];

		p->user = row->user;
		p->name = row->name;
		p->role = row->role;
		p->fhir_user = row->fhir_user;
		p->connections = 1;
		p->since_us = row->since_us;
		for (int e = 0; e < row->nediting; e++)
			person_add_editing(p, row->editing[e]);
	}
	qsort(raw, (size_t) k, sizeof(person), compare_user);
	merged = xcalloc((size_t) (k ? k : 1), sizeof(person));
	n = 0;
	for (int i = 0; i < k; i++)
	{
		person *p = &raw[i];

		if (n > 0 && strcmp(merged[n - 1].user, p->user) == 0)
		{
			person *q = &merged[n - 1];

			q->connections++;
			if (p->since_us < q->since_us)
				q->since_us = p->since_us;
			if (!q->name)
				q->name = p->name;
			if (!q->role)
				q->role = p->role;
			if (!q->fhir_user)
				q->fhir_user = p->fhir_user;
			for (int e = 0; e < p->nediting; e++)
				person_add_editing(q, p->editing[e]);
		}
		else
			merged[n++] = *p;
	}
	free(raw);
	qsort(merged, (size_t) n, sizeof(person), compare_person);
	*out = merged;
	return n;
}

static json_t *
string_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

/* The type of "Type/id" into buf. */
static void
type_of(const char *resource, char *buf, size_t len)
{
	const char *slash = strchr(resource, '/');
	size_t n = slash ? (size_t) (slash - resource) : strlen(resource);

	if (n >= len)
		n = len - 1;
	memcpy(buf, resource, n);
	buf[n] = '\0';
}

/* Whether viewer may see that someone edits resource of this patient. */
static bool
may_see_editing(const client *viewer, const char *patient_id, const char *resource)
{
	char type[72];

	if (!viewer)
		return true;
	type_of(resource, type, sizeof(type));
	return auth_grant_allows(&viewer->grant, patient_id, type);
}

/*
 * The users array of a room's snapshot; with a viewer, editing entries of
 * types the viewer may not read are left out.
 */
static json_t *
users_json(proom *r, person *people, int n, const client *viewer)
{
	json_t *users = json_array();
	int limit = the_bridge.settings.presence_max_list;

	for (int i = 0; i < n && i < limit; i++)
	{
		person *p = &people[i];
		json_t *editing = json_array();
		char since[40];

		for (int e = 0; e < p->nediting; e++)
		{
			if (may_see_editing(viewer, r->patient_id, p->editing[e]))
				json_array_append_new(editing, json_pack("{s:s}", "resource", p->editing[e]));
		}
		format_timestamp(p->since_us, since, sizeof(since));
		json_array_append_new(users, json_pack("{s:s, s:o, s:o, s:o, s:i, s:s, s:o}", "user",
		                                       p->user, "name", string_or_null(p->name), "role",
		                                       string_or_null(p->role), "fhir_user",
		                                       string_or_null(p->fhir_user), "connections",
		                                       p->connections, "since", since, "editing", editing));
	}
	return users;
}

static message *
snapshot_message(proom *r, json_t *users, int count, json_t *joined, json_t *left)
{
	json_t *root =
	    json_pack("{s:s, s:{s:s, s:o, s:i, s:b, s:o, s:o}}", "type", "presence", "data",
	              "patient_id", r->patient_id, "users", users, "count", count, "truncated",
	              count > the_bridge.settings.presence_max_list, "joined", joined, "left", left);
	char *text = json_dumps(root, JSON_COMPACT);
	message *msg = message_new(MESSAGE_CONTROL, text, strlen(text));

	free(text);
	json_decref(root);
	return msg;
}

/* Whether every editing entry of the room is visible to viewer (then the shared message fits). */
static bool
sees_everything(const client *viewer, proom *r, person *people, int n)
{
	for (int i = 0; i < n && i < the_bridge.settings.presence_max_list; i++)
	{
		for (int e = 0; e < people[i].nediting; e++)
		{
			if (!may_see_editing(viewer, r->patient_id, people[i].editing[e]))
				return false;
		}
	}
	return true;
}

static bool
may_view(const client *c, const char *patient_id)
{
	return c->authenticated && !c->close_code && auth_grant_allows(&c->grant, patient_id, NULL);
}

static void
send_counted(client *c, message *msg)
{
	client_send(c, msg);
	presence_messages_sent++;
}

/* The current snapshot to one viewer (a new subscription), nothing joined or left. */
static void
send_snapshot_to(proom *r, client *c)
{
	person *people;
	int n = room_people(r, &people);
	message *msg;

	if (may_view(c, r->patient_id))
	{
		msg = snapshot_message(r, users_json(r, people, n, c), n, json_array(), json_array());
		send_counted(c, msg);
		message_unref(msg);
	}
	free(people);
}

static bool
sorted_contains(char **list, int n, const char *s)
{
	int lo = 0, hi = n - 1;

	while (lo <= hi)
	{
		int mid = (lo + hi) / 2;
		int cmp = strcmp(list[mid], s);

		if (cmp == 0)
			return true;
		if (cmp < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return false;
}

static int
compare_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * Sends a room's snapshot to its viewers if it changed since the last one
 * (quiet: only records it as sent).
 */
static void
broadcast_to(proom *r, bool quiet)
{
	person *people;
	int n = room_people(r, &people);
	json_t *users = users_json(r, people, n, NULL);
	char *listed = json_dumps(users, JSON_COMPACT | JSON_SORT_KEYS);
	strbuf key;
	char *text;

	/* what the viewers see: the listed people and how many there are */
	strbuf_init(&key, strlen(listed) + 16);
	strbuf_appendf(&key, "%d:%s", n, listed);
	free(listed);
	text = key.data;
	char **now_users;
	json_t *joined, *left;
	message *shared;

	r->due = false;
	if (r->last_json && strcmp(r->last_json, text) == 0)
	{
		free(text);
		json_decref(users);
		free(people);
		return;
	}
	r->last_broadcast_us = now_monotonic_us();
	now_users = xcalloc((size_t) (n ? n : 1), sizeof(char *));
	for (int i = 0; i < n; i++)
		now_users[i] = xstrdup(people[i].user);
	qsort(now_users, (size_t) n, sizeof(char *), compare_strings);
	joined = json_array();
	left = json_array();
	for (int i = 0; i < n; i++)
	{
		if (!sorted_contains(r->last_users, r->nlast, now_users[i]))
			json_array_append_new(joined, json_string(now_users[i]));
	}
	for (int i = 0; i < r->nlast; i++)
	{
		if (!sorted_contains(now_users, n, r->last_users[i]))
			json_array_append_new(left, json_string(r->last_users[i]));
	}
	shared = snapshot_message(r, users, n, json_incref(joined), json_incref(left));
	for (int i = 0; i < r->nmembers && !quiet; i++)
	{
		client *c = r->members[i]->c;

		if (!may_view(c, r->patient_id))
			continue;
		if (sees_everything(c, r, people, n))
			send_counted(c, shared);
		else
		{
			message *own = snapshot_message(r, users_json(r, people, n, c), n, json_incref(joined),
			                                json_incref(left));

			send_counted(c, own);
			message_unref(own);
		}
	}
	message_unref(shared);
	json_decref(joined);
	json_decref(left);
	request_free_strings(r->last_users, r->nlast);
	r->last_users = now_users;
	r->nlast = n;
	free(r->last_json);
	r->last_json = text;
	free(people);
}

static void
broadcast(proom *r)
{
	broadcast_to(r, false);
}

static void
broadcast_quietly(proom *r)
{
	broadcast_to(r, true);
}

static void
broadcast_cb(lws_sorted_usec_list_t *sul)
{
	long long now = now_monotonic_us();
	long long interval = (long long) the_bridge.settings.presence_interval * 1000;
	long long next = 0;

	broadcast_at_us = 0;
	for (int b = 0; b < NBUCKETS; b++)
	{
		for (proom *r = buckets[b]; r; r = r->next)
		{
			if (!r->due)
				continue;
			if (now >= r->last_broadcast_us + interval)
				broadcast(r);
			else if (!next || r->last_broadcast_us + interval < next)
				next = r->last_broadcast_us + interval;
		}
	}
	if (next)
		schedule_broadcast(next);
}

static void
schedule_broadcast(long long at_us)
{
	long long now = now_monotonic_us();

	if (broadcast_at_us && broadcast_at_us <= at_us)
		return;
	broadcast_at_us = at_us;
	lws_sul_schedule(the_bridge.context, 0, &broadcast_timer, broadcast_cb,
	                 (lws_usec_t) (at_us > now ? at_us - now : 1));
}

/* ---------- joining and leaving ---------- */

static void
start_db(void)
{
	char host[64] = "";
	char id[37];

	if (db_started)
		return;
	gethostname(host, sizeof(host) - 1);
	make_uuid(id);
	snprintf(bridge_name, sizeof(bridge_name), "%s/%d/%.8s", host[0] ? host : "bridge",
	         (int) getpid(), id);
	db.conninfo = the_bridge.settings.db;
	db_started = true;
	log_info("presence: keeping presence in the database as bridge %s", bridge_name);
	pg_link_start(&db);
	lws_sul_schedule(the_bridge.context, 0, &housekeeping_timer, housekeeping_cb, 1);
}

/* See presence.h. */
void
presence_subscribed(subscription *sub)
{
	client *c = sub->client;

	if (sub->presence_joined)
		return;
	sub->presence_joined = true;
	start_db();
	for (int i = 0; i < sub->npatients; i++)
	{
		proom *r = room_get(sub->patient_ids[i]);
		member *m = member_find(r, c);

		if (!m)
		{
			m = xcalloc(1, sizeof(member));
			m->c = c;
			m->since_us = now_wall_us();
			if (r->nmembers == r->cap)
			{
				r->cap = r->cap ? r->cap * 2 : 4;
				r->members = xrealloc(r->members, (size_t) r->cap * sizeof(member *));
			}
			r->members[r->nmembers++] = m;
			/* a connection that left and came back before the flush: not gone after all */
			for (int g = 0; g < r->ngone; g++)
			{
				if (strcmp(r->gone[g], c->id) == 0)
				{
					free(r->gone[g]);
					r->gone[g] = r->gone[--r->ngone];
					break;
				}
			}
			mark_db_dirty(r, m);
			mark_due(r);
		}
		m->subs++;
		send_snapshot_to(r, c);
		if (r->nmembers == 1 && r->nremote == 0 && !r->last_json)
			broadcast_quietly(r); /* alone in a new room: that snapshot was the broadcast */
	}
	kick();
}

static void
member_remove(proom *r, member *m)
{
	for (int i = 0; i < r->nmembers; i++)
	{
		if (r->members[i] == m)
		{
			r->members[i] = r->members[--r->nmembers];
			break;
		}
	}
	if (m->nediting > 0)
		r->neditors--;
	r->gone = xrealloc(r->gone, (size_t) (r->ngone + 1) * sizeof(char *));
	r->gone[r->ngone++] = xstrdup(m->c->id);
	free(m);
	if (r->nmembers > 0)
		mark_due(r);
	mark_db_dirty(r, NULL); /* last: the write it may start frees a room left empty */
}

/* See presence.h. */
void
presence_unsubscribed(subscription *sub)
{
	if (!sub->presence_joined)
		return;
	sub->presence_joined = false;
	for (int i = 0; i < sub->npatients; i++)
	{
		proom *r = room_find(sub->patient_ids[i]);
		member *m = r ? member_find(r, sub->client) : NULL;

		if (!m || --m->subs > 0)
			continue;
		member_remove(r, m);
	}
}

/* See presence.h. */
void
presence_client_reauthenticated(client *c)
{
	for (int i = 0; i < c->nsubs; i++)
	{
		subscription *sub = c->subs[i];

		if (!sub->presence_joined)
			continue;
		for (int p = 0; p < sub->npatients; p++)
		{
			proom *r = room_find(sub->patient_ids[p]);
			member *m = r ? member_find(r, c) : NULL;

			if (!m)
				continue;
			mark_due(r);
			mark_db_dirty(r, m);
		}
	}
}

/* ---------- editing ---------- */

static bool
valid_resource(const char *s, char *type, size_t typelen, char *id, size_t idlen)
{
	const char *slash = s ? strchr(s, '/') : NULL;
	size_t tn, in;

	if (!slash)
		return false;
	tn = (size_t) (slash - s);
	in = strlen(slash + 1);
	if (tn < 1 || tn > 64 || in < 1 || in > 64 || tn >= typelen || in >= idlen)
		return false;
	for (const char *p = s; p < slash; p++)
	{
		if (!isalpha((unsigned char) *p))
			return false;
	}
	for (const char *p = slash + 1; *p; p++)
	{
		if (!isalnum((unsigned char) *p) && *p != '.' && *p != '-')
			return false;
	}
	memcpy(type, s, tn);
	type[tn] = '\0';
	memcpy(id, slash + 1, in + 1);
	return true;
}

static void
member_set_editing_count(proom *r, member *m, int n)
{
	if (m->nediting > 0 && n == 0)
		r->neditors--;
	else if (m->nediting == 0 && n > 0)
		r->neditors++;
	m->nediting = n;
}

/* Stops m editing resource (NULL: everything); whether anything changed. */
static bool
member_stop(proom *r, member *m, const char *resource)
{
	int kept = 0;

	for (int i = 0; i < m->nediting; i++)
	{
		if (resource && strcmp(m->editing[i].resource, resource) != 0)
			m->editing[kept++] = m->editing[i];
	}
	if (kept == m->nediting)
		return false;
	member_set_editing_count(r, m, kept);
	mark_db_dirty(r, m);
	mark_due(r);
	return true;
}

/* See presence.h. */
void
presence_handle_editing(client *c, json_t *root, bool start)
{
	json_t *data = json_object_get(root, "data");
	const char *patient = json_string_value(json_object_get(data, "patient_id"));
	const char *resource = json_string_value(json_object_get(data, "resource"));
	json_t *version_json = json_object_get(data, "version_id");
	char type[72], id[72], version[72] = "";
	proom *r;
	member *m;
	editing_entry *e = NULL;

	if (data && !json_is_object(data))
		data = NULL;
	if ((start && !data) || (patient && !request_valid_patient_id(patient)) ||
	    (json_object_get(data, "patient_id") && !patient) ||
	    (json_object_get(data, "resource") && !resource) ||
	    (resource && !valid_resource(resource, type, sizeof(type), id, sizeof(id))) ||
	    (start && (!patient || !resource)))
	{
		client_send_error(c, "BAD_REQUEST",
		                  start ? "editing needs data.patient_id and data.resource (\"Type/id\")"
		                        : "stop_editing takes an optional patient_id and resource "
		                          "(\"Type/id\")",
		                  NULL);
		return;
	}
	if (!start)
	{
		/* one patient, or every room this connection is in */
		for (int i = 0; i < c->nsubs; i++)
		{
			subscription *sub = c->subs[i];

			if (!sub->presence_joined)
				continue;
			for (int p = 0; p < sub->npatients; p++)
			{
				if (patient && strcmp(patient, sub->patient_ids[p]) != 0)
					continue;
				r = room_find(sub->patient_ids[p]);
				m = r ? member_find(r, c) : NULL;
				if (m)
					member_stop(r, m, resource);
			}
		}
		return;
	}
	if (version_json && json_is_string(version_json) &&
	    strlen(json_string_value(version_json)) < sizeof(version))
		snprintf(version, sizeof(version), "%s", json_string_value(version_json));
	else if (version_json && json_is_integer(version_json))
		snprintf(version, sizeof(version), "%lld", (long long) json_integer_value(version_json));
	else if (version_json && !json_is_null(version_json))
	{
		client_send_error(c, "BAD_REQUEST", "version_id must be a string of up to 64 characters",
		                  NULL);
		return;
	}
	r = room_find(patient);
	m = r ? member_find(r, c) : NULL;
	if (!m)
	{
		client_send_error(c, "FORBIDDEN",
		                  "editing needs a presence subscription to this patient on this "
		                  "connection",
		                  NULL);
		return;
	}
	if (!auth_grant_allows(&c->grant, patient, type))
	{
		client_send_error(c, "FORBIDDEN", "the token does not allow this resource type", NULL);
		return;
	}
	for (int i = 0; i < m->nediting && !e; i++)
	{
		if (strcmp(m->editing[i].resource, resource) == 0)
			e = &m->editing[i];
	}
	if (!e)
	{
		if (m->nediting >= MAX_EDITING)
		{
			client_send_error(c, "LIMIT_EXCEEDED",
			                  "at most 8 resources edited per patient and connection", NULL);
			return;
		}
		e = &m->editing[m->nediting];
		memset(e, 0, sizeof(*e));
		snprintf(e->resource, sizeof(e->resource), "%s", resource);
		snprintf(e->type, sizeof(e->type), "%s", type);
		snprintf(e->id, sizeof(e->id), "%s", id);
		member_set_editing_count(r, m, m->nediting + 1);
		mark_db_dirty(r, m);
		mark_due(r);
	}
	if (strcmp(e->version, version) != 0)
		e->reported = false; /* a new declared version: conflicts are judged against it */
	snprintf(e->version, sizeof(e->version), "%s", version);
}

/* ---------- conflicts ---------- */

/* The present user whose id is actor, as {user, name, role}; null if nobody. */
static json_t *
changed_by(proom *r, const char *actor)
{
	if (!actor)
		return json_null();
	for (int i = 0; i < r->nmembers; i++)
	{
		client *c = r->members[i]->c;

		if (strcmp(user_of(c), actor) == 0)
			return json_pack(
			    "{s:s, s:o, s:o}", "user", actor, "name",
			    string_or_null(claim_text(c, the_bridge.settings.presence_name_claim)), "role",
			    string_or_null(claim_text(c, the_bridge.settings.presence_role_claim)));
	}
	for (int i = 0; i < r->nremote; i++)
	{
		if (strcmp(r->remote[i].user, actor) == 0)
			return json_pack("{s:s, s:o, s:o}", "user", actor, "name",
			                 string_or_null(r->remote[i].name), "role",
			                 string_or_null(r->remote[i].role));
	}
	return json_null();
}

static void
send_conflict(proom *r, member *m, editing_entry *e, json_t *update_data)
{
	json_t *data = json_object_get(update_data, "data");
	const char *actor = json_string_value(json_object_get(data, "actor"));
	const char *action = json_string_value(json_object_get(data, "action"));
	/* a delete's update may carry the last body (WintEHR's chart needs it): no content */
	json_t *content =
	    action && strcmp(action, "deleted") == 0 ? NULL : json_object_get(data, "resource");
	json_t *root = json_pack(
	    "{s:s, s:{s:s, s:s, s:s, s:O, s:O, s:O, s:o, s:O, s:O, s:O}}", "type", "conflict", "data",
	    "patient_id", r->patient_id, "resource", e->resource, "declared_version", e->version,
	    "version_id", json_object_get(data, "version_id"), "action",
	    json_object_get(data, "action"), "actor", json_object_get(data, "actor"), "changed_by",
	    changed_by(r, actor), "content", content ? content : json_null(), "cursor",
	    json_object_get(data, "cursor"), "changed_at", json_object_get(data, "changed_at"));
	char *text;
	message *msg;

	if (!root)
		return;
	text = json_dumps(root, JSON_COMPACT);
	msg = message_new(MESSAGE_CONTROL, text, strlen(text));
	client_send(m->c, msg);
	presence_conflicts_sent++;
	message_unref(msg);
	free(text);
	json_decref(root);
	log_debug("client %s: conflict on %s", m->c->id, e->resource);
}

/* See presence.h. */
void
presence_on_change(change *ch)
{
	if (nrooms == 0)
		return;
	for (int i = 0; i < ch->npatients; i++)
	{
		proom *r = room_find(ch->patient_ids[i]);
		json_t *update = NULL, *data = NULL;
		const char *rid = NULL, *version = NULL, *actor = NULL;

		if (!r || r->neditors == 0)
			continue;
		for (int k = 0; k < r->nmembers; k++)
		{
			member *m = r->members[k];

			for (int j = 0; j < m->nediting; j++)
			{
				editing_entry *e = &m->editing[j];

				if (strcmp(e->type, ch->resource_type) != 0)
					continue;
				if (!update)
				{
					/* only now, for a type someone edits, is the update read back */
					update = json_loadb((const char *) message_payload(ch->messages[i]),
					                    ch->messages[i]->len, 0, NULL);
					data = json_object_get(update, "data");
					rid = json_string_value(json_object_get(data, "resource_id"));
					version = json_string_value(json_object_get(data, "version_id"));
					actor = json_string_value(json_object_get(data, "actor"));
				}
				if (!rid || strcmp(rid, e->id) != 0)
					continue;
				if (e->reported && cursor_compare(e->reported_at, ch->at) >= 0)
					continue; /* reported already (a change of several patients) */
				if (version && e->version[0] && strcmp(version, e->version) == 0)
					continue;
				if (actor && strcmp(actor, user_of(m->c)) == 0)
					continue; /* her own save, from this or another tab */
				if (!m->c->authenticated || m->c->close_code ||
				    !auth_grant_allows(&m->c->grant, r->patient_id, e->type))
					continue;
				e->reported = true;
				e->reported_at = ch->at;
				send_conflict(r, m, e, update);
			}
		}
		json_decref(update);
	}
}

/* ---------- the database ---------- */

static void
log_failure(const char *what, const PGresult *res)
{
	const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

	if (!db_failed_before)
		log_warning("presence: %s failed: %s (sqlstate %s)%s; presence shows this bridge's "
		            "connections only until it works",
		            what, primary ? primary : "unknown error", sqlstate ? sqlstate : "none",
		            sqlstate && (strcmp(sqlstate, "42501") == 0 || strcmp(sqlstate, "42883") == 0)
		                ? " (needs fhir_notify 0.2.0 and SELECT fhir_notify.grant_presence('role'))"
		                : "");
	db_failed_before = true;
}

/*
 * Writes what changed (full: everything, after removing every row of this
 * bridge, in one transaction: after a reconnect or a failed write, when the
 * database may hold rows this bridge no longer has).
 */
static void
send_set(bool full)
{
	json_t *entries = json_array();
	char *text;

	for (int b = 0; b < NBUCKETS; b++)
	{
		for (proom *r = buckets[b]; r; r = r->next)
		{
			if (!r->db_dirty && !full)
				continue;
			for (int g = 0; g < r->ngone && !full; g++)
				json_array_append_new(entries,
				                      json_pack("{s:s, s:s, s:b}", "connection", r->gone[g],
				                                "patient_id", r->patient_id, "gone", 1));
			for (int i = 0; i < r->nmembers; i++)
			{
				member *m = r->members[i];
				client *c = m->c;
				json_t *editing;

				if (!m->db_dirty && !full)
					continue;
				editing = json_array();
				for (int e = 0; e < m->nediting; e++)
					json_array_append_new(editing, json_string(m->editing[e].resource));
				json_array_append_new(
				    entries,
				    json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o}", "connection", c->id,
				              "patient_id", r->patient_id, "user", user_of(c), "name",
				              claim_json(c, the_bridge.settings.presence_name_claim), "role",
				              claim_json(c, the_bridge.settings.presence_role_claim), "fhir_user",
				              claim_json(c, the_bridge.settings.presence_user_claim), "editing",
				              editing));
			}
		}
	}
	text = json_dumps(entries, JSON_COMPACT);
	json_decref(entries);
	/*
	 * Marked clean now: changes made while the write is in flight mark
	 * them dirty again; a failed write is followed by a full one.
	 */
	any_db_dirty = false;
	full_write_needed = false;
	for (int b = 0; b < NBUCKETS; b++)
	{
		proom *r = buckets[b];

		while (r)
		{
			proom *next = r->next;

			for (int i = 0; i < r->nmembers; i++)
				r->members[i]->db_dirty = false;
			request_free_strings(r->gone, r->ngone);
			r->gone = NULL;
			r->ngone = 0;
			r->db_dirty = false;
			room_maybe_free(r);
			r = next;
		}
	}
	step = PSTEP_SET;
	if (full)
	{
		char *name = PQescapeLiteral(db.conn, bridge_name, strlen(bridge_name));
		char *json = PQescapeLiteral(db.conn, text, strlen(text));
		strbuf sql;

		strbuf_init(&sql, strlen(text) + 256);
		strbuf_appendf(&sql,
		               "SELECT fhir_notify.presence_leave_bridge(%s); "
		               "SELECT fhir_notify.presence_set(%s, %s::jsonb)",
		               name ? name : "''", name ? name : "''", json ? json : "'[]'");
		PQfreemem(name);
		PQfreemem(json);
		pg_link_send(&db, sql.data, 0, NULL);
		strbuf_free(&sql);
	}
	else
	{
		const char *values[2] = {bridge_name, text};

		pg_link_send(&db, "SELECT fhir_notify.presence_set($1, $2::jsonb)", 2, values);
	}
	free(text);
}

static void
send_heartbeat(void)
{
	char ttl[32];
	const char *values[2] = {bridge_name, ttl};

	snprintf(ttl, sizeof(ttl), "%d", the_bridge.settings.presence_ttl);
	step = PSTEP_HEARTBEAT;
	next_heartbeat_us =
	    now_monotonic_us() + (long long) the_bridge.settings.presence_ttl * 1000000LL / 3;
	pg_link_send(&db,
	             "SELECT fhir_notify.presence_heartbeat($1, pg_catalog.make_interval(secs => $2))",
	             2, values);
}

static void
send_read(void)
{
	strbuf patients, seen;
	const char *values[3];
	bool first = true;

	strbuf_init(&patients, 256);
	strbuf_init(&seen, 256);
	strbuf_append(&patients, "{");
	strbuf_append(&seen, "{");
	for (int b = 0; b < NBUCKETS; b++)
	{
		for (proom *r = buckets[b]; r; r = r->next)
		{
			if (r->nmembers == 0)
				continue;
			/* ids were checked to be [A-Za-z0-9.-]: no quoting needed */
			strbuf_appendf(&patients, "%s%s", first ? "" : ",", r->patient_id);
			strbuf_appendf(&seen, "%s%lld", first ? "" : ",", r->seq < 0 ? -1LL : r->seq);
			first = false;
		}
	}
	strbuf_append(&patients, "}");
	strbuf_append(&seen, "}");
	read_wanted = false;
	next_read_us = now_monotonic_us() + (long long) the_bridge.settings.presence_interval * 500;
	if (first)
	{
		strbuf_free(&patients);
		strbuf_free(&seen);
		return; /* nobody here is in a room */
	}
	values[0] = patients.data;
	values[1] = seen.data;
	values[2] = bridge_name;
	step = PSTEP_READ;
	pg_link_send(&db,
	             "SELECT patient_id, seq, connection, user_id, display, role, fhir_user, "
	             "pg_catalog.array_to_json(editing)::text, "
	             "(pg_catalog.date_part('epoch', since) * 1000000)::int8 "
	             "FROM fhir_notify.presence_read($1::text[], $2::bigint[], $3)",
	             3, values);
	strbuf_free(&patients);
	strbuf_free(&seen);
}

static char *
column_copy(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : xstrdup(PQgetvalue(res, row, col));
}

/* Replaces the other bridges' rows of each room the read returned. */
static void
read_done(const PGresult *res)
{
	int rows = PQntuples(res);
	proom *r = NULL;

	for (int i = 0; i < rows; i++)
	{
		const char *pid = PQgetvalue(res, i, 0);
		remote_row *row;
		json_t *editing;

		if (!r || strcmp(r->patient_id, pid) != 0)
		{
			r = room_find(pid);
			if (!r)
				continue;
			remote_clear(r);
			r->seq = atoll(PQgetvalue(res, i, 1));
			if (r->nmembers > 0)
				mark_due(r);
		}
		if (PQgetisnull(res, i, 2) || PQgetisnull(res, i, 3))
			continue; /* the room has no rows of other bridges */
		r->remote = xrealloc(r->remote, (size_t) (r->nremote + 1) * sizeof(remote_row));
		row = &r->remote[r->nremote++];
		memset(row, 0, sizeof(*row));
		row->user = column_copy(res, i, 3);
		row->name = column_copy(res, i, 4);
		row->role = column_copy(res, i, 5);
		row->fhir_user = column_copy(res, i, 6);
		row->since_us = PQgetisnull(res, i, 8) ? now_wall_us() : atoll(PQgetvalue(res, i, 8));
		editing = PQgetisnull(res, i, 7) ? NULL : json_loads(PQgetvalue(res, i, 7), 0, NULL);
		if (json_is_array(editing))
		{
			size_t k;
			json_t *item;

			row->editing = xcalloc(json_array_size(editing) + 1, sizeof(char *));
			json_array_foreach(editing, k, item)
			{
				if (json_is_string(item))
					row->editing[row->nediting++] = xstrdup(json_string_value(item));
			}
		}
		json_decref(editing);
	}
}

static void
kick(void)
{
	long long now;

	if (!db_started || !db.ready || db.busy || step != PSTEP_IDLE)
		return;
	now = now_monotonic_us();
	if ((full_write_needed || any_db_dirty) && now < next_write_us)
		return; /* the housekeeping timer tries again */
	if (full_write_needed)
		send_set(true);
	else if (any_db_dirty)
		send_set(false);
	else if (now >= next_heartbeat_us)
		send_heartbeat();
	else if (read_wanted && now >= next_read_us)
		send_read();
}

static void
housekeeping_cb(lws_sorted_usec_list_t *sul)
{
	long long now = now_monotonic_us();

	if (nrooms > 0 && now >= next_poll_us)
	{
		read_wanted = true;
		next_poll_us = now + POLL_US;
	}
	kick();
	lws_sul_schedule(the_bridge.context, 0, &housekeeping_timer, housekeeping_cb,
	                 read_wanted && next_read_us > now ? (lws_usec_t) (next_read_us - now + 1)
	                                                   : HOUSEKEEPING_US);
}

static void
link_connected(pg_link *link)
{
	char *channel;
	strbuf sql;

	strbuf_init(&sql, 64);
	strbuf_appendf(&sql, "%s_presence", the_bridge.settings.channel);
	channel = PQescapeIdentifier(link->conn, sql.data, sql.len);
	strbuf_free(&sql);
	strbuf_init(&sql, 64);
	strbuf_appendf(&sql, "LISTEN %s", channel ? channel : "fhir_notify_presence");
	PQfreemem(channel);
	step = PSTEP_LISTEN;
	pg_link_send(link, sql.data, 0, NULL);
	strbuf_free(&sql);
	/* the database may have lost or expired this bridge's rows meanwhile */
	full_write_needed = true;
	next_heartbeat_us = 0;
	read_wanted = true;
	for (int b = 0; b < NBUCKETS; b++)
	{
		for (proom *r = buckets[b]; r; r = r->next)
			r->seq = -1;
	}
}

static void
link_result(pg_link *link, const PGresult *res)
{
	ExecStatusType status = PQresultStatus(res);

	if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK)
	{
		log_failure(step == PSTEP_LISTEN      ? "listen"
		            : step == PSTEP_SET       ? "writing presence"
		            : step == PSTEP_HEARTBEAT ? "the heartbeat"
		                                      : "reading presence",
		            res);
		step_failed = true;
		return;
	}
	if (step == PSTEP_READ)
		read_done(res);
}

static void
link_query_done(pg_link *link)
{
	presence_step done = step;

	step = PSTEP_IDLE;
	if (step_failed)
	{
		step_failed = false;
		if (done == PSTEP_SET)
			full_write_needed = true;
		/* no retry storm: the housekeeping timer tries again */
		next_write_us = now_monotonic_us() + 5 * 1000000LL;
		next_heartbeat_us = now_monotonic_us() + 5 * 1000000LL;
		next_read_us = now_monotonic_us() + 5 * 1000000LL;
		if (done == PSTEP_SET)
			return;
	}
	else if (db_failed_before && done != PSTEP_LISTEN)
	{
		log_info("presence: the database works again");
		db_failed_before = false;
	}
	kick();
}

static void
link_disconnected(pg_link *link)
{
	step = PSTEP_IDLE;
	step_failed = false;
	/* other bridges' rows cannot be trusted any more: show this bridge's own */
	for (int b = 0; b < NBUCKETS; b++)
	{
		for (proom *r = buckets[b]; r; r = r->next)
		{
			if (r->nremote > 0)
			{
				remote_clear(r);
				mark_due(r);
			}
			r->seq = -1;
		}
	}
}

static void
link_notify(pg_link *link, const PGnotify *notify)
{
	read_wanted = true;
	kick();
}

/* See presence.h. */
void
presence_start(void)
{
	/* the database connection starts with the first presence subscription */
}

/* See presence.h. */
void
presence_stop(void)
{
	const char *keys[] = {"dbname", "connect_timeout", NULL};
	const char *vals[] = {the_bridge.settings.db, "2", NULL};
	PGconn *conn;

	lws_sul_cancel(&broadcast_timer);
	lws_sul_cancel(&housekeeping_timer);
	for (int b = 0; b < NBUCKETS; b++)
	{
		while (buckets[b])
		{
			proom *r = buckets[b];

			for (int i = 0; i < r->nmembers; i++)
				free(r->members[i]);
			r->nmembers = 0;
			request_free_strings(r->gone, r->ngone);
			r->gone = NULL;
			r->ngone = 0;
			r->db_dirty = false;
			room_maybe_free(r);
		}
	}
	if (!db_started)
		return;
	pg_link_stop(&db);
	db_started = false;
	/* the others would drop this bridge's rows after presence-ttl; now is better */
	conn = PQconnectdbParams(keys, vals, 1);
	if (conn && PQstatus(conn) == CONNECTION_OK)
	{
		const char *values[1] = {bridge_name};
		PGresult *res = PQexecParams(conn, "SELECT fhir_notify.presence_leave_bridge($1)", 1, NULL,
		                             values, NULL, NULL, 0);

		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			log_debug("presence: could not remove this bridge's rows: %s",
			          PQresultErrorMessage(res));
		PQclear(res);
	}
	PQfinish(conn);
}
