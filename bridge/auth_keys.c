/*
 * auth_keys.c
 *	  Loading the keys that verify tokens: an HS256 secret file, an RS256 or
 *	  ES256 PEM public key, a JSON Web Key Set.
 */
#include "auth_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

/* HS256 secrets shorter than the hash output are guessable (RFC 7518 3.2). */
#define HS256_MIN_SECRET  32
#define KEY_FILE_MAX_SIZE (1024 * 1024)
#define RSA_MIN_BITS      2048

/* The name of alg as it appears in a JWS header. */
const char *
auth_alg_name(auth_key_alg alg)
{
	switch (alg)
	{
		case AUTH_ALG_HS256:
			return "HS256";
		case AUTH_ALG_RS256:
			return "RS256";
		case AUTH_ALG_ES256:
			return "ES256";
	}
	return "?";
}

/* Parses a JWS "alg" value; false for anything this bridge does not accept. */
bool
auth_alg_parse(const char *name, auth_key_alg *alg)
{
	if (strcmp(name, "HS256") == 0)
		*alg = AUTH_ALG_HS256;
	else if (strcmp(name, "RS256") == 0)
		*alg = AUTH_ALG_RS256;
	else if (strcmp(name, "ES256") == 0)
		*alg = AUTH_ALG_ES256;
	else
		return false;
	return true;
}

/* Copies s for a log line: printable ASCII only, at most 64 characters. */
void
auth_sanitize(const char *s, char *out, size_t outlen)
{
	size_t n = 0;

	for (; *s != '\0' && n + 1 < outlen && n < 64; s++)
		out[n++] = (*s >= 0x20 && *s < 0x7f && *s != '"') ? *s : '?';
	if (outlen > 0)
		out[n] = '\0';
}

/* Appends a key to keys, taking ownership of its members. */
bool
auth_keys_append(auth_keys *keys, const auth_key *key)
{
	auth_key *grown = realloc(keys->keys, sizeof(auth_key) * (size_t) (keys->nkeys + 1));

	if (grown == NULL)
		return false;
	keys->keys = grown;
	keys->keys[keys->nkeys++] = *key;
	return true;
}

/*
 * Reads a whole key file into a NUL-terminated buffer; NULL with a message
 * when it is missing, unreadable or unreasonably large.
 */
static char *
read_key_file(const char *what, const char *file, size_t *length, char *err, size_t errlen)
{
	FILE *f = fopen(file, "rb");
	char *buffer;
	size_t n;

	if (f == NULL)
	{
		snprintf(err, errlen, "could not open %s \"%s\": %s", what, file, strerror(errno));
		return NULL;
	}
	buffer = malloc(KEY_FILE_MAX_SIZE + 1);
	if (buffer == NULL)
	{
		fclose(f);
		snprintf(err, errlen, "out of memory reading %s \"%s\"", what, file);
		return NULL;
	}
	n = fread(buffer, 1, KEY_FILE_MAX_SIZE + 1, f);
	if (ferror(f))
	{
		snprintf(err, errlen, "could not read %s \"%s\": %s", what, file, strerror(errno));
		fclose(f);
		free(buffer);
		return NULL;
	}
	fclose(f);
	if (n > KEY_FILE_MAX_SIZE)
	{
		snprintf(err, errlen, "%s \"%s\" is larger than %d bytes", what, file, KEY_FILE_MAX_SIZE);
		free(buffer);
		return NULL;
	}
	buffer[n] = '\0';
	*length = n;
	return buffer;
}

/*
 * Loads the HS256 secret: the whole file, trailing line ends dropped (so
 * that `echo secret > file` works), at least 32 bytes.
 */
static bool
load_secret(auth_keys *keys, const char *file, char *err, size_t errlen)
{
	size_t length;
	char *secret = read_key_file("HS256 secret file", file, &length, err, errlen);
	auth_key key = {.alg = AUTH_ALG_HS256};

	if (secret == NULL)
		return false;
	while (length > 0 && (secret[length - 1] == '\n' || secret[length - 1] == '\r'))
		length--;
	if (length == 0)
	{
		snprintf(err, errlen, "HS256 secret file \"%s\" is empty", file);
		free(secret);
		return false;
	}
	if (length < HS256_MIN_SECRET)
	{
		snprintf(err, errlen,
		         "HS256 secret in \"%s\" is %zu bytes, shorter than the %d bytes required: make "
		         "one with `openssl rand -base64 48 > %s` and give the token issuer the same "
		         "secret",
		         file, length, HS256_MIN_SECRET, file);
		OPENSSL_cleanse(secret, length);
		free(secret);
		return false;
	}
	key.secret = (unsigned char *) secret;
	key.secret_len = length;
	if (!auth_keys_append(keys, &key))
	{
		OPENSSL_cleanse(secret, length);
		free(secret);
		snprintf(err, errlen, "out of memory");
		return false;
	}
	return true;
}

/*
 * Decides which algorithm a public key verifies: RSA (2048 bits or more)
 * RS256, EC on P-256 ES256. False with a message for anything else.
 */
bool
auth_public_key_alg(EVP_PKEY *pkey, const char *what, auth_key_alg *alg, char *err, size_t errlen)
{
	if (EVP_PKEY_is_a(pkey, "RSA"))
	{
		if (EVP_PKEY_get_bits(pkey) < RSA_MIN_BITS)
		{
			snprintf(err, errlen, "%s is an RSA key of %d bits, fewer than the %d required", what,
			         EVP_PKEY_get_bits(pkey), RSA_MIN_BITS);
			return false;
		}
		*alg = AUTH_ALG_RS256;
		return true;
	}
	if (EVP_PKEY_is_a(pkey, "EC"))
	{
		char group[64] = "";

		if (!EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL) ||
		    (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0))
		{
			snprintf(err, errlen,
			         "%s is an EC key on curve \"%s\"; only P-256 (ES256) is supported", what,
			         group);
			return false;
		}
		*alg = AUTH_ALG_ES256;
		return true;
	}
	snprintf(err, errlen, "%s is a %s key; only RSA (RS256) and EC P-256 (ES256) are supported",
	         what, EVP_PKEY_get0_type_name(pkey));
	return false;
}

/*
 * Loads an RS256 or ES256 public key from a PEM file ("PUBLIC KEY" or a
 * certificate). A private key is refused: the bridge never needs one.
 */
static bool
load_public_key(auth_keys *keys, const char *file, char *err, size_t errlen)
{
	size_t length;
	char *pem = read_key_file("public key file", file, &length, err, errlen);
	char what[1100];
	BIO *bio;
	EVP_PKEY *pkey;
	auth_key key = {0};

	if (pem == NULL)
		return false;
	snprintf(what, sizeof(what), "public key file \"%s\"", file);
	bio = BIO_new_mem_buf(pem, (int) length);
	pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
	if (pkey == NULL && bio != NULL)
	{
		X509 *certificate;

		(void) BIO_reset(bio);
		certificate = PEM_read_bio_X509(bio, NULL, NULL, NULL);
		if (certificate != NULL)
		{
			pkey = X509_get_pubkey(certificate);
			X509_free(certificate);
		}
	}
	BIO_free(bio);
	ERR_clear_error();
	if (pkey == NULL)
	{
		if (strstr(pem, "PRIVATE KEY-----") != NULL)
			snprintf(err, errlen,
			         "%s holds a private key; give the public key (openssl pkey -pubout)", what);
		else
			snprintf(err, errlen, "%s holds no PEM public key or certificate", what);
		OPENSSL_cleanse(pem, length);
		free(pem);
		return false;
	}
	free(pem);
	if (!auth_public_key_alg(pkey, what, &key.alg, err, errlen))
	{
		EVP_PKEY_free(pkey);
		return false;
	}
	key.pkey = pkey;
	if (!auth_keys_append(keys, &key))
	{
		EVP_PKEY_free(pkey);
		snprintf(err, errlen, "out of memory");
		return false;
	}
	return true;
}

/* Loads every configured key source; NULL with a message in err on failure. */
auth_keys *
auth_keys_load(const auth_config *config, char *err, size_t errlen)
{
	auth_keys *keys = calloc(1, sizeof(auth_keys));

	if (keys == NULL)
	{
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (config->hs256_secret_file == NULL && config->public_key_file == NULL &&
	    config->jwks_file == NULL)
	{
		snprintf(err, errlen,
		         "no token key configured: give --jwt-secret-file, --jwt-public-key-file or "
		         "--jwks-file (or --insecure-no-auth)");
		free(keys);
		return NULL;
	}
	if (config->leeway_seconds < 0)
	{
		snprintf(err, errlen, "token leeway must not be negative");
		free(keys);
		return NULL;
	}
	keys->leeway_seconds = config->leeway_seconds;
	if ((config->audience && (keys->audience = strdup(config->audience)) == NULL) ||
	    (config->issuer && (keys->issuer = strdup(config->issuer)) == NULL))
	{
		snprintf(err, errlen, "out of memory");
		auth_keys_free(keys);
		return NULL;
	}
	keys->scope_defaults =
	    auth_scope_defaults_parse(config->default_scopes, config->scopes_by_claim, err, errlen);
	if (keys->scope_defaults == NULL)
	{
		auth_keys_free(keys);
		return NULL;
	}
	if ((config->hs256_secret_file && !load_secret(keys, config->hs256_secret_file, err, errlen)) ||
	    (config->public_key_file && !load_public_key(keys, config->public_key_file, err, errlen)) ||
	    (config->jwks_file && !auth_jwks_load(keys, config->jwks_file, err, errlen)))
	{
		auth_keys_free(keys);
		return NULL;
	}
	return keys;
}

/* Frees a key set, wiping secrets. */
void
auth_keys_free(auth_keys *keys)
{
	if (keys == NULL)
		return;
	for (int i = 0; i < keys->nkeys; i++)
	{
		auth_key *key = &keys->keys[i];

		if (key->secret)
		{
			OPENSSL_cleanse(key->secret, key->secret_len);
			free(key->secret);
		}
		EVP_PKEY_free(key->pkey);
		free(key->kid);
	}
	free(keys->keys);
	free(keys->audience);
	free(keys->issuer);
	auth_scope_defaults_free(keys->scope_defaults);
	free(keys);
}
