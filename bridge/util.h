/*
 * util.h
 *	  Small helpers shared by the bridge's modules: time, ids, growable
 *	  strings with JSON escaping, and change-log cursors.
 */
#ifndef BRIDGE_UTIL_H
#define BRIDGE_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* Microseconds since the epoch (wall clock) and on the monotonic clock. */
long long now_wall_us(void);
long long now_monotonic_us(void);

/* "2026-11-26T18:30:00.125Z" for a wall-clock time in microseconds. */
void format_timestamp(long long wall_us, char *out, size_t outlen);

/* A random (version 4) UUID in its 36-character text form. */
void make_uuid(char out[37]);

void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);

/* A growable NUL-terminated string. */
typedef struct strbuf
{
	char *data;
	size_t len;
	size_t cap;
} strbuf;

void strbuf_init(strbuf *buf, size_t reserve);
void strbuf_free(strbuf *buf);
void strbuf_append(strbuf *buf, const char *s);
void strbuf_append_len(strbuf *buf, const char *s, size_t len);
void strbuf_appendf(strbuf *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included; NULL appends null. */
void strbuf_append_json_string(strbuf *buf, const char *s);

/*
 * A position in the change log: everything up to and including `position`
 * of snapshot tick `tick` (and every earlier tick). Cursors compare as
 * (tick, position) pairs; "T-0" means "nothing of tick T yet".
 *
 * `epoch` is the log's epoch (fhir_notify.tick_epoch()) of the last tick
 * the cursor covers: `tick` when position > 0, tick - 1 when position is 0.
 * The cursor still means the same changes while that tick exists with that
 * epoch; a tick id handed out again (a crash that lost ticks, a restored or
 * another database) has another epoch. 0: not known (a cursor from before
 * epochs, which cannot be checked).
 */
typedef struct cursor
{
	long long tick;
	long long position;
	long long epoch;
} cursor;

int cursor_compare(cursor a, cursor b);
void cursor_format(cursor c, char *out, size_t outlen);
bool cursor_parse(const char *text, cursor *c);
/* The tick whose epoch the cursor carries (see struct cursor). */
long long cursor_epoch_tick(cursor c);

#define CURSOR_TEXT_LEN 72

#endif /* BRIDGE_UTIL_H */
