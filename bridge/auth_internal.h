/*
 * auth_internal.h
 *	  Declarations shared by the modules behind auth.h: key sets, JSON Web
 *	  Key parsing and signature checks.
 */
#ifndef BRIDGE_AUTH_INTERNAL_H
#define BRIDGE_AUTH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "auth.h"

/* The JWS algorithm a key may verify: each key type pins exactly one. */
typedef enum auth_key_alg
{
	AUTH_ALG_HS256,
	AUTH_ALG_RS256,
	AUTH_ALG_ES256
} auth_key_alg;

typedef struct auth_key
{
	auth_key_alg alg;
	char *kid;             /* from a JWKS, else NULL */
	unsigned char *secret; /* HS256 */
	size_t secret_len;
	EVP_PKEY *pkey; /* RS256, ES256 */
} auth_key;

struct auth_keys
{
	auth_key *keys;
	int nkeys;
	int njwks; /* how many of keys came from a JWKS */
	char *audience;
	char *issuer;
	long leeway_seconds;
	auth_scope_defaults *scope_defaults; /* for tokens without scopes */
};

/* The name of alg as it appears in a JWS header. */
const char *auth_alg_name(auth_key_alg alg);

/* Parses a JWS "alg" value; false for anything this bridge does not accept. */
bool auth_alg_parse(const char *name, auth_key_alg *alg);

/*
 * Adds the keys of the JSON Web Key Set in file to keys; false with a
 * message in err when the file is unreadable or holds no usable key.
 */
bool auth_jwks_load(auth_keys *keys, const char *file, char *err, size_t errlen);

/* Appends a key to keys, taking ownership of its members. */
bool auth_keys_append(auth_keys *keys, const auth_key *key);

/*
 * Whether signature is valid for signing_input under key, using key's
 * algorithm only.
 */
bool auth_signature_verify(const auth_key *key, const char *signing_input, size_t input_len,
                           const unsigned char *signature, size_t signature_len);

/*
 * Decides which algorithm a public key verifies (RSA of 2048 bits or more:
 * RS256, EC P-256: ES256); false with a message naming what otherwise.
 */
bool auth_public_key_alg(EVP_PKEY *pkey, const char *what, auth_key_alg *alg, char *err,
                         size_t errlen);

/* Copies s for a log line: printable ASCII only, at most 64 characters. */
void auth_sanitize(const char *s, char *out, size_t outlen);

#endif /* BRIDGE_AUTH_INTERNAL_H */
