/*
 * ws.h
 *	  The lws protocol callback: WebSocket protocol handlers and the small
 *	  HTTP side (/healthz, /metrics, static files).
 */
#ifndef BRIDGE_WS_H
#define BRIDGE_WS_H

#include <stdbool.h>

#include <libwebsockets.h>

int ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                size_t len);
/* Whether id is a bare patient id: 1-64 of A-Z a-z 0-9 . - */
bool ws_valid_patient_id(const char *id);

#endif /* BRIDGE_WS_H */
