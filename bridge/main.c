/*
 * main.c
 *	  fhir-notify-bridge: options, signals and the event loop. Signal
 *	  handlers only set flags; the loop reloads (SIGHUP) or drains and exits
 *	  (SIGTERM, SIGINT).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <libwebsockets.h>

#include "auth.h"
#include "auth_limit.h"
#include "authorize.h"
#include "bridge.h"
#include "change.h"
#include "client.h"
#include "config.h"
#include "log.h"
#include "pg.h"
#include "pg_link.h"
#include "presence.h"
#include "prune.h"
#include "proxy.h"
#include "resume_points.h"
#include "rooms.h"
#include "subscription.h"
#include "ws.h"

/* Recent changes kept for resuming clients (at least --resume-max-changes). */
#define RING_MIN_CAPACITY 10000
/* How long SIGTERM waits for clients to take their 1001 close. */
#define DRAIN_TIMEOUT_US    (5 * 1000000LL)
#define INSECURE_WARNING_US (60 * 1000000LL)

static volatile sig_atomic_t terminate_requested;
static volatile sig_atomic_t reload_requested;
static lws_sorted_usec_list_t housekeeping_timer;
static long long last_insecure_warning_us;
/* The epoll loop lws runs on (--event-loop), or NULL: lws's own poll() loop. */
static struct ev_loop *epoll_loop;
static bool epoll_refused; /* --event-loop=epoll could not be had: already said why */

static void
on_signal(int signo)
{
	if (signo == SIGHUP)
		reload_requested = 1;
	else
		terminate_requested = 1;
	/* wakes the loop: a write to lws's internal pipe */
	if (the_bridge.context)
		lws_cancel_service(the_bridge.context);
}

static void
warn_insecure(void)
{
	log_warning("running with --insecure-no-auth: every client may read every patient's changes "
	            "without a token");
	last_insecure_warning_us = now_monotonic_us();
}

/*
 * Twice a second: connection deadlines, the insecure warning, and a wake-up
 * of the loop for the signal flags.
 */
static void
housekeeping(lws_sorted_usec_list_t *sul)
{
	clients_sweep();
	if (!the_bridge.keys && now_monotonic_us() - last_insecure_warning_us >= INSECURE_WARNING_US)
		warn_insecure();
	lws_sul_schedule(the_bridge.context, 0, &housekeeping_timer, housekeeping, LWS_US_PER_SEC / 2);
}

static bool
keys_configured(const bridge_settings *s)
{
	return s->jwt_secret_file || s->jwt_public_key_file || s->jwks_file;
}

/* Loads the verification keys named by the settings; NULL with a logged error. */
static auth_keys *
load_keys(const bridge_settings *s)
{
	auth_config config = {
	    .hs256_secret_file = s->jwt_secret_file,
	    .public_key_file = s->jwt_public_key_file,
	    .jwks_file = s->jwks_file,
	    .audience = s->jwt_audience,
	    .issuer = s->jwt_issuer,
	    .leeway_seconds = s->jwt_leeway,
	    .default_scopes = s->default_scopes,
	    .scopes_by_claim = s->scopes_by_claim,
	};
	char err[512] = "";
	auth_keys *keys = auth_keys_load(&config, err, sizeof(err));

	if (!keys)
		log_error("auth: could not load the token keys: %s", err[0] ? err : "unknown error");
	return keys;
}

static void
reload(void)
{
	log_level level;
	char err[256] = "";

	log_info("reloading settings and keys");
	if (!config_reload(the_bridge.argc, the_bridge.argv, &the_bridge.settings))
		return;
	if (log_parse_level(the_bridge.settings.log_level, &level))
		log_min_level = level;
	if (!proxy_configure(the_bridge.settings.trusted_proxies, err, sizeof(err)))
		log_error("%s: keeping the previous trusted proxies", err);
	if (keys_configured(&the_bridge.settings))
	{
		auth_keys *keys = load_keys(&the_bridge.settings);

		if (keys)
		{
			auth_keys_free(the_bridge.keys);
			the_bridge.keys = keys;
		}
		else
			log_error("auth: keeping the previous keys");
	}
}

/* Splits "host:port", "[v6]:port", ":port" or "port". */
static bool
parse_listen(const char *listen, char *host, size_t hostlen, int *port)
{
	const char *colon = strrchr(listen, ':');
	char *end;
	long p;

	host[0] = '\0';
	if (colon)
	{
		size_t len = (size_t) (colon - listen);

		if (len > 0 && listen[0] == '[' && listen[len - 1] == ']')
		{
			listen++;
			len -= 2;
		}
		if (len >= hostlen)
			return false;
		memcpy(host, listen, len);
		host[len] = '\0';
		colon++;
	}
	else
		colon = listen;
	p = strtol(colon, &end, 10);
	if (end == colon || *end != '\0' || p < 0 || p > 65535)
		return false;
	*port = (int) p;
	return true;
}

/*
 * No lws idle-validity timer per connection (lws 4.1 keeps timers in one
 * sorted list: a far deadline per connection makes accepting N connections
 * O(N^2)); clients_sweep() pings idle connections and drops dead ones.
 */
static const lws_retry_bo_t no_idle_policy;

typedef enum event_loop_kind
{
	EVENT_LOOP_AUTO,
	EVENT_LOOP_EPOLL,
	EVENT_LOOP_POLL
} event_loop_kind;

static bool
parse_event_loop(const char *name, event_loop_kind *kind)
{
	if (strcmp(name, "auto") == 0)
		*kind = EVENT_LOOP_AUTO;
	else if (strcmp(name, "epoll") == 0)
		*kind = EVENT_LOOP_EPOLL;
	else if (strcmp(name, "poll") == 0)
		*kind = EVENT_LOOP_POLL;
	else
		return false;
	return true;
}

/*
 * The lws context, on an epoll loop unless --event-loop=poll. lws 4.1's own
 * loop poll()s every connection on each turn (most of the bridge's CPU at
 * 1,000 connections); on epoll through libev, a foreign loop that lws
 * drives through its libev plugin (Debian: libwebsockets-evlib-ev), a turn
 * costs what is ready. The bridge runs the loop itself (main()), so the
 * signal flags are checked after every turn. Without the plugin: an error
 * with --event-loop=epoll, a warning and poll() with auto.
 *
 * One quirk of lws 4.1.6's plugin: it re-arms its timer without stopping it,
 * so a timer set from a socket callback sooner than the one already armed,
 * and not yet due when that turn ends, fires only with the armed one (at
 * most the housekeeping half second later) or with the next socket event.
 * The bridge's timers are "at once" (due by the end of the turn) or
 * seconds away, so none is late by more than that.
 */
static struct lws_context *
create_context(struct lws_context_creation_info *info, event_loop_kind kind)
{
	static void *foreign_loops[1];
	struct lws_context *context;

	if (kind != EVENT_LOOP_POLL)
	{
		epoll_loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
		if (epoll_loop)
		{
			foreign_loops[0] = epoll_loop;
			info->foreign_loops = foreign_loops;
			info->options |= LWS_SERVER_OPTION_LIBEV;
			context = lws_create_context(info);
			if (context)
				return context;
			ev_loop_destroy(epoll_loop);
			epoll_loop = NULL;
			info->foreign_loops = NULL;
			info->options &= ~(uint64_t) LWS_SERVER_OPTION_LIBEV;
		}
		if (kind == EVENT_LOOP_EPOLL)
		{
			log_error("could not start the epoll event loop: is libwebsockets' libev plugin "
			          "installed (Debian package libwebsockets-evlib-ev)? --event-loop=poll runs "
			          "without it");
			epoll_refused = true;
			return NULL;
		}
		log_warning("could not start the epoll event loop (is libwebsockets' libev plugin, Debian "
		            "package libwebsockets-evlib-ev, installed?): falling back to poll(), which "
		            "costs more CPU per event with many connections");
	}
	return lws_create_context(info);
}

static const struct lws_protocols protocols[] = {
    {"fhir-notify", ws_callback, sizeof(client), CLIENT_RX_BUFFER, 0, NULL, 0},
    {PG_LINK_PROTOCOL, pg_link_callback, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

int
main(int argc, char **argv)
{
	struct lws_context_creation_info info;
	struct sigaction sa;
	char host[256];
	int port;
	log_level level;
	long long drain_deadline = 0;
	config_outcome outcome;
	event_loop_kind event_loop;
	char err[256] = "";

	the_bridge.argc = argc;
	the_bridge.argv = argv;
	outcome = config_load(argc, argv, &the_bridge.settings);
	if (outcome != CONFIG_OK)
		return outcome == CONFIG_EXIT_OK ? 0 : 2;
	if (log_parse_level(the_bridge.settings.log_level, &level))
		log_min_level = level;
	srand((unsigned) (now_wall_us() ^ getpid()));

	if (!the_bridge.settings.db)
	{
		fprintf(stderr, "fhir-notify-bridge: --db (or FHIR_NOTIFY_DB) is required\n");
		return 2;
	}
	if (!parse_listen(the_bridge.settings.listen, host, sizeof(host), &port))
	{
		fprintf(stderr, "fhir-notify-bridge: invalid --listen \"%s\": expected ADDRESS:PORT\n",
		        the_bridge.settings.listen);
		return 2;
	}
	if (!parse_event_loop(the_bridge.settings.event_loop, &event_loop))
	{
		fprintf(stderr,
		        "fhir-notify-bridge: invalid --event-loop \"%s\": expected auto, epoll or poll\n",
		        the_bridge.settings.event_loop);
		return 2;
	}
	if (!!the_bridge.settings.tls_cert != !!the_bridge.settings.tls_key)
	{
		fprintf(stderr, "fhir-notify-bridge: --tls-cert and --tls-key go together\n");
		return 2;
	}
	if (!proxy_configure(the_bridge.settings.trusted_proxies, err, sizeof(err)))
	{
		fprintf(stderr, "fhir-notify-bridge: %s\n", err);
		return 2;
	}
	if (keys_configured(&the_bridge.settings))
	{
		the_bridge.keys = load_keys(&the_bridge.settings);
		if (!the_bridge.keys)
			return 1;
	}
	else if (!the_bridge.settings.insecure_no_auth)
	{
		fprintf(stderr,
		        "fhir-notify-bridge: no token key configured: give --jwt-secret-file, "
		        "--jwt-public-key-file or --jwks-file (or --insecure-no-auth for testing only)\n");
		return 2;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	clients_size_fd_limit();

	log_install_lws();
	memset(&info, 0, sizeof(info));
	info.port = port;
	info.iface = host[0] && strcmp(host, "0.0.0.0") != 0 && strcmp(host, "*") != 0 ? host : NULL;
	info.protocols = protocols;
	/* no lws security-header preset: its CSP would block the --static demo page's scripts */
	info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
	if (strcmp(host, "0.0.0.0") == 0 || strchr(host, '.'))
		info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
	info.max_http_header_data = 16384;
	info.pt_serv_buf_size = 32768;
	info.count_threads = 1;
	info.vhost_name = "default";
	info.retry_and_idle_policy = &no_idle_policy;
	if (the_bridge.settings.tls_cert)
	{
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
		info.ssl_cert_filepath = the_bridge.settings.tls_cert;
		info.ssl_private_key_filepath = the_bridge.settings.tls_key;
	}
	the_bridge.context = create_context(&info, event_loop);
	if (!the_bridge.context)
	{
		if (!epoll_refused)
			log_error("could not listen on %s", the_bridge.settings.listen);
		return 1;
	}
	the_bridge.vhost = lws_get_vhost_by_name(the_bridge.context, "default");
	log_info("fhir-notify-bridge %s listening on %s%s (event loop: %s)", BRIDGE_VERSION,
	         the_bridge.settings.listen, the_bridge.settings.tls_cert ? " (tls)" : "",
	         epoll_loop ? "epoll" : "poll");
	if (!the_bridge.keys)
		warn_insecure();

	ring_init(the_bridge.settings.resume_max_changes > RING_MIN_CAPACITY
	              ? the_bridge.settings.resume_max_changes
	              : RING_MIN_CAPACITY);
	pg_start(&subscription_feed);
	authorize_start();
	prune_start();
	resume_points_start();
	presence_start();
	lws_sul_schedule(the_bridge.context, 0, &housekeeping_timer, housekeeping, LWS_US_PER_SEC);

	/* lws arms its libev timer only after socket events: a first one, for the timers above */
	lws_cancel_service(the_bridge.context);
	for (;;)
	{
		if (epoll_loop)
			ev_run(epoll_loop, EVRUN_ONCE);
		else if (lws_service(the_bridge.context, 1000) < 0)
			break;
		if (reload_requested)
		{
			reload_requested = 0;
			reload();
		}
		if (terminate_requested && !the_bridge.draining)
		{
			log_info("shutting down: closing %d connections", the_bridge.nclients);
			the_bridge.draining = true;
			drain_deadline = now_monotonic_us() + DRAIN_TIMEOUT_US;
			for (client *c = the_bridge.clients; c; c = c->next)
			{
				client_drop_queued_updates(c);
				client_close(c, 1001, "server shutting down");
			}
		}
		if (the_bridge.draining &&
		    (the_bridge.nclients == 0 || now_monotonic_us() > drain_deadline))
			break;
	}

	lws_sul_cancel(&housekeeping_timer);
	resume_points_stop();
	auth_failures_free();
	pg_stop();
	authorize_stop();
	prune_stop();
	presence_stop();
	lws_context_destroy(the_bridge.context);
	if (epoll_loop)
		ev_loop_destroy(epoll_loop);
	ring_free();
	rooms_free();
	auth_keys_free(the_bridge.keys);
	proxy_free();
	config_free(&the_bridge.settings);
	log_info("stopped");
	return 0;
}
