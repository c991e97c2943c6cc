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
	long long last_tick;  /* every change up to this tick has been fanned out; 0 = not started */
	long long last_epoch; /* the log's epoch of last_tick (fhir_notify.tick_epoch) */
	bool draining;        /* SIGTERM: no new connections, clients being closed */
} bridge;

extern bridge the_bridge;

/*
 * The cursor of "now": everything the bridge has fanned out, up to the last
 * change of a read still being fanned out. A subscription made now is
 * served exactly the changes after it: it has missed nothing so far.
 */
cursor bridge_current_cursor(void);
/* The first position a subscription going live now is sent (the one after the current cursor). */
cursor bridge_live_from(void);
/*
 * The start of the read being fanned out (or of the next read): at or
 * before every change fanned out in this read.
 */
cursor bridge_read_cursor(void);
/* bridge_current_cursor() as text, or false before the first read. */
bool bridge_current_cursor_text(char *out, size_t outlen);

#endif /* BRIDGE_BRIDGE_H */
