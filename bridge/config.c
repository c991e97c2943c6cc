/*
 * config.c
 *	  The settings table and the command line, environment and config file
 *	  parsers that read it.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

typedef enum setting_type
{
	SETTING_STRING,
	SETTING_INT,
	SETTING_BOOL,
	SETTING_LIST
} setting_type;

typedef struct setting
{
	const char *name;
	setting_type type;
	size_t offset;
	const char *default_value; /* NULL: unset */
	bool reloadable;
	int min_value; /* SETTING_INT only */
	const char *help;
} setting;

#define S(field) offsetof(bridge_settings, field)

static const setting settings_table[] = {
    {"db", SETTING_STRING, S(db), NULL, false, 0,
     "libpq connection string of the database with the fhir_notify extension"},
    {"listen", SETTING_STRING, S(listen), "127.0.0.1:8080", false, 0,
     "address:port to serve WebSocket and HTTP on"},
    {"jwt-secret-file", SETTING_STRING, S(jwt_secret_file), NULL, true, 0,
     "file holding the HS256 shared secret"},
    {"jwt-public-key-file", SETTING_STRING, S(jwt_public_key_file), NULL, true, 0,
     "PEM file with the RS256 or ES256 public key"},
    {"jwks-file", SETTING_STRING, S(jwks_file), NULL, true, 0,
     "JSON Web Key Set file (keys chosen by kid)"},
    {"jwt-audience", SETTING_STRING, S(jwt_audience), NULL, true, 0, "required aud claim"},
    {"jwt-issuer", SETTING_STRING, S(jwt_issuer), NULL, true, 0, "required iss claim"},
    {"jwt-leeway", SETTING_INT, S(jwt_leeway), "30", true, 0,
     "clock skew allowed on exp and nbf, in seconds"},
    {"default-scopes", SETTING_STRING, S(default_scopes), NULL, true, 0,
     "SMART scopes (space-separated) for tokens without a scope or scp claim, e.g. user/*.read"},
    {"scopes-by-claim", SETTING_LIST, S(scopes_by_claim), NULL, true, 0,
     "CLAIM=VALUE:SCOPES: scopes for tokens without scopes whose claim has that value, e.g. "
     "role=physician:user/*.read (any match: instead of --default-scopes)"},
    {"relay-client-events", SETTING_BOOL, S(relay_client_events), "false", true, 0,
     "relay client events (a type with a dot) to the other connections subscribed to their "
     "payload.patientId"},
    {"auth-failure-limit", SETTING_INT, S(auth_failure_limit), "20", true, 0,
     "failed authentications per source address in 10 s answered 401; more: 429 (0: no limit)"},
    {"insecure-no-auth", SETTING_BOOL, S(insecure_no_auth), "false", false, 0,
     "run without token checks: every client sees every patient (testing only)"},
    {"trusted-proxy", SETTING_LIST, S(trusted_proxies), NULL, true, 0,
     "reverse proxy addresses or networks (e.g. 127.0.0.1, 10.0.0.0/8): a connection from one is "
     "from the address it appended to X-Forwarded-For (rate limits, logs)"},
    {"allowed-origin", SETTING_LIST, S(allowed_origins), NULL, true, 0,
     "Origin allowed to open a WebSocket (none given: any origin)"},
    {"tls-cert", SETTING_STRING, S(tls_cert), NULL, false, 0,
     "PEM certificate chain: serve wss and https"},
    {"tls-key", SETTING_STRING, S(tls_key), NULL, false, 0, "PEM private key of --tls-cert"},
    {"max-connections", SETTING_INT, S(max_connections), "10000", false, 1,
     "WebSocket connections accepted at once"},
    {"max-subscriptions", SETTING_INT, S(max_subscriptions), "100", true, 1,
     "subscriptions per connection"},
    {"max-frame-size", SETTING_INT, S(max_frame_size), "65536", true, 128,
     "largest incoming message in bytes (larger: close 1009)"},
    {"send-queue-limit", SETTING_INT, S(send_queue_limit), "1000", true, 1,
     "updates queued per client before its queue is dropped and it is told to resync"},
    {"authorize-sql", SETTING_STRING, S(authorize_sql), NULL, false, 0,
     "query taking $1 user and $2 patient id and returning boolean: may the user see the patient"},
    {"authorize-cache-seconds", SETTING_INT, S(authorize_cache_seconds), "30", true, 0,
     "how long an --authorize-sql answer is reused"},
    {"channel", SETTING_STRING, S(channel), "fhir_notify", false, 0, "NOTIFY channel to LISTEN on"},
    {"poll-interval", SETTING_INT, S(poll_interval), "5", true, 1,
     "seconds between safety polls of the change log (in case a doorbell is lost)"},
    {"resume-max-age", SETTING_INT, S(resume_max_age), "3600", true, 0,
     "seconds: a resuming client missing older changes is told to resync instead"},
    {"resume-max-changes", SETTING_INT, S(resume_max_changes), "1000", true, 0,
     "a resuming client missing more changes than this is told to resync instead"},
    {"resume-without-cursor", SETTING_BOOL, S(resume_without_cursor), "true", true, 0,
     "replay to a subscription made without since what its user's same subscription missed "
     "(points kept in fhir_notify.resume_points)"},
    {"prune-keep", SETTING_INT, S(prune_keep), "0", true, 0,
     "seconds of change log to keep: the bridge prunes older changes (0: never prunes)"},
    {"reader-name", SETTING_STRING, S(reader_name), NULL, false, 0,
     "name this bridge reads the change log under (fhir_notify.readers); unique per bridge "
     "(default: fhir-notify-bridge@HOST:LISTEN)"},
    {"presence-interval", SETTING_INT, S(presence_interval), "500", true, 20,
     "milliseconds: a room's presence is sent at most this often (changes are coalesced)"},
    {"presence-ttl", SETTING_INT, S(presence_ttl), "15", true, 3,
     "seconds: the presence of a bridge that stopped (crashed) disappears after this"},
    {"presence-max-list", SETTING_INT, S(presence_max_list), "50", true, 1,
     "people listed in one presence message (count still says how many there are)"},
    {"presence-name-claim", SETTING_STRING, S(presence_name_claim), "name", true, 0,
     "token claim shown as a present user's name"},
    {"presence-role-claim", SETTING_STRING, S(presence_role_claim), "role", true, 0,
     "token claim shown as a present user's role"},
    {"presence-user-claim", SETTING_STRING, S(presence_user_claim), "fhirUser", true, 0,
     "token claim shown as a present user's FHIR resource (fhir_user)"},
    {"static", SETTING_STRING, S(static_dir), NULL, false, 0,
     "directory of files served at / (the demo page)"},
    {"event-loop", SETTING_STRING, S(event_loop), "auto", false, 0,
     "auto, epoll or poll: epoll needs libwebsockets' libev plugin (auto: epoll if it loads)"},
    {"log-level", SETTING_STRING, S(log_level), "info", true, 0, "debug, info, warning or error"},
    {"config", SETTING_STRING, S(config_file), NULL, false, 0, "file of `name = value` lines"},
};

#define NSETTINGS (sizeof(settings_table) / sizeof(settings_table[0]))

static const setting *
find_setting(const char *name, size_t len)
{
	for (size_t i = 0; i < NSETTINGS; i++)
	{
		if (strlen(settings_table[i].name) == len &&
		    strncmp(settings_table[i].name, name, len) == 0)
			return &settings_table[i];
	}
	return NULL;
}

static void
list_free(char **list)
{
	if (!list)
		return;
	for (char **p = list; *p; p++)
		free(*p);
	free(list);
}

static char **
list_append(char **list, const char *value)
{
	size_t n = 0;

	while (list && list[n])
		n++;
	list = xrealloc(list, (n + 2) * sizeof(char *));
	list[n] = xstrdup(value);
	list[n + 1] = NULL;
	return list;
}

/*
 * Sets one setting from text. replace_list: a list setting starts over
 * (the first value from a higher-precedence source replaces lower ones).
 */
static bool
setting_assign(bridge_settings *settings, const setting *s, const char *value, bool replace_list,
               const char *source)
{
	char *field = (char *) settings + s->offset;

	switch (s->type)
	{
		case SETTING_STRING:
			free(*(char **) field);
			*(char **) field = value ? xstrdup(value) : NULL;
			return true;
		case SETTING_INT:
		{
			char *end;
			long v;

			errno = 0;
			v = value ? strtol(value, &end, 10) : 0;
			if (!value || errno || end == value || *end != '\0' || v < s->min_value || v > INT_MAX)
			{
				fprintf(stderr,
				        "fhir-notify-bridge: invalid value \"%s\" for %s (%s): an integer >= %d is "
				        "expected\n",
				        value ? value : "", s->name, source, s->min_value);
				return false;
			}
			*(int *) field = (int) v;
			return true;
		}
		case SETTING_BOOL:
			if (!value || strcmp(value, "true") == 0 || strcmp(value, "on") == 0 ||
			    strcmp(value, "1") == 0 || strcmp(value, "yes") == 0)
				*(bool *) field = true;
			else if (strcmp(value, "false") == 0 || strcmp(value, "off") == 0 ||
			         strcmp(value, "0") == 0 || strcmp(value, "no") == 0)
				*(bool *) field = false;
			else
			{
				fprintf(stderr,
				        "fhir-notify-bridge: invalid value \"%s\" for %s (%s): true or false is "
				        "expected\n",
				        value, s->name, source);
				return false;
			}
			return true;
		case SETTING_LIST:
			if (replace_list)
			{
				list_free(*(char ***) field);
				*(char ***) field = NULL;
			}
			if (value && *value)
				*(char ***) field = list_append(*(char ***) field, value);
			return true;
	}
	return false;
}

static void
print_help(void)
{
	printf(
	    "fhir-notify-bridge: pushes FHIR change notifications from PostgreSQL to WebSocket "
	    "clients\n\n"
	    "usage: fhir-notify-bridge --db CONNINFO [--listen ADDR:PORT] --jwt-secret-file FILE "
	    "[...]\n\n"
	    "Every setting is also read from the environment variable FHIR_NOTIFY_<NAME> (upper case,\n"
	    "dashes as underscores) and from `name = value` lines in --config FILE. Settings marked\n"
	    "[reload] are re-read on SIGHUP.\n\n");
	for (size_t i = 0; i < NSETTINGS; i++)
	{
		const setting *s = &settings_table[i];
		const char *arg = s->type == SETTING_INT ? " N" : s->type == SETTING_BOOL ? "" : " VALUE";
		char flag[64];

		snprintf(flag, sizeof(flag), "--%s%s", s->name, arg);
		printf("  %-28s %s", flag, s->help);
		if (s->default_value)
			printf(" (default: %s)", s->default_value);
		if (s->type == SETTING_LIST)
			printf(" (repeatable)");
		if (s->reloadable)
			printf(" [reload]");
		printf("\n");
	}
	printf("  %-28s %s\n  %-28s %s\n", "--help", "print this help and exit", "--version",
	       "print the version and exit");
}

static char *
trim(char *s)
{
	char *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

/* Reads `name = value` lines; '#' starts a comment; values may be quoted. */
static bool
read_config_file(const char *path, bridge_settings *settings)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	int lineno = 0;
	bool ok = true;
	bool seen_list[NSETTINGS] = {false};

	if (!f)
	{
		fprintf(stderr, "fhir-notify-bridge: could not open config file \"%s\": %s\n", path,
		        strerror(errno));
		return false;
	}
	while (fgets(line, sizeof(line), f))
	{
		char *eq, *name, *value;
		const setting *s;
		char source[300];

		lineno++;
		if (!strchr(line, '\n') && !feof(f))
		{
			int ch;

			/* its tail must not be read as a line of its own (a setting) */
			fprintf(stderr, "fhir-notify-bridge: %s:%d: line too long (over %zu bytes)\n", path,
			        lineno, sizeof(line) - 2);
			ok = false;
			while ((ch = fgetc(f)) != EOF && ch != '\n')
				;
			continue;
		}
		name = trim(line);
		if (*name == '#' || *name == '\0')
			continue;
		eq = strchr(name, '=');
		if (!eq)
		{
			fprintf(stderr, "fhir-notify-bridge: %s:%d: expected `name = value`\n", path, lineno);
			ok = false;
			continue;
		}
		*eq = '\0';
		name = trim(name);
		value = trim(eq + 1);
		if (*value == '"' || *value == '\'')
		{
			size_t len = strlen(value);

			if (len >= 2 && value[len - 1] == value[0])
			{
				value[len - 1] = '\0';
				value++;
			}
		}
		else
		{
			char *hash = strstr(value, " #");

			if (hash)
				*hash = '\0';
			value = trim(value);
		}
		s = find_setting(name, strlen(name));
		snprintf(source, sizeof(source), "%s:%d", path, lineno);
		if (!s || strcmp(s->name, "config") == 0)
		{
			fprintf(stderr, "fhir-notify-bridge: %s: unknown setting \"%s\"\n", source, name);
			ok = false;
			continue;
		}
		if (!setting_assign(settings, s, value, !seen_list[s - settings_table], source))
			ok = false;
		seen_list[s - settings_table] = true;
	}
	fclose(f);
	return ok;
}

/* FHIR_NOTIFY_JWT_SECRET_FILE for jwt-secret-file. */
static void
env_name(const char *name, char *out, size_t outlen)
{
	size_t i = 0;

	snprintf(out, outlen, "FHIR_NOTIFY_");
	i = strlen(out);
	for (; *name && i + 1 < outlen; name++)
		out[i++] = *name == '-' ? '_' : (char) toupper((unsigned char) *name);
	out[i] = '\0';
}

static config_outcome
load_into(int argc, char **argv, bridge_settings *settings, bool quiet_exit)
{
	const char *config_path = getenv("FHIR_NOTIFY_CONFIG");
	bool seen_list[NSETTINGS] = {false};

	memset(settings, 0, sizeof(*settings));
	for (size_t i = 0; i < NSETTINGS; i++)
		setting_assign(settings, &settings_table[i], settings_table[i].default_value, true,
		               "default");

	/* --help, --version and --config first: they decide what else is read */
	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
		{
			if (!quiet_exit)
				print_help();
			return CONFIG_EXIT_OK;
		}
		if (strcmp(argv[i], "--version") == 0)
		{
			if (!quiet_exit)
				printf("fhir-notify-bridge %s\n", BRIDGE_VERSION);
			return CONFIG_EXIT_OK;
		}
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			config_path = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			config_path = argv[i] + 9;
	}
	if (config_path && *config_path)
	{
		setting_assign(settings, find_setting("config", 6), config_path, true, "command line");
		if (!read_config_file(config_path, settings))
			return CONFIG_EXIT_ERROR;
	}

	for (size_t i = 0; i < NSETTINGS; i++)
	{
		char name[128];
		const char *value;

		if (strcmp(settings_table[i].name, "config") == 0)
			continue;
		env_name(settings_table[i].name, name, sizeof(name));
		value = getenv(name);
		if (!value)
			continue;
		if (settings_table[i].type == SETTING_LIST)
		{
			/* comma-separated in the environment */
			char *copy = xstrdup(value), *save = NULL;
			bool first = true;

			for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save))
			{
				setting_assign(settings, &settings_table[i], trim(item), first, name);
				first = false;
			}
			free(copy);
		}
		else if (!setting_assign(settings, &settings_table[i], value, true, name))
			return CONFIG_EXIT_ERROR;
	}

	for (int i = 1; i < argc; i++)
	{
		const char *arg = argv[i];
		const char *eq;
		const char *value = NULL;
		const setting *s;
		size_t namelen;

		if (strncmp(arg, "--", 2) != 0)
		{
			fprintf(stderr, "fhir-notify-bridge: unexpected argument \"%s\" (see --help)\n", arg);
			return CONFIG_EXIT_ERROR;
		}
		arg += 2;
		eq = strchr(arg, '=');
		namelen = eq ? (size_t) (eq - arg) : strlen(arg);
		s = find_setting(arg, namelen);
		if (!s)
		{
			fprintf(stderr, "fhir-notify-bridge: unknown option \"%s\" (see --help)\n", argv[i]);
			return CONFIG_EXIT_ERROR;
		}
		if (eq)
			value = eq + 1;
		else if (s->type != SETTING_BOOL)
		{
			if (i + 1 >= argc)
			{
				fprintf(stderr, "fhir-notify-bridge: option --%s needs a value\n", s->name);
				return CONFIG_EXIT_ERROR;
			}
			value = argv[++i];
		}
		if (!setting_assign(settings, s, value, !seen_list[s - settings_table], "command line"))
			return CONFIG_EXIT_ERROR;
		seen_list[s - settings_table] = true;
	}

	{
		log_level level;

		if (!log_parse_level(settings->log_level, &level))
		{
			fprintf(stderr,
			        "fhir-notify-bridge: invalid log level \"%s\": debug, info, warning or error\n",
			        settings->log_level);
			return CONFIG_EXIT_ERROR;
		}
	}
	if (settings->reader_name && (!*settings->reader_name || strlen(settings->reader_name) > 200))
	{
		fprintf(stderr, "fhir-notify-bridge: reader-name must be 1 to 200 characters\n");
		return CONFIG_EXIT_ERROR;
	}
	if (!settings->reader_name)
	{
		char host[256] = "localhost";
		char name[256 + 128];

		if (gethostname(host, sizeof(host)) != 0)
			snprintf(host, sizeof(host), "%s", "localhost");
		host[sizeof(host) - 1] = '\0';
		snprintf(name, sizeof(name), "fhir-notify-bridge@%.120s:%.60s", host,
		         settings->listen ? settings->listen : "");
		settings->reader_name = xstrdup(name);
	}
	return CONFIG_OK;
}

/* See config.h. */
config_outcome
config_load(int argc, char **argv, bridge_settings *settings)
{
	config_outcome outcome = load_into(argc, argv, settings, false);

	if (outcome != CONFIG_OK)
		config_free(settings);
	return outcome;
}

/* See config.h. */
bool
config_reload(int argc, char **argv, bridge_settings *settings)
{
	bridge_settings fresh;

	if (load_into(argc, argv, &fresh, true) != CONFIG_OK)
	{
		config_free(&fresh);
		log_error("config: reload failed, keeping the previous settings");
		return false;
	}
	for (size_t i = 0; i < NSETTINGS; i++)
	{
		const setting *s = &settings_table[i];
		char *old_field = (char *) settings + s->offset;
		char *new_field = (char *) &fresh + s->offset;

		if (!s->reloadable)
			continue;
		switch (s->type)
		{
			case SETTING_STRING:
			case SETTING_LIST:
			{
				void *tmp = *(void **) old_field;

				*(void **) old_field = *(void **) new_field;
				*(void **) new_field = tmp;
				break;
			}
			case SETTING_INT:
				*(int *) old_field = *(int *) new_field;
				break;
			case SETTING_BOOL:
				*(bool *) old_field = *(bool *) new_field;
				break;
		}
	}
	config_free(&fresh);
	return true;
}

/* Frees every string and list in settings. */
void
config_free(bridge_settings *settings)
{
	for (size_t i = 0; i < NSETTINGS; i++)
	{
		char *field = (char *) settings + settings_table[i].offset;

		if (settings_table[i].type == SETTING_STRING)
		{
			free(*(char **) field);
			*(char **) field = NULL;
		}
		else if (settings_table[i].type == SETTING_LIST)
		{
			list_free(*(char ***) field);
			*(char ***) field = NULL;
		}
	}
}
