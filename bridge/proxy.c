/*
 * proxy.c
 *	  The address a client connects from, through trusted reverse proxies.
 *
 * Behind a reverse proxy (WintEHR's nginx, a load balancer) every
 * connection comes from the proxy, so failed authentications would be
 * counted, limited and logged for all of its users as one address. A
 * connection from a --trusted-proxy is taken to be from the address that
 * proxy appended to X-Forwarded-For: the right-most entry that is not a
 * trusted proxy itself (with several proxies in a row, each appends the one
 * before). Entries further left are whatever the client sent and may be
 * forged, so they count only while every entry right of them is trusted.
 * From any other peer the header is ignored: a client cannot choose its own
 * address by sending one.
 */
#include "proxy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "util.h"

typedef struct network
{
	int family; /* AF_INET or AF_INET6 */
	unsigned char bytes[16];
	int bits;
} network;

static network *trusted;
static int ntrusted;

/* An address, IPv4-mapped IPv6 taken as the IPv4 address it maps. */
typedef struct address
{
	int family;
	unsigned char bytes[16];
} address;

static bool
parse_address(const char *text, address *a)
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

	if (inet_pton(AF_INET, text, a->bytes) == 1)
	{
		a->family = AF_INET;
		return true;
	}
	if (inet_pton(AF_INET6, text, a->bytes) != 1)
		return false;
	a->family = AF_INET6;
	if (memcmp(a->bytes, mapped, sizeof(mapped)) == 0)
	{
		memmove(a->bytes, a->bytes + 12, 4);
		a->family = AF_INET;
	}
	return true;
}

/*
 * One X-Forwarded-For entry as an address: "1.2.3.4", "1.2.3.4:5678",
 * "2001:db8::1" or "[2001:db8::1]:5678".
 */
static bool
parse_forwarded_entry(const char *entry, size_t len, address *a)
{
	char text[PROXY_ADDRESS_LEN];
	const char *colon;

	while (len > 0 && isspace((unsigned char) *entry))
		entry++, len--;
	while (len > 0 && isspace((unsigned char) entry[len - 1]))
		len--;
	if (len > 0 && entry[0] == '[')
	{
		const char *close = memchr(entry, ']', len);

		if (!close)
			return false;
		entry++;
		len = (size_t) (close - entry);
	}
	else if ((colon = memchr(entry, ':', len)) &&
	         !memchr(colon + 1, ':', len - (size_t) (colon - entry) - 1))
		len = (size_t) (colon - entry); /* IPv4 with a port: one colon only */
	if (len == 0 || len >= sizeof(text))
		return false;
	memcpy(text, entry, len);
	text[len] = '\0';
	return parse_address(text, a);
}

static bool
network_contains(const network *n, const address *a)
{
	int full = n->bits / 8, rest = n->bits % 8;

	if (n->family != a->family || memcmp(n->bytes, a->bytes, (size_t) full) != 0)
		return false;
	return rest == 0 || ((n->bytes[full] ^ a->bytes[full]) & (0xff << (8 - rest))) == 0;
}

static bool
is_trusted(const address *a)
{
	for (int i = 0; i < ntrusted; i++)
	{
		if (network_contains(&trusted[i], a))
			return true;
	}
	return false;
}

/* "10.0.0.0/8", "::1" ... as a network; false if it is not one. */
static bool
parse_network(const char *text, network *n)
{
	char buf[PROXY_ADDRESS_LEN];
	const char *slash = strchr(text, '/');
	size_t len = slash ? (size_t) (slash - text) : strlen(text);
	address a;
	int max;

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, text, len);
	buf[len] = '\0';
	if (!parse_address(buf, &a))
		return false;
	max = a.family == AF_INET ? 32 : 128;
	n->family = a.family;
	memcpy(n->bytes, a.bytes, sizeof(n->bytes));
	n->bits = max;
	if (slash)
	{
		char *end;
		long bits = strtol(slash + 1, &end, 10);

		if (slash[1] == '\0' || *end != '\0' || bits < 0 || bits > max)
			return false;
		/* an IPv4-mapped network's prefix counts the mapping's 96 bits */
		if (a.family == AF_INET && strchr(buf, ':'))
			bits = bits >= 96 ? bits - 96 : -1;
		if (bits < 0)
			return false;
		n->bits = (int) bits;
	}
	for (int bit = n->bits; bit < max; bit++)
		n->bytes[bit / 8] &= (unsigned char) ~(0x80 >> (bit % 8));
	return true;
}

/* See proxy.h. */
bool
proxy_configure(char *const *entries, char *err, size_t errlen)
{
	network *list = NULL;
	int n = 0;

	for (int e = 0; entries && entries[e]; e++)
	{
		char *copy = xstrdup(entries[e]);
		char *save = NULL;

		for (char *tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save))
		{
			list = xrealloc(list, (size_t) (n + 1) * sizeof(network));
			if (!parse_network(tok, &list[n]))
			{
				snprintf(err, errlen,
				         "trusted-proxy: \"%s\" is not an address or network (e.g. 127.0.0.1, "
				         "10.0.0.0/8, ::1)",
				         tok);
				free(copy);
				free(list);
				return false;
			}
			n++;
		}
		free(copy);
	}
	free(trusted);
	trusted = list;
	ntrusted = n;
	return true;
}

static void
format_address(const address *a, char *out, size_t outlen)
{
	char text[INET6_ADDRSTRLEN];

	if (!inet_ntop(a->family, a->bytes, text, sizeof(text)))
		text[0] = '\0';
	snprintf(out, outlen, "%s", text);
}

/* See proxy.h. */
void
proxy_client_address(const char *peer, const char *forwarded_for, char *out, size_t outlen)
{
	address a, client;
	const char *end;

	snprintf(out, outlen, "%s", peer);
	if (ntrusted == 0 || !forwarded_for || !parse_address(peer, &a) || !is_trusted(&a))
		return;
	/* right to left: each trusted hop vouches for the entry before it */
	end = forwarded_for + strlen(forwarded_for);
	while (end > forwarded_for)
	{
		const char *start = end;

		while (start > forwarded_for && start[-1] != ',')
			start--;
		if (!parse_forwarded_entry(start, (size_t) (end - start), &client))
			return; /* not an address: nothing left of it is vouched for */
		format_address(&client, out, outlen);
		if (!is_trusted(&client))
			return;
		end = start > forwarded_for ? start - 1 : start;
	}
}

/* See proxy.h. */
void
proxy_address_of(struct lws *wsi, char *out, size_t outlen)
{
	char peer[PROXY_ADDRESS_LEN] = "";
	char *forwarded = NULL;
	int len;

	lws_get_peer_simple(wsi, peer, sizeof(peer));
	if (ntrusted > 0 && (len = lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR)) > 0)
	{
		forwarded = xmalloc((size_t) len + 1);
		if (lws_hdr_copy(wsi, forwarded, len + 1, WSI_TOKEN_X_FORWARDED_FOR) < 0)
		{
			free(forwarded);
			forwarded = NULL;
		}
	}
	proxy_client_address(peer, forwarded, out, outlen);
	free(forwarded);
}

/* See proxy.h. */
void
proxy_free(void)
{
	free(trusted);
	trusted = NULL;
	ntrusted = 0;
}
