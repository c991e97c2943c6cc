/*
 * change.h
 *	  One change read from fhir_notify.changes, with its update message for
 *	  each patient it belongs to, and the ring buffer of recent changes that
 *	  resuming clients are served from.
 */
#ifndef BRIDGE_CHANGE_H
#define BRIDGE_CHANGE_H

#include <libpq-fe.h>

#include "message.h"
#include "util.h"

typedef struct change
{
	int refs;
	cursor at; /* (tick, position), and the tick's epoch */
	char *resource_type;
	long long changed_at_us;
	int npatients;
	char **patient_ids;
	message **messages; /* one update per patient, same order */
} change;

/*
 * The columns change_from_row expects, starting at a given column, selected
 * as `r` from fhir_notify.read_next(), or from fhir_notify.read() with an
 * `epoch` column added (the epoch of the change's tick).
 */
#define CHANGE_COLUMNS                                                                             \
	"r.tick_id, (r.change).position, (r.change).action, (r.change).resource_type, "                \
	"(r.change).resource_id, (r.change).version_id, "                                              \
	"pg_catalog.array_to_json((r.change).patient_ids)::text, (r.change).resource::text, "          \
	"(r.change).actor, "                                                                           \
	"pg_catalog.to_char((r.change).changed_at AT TIME ZONE 'UTC', "                                \
	"'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "                                                       \
	"(pg_catalog.date_part('epoch', (r.change).changed_at) * 1000000)::int8, r.epoch"
#define CHANGE_NCOLUMNS 12

/* Builds a change (one reference) from row of res, columns from first_column; NULL if unusable. */
change *change_from_row(const PGresult *res, int row, int first_column);
change *change_ref(change *c);
void change_unref(change *c);

/* The ring of recent changes, oldest first. */
void ring_init(int capacity);
void ring_free(void);
/*
 * Every change after the floor cursor (up to the newest change read) is in
 * the ring; a client resuming from a cursor at or after the floor can be
 * served from memory.
 */
cursor ring_floor(void);
void ring_set_floor(cursor floor);
void ring_push(change *c);
int ring_count(void);
change *ring_get(int index); /* 0 = oldest */
/* Index of the first change after `after`, or ring_count() if none. */
int ring_first_after(cursor after);

#endif /* BRIDGE_CHANGE_H */
