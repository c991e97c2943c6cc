/*
 * log.c
 *	  Leveled log lines on stderr (journald adds its own timestamps, but a
 *	  bare terminal run wants them too, so every line carries one).
 */
#include "log.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>

#include "util.h"

log_level log_min_level = LOG_LEVEL_INFO;

static const char *const level_names[] = {"debug", "info", "warning", "error"};

/* Parses a level name as given to --log-level. */
bool
log_parse_level(const char *name, log_level *level)
{
	for (int i = 0; i < 4; i++)
	{
		if (strcmp(name, level_names[i]) == 0)
		{
			*level = (log_level) i;
			return true;
		}
	}
	if (strcmp(name, "warn") == 0)
	{
		*level = LOG_LEVEL_WARNING;
		return true;
	}
	return false;
}

/* The name of a level, as printed in each line. */
const char *
log_level_name(log_level level)
{
	return level_names[level];
}

/*
 * Copies line into out with control bytes escaped (\n, \r, \t, \xNN): log
 * lines carry values from clients (a token's sub claim, subscription ids)
 * that must not start forged lines of their own or drive a terminal.
 */
static void
escape_controls(const char *line, char *out, size_t outlen)
{
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *) line; *p && n + 5 < outlen; p++)
	{
		if (*p >= 0x20 && *p != 0x7f)
			out[n++] = (char) *p;
		else if (*p == '\n' || *p == '\r' || *p == '\t')
		{
			out[n++] = '\\';
			out[n++] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
		}
		else
			n += (size_t) snprintf(out + n, outlen - n, "\\x%02x", *p);
	}
	out[n] = '\0';
}

/* Writes one line if level is at least the configured minimum. */
void
log_write(log_level level, const char *fmt, ...)
{
	char stamp[40];
	char line[2048];
	char escaped[2048];
	va_list ap;

	if (level < log_min_level)
		return;
	format_timestamp(now_wall_us(), stamp, sizeof(stamp));
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	escape_controls(line, escaped, sizeof(escaped));
	fprintf(stderr, "%s %s: %s\n", stamp, level_names[level], escaped);
	fflush(stderr);
}

/* libwebsockets log lines end with a newline and may be capitalised. */
static void
lws_emit(int level, const char *line)
{
	char copy[1024];
	size_t len;

	snprintf(copy, sizeof(copy), "lws: %s", line);
	len = strlen(copy);
	while (len > 0 && (copy[len - 1] == '\n' || isspace((unsigned char) copy[len - 1])))
		copy[--len] = '\0';
	log_write(level == LLL_ERR ? LOG_LEVEL_ERROR : LOG_LEVEL_WARNING, "%s", copy);
}

/* Sends libwebsockets' warnings and errors to our log, nothing chattier. */
void
log_install_lws(void)
{
	lws_set_log_level(LLL_ERR | LLL_WARN, lws_emit);
}
