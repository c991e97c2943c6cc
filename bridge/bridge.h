/*
 * bridge.h
 *	  The daemon's shared state: settings, the lws context, the connected
 *	  clients and where the change log reader stands.
 */
#ifndef BRIDGE_BRIDGE_H
#define BRIDGE_BRIDGE_H

#include <stdbool.h>

#include <libwebsockets.h>

#include "auth.h"
#include "config.h"
#include "util.h"

struct client;

typedef struct bridge
{
	bridge_settings settings;
	int argc;
	char **argv;
	struct lws_context *context;
	struct lws_vhost *vhost;
	auth_keys *keys; /* NULL with --insecure-no-auth and no key configured */
	struct client *clients;
	int nclients;
	bool database_connected;
	long long last_tick_ok_us; /* monotonic: the last successful fhir_notify.tick() */
	long long last_tick; /* every change up to this tick has been fanned out; 0 = not started */
	bool draining;       /* SIGTERM: no new connections, clients being closed */
} bridge;

extern bridge the_bridge;

/*
 * The cursor of "now": everything the bridge has read. A client holding it
 * has missed nothing so far.
 */
cursor bridge_current_cursor(void);
/* bridge_current_cursor() as text, or false before the first read. */
bool bridge_current_cursor_text(char *out, size_t outlen);

#endif /* BRIDGE_BRIDGE_H */
