/*
 * http.c
 *	  Upgrade checks, health and metrics endpoints, static files.
 */
#include "http.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "auth_limit.h"
#include "bridge.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"

/* Answers an HTTP request with a small body from memory, written when writeable. */
static int
respond(struct lws *wsi, client *c, unsigned int status, const char *content_type, strbuf *body)
{
	unsigned char headers[LWS_PRE + 1024];
	unsigned char *start = headers + LWS_PRE, *p = start, *end = headers + sizeof(headers) - 1;

	free(c->http_body);
	c->http_body = xmalloc(LWS_PRE + body->len + 1);
	memcpy(c->http_body + LWS_PRE, body->data, body->len);
	c->http_len = body->len;
	strbuf_free(body);
	if (lws_add_http_common_headers(wsi, status, content_type, (lws_filepos_t) c->http_len, &p,
	                                end) ||
	    lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
	                                 (unsigned char *) "no-store", 8, &p, end) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return 1;
	lws_callback_on_writable(wsi);
	return 0;
}

/*
 * Refuses an upgrade with an HTTP/1.1 status line (lws_return_http_status
 * answers an upgrade request with HTTP/1.0, which WebSocket clients reject
 * as malformed rather than reporting the status). headers: further header
 * lines, each ending in CRLF, or "".
 */
static int
refuse_upgrade_with(struct lws *wsi, int status, const char *text, const char *headers)
{
	char response[LWS_PRE + 768];
	int n;

	n = snprintf(
	    response + LWS_PRE, sizeof(response) - LWS_PRE,
	    "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %zu\r\n%sconnection: "
	    "close\r\n\r\n%s\n",
	    status, text, strlen(text) + 1, headers, text);
	if (n < 0 || n >= (int) (sizeof(response) - LWS_PRE))
		return -1;
	if (lws_write(wsi, (unsigned char *) response + LWS_PRE, (size_t) n, LWS_WRITE_HTTP_HEADERS) <
	    n)
		return -1;
	return 1;
}

static int
refuse_upgrade(struct lws *wsi, int status, const char *text)
{
	return refuse_upgrade_with(wsi, status, text, "");
}

/* See http.h. */
char *
http_handshake_token(struct lws *wsi)
{
	char buf[8192];
	const char *value = lws_get_urlarg_by_name(wsi, "token=", buf, sizeof(buf));
	int len;

	if (value && *value)
		return xstrdup(value);
	len = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
	if (len > 0 && len < (int) sizeof(buf) &&
	    lws_hdr_copy(wsi, buf, sizeof(buf), WSI_TOKEN_HTTP_AUTHORIZATION) > 0)
	{
		char *p = buf;

		if (strncasecmp(p, "Bearer ", 7) == 0)
		{
			p += 7;
			while (*p == ' ')
				p++;
			if (*p)
				return xstrdup(p);
		}
	}
	return NULL;
}

/*
 * Checks the token of an upgrade request, if it has one: a token that fails
 * is refused here, with 401 (or 429 past --auth-failure-limit), before any
 * WebSocket exists. A browser's WebSocket then reports a plain failed
 * connection, and a client like WintEHR's backs off as after any network
 * failure instead of fetching a token and reconnecting at once, which is
 * what it does on an AUTH_FAILED or TOKEN_EXPIRED message. Returns 0 when
 * the upgrade may go on (no token: it may still authenticate by message).
 */
static int
check_upgrade_token(struct lws *wsi)
{
	char *token;
	auth_grant grant;
	auth_result result;
	char err[256] = "", peer[64] = "", headers[320];
	int retry_after = 0;
	bool expired;

	if (!the_bridge.keys || !(token = http_handshake_token(wsi)))
		return 0;
	result = auth_verify(the_bridge.keys, token, (long long) time(NULL), &grant, err, sizeof(err));
	free(token);
	auth_grant_clear(&grant);
	if (result == AUTH_OK)
		return 0;
	expired = result == AUTH_EXPIRED;
	the_metrics.auth_failures++;
	proxy_address_of(wsi, peer, sizeof(peer));
	if (auth_failure_record(peer, "upgrade", err[0] ? err : "invalid",
	                        the_bridge.settings.auth_failure_limit, now_monotonic_us(),
	                        &retry_after))
	{
		the_metrics.auth_rate_limited++;
		snprintf(headers, sizeof(headers), "retry-after: %d\r\n", retry_after);
		return refuse_upgrade_with(wsi, 429, "Too Many Requests", headers);
	}
	snprintf(headers, sizeof(headers),
	         "www-authenticate: Bearer error=\"invalid_token\", error_description=\"%s\"\r\n",
	         expired ? "the token has expired" : "the token is not valid");
	return refuse_upgrade_with(wsi, 401, "Unauthorized", headers);
}

/*
 * See http.h: only /api/ws and /ws upgrade, from allowed origins, within the
 * limit, with a token that verifies or none.
 */
int
http_confirm_upgrade(struct lws *wsi, const char *protocol)
{
	char path[256] = "", origin[512] = "";
	char **allowed = the_bridge.settings.allowed_origins;

	if (!protocol || strcmp(protocol, "websocket") != 0)
		return 0;
	lws_hdr_copy(wsi, path, sizeof(path), WSI_TOKEN_GET_URI);
	if (strcmp(path, "/api/ws") != 0 && strcmp(path, "/ws") != 0)
	{
		return refuse_upgrade(wsi, 404, "Not Found");
	}
	/*
	 * An Origin too long for the buffer cannot match an allowed one: it is
	 * refused, not treated as absent (lws_hdr_copy fails on it).
	 */
	if (allowed && allowed[0] &&
	    lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) >= (int) sizeof(origin))
	{
		log_info("http: refused a websocket with an overlong origin");
		return refuse_upgrade(wsi, 403, "Forbidden");
	}
	if (allowed && allowed[0] && lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN) > 0)
	{
		bool ok = false;

		for (char **o = allowed; *o && !ok; o++)
			ok = strcmp(*o, origin) == 0;
		if (!ok)
		{
			log_info("http: refused a websocket from origin %s", origin);
			return refuse_upgrade(wsi, 403, "Forbidden");
		}
	}
	if (the_bridge.draining || the_bridge.nclients >= the_bridge.settings.max_connections)
	{
		log_warning("http: refused a websocket: %s",
		            the_bridge.draining ? "shutting down" : "connection limit reached");
		return refuse_upgrade(wsi, 503, "Service Unavailable");
	}
	return check_upgrade_token(wsi);
}

static const char *
mime_type(const char *path)
{
	static const char *const types[][2] = {
	    {".html", "text/html; charset=utf-8"},
	    {".js", "text/javascript"},
	    {".mjs", "text/javascript"},
	    {".css", "text/css"},
	    {".json", "application/json"},
	    {".svg", "image/svg+xml"},
	    {".png", "image/png"},
	    {".ico", "image/x-icon"},
	    {".txt", "text/plain; charset=utf-8"},
	};
	const char *dot = strrchr(path, '.');

	for (size_t i = 0; dot && i < sizeof(types) / sizeof(types[0]); i++)
	{
		if (strcmp(dot, types[i][0]) == 0)
			return types[i][1];
	}
	return "application/octet-stream";
}

/*
 * Whether path, with every symlink resolved, lies inside --static: a link
 * placed in the directory must not publish a file from elsewhere.
 */
static bool
inside_static_dir(const char *path)
{
	char root[PATH_MAX], resolved[PATH_MAX];
	size_t len;

	if (!realpath(the_bridge.settings.static_dir, root) || !realpath(path, resolved))
		return false;
	len = strlen(root);
	if (len > 0 && root[len - 1] == '/')
		len--; /* --static / */
	return strncmp(resolved, root, len) == 0 && resolved[len] == '/';
}

static int
serve_static(struct lws *wsi, client *c, const char *uri)
{
	char path[1024];
	struct stat st;
	int n;

	if (uri[0] != '/' || strstr(uri, "..") || strchr(uri, '\\'))
		return lws_return_http_status(wsi, HTTP_STATUS_FORBIDDEN, NULL) ? -1 : 1;
	n = snprintf(path, sizeof(path), "%s%s%s", the_bridge.settings.static_dir, uri,
	             uri[strlen(uri) - 1] == '/' ? "index.html" : "");
	if (n < 0 || n >= (int) sizeof(path) || stat(path, &st) != 0 || !S_ISREG(st.st_mode) ||
	    !inside_static_dir(path))
	{
		lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
		return lws_http_transaction_completed(wsi) ? -1 : 0;
	}
	n = lws_serve_http_file(wsi, path, mime_type(path), NULL, 0);
	if (n < 0)
		return -1;
	if (n > 0 && lws_http_transaction_completed(wsi))
		return -1;
	return 0;
}

/* See http.h. */
int
http_request(struct lws *wsi, client *c, const char *uri)
{
	strbuf body;

	if (!uri)
		uri = "/";
	if (strcmp(uri, "/healthz") == 0)
	{
		int status;

		strbuf_init(&body, 256);
		status = healthz_render(&body);
		return respond(wsi, c, (unsigned int) status, "application/json", &body);
	}
	if (strcmp(uri, "/metrics") == 0)
	{
		strbuf_init(&body, 4096);
		metrics_render(&body);
		return respond(wsi, c, HTTP_STATUS_OK, "text/plain; version=0.0.4; charset=utf-8", &body);
	}
	if (the_bridge.settings.static_dir && strcmp(uri, "/api/ws") != 0 && strcmp(uri, "/ws") != 0)
		return serve_static(wsi, c, uri);
	strbuf_init(&body, 64);
	strbuf_append(&body, "{\"error\":\"not found\"}\n");
	return respond(wsi, c, HTTP_STATUS_NOT_FOUND, "application/json", &body);
}

/* See http.h. */
int
http_writeable(struct lws *wsi, client *c)
{
	int written;

	if (!c->http_body)
		return 0;
	written =
	    lws_write(wsi, (unsigned char *) c->http_body + LWS_PRE, c->http_len, LWS_WRITE_HTTP_FINAL);
	free(c->http_body);
	c->http_body = NULL;
	if (written < (int) c->http_len)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}
