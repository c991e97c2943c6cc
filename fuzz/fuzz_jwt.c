/*
 * fuzz_jwt.c
 *	  JSON Web Token verification (bridge/auth.c, auth_scopes.c,
 *	  auth_signature.c, base64url.c) against a key set of an HS256 secret,
 *	  an RSA and an EC P-256 key with kids. The first input byte picks the
 *	  mode:
 *	    0: the rest is the token text as a client sends it;
 *	    1: the rest is header JSON, a NUL byte, payload JSON (no NUL: the
 *	       payload, under a default header), signed here with the HS256
 *	       secret, so that the claims and scopes parsers behind the
 *	       signature check are reached;
 *	    2: as 1, signed with the EC key (ES256, JOSE r||s).
 *	  Properties: no crash, no leak; a verified token has a subject and a
 *	  grant that auth_grant_allows can be asked anything.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth_internal.h"
#include "fuzz.h"

#define NOW 1800000000LL

static const char secret[] = "fuzz-secret-0123456789abcdef-0123456789abcdef";
static auth_keys *keys;
static EVP_PKEY *ec_key;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	auth_key key = {0};
	EVP_PKEY *rsa_key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 2048);

	ec_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	keys = calloc(1, sizeof(auth_keys));
	if (rsa_key == NULL || ec_key == NULL || keys == NULL)
		abort();
	keys->audience = strdup("fhir-notify-fuzz");
	keys->issuer = strdup("https://issuer.fuzz");
	keys->leeway_seconds = 30;

	key.alg = AUTH_ALG_HS256;
	key.secret = (unsigned char *) strdup(secret);
	key.secret_len = strlen(secret);
	auth_keys_append(keys, &key);

	memset(&key, 0, sizeof(key));
	key.alg = AUTH_ALG_RS256;
	key.kid = strdup("rsa-1");
	key.pkey = rsa_key;
	auth_keys_append(keys, &key);

	memset(&key, 0, sizeof(key));
	key.alg = AUTH_ALG_ES256;
	key.kid = strdup("ec-1");
	key.pkey = ec_key;
	EVP_PKEY_up_ref(ec_key);
	auth_keys_append(keys, &key);
	keys->njwks = 2;
	return 0;
}

/* Appends the base64url (unpadded) encoding of in to out. */
static size_t
encode(const unsigned char *in, size_t len, char *out)
{
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = 0;

	for (size_t i = 0; i < len; i += 3)
	{
		unsigned v = (unsigned) in[i] << 16;

		if (i + 1 < len)
			v |= (unsigned) in[i + 1] << 8;
		if (i + 2 < len)
			v |= in[i + 2];
		out[n++] = alphabet[(v >> 18) & 63];
		out[n++] = alphabet[(v >> 12) & 63];
		if (i + 1 < len)
			out[n++] = alphabet[(v >> 6) & 63];
		if (i + 2 < len)
			out[n++] = alphabet[v & 63];
	}
	out[n] = '\0';
	return n;
}

/* The JOSE ES256 signature (r||s) of input; false if OpenSSL fails. */
static bool
sign_es256(const char *input, size_t len, unsigned char out[64])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char der[128];
	size_t der_len = sizeof(der);
	const unsigned char *p = der;
	ECDSA_SIG *sig = NULL;
	bool ok = md != NULL && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, ec_key) == 1 &&
	          EVP_DigestSign(md, der, &der_len, (const unsigned char *) input, len) == 1 &&
	          (sig = d2i_ECDSA_SIG(NULL, &p, (long) der_len)) != NULL &&
	          BN_bn2binpad(ECDSA_SIG_get0_r(sig), out, 32) == 32 &&
	          BN_bn2binpad(ECDSA_SIG_get0_s(sig), out + 32, 32) == 32;

	ECDSA_SIG_free(sig);
	EVP_MD_CTX_free(md);
	return ok;
}

/* A token of header and payload, signed with the HS256 secret or the EC key. */
static char *
signed_token(const uint8_t *data, size_t size, bool es256)
{
	const char *default_header =
	    es256 ? "{\"alg\":\"ES256\",\"kid\":\"ec-1\"}" : "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	const uint8_t *nul = memchr(data, '\0', size);
	const uint8_t *header = nul ? data : (const uint8_t *) default_header;
	size_t header_len = nul ? (size_t) (nul - data) : strlen(default_header);
	const uint8_t *payload = nul ? nul + 1 : data;
	size_t payload_len = nul ? size - header_len - 1 : size;
	char *token = malloc(2 * (header_len + payload_len) + 200);
	size_t n;
	unsigned char mac[64];
	unsigned int mac_len = 32;

	if (token == NULL)
		abort();
	n = encode(header, header_len, token);
	token[n++] = '.';
	n += encode(payload, payload_len, token + n);
	if (es256)
	{
		if (!sign_es256(token, n, mac))
			abort();
		mac_len = 64;
	}
	else if (HMAC(EVP_sha256(), secret, (int) strlen(secret), (const unsigned char *) token, n, mac,
	              &mac_len) == NULL)
		abort();
	token[n++] = '.';
	encode(mac, mac_len, token + n);
	return token;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *token;
	auth_grant grant;
	char err[256];
	auth_result result;

	if (size < 1)
		return 0;
	if (data[0] % 3 == 0)
		token = fuzz_strndup(data + 1, size - 1);
	else
		token = signed_token(data + 1, size - 1, data[0] % 3 == 2);
	result = auth_verify(keys, token, NOW, &grant, err, sizeof(err));
	FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL);
	if (getenv("FUZZ_VERBOSE"))
		fprintf(stderr, "fuzz_jwt: %s %s\n", result == AUTH_OK ? "ok" : "refused", err);
	if (result == AUTH_OK)
	{
		static const char *const patients[] = {"123", "p-1", NULL};
		static const char *const types[] = {"Condition", "Observation", NULL};

		FUZZ_CHECK(grant.subject != NULL && grant.claims != NULL);
		for (int p = 0; p < 3; p++)
			for (int t = 0; t < 3; t++)
				(void) auth_grant_allows(&grant, patients[p], types[t]);
		if (grant.patient)
			(void) auth_grant_allows(&grant, grant.patient, NULL);
		for (int i = 0; i < grant.ntypes; i++)
			FUZZ_CHECK(grant.types[i] != NULL);
	}
	else
		FUZZ_CHECK(grant.subject == NULL && grant.claims == NULL && err[0] != '\0');
	auth_grant_clear(&grant);
	free(token);
	return 0;
}
