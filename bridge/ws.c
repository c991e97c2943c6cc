/*
 * ws.c
 *	  WebSocket protocol handlers: authentication, subscribe, unsubscribe,
 *	  ping; see docs/protocol.md for the contract. Messages are parsed and
 *	  validated by request.c; what a subscription then does is
 *	  subscription.c's.
 */
#include "ws.h"

#include <limits.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <jansson.h>

#include "auth_limit.h"
#include "bridge.h"
#include "client.h"
#include "client_events.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "presence.h"
#include "proxy.h"
#include "request.h"
#include "subscription.h"

static json_t *
now_timestamp(void)
{
	char stamp[40];

	format_timestamp(now_wall_us(), stamp, sizeof(stamp));
	return json_string(stamp);
}

static json_t *
current_cursor_json(void)
{
	char text[CURSOR_TEXT_LEN];

	return bridge_current_cursor_text(text, sizeof(text)) ? json_string(text) : json_null();
}

static void
send_welcome(client *c)
{
	json_t *user = c->grant.claims ? json_deep_copy(c->grant.claims) : json_object();

	if (!json_object_get(user, "sub") && c->grant.subject)
		json_object_set_new(user, "sub", json_string(c->grant.subject));
	client_send_json(c, json_pack("{s:s, s:{s:s, s:o, s:o, s:s}}", "type", "welcome", "data",
	                              "client_id", c->id, "user", user, "cursor", current_cursor_json(),
	                              "server", "fhir-notify-bridge/" BRIDGE_VERSION));
}

/*
 * Verifies a token and, when good, makes its grant the connection's. A bad
 * token is answered with AUTH_FAILED or TOKEN_EXPIRED and closes the
 * connection with 4001.
 */
static bool
authenticate(client *c, const char *token)
{
	auth_grant grant;
	char err[256] = "";
	auth_result result;

	memset(&grant, 0, sizeof(grant));
	if (!the_bridge.keys)
	{
		/* --insecure-no-auth without keys: every token (or none) is let in */
		auth_grant_unrestricted(&grant);
		result = AUTH_OK;
	}
	else
		result =
		    auth_verify(the_bridge.keys, token, (long long) time(NULL), &grant, err, sizeof(err));
	if (result != AUTH_OK)
	{
		the_metrics.auth_failures++;
		log_debug("client %s: token rejected: %s", c->id, err[0] ? err : "invalid");
		if (auth_failure_record(c->peer, "authenticate", err[0] ? err : "invalid",
		                        the_bridge.settings.auth_failure_limit, now_monotonic_us(), NULL))
		{
			/* no AUTH_FAILED: a client that renews at once on it would retry at once */
			the_metrics.auth_rate_limited++;
			client_drop_queued_updates(c);
			client_close(c, 4029, "Too Many Requests");
			return false;
		}
		if (result == AUTH_EXPIRED)
			client_send_error(c, "TOKEN_EXPIRED", "the token has expired", NULL);
		else
			client_send_error(c, "AUTH_FAILED", "the token is not valid", NULL);
		client_drop_queued_updates(c);
		client_close(c, 4001, "Unauthorized");
		return false;
	}
	/*
	 * A live connection keeps its user: its subscriptions were authorized
	 * (--authorize-sql answers, the FORBIDDEN checks) for that user, and a
	 * token for another one would inherit them.
	 */
	if (c->authenticated &&
	    strcmp(c->grant.subject ? c->grant.subject : "", grant.subject ? grant.subject : "") != 0)
	{
		log_info("client %s: token for another user (%s) refused", c->id,
		         grant.subject ? grant.subject : "(unknown)");
		auth_grant_clear(&grant);
		the_metrics.auth_failures++;
		client_send_error(c, "AUTH_FAILED", "the token is for another user than this connection's",
		                  NULL);
		client_drop_queued_updates(c);
		client_close(c, 4001, "Unauthorized");
		return false;
	}
	if (c->authenticated)
		auth_grant_clear(&c->grant);
	c->grant = grant;
	c->authenticated = true;
	/*
	 * The token is good until exp plus the clock skew allowed when it was
	 * checked. exp is clamped only at 2^52 s, which overflows in
	 * microseconds: an expiry past the year 2^63 us (292277) is none.
	 */
	if (grant.expires_at &&
	    grant.expires_at < LLONG_MAX / 1000000LL - the_bridge.settings.jwt_leeway)
		c->expires_us = (grant.expires_at + the_bridge.settings.jwt_leeway) * 1000000LL;
	else
		c->expires_us = 0;
	log_info("client %s: authenticated as %s", c->id, grant.subject ? grant.subject : "(unknown)");
	return true;
}

static void
on_established(struct lws *wsi, client *c)
{
	char *token;

	memset(c, 0, sizeof(*c));
	c->wsi = wsi;
	c->established = true;
	{
		/* lws set it from CLIENT_RX_BUFFER: what it was before that was made smaller */
		int sndbuf = CLIENT_SNDBUF;

		setsockopt(lws_get_socket_fd(wsi), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	}
	make_uuid(c->id);
	proxy_address_of(wsi, c->peer, sizeof(c->peer));
	c->connected_us = now_monotonic_us();
	c->last_rx_us = c->connected_us;
	c->next = the_bridge.clients;
	if (c->next)
		c->next->prev = c;
	the_bridge.clients = c;
	the_bridge.nclients++;
	the_metrics.connections_total++;
	log_info("client %s: connected from %s", c->id, c->peer);

	token = http_handshake_token(wsi);
	if (token || !the_bridge.keys)
	{
		if (authenticate(c, token))
			send_welcome(c);
		free(token);
		return;
	}
}

/* A subscribe that request_parse accepted; takes its patient ids and types. */
static void
handle_subscribe(client *c, request *parsed)
{
	const char *sid = parsed->subscription_id;
	const char *user = c->grant.subject ? c->grant.subject : "(unknown)";
	subscribe_request req = {0};

	if (parsed->room)
	{
		/*
		 * Nothing would ever be delivered in a named room: refused, rather
		 * than acknowledged as if it worked (client events are relayed by
		 * patient, see client_events.c).
		 */
		log_info("client %s: subscription %s to a named room refused for user %s: named rooms "
		         "are not supported",
		         c->id, sid, user);
		client_send_error(c, "NOT_SUPPORTED",
		                  "named rooms are not supported: nothing would be delivered in one", sid);
		return;
	}
	for (int i = 0; i < parsed->npatients; i++)
	{
		if (!auth_grant_allows(&c->grant, parsed->patient_ids[i], NULL))
		{
			log_debug("client %s: subscription to patient %s forbidden", c->id,
			          parsed->patient_ids[i]);
			log_info("client %s: subscription %s refused for user %s: the token allows nothing "
			         "of one of its patients (scopes from %s)",
			         c->id, sid, user, c->grant.scopes_from ? c->grant.scopes_from : "the token");
			client_send_error(c, "FORBIDDEN", "the token does not allow one of these patients",
			                  sid);
			return;
		}
	}
	if (!subscription_find(c, sid) && c->nsubs >= the_bridge.settings.max_subscriptions)
	{
		client_send_error(c, "LIMIT_EXCEEDED", "too many subscriptions on this connection", sid);
		return;
	}
	req.id = xstrdup(sid);
	req.room = xstrdup(parsed->room);
	req.patient_ids = parsed->patient_ids;
	req.npatients = parsed->npatients;
	req.types = parsed->types;
	req.ntypes = parsed->ntypes;
	req.has_since = parsed->has_since;
	req.since = parsed->since;
	req.presence = parsed->presence;
	parsed->patient_ids = parsed->types = NULL;
	parsed->npatients = parsed->ntypes = 0;
	subscription_subscribe(c, &req);
}

static void
handle_unsubscribe(client *c, const char *sid)
{
	subscription_unsubscribe(c, sid);
	client_send_json(c, json_pack("{s:s, s:{s:s, s:s}}", "type", "subscription", "data", "action",
	                              "removed", "subscription_id", sid));
}

/* Dispatches one complete text message from a client (parsed by request.c). */
static void
handle_message(client *c, const char *text, size_t len)
{
	request req;

	request_parse(text, len, &req);
	if (req.kind == REQUEST_INVALID)
		client_send_error(c, "BAD_REQUEST", req.problem, NULL);
	else if (req.kind == REQUEST_AUTHENTICATE)
	{
		bool first = !c->authenticated;

		if (req.problem)
			client_send_error(c, "BAD_REQUEST", req.problem, NULL);
		else if (authenticate(c, req.token))
		{
			client_send_json(
			    c, json_pack("{s:s, s:s}", "type", "auth_success", "message", "authenticated"));
			if (first)
				send_welcome(c);
			else
				presence_client_reauthenticated(c); /* a new name or role shows */
		}
	}
	else if (!c->authenticated)
		client_send_error(c, "AUTH_REQUIRED", "authenticate first", NULL);
	else if (req.kind == REQUEST_PING)
		client_send_json(c, json_pack("{s:s, s:o}", "type", "pong", "timestamp", now_timestamp()));
	else if (req.kind == REQUEST_PONG)
		;
	else if (req.problem)
		client_send_error(c, "BAD_REQUEST", req.problem, req.problem_subscription_id);
	else if (req.kind == REQUEST_SUBSCRIBE)
		handle_subscribe(c, &req);
	else if (req.kind == REQUEST_UNSUBSCRIBE)
		handle_unsubscribe(c, req.subscription_id);
	else if (req.kind == REQUEST_EDITING)
		presence_handle_editing(c, req.root, true);
	else if (req.kind == REQUEST_STOP_EDITING)
		presence_handle_editing(c, req.root, false);
	else if (req.kind == REQUEST_CLIENT_EVENT)
		client_event_received(c, req.root, json_string_value(json_object_get(req.root, "type")),
		                      len);
	else
		client_send_error(c, "UNKNOWN_TYPE", "unknown message type", NULL);
	request_free(&req);
}

/* Reassembles fragments; binary frames and oversized messages close the connection. */
static int
on_receive(struct lws *wsi, client *c, const void *in, size_t len)
{
	size_t limit = (size_t) the_bridge.settings.max_frame_size;

	if (c->close_code)
		return 0;
	/*
	 * Bad frames close through the queue (client_close) rather than by
	 * returning -1 here: lws then sends the close frame and reads what the
	 * peer still sends, instead of resetting the connection with unread
	 * data, which the peer would see as 1006.
	 */
	if (lws_frame_is_binary(wsi))
	{
		log_info("client %s: binary frame, closing", c->id);
		client_close(c, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, "binary frames are not accepted");
		return 0;
	}
	if (c->rx_len + len + lws_remaining_packet_payload(wsi) > limit)
	{
		log_info("client %s: message over %zu bytes, closing", c->id, limit);
		free(c->rx);
		c->rx = NULL;
		c->rx_len = 0;
		client_close(c, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "message too large");
		return 0;
	}
	c->rx = xrealloc(c->rx, c->rx_len + len + 1);
	memcpy(c->rx + c->rx_len, in, len);
	c->rx_len += len;
	if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) > 0)
		return 0;
	handle_message(c, c->rx, c->rx_len);
	free(c->rx);
	c->rx = NULL;
	c->rx_len = 0;
	/*
	 * Every request queues a reply: a client that sends faster than it
	 * reads is not read from until its replies drain (client_write_next
	 * resumes), so its queue stays bounded and TCP pushes back on it.
	 */
	if (c->queued_replies >= MAX_UNREAD_REPLIES && !c->rx_paused)
	{
		log_debug("client %s: %d replies unread, pausing reads", c->id, c->queued_replies);
		c->rx_paused = true;
		lws_rx_flow_control(wsi, 0);
	}
	return 0;
}

/* See ws.h. */
int
ws_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	client *c = user;

	switch (reason)
	{
		case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
			return client_fd_has_room((int) (intptr_t) in) ? 0 : 1;
		case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
			return http_confirm_upgrade(wsi, in);
		case LWS_CALLBACK_HTTP:
			return http_request(wsi, c, in);
		case LWS_CALLBACK_HTTP_WRITEABLE:
			return http_writeable(wsi, c);
		case LWS_CALLBACK_HTTP_FILE_COMPLETION:
			return lws_http_transaction_completed(wsi) ? -1 : 0;
		case LWS_CALLBACK_CLOSED_HTTP:
			if (c && !c->established)
			{
				free(c->http_body);
				c->http_body = NULL;
			}
			return 0;
		case LWS_CALLBACK_ESTABLISHED:
			on_established(wsi, c);
			return 0;
		case LWS_CALLBACK_RECEIVE:
			c->last_rx_us = now_monotonic_us();
			return on_receive(wsi, c, in, len);
		case LWS_CALLBACK_RECEIVE_PONG:
			c->last_rx_us = now_monotonic_us();
			return 0;
		case LWS_CALLBACK_SERVER_WRITEABLE:
			return client_write_next(c);
		case LWS_CALLBACK_TIMER:
			return client_timer_fired(c);
		case LWS_CALLBACK_CLOSED:
			if (c && c->established)
			{
				log_info("client %s: disconnected", c->id);
				subscriptions_client_closed(c);
				client_release(c);
				c->established = false;
			}
			return 0;
		default:
			return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}
