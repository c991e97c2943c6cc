/*
 * log.h
 *	  Leveled log lines on stderr. Lines are lower case without a final
 *	  period, prefixed with the client or connection they concern
 *	  ("client 3f2a...: ", "database: "). Resource contents are never
 *	  logged; patient ids only at debug level.
 */
#ifndef BRIDGE_LOG_H
#define BRIDGE_LOG_H

#include <stdbool.h>

typedef enum log_level
{
	LOG_LEVEL_DEBUG = 0,
	LOG_LEVEL_INFO,
	LOG_LEVEL_WARNING,
	LOG_LEVEL_ERROR
} log_level;

extern log_level log_min_level;

/* Parses "debug", "info", "warning" (or "warn"), "error". */
bool log_parse_level(const char *name, log_level *level);
const char *log_level_name(log_level level);

void log_write(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Routes libwebsockets' own warnings and errors into our log. */
void log_install_lws(void);

#define log_debug(...)                                                                             \
	do                                                                                             \
	{                                                                                              \
		if (log_min_level <= LOG_LEVEL_DEBUG)                                                      \
			log_write(LOG_LEVEL_DEBUG, __VA_ARGS__);                                               \
	} while (0)
#define log_info(...)    log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warning(...) log_write(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_error(...)   log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif /* BRIDGE_LOG_H */
