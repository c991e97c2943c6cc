/*
 * proxy.h
 *	  The address a client connects from, seen through trusted reverse
 *	  proxies (--trusted-proxy and X-Forwarded-For).
 */
#ifndef BRIDGE_PROXY_H
#define BRIDGE_PROXY_H

#include <stdbool.h>
#include <stddef.h>

struct lws;

/* Room for any address proxy_client_address writes (an IPv6 address and its NUL). */
#define PROXY_ADDRESS_LEN 64

/*
 * Sets the trusted proxies: each entry is a list of addresses or networks
 * (10.0.0.0/8, ::1, fd00::/8) separated by commas or spaces; NULL-terminated,
 * NULL for none. On an invalid entry returns false with err set and keeps
 * the previous list.
 */
bool proxy_configure(char *const *entries, char *err, size_t errlen);

/*
 * The client's address: peer itself unless peer is a trusted proxy; then
 * the right-most address of forwarded_for (an X-Forwarded-For value, NULL
 * if absent) that is not a trusted proxy, or the left-most one if all are.
 * Entries left of one that is not an address are not trusted.
 */
void proxy_client_address(const char *peer, const char *forwarded_for, char *out, size_t outlen);

/* proxy_client_address for a connection being upgraded or just established. */
void proxy_address_of(struct lws *wsi, char *out, size_t outlen);

/* Frees the list (at exit). */
void proxy_free(void);

#endif /* BRIDGE_PROXY_H */
