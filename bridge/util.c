/*
 * util.c
 *	  Time, ids, growable strings and cursors.
 */
#include "util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

/* Wall-clock microseconds since the epoch. */
long long
now_wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Monotonic microseconds, for intervals that must not jump with the clock. */
long long
now_monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ISO 8601 UTC with milliseconds, the format of every message timestamp. */
void
format_timestamp(long long wall_us, char *out, size_t outlen)
{
	time_t seconds = (time_t) (wall_us / 1000000);
	struct tm tm;
	char date[32];

	gmtime_r(&seconds, &tm);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, outlen, "%s.%03dZ", date, (int) ((wall_us / 1000) % 1000));
}

/* Random UUID for client ids; OpenSSL's generator, falling back to rand(). */
void
make_uuid(char out[37])
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof(b)) != 1)
	{
		for (size_t i = 0; i < sizeof(b); i++)
			b[i] = (unsigned char) rand();
	}
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
	         b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
	         b[14], b[15]);
}

/* Allocation that cannot fail quietly: the daemon stops rather than corrupt state. */
void *
xmalloc(size_t size)
{
	void *p = malloc(size ? size : 1);

	if (!p)
	{
		fprintf(stderr, "fhir-notify-bridge: out of memory\n");
		abort();
	}
	return p;
}

/* Zeroed allocation, see xmalloc. */
void *
xcalloc(size_t count, size_t size)
{
	void *p = calloc(count ? count : 1, size ? size : 1);

	if (!p)
	{
		fprintf(stderr, "fhir-notify-bridge: out of memory\n");
		abort();
	}
	return p;
}

/* Reallocation, see xmalloc. */
void *
xrealloc(void *ptr, size_t size)
{
	void *p = realloc(ptr, size ? size : 1);

	if (!p)
	{
		fprintf(stderr, "fhir-notify-bridge: out of memory\n");
		abort();
	}
	return p;
}

/* strdup that treats NULL as NULL. */
char *
xstrdup(const char *s)
{
	size_t len;
	char *copy;

	if (!s)
		return NULL;
	len = strlen(s);
	copy = xmalloc(len + 1);
	memcpy(copy, s, len + 1);
	return copy;
}

/* Empty string with room for reserve bytes. */
void
strbuf_init(strbuf *buf, size_t reserve)
{
	buf->cap = reserve < 16 ? 16 : reserve;
	buf->data = xmalloc(buf->cap);
	buf->data[0] = '\0';
	buf->len = 0;
}

/* Releases the string's memory. */
void
strbuf_free(strbuf *buf)
{
	free(buf->data);
	buf->data = NULL;
	buf->len = buf->cap = 0;
}

static void
strbuf_reserve(strbuf *buf, size_t more)
{
	if (buf->len + more + 1 <= buf->cap)
		return;
	while (buf->len + more + 1 > buf->cap)
		buf->cap *= 2;
	buf->data = xrealloc(buf->data, buf->cap);
}

/* Appends len bytes of s. */
void
strbuf_append_len(strbuf *buf, const char *s, size_t len)
{
	strbuf_reserve(buf, len);
	memcpy(buf->data + buf->len, s, len);
	buf->len += len;
	buf->data[buf->len] = '\0';
}

/* Appends a NUL-terminated string. */
void
strbuf_append(strbuf *buf, const char *s)
{
	strbuf_append_len(buf, s, strlen(s));
}

/* Appends printf-formatted text. */
void
strbuf_appendf(strbuf *buf, const char *fmt, ...)
{
	char small[256];
	va_list ap;
	int needed;

	va_start(ap, fmt);
	needed = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (needed < 0)
		return;
	if ((size_t) needed < sizeof(small))
	{
		strbuf_append_len(buf, small, (size_t) needed);
		return;
	}
	strbuf_reserve(buf, (size_t) needed);
	va_start(ap, fmt);
	vsnprintf(buf->data + buf->len, (size_t) needed + 1, fmt, ap);
	va_end(ap);
	buf->len += (size_t) needed;
}

/* Appends s as a JSON string (RFC 8259 escapes); control bytes as \u00XX. */
void
strbuf_append_json_string(strbuf *buf, const char *s)
{
	const unsigned char *p;

	if (!s)
	{
		strbuf_append(buf, "null");
		return;
	}
	strbuf_reserve(buf, strlen(s) + 2);
	strbuf_append_len(buf, "\"", 1);
	for (p = (const unsigned char *) s; *p; p++)
	{
		switch (*p)
		{
			case '"':
				strbuf_append_len(buf, "\\\"", 2);
				break;
			case '\\':
				strbuf_append_len(buf, "\\\\", 2);
				break;
			case '\n':
				strbuf_append_len(buf, "\\n", 2);
				break;
			case '\r':
				strbuf_append_len(buf, "\\r", 2);
				break;
			case '\t':
				strbuf_append_len(buf, "\\t", 2);
				break;
			default:
				if (*p < 0x20)
					strbuf_appendf(buf, "\\u%04x", *p);
				else
					strbuf_append_len(buf, (const char *) p, 1);
		}
	}
	strbuf_append_len(buf, "\"", 1);
}

/* Orders cursors by tick, then position (the epoch is not an order). */
int
cursor_compare(cursor a, cursor b)
{
	if (a.tick != b.tick)
		return a.tick < b.tick ? -1 : 1;
	if (a.position != b.position)
		return a.position < b.position ? -1 : 1;
	return 0;
}

/* See util.h. */
long long
cursor_epoch_tick(cursor c)
{
	return c.position > 0 ? c.tick : c.tick - 1;
}

/* "<epoch>-<tick>-<position>", or "<tick>-<position>" when the epoch is not known. */
void
cursor_format(cursor c, char *out, size_t outlen)
{
	if (c.epoch > 0)
		snprintf(out, outlen, "%lld-%lld-%lld", c.epoch, c.tick, c.position);
	else
		snprintf(out, outlen, "%lld-%lld", c.tick, c.position);
}

/* A non-negative decimal at *text, then *end; false if there is none or it overflows. */
static bool
parse_number(const char *text, long long *value, char **end)
{
	if (*text < '0' || *text > '9')
		return false;
	errno = 0;
	*value = strtoll(text, end, 10);
	return errno == 0;
}

/*
 * Parses "<epoch>-<tick>-<position>" or the older "<tick>-<position>" (epoch
 * 0, not known), all non-negative decimals; false if malformed.
 */
bool
cursor_parse(const char *text, cursor *c)
{
	long long numbers[3];
	int n = 0;
	char *end;

	if (!text)
		return false;
	for (;;)
	{
		if (!parse_number(text, &numbers[n], &end))
			return false;
		n++;
		if (*end == '\0')
			break;
		if (*end != '-' || n == 3)
			return false;
		text = end + 1;
	}
	if (n < 2)
		return false;
	c->epoch = n == 3 ? numbers[0] : 0;
	c->tick = numbers[n - 2];
	c->position = numbers[n - 1];
	return true;
}
