/*
 * config.h
 *	  The bridge's settings: one table gives each setting's name, type,
 *	  default, whether SIGHUP reloads it, and its help text. The same names
 *	  work as --flags, as FHIR_NOTIFY_* environment variables (upper case,
 *	  dashes as underscores) and as `name = value` lines in --config FILE.
 *	  Precedence: command line, then environment, then file, then default.
 */
#ifndef BRIDGE_CONFIG_H
#define BRIDGE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define BRIDGE_VERSION "0.2.0"

typedef struct bridge_settings
{
	char *db;
	char *listen;
	char *jwt_secret_file;
	char *jwt_public_key_file;
	char *jwks_file;
	char *jwt_audience;
	char *jwt_issuer;
	int jwt_leeway;
	char *default_scopes;   /* SMART scopes for tokens without any */
	char **scopes_by_claim; /* CLAIM=VALUE:SCOPES, NULL-terminated */
	int auth_failure_limit;
	bool relay_client_events; /* failed authentications per address per 10 s before 429; 0: none */
	bool insecure_no_auth;
	char **allowed_origins; /* NULL-terminated; empty means any origin */
	char **trusted_proxies; /* NULL-terminated addresses or networks (proxy.c) */
	char *tls_cert;
	char *tls_key;
	int max_connections;
	int max_subscriptions;
	int max_frame_size;
	int send_queue_limit;
	char *authorize_sql;
	int authorize_cache_seconds;
	char *channel;
	int poll_interval;
	int resume_max_age;
	int resume_max_changes;
	bool resume_without_cursor; /* resume points for subscriptions without since */
	int prune_keep;             /* seconds; 0: the bridge does not prune */
	int presence_interval;      /* ms: a room's presence goes out at most this often */
	int presence_ttl;           /* s: a silent bridge's presence rows expire after this */
	int presence_max_list;      /* people listed per presence message */
	char *presence_name_claim;  /* token claims giving the display name, role, fhirUser */
	char *presence_role_claim;
	char *presence_user_claim;
	char *reader_name; /* registered reader name; default "fhir-notify-bridge@HOST:LISTEN" */
	char *static_dir;
	char *event_loop; /* auto, epoll or poll */
	char *log_level;
	char *config_file;
} bridge_settings;

typedef enum config_outcome
{
	CONFIG_OK,
	CONFIG_EXIT_OK,   /* --help or --version printed */
	CONFIG_EXIT_ERROR /* message printed */
} config_outcome;

/*
 * Fills settings from defaults, --config file, environment and argv.
 * Prints --help/--version output or errors itself.
 */
config_outcome config_load(int argc, char **argv, bridge_settings *settings);

/*
 * Re-reads everything as config_load did and copies the settings marked
 * reloadable into settings; false (with a logged error) if the new
 * configuration is invalid, leaving settings unchanged.
 */
bool config_reload(int argc, char **argv, bridge_settings *settings);

void config_free(bridge_settings *settings);

#endif /* BRIDGE_CONFIG_H */
