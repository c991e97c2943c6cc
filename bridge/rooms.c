/*
 * rooms.c
 *	  Patient rooms in a chained hash table that grows with the number of
 *	  rooms.
 */
#include "rooms.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static room **buckets;
static size_t nbuckets;
static int nrooms;

static uint64_t
hash_id(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char) *s) * 1099511628211ULL;
	return h;
}

static void
grow(void)
{
	size_t new_count = nbuckets ? nbuckets * 2 : 256;
	room **fresh = xcalloc(new_count, sizeof(room *));

	for (size_t i = 0; i < nbuckets; i++)
	{
		room *r = buckets[i];

		while (r)
		{
			room *next = r->next;
			size_t b = hash_id(r->patient_id) % new_count;

			r->next = fresh[b];
			fresh[b] = r;
			r = next;
		}
	}
	free(buckets);
	buckets = fresh;
	nbuckets = new_count;
}

/* The room of patient_id, or NULL if nobody is in it. */
room *
rooms_find(const char *patient_id)
{
	room *r;

	if (!nbuckets)
		return NULL;
	for (r = buckets[hash_id(patient_id) % nbuckets]; r; r = r->next)
	{
		if (strcmp(r->patient_id, patient_id) == 0)
			return r;
	}
	return NULL;
}

/* Adds one subscription's membership of c in patient_id's room. */
void
rooms_join(const char *patient_id, struct client *c)
{
	room *r = rooms_find(patient_id);

	if (!r)
	{
		size_t b;

		if ((size_t) nrooms >= nbuckets)
			grow();
		r = xcalloc(1, sizeof(room));
		r->patient_id = xstrdup(patient_id);
		b = hash_id(patient_id) % nbuckets;
		r->next = buckets[b];
		buckets[b] = r;
		nrooms++;
	}
	for (int i = 0; i < r->nmembers; i++)
	{
		if (r->members[i] == c)
		{
			r->counts[i]++;
			return;
		}
	}
	if (r->nmembers == r->cap)
	{
		r->cap = r->cap ? r->cap * 2 : 4;
		r->members = xrealloc(r->members, (size_t) r->cap * sizeof(*r->members));
		r->counts = xrealloc(r->counts, (size_t) r->cap * sizeof(*r->counts));
	}
	r->members[r->nmembers] = c;
	r->counts[r->nmembers] = 1;
	r->nmembers++;
}

static void
room_free(room *r)
{
	free(r->patient_id);
	free(r->members);
	free(r->counts);
	free(r);
}

/* Drops one subscription's membership; an empty room is removed. */
void
rooms_leave(const char *patient_id, struct client *c)
{
	room *r = rooms_find(patient_id);
	room **link;

	if (!r)
		return;
	for (int i = 0; i < r->nmembers; i++)
	{
		if (r->members[i] != c)
			continue;
		if (--r->counts[i] == 0)
		{
			/* keep member order: delivery order does not depend on it, but tests read easier */
			memmove(&r->members[i], &r->members[i + 1],
			        (size_t) (r->nmembers - i - 1) * sizeof(*r->members));
			memmove(&r->counts[i], &r->counts[i + 1],
			        (size_t) (r->nmembers - i - 1) * sizeof(*r->counts));
			r->nmembers--;
		}
		break;
	}
	if (r->nmembers > 0)
		return;
	for (link = &buckets[hash_id(patient_id) % nbuckets]; *link; link = &(*link)->next)
	{
		if (*link == r)
		{
			*link = r->next;
			break;
		}
	}
	room_free(r);
	nrooms--;
}

/* Number of rooms with at least one member. */
int
rooms_count(void)
{
	return nrooms;
}

/* Frees every room (at exit). */
void
rooms_free(void)
{
	for (size_t i = 0; i < nbuckets; i++)
	{
		room *r = buckets[i];

		while (r)
		{
			room *next = r->next;

			room_free(r);
			r = next;
		}
	}
	free(buckets);
	buckets = NULL;
	nbuckets = 0;
	nrooms = 0;
}
