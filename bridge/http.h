/*
 * http.h
 *	  The HTTP side of the listener: the WebSocket upgrade checks (path,
 *	  origin, connection limit, the token), /healthz, /metrics and --static
 *	  files.
 */
#ifndef BRIDGE_HTTP_H
#define BRIDGE_HTTP_H

#include <libwebsockets.h>

#include "client.h"

int http_confirm_upgrade(struct lws *wsi, const char *protocol);
/* The token from ?token= or an Authorization: Bearer header, if any (to free). */
char *http_handshake_token(struct lws *wsi);
int http_request(struct lws *wsi, client *c, const char *uri);
int http_writeable(struct lws *wsi, client *c);

#endif /* BRIDGE_HTTP_H */
