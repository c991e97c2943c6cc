/*
 * base64url.h
 *	  Strict base64url decoding (RFC 4648 section 5, no padding), as JWS
 *	  compact serialisation uses it.
 */
#ifndef BRIDGE_BASE64URL_H
#define BRIDGE_BASE64URL_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Decodes inlen characters of in into a new buffer (NUL-terminated for
 * convenience, the terminator not counted in *outlen). False on any character
 * outside the base64url alphabet, on padding, on an impossible length or on
 * non-zero unused bits, so that every byte string has exactly one encoding.
 */
bool base64url_decode(const char *in, size_t inlen, unsigned char **out, size_t *outlen);

#endif /* BRIDGE_BASE64URL_H */
