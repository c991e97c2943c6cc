/*
 * fuzz_jwks.c
 *	  The token key file readers (bridge/auth_keys.c, auth_jwks.c): the
 *	  first input byte picks the file the rest is read as:
 *	    0: a JSON Web Key Set (--jwks-file),
 *	    1: a PEM public key or certificate (--jwt-public-key-file),
 *	    2: an HS256 secret (--jwt-secret-file).
 *	  A key set that loads then checks one token, which it must refuse.
 *	  Properties: no crash, no leak, an error message on failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth_internal.h"
#include "fuzz.h"

/* HS256 over {"alg":"HS256"}.{"sub":"x"} with a key nobody will guess. */
static const char token[] = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0."
                            "dCd3AUpQhYdj4Z3PiC5k0T6kJjFuDD7YmQHmRHVx9Ik";

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	auth_config config = {.leeway_seconds = 30};
	auth_keys *keys;
	char err[512] = "";
	const char *path;

	if (size < 1)
		return 0;
	path = fuzz_file(data + 1, size - 1);
	switch (data[0] % 3)
	{
		case 0:
			config.jwks_file = path;
			break;
		case 1:
			config.public_key_file = path;
			break;
		default:
			config.hs256_secret_file = path;
			break;
	}
	keys = auth_keys_load(&config, err, sizeof(err));
	if (getenv("FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_jwks: %s %s\n", keys ? "loaded" : "refused", err);
	if (keys == NULL)
		FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
	else
	{
		auth_grant grant;
		char verify_err[256];

		FUZZ_CHECK(keys->nkeys >= 1);
		for (int i = 0; i < keys->nkeys; i++)
			FUZZ_CHECK(keys->keys[i].alg == AUTH_ALG_HS256 ? keys->keys[i].secret != NULL
			                                               : keys->keys[i].pkey != NULL);
		/* no key of a fuzzed file can have signed it, short of a guessed secret */
		(void) auth_verify(keys, token, 1800000000LL, &grant, verify_err, sizeof(verify_err));
		auth_grant_clear(&grant);
		auth_keys_free(keys);
	}
	return 0;
}
