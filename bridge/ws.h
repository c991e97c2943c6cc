/*
 * ws.h
 *	  The lws protocol callback: WebSocket protocol handlers and the small
 *	  HTTP side (/healthz, /metrics, static files).
 */
#ifndef BRIDGE_WS_H
#define BRIDGE_WS_H

#include <libwebsockets.h>

int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                size_t len);

#endif /* BRIDGE_WS_H */
