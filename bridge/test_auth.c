/*
 * test_auth.c
 *	  Unit tests of auth.h with real keys and real signed tokens.
 *
 * Every fixture is made at run time: an HS256 secret, RSA 2048 and EC P-256
 * key pairs from OpenSSL, PEM and JWKS files in a mkdtemp directory. Tokens
 * are signed here with EVP_DigestSign and HMAC, independently of the
 * verification code under test. Prints one line per failed check and ends
 * with "auth: N passed, M failed"; exits non-zero on any failure.
 *
 * With arguments it verifies one token instead, so that tests/test_tokens.py
 * can check tokens minted by PyJWT against this C code:
 *   test_auth verify [--secret F] [--pem F] [--jwks F] [--aud A] [--iss I]
 *                    [--allows PATIENT TYPE]... TOKEN
 * prints "ok SUBJECT", "invalid: REASON" or "expired: REASON" (exit 0, 1, 2)
 * and "allows PATIENT TYPE yes|no" per --allows ("-" for NULL).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "auth.h"

#define NOW       1700000000LL
#define SECRET    "0123456789abcdef0123456789abcdef-test-secret"
#define AUDIENCE  "fhir-notify"
#define ISSUER    "https://issuer.example"
#define MAX_FILES 64

static int passed;
static int failed;
static char tmpdir[64];
static char *files[MAX_FILES];
static int nfiles;

/* Records one check; prints it when it fails. */
static void
check(bool ok, const char *format, ...)
{
	va_list args;

	if (ok)
	{
		passed++;
		return;
	}
	failed++;
	printf("FAILED: ");
	va_start(args, format);
	vprintf(format, args);
	va_end(args);
	printf("\n");
}

/* ---- fixtures: files, keys, encoding, signing ---- */

/* Writes a file into the temporary directory and returns its path. */
static const char *
write_file(const char *name, const void *data, size_t length)
{
	char *path = malloc(strlen(tmpdir) + strlen(name) + 2);
	FILE *f;

	sprintf(path, "%s/%s", tmpdir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(data, 1, length, f) != length || fclose(f) != 0)
	{
		fprintf(stderr, "test_auth: cannot write %s\n", path);
		exit(2);
	}
	if (nfiles == MAX_FILES)
	{
		fprintf(stderr, "test_auth: more than %d fixture files\n", MAX_FILES);
		exit(2);
	}
	files[nfiles++] = path;
	return path;
}

/* Writes a NUL-terminated string to a file. */
static const char *
write_text(const char *name, const char *text)
{
	return write_file(name, text, strlen(text));
}

/* Base64url without padding (the test's own, not the module's). */
static char *
b64url(const unsigned char *data, size_t length)
{
	static const char alphabet[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char *out = malloc(length * 4 / 3 + 4);
	size_t n = 0;
	size_t i;

	for (i = 0; i + 2 < length; i += 3)
	{
		unsigned v = (unsigned) data[i] << 16 | (unsigned) data[i + 1] << 8 | data[i + 2];

		out[n++] = alphabet[v >> 18 & 63];
		out[n++] = alphabet[v >> 12 & 63];
		out[n++] = alphabet[v >> 6 & 63];
		out[n++] = alphabet[v & 63];
	}
	if (length - i == 1)
	{
		out[n++] = alphabet[data[i] >> 2];
		out[n++] = alphabet[(data[i] & 3) << 4];
	}
	else if (length - i == 2)
	{
		unsigned v = (unsigned) data[i] << 8 | data[i + 1];

		out[n++] = alphabet[v >> 10 & 63];
		out[n++] = alphabet[v >> 4 & 63];
		out[n++] = alphabet[(v & 15) << 2];
	}
	out[n] = '\0';
	return out;
}

/* Base64url of a string. */
static char *
b64url_text(const char *text)
{
	return b64url((const unsigned char *) text, strlen(text));
}

/* How a test token is signed. */
typedef enum
{
	SIGN_HS256,
	SIGN_RS256,
	SIGN_ES256,
	SIGN_NONE
} sign_kind;

/* Signs input: HMAC with secret, or EVP_DigestSign with pkey (ES256 as r||s). */
static unsigned char *
sign(sign_kind kind, const void *secret, size_t secret_len, EVP_PKEY *pkey, const char *input,
     size_t *siglen)
{
	unsigned char *sig;

	if (kind == SIGN_NONE)
	{
		*siglen = 0;
		return calloc(1, 1);
	}
	if (kind == SIGN_HS256)
	{
		unsigned int len = 0;

		sig = malloc(EVP_MAX_MD_SIZE);
		HMAC(EVP_sha256(), secret, (int) secret_len, (const unsigned char *) input, strlen(input),
		     sig, &len);
		*siglen = len;
		return sig;
	}
	{
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		size_t len = 0;

		EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey);
		EVP_DigestSign(ctx, NULL, &len, (const unsigned char *) input, strlen(input));
		sig = malloc(len);
		if (EVP_DigestSign(ctx, sig, &len, (const unsigned char *) input, strlen(input)) != 1)
		{
			fprintf(stderr, "test_auth: signing failed\n");
			exit(2);
		}
		EVP_MD_CTX_free(ctx);
		*siglen = len;
	}
	if (kind == SIGN_ES256)
	{
		const unsigned char *p = sig;
		ECDSA_SIG *der = d2i_ECDSA_SIG(NULL, &p, (long) *siglen);
		unsigned char *raw = malloc(64);

		BN_bn2binpad(ECDSA_SIG_get0_r(der), raw, 32);
		BN_bn2binpad(ECDSA_SIG_get0_s(der), raw + 32, 32);
		ECDSA_SIG_free(der);
		free(sig);
		*siglen = 64;
		return raw;
	}
	return sig;
}

/*
 * A compact JWS of header and payload JSON texts. For SIGN_HS256 secret is
 * the HMAC key, otherwise pkey signs.
 */
static char *
make_token_raw(const char *header, const char *payload, sign_kind kind, const void *secret,
               size_t secret_len, EVP_PKEY *pkey)
{
	char *h = b64url_text(header);
	char *p = b64url_text(payload);
	char *input = malloc(strlen(h) + strlen(p) + 2);
	unsigned char *sig;
	size_t siglen;
	char *s;
	char *token;

	sprintf(input, "%s.%s", h, p);
	sig = sign(kind, secret, secret_len, pkey, input, &siglen);
	s = b64url(sig, siglen);
	token = malloc(strlen(input) + strlen(s) + 2);
	sprintf(token, "%s.%s", input, s);
	free(h);
	free(p);
	free(input);
	free(sig);
	free(s);
	return token;
}

/* The header JSON for alg and an optional kid. */
static char *
header_json(const char *alg, const char *kid)
{
	json_t *header = json_pack("{s:s, s:s}", "alg", alg, "typ", "JWT");
	char *text;

	if (kid)
		json_object_set_new(header, "kid", json_string(kid));
	text = json_dumps(header, JSON_COMPACT);
	json_decref(header);
	return text;
}

/* A token with claims (a JSON text), signed the way kind says. */
static char *
make_token(const char *alg, const char *kid, const char *claims, sign_kind kind, EVP_PKEY *pkey)
{
	char *header = header_json(alg, kid);
	char *token = make_token_raw(header, claims, kind, SECRET, strlen(SECRET), pkey);

	free(header);
	return token;
}

/* Default valid claims: an hour left, audience, issuer, user scopes. */
static char *
claims_text(const char *extra_json)
{
	char *text = malloc(1024);

	snprintf(text, 1024,
	         "{\"sub\":\"dr-who\",\"exp\":%lld,\"iat\":%lld,\"aud\":\"%s\",\"iss\":\"%s\","
	         "\"scope\":\"openid user/*.read\"%s%s}",
	         NOW + 3600, NOW - 10, AUDIENCE, ISSUER, extra_json ? "," : "",
	         extra_json ? extra_json : "");
	return text;
}

/* The public key of pkey as a PEM file. */
static const char *
write_public_pem(const char *name, EVP_PKEY *pkey)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data;
	long length;
	const char *path;

	PEM_write_bio_PUBKEY(bio, pkey);
	length = BIO_get_mem_data(bio, &data);
	path = write_file(name, data, (size_t) length);
	BIO_free(bio);
	return path;
}

/* The private key of pkey as a PEM file (to check that it is refused). */
static const char *
write_private_pem(const char *name, EVP_PKEY *pkey)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data;
	long length;
	const char *path;

	PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL);
	length = BIO_get_mem_data(bio, &data);
	path = write_file(name, data, (size_t) length);
	BIO_free(bio);
	return path;
}

/* Base64url of a big-number parameter of pkey, padded to pad bytes (0: minimal). */
static char *
bn_param_b64(EVP_PKEY *pkey, const char *param, int pad)
{
	BIGNUM *bn = NULL;
	unsigned char buffer[1024];
	int length;

	EVP_PKEY_get_bn_param(pkey, param, &bn);
	length = pad > 0 ? BN_bn2binpad(bn, buffer, pad) : BN_bn2bin(bn, buffer);
	BN_free(bn);
	return b64url(buffer, (size_t) length);
}

/* A JWK (public parts only) of pkey with kid; the caller owns it. */
static json_t *
jwk_of(EVP_PKEY *pkey, const char *kid)
{
	json_t *jwk;

	if (EVP_PKEY_is_a(pkey, "RSA"))
	{
		char *n = bn_param_b64(pkey, OSSL_PKEY_PARAM_RSA_N, 0);
		char *e = bn_param_b64(pkey, OSSL_PKEY_PARAM_RSA_E, 0);

		jwk = json_pack("{s:s, s:s, s:s, s:s}", "kty", "RSA", "use", "sig", "n", n, "e", e);
		free(n);
		free(e);
	}
	else
	{
		char *x = bn_param_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_X, 32);
		char *y = bn_param_b64(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, 32);

		jwk = json_pack("{s:s, s:s, s:s, s:s}", "kty", "EC", "crv", "P-256", "x", x, "y", y);
		free(x);
		free(y);
	}
	if (kid)
		json_object_set_new(jwk, "kid", json_string(kid));
	return jwk;
}

/* Writes a JWKS of the given JWKs (stolen) to a file. */
static const char *
write_jwks(const char *name, json_t *jwk1, json_t *jwk2)
{
	json_t *keys = json_array();
	json_t *root;
	char *text;
	const char *path;

	json_array_append_new(keys, jwk1);
	if (jwk2)
		json_array_append_new(keys, jwk2);
	root = json_pack("{s:o}", "keys", keys);
	text = json_dumps(root, 0);
	path = write_text(name, text);
	free(text);
	json_decref(root);
	return path;
}

/* ---- verification helpers ---- */

/* Loads keys from config, failing the run when that does not work. */
static auth_keys *
load_ok(const auth_config *config, const char *what)
{
	char err[512];
	auth_keys *keys = auth_keys_load(config, err, sizeof(err));

	check(keys != NULL, "%s: keys load (%s)", what, keys ? "" : err);
	return keys;
}

/* Whether loading config fails with an error containing expected. */
static void
load_fails(const auth_config *config, const char *expected, const char *what)
{
	char err[512] = "";
	auth_keys *keys = auth_keys_load(config, err, sizeof(err));

	check(keys == NULL && strstr(err, expected) != NULL, "%s: load fails with \"%s\" (got \"%s\")",
	      what, expected, keys ? "success" : err);
	check(strstr(err, SECRET) == NULL && strstr(err, "short-secret") == NULL &&
	          strstr(err, "BEGIN") == NULL,
	      "%s: error shows no key material", what);
	auth_keys_free(keys);
}

/* Verifies token and checks the result (and, for failures, that err has reason). */
static void
expect(const auth_keys *keys, const char *token, auth_result expected, const char *reason,
       const char *what)
{
	char err[512] = "";
	auth_grant grant;
	auth_result result = auth_verify(keys, token, NOW, &grant, err, sizeof(err));

	check(result == expected, "%s: result %d, expected %d (%s)", what, result, expected, err);
	if (expected != AUTH_OK)
	{
		check(reason == NULL || strstr(err, reason) != NULL,
		      "%s: reason \"%s\" expected, got \"%s\"", what, reason, err);
		check(grant.subject == NULL && grant.claims == NULL && grant.nrules == 0,
		      "%s: failed verification leaves an empty grant", what);
		check(strstr(err, "dr-who") == NULL && strstr(err, SECRET) == NULL,
		      "%s: error shows no token contents or secret", what);
	}
	else
		check(grant.subject != NULL && grant.claims != NULL, "%s: grant filled", what);
	auth_grant_clear(&grant);
}

/* Verifies a token made of claims signed by kind, expecting the given result. */
static void
expect_claims(const auth_keys *keys, const char *claims, auth_result expected, const char *reason,
              const char *what)
{
	char *token = make_token("HS256", NULL, claims, SIGN_HS256, NULL);

	expect(keys, token, expected, reason, what);
	free(token);
}

/* ---- the tests ---- */

/* HS256 secret files: length, newline, missing. */
static void
test_secret_files(void)
{
	auth_config config = {0};
	auth_keys *keys;
	char *token;

	config.hs256_secret_file = write_text("short", "short-secret\n");
	load_fails(&config, "shorter than the 32 bytes", "short secret");
	config.hs256_secret_file = write_text("empty", "\n");
	load_fails(&config, "is empty", "empty secret");
	config.hs256_secret_file = "/nonexistent/secret";
	load_fails(&config, "could not open", "missing secret file");
	config.hs256_secret_file = NULL;
	load_fails(&config, "no token key configured", "no keys at all");

	/* The trailing newline is not part of the secret. */
	config.hs256_secret_file = write_text("secret-nl", SECRET "\n");
	keys = load_ok(&config, "secret with newline");
	token = make_token("HS256", NULL, "{\"sub\":\"a\"}", SIGN_HS256, NULL);
	expect(keys, token, AUTH_OK, NULL, "secret with newline stripped");
	free(token);
	auth_keys_free(keys);
}

/* HS256 tokens: signature, alg, claims, malformed input. */
static void
test_hs256(void)
{
	auth_config config = {.audience = AUDIENCE, .issuer = ISSUER, .leeway_seconds = 30};
	auth_keys *keys;
	char *claims;
	char *token;
	char text[1024];
	char err[256];
	auth_grant grant;

	config.hs256_secret_file = write_text("secret", SECRET);
	keys = load_ok(&config, "hs256");

	claims = claims_text("\"patient\":\"123\"");
	token = make_token("HS256", NULL, claims, SIGN_HS256, NULL);
	check(auth_verify(keys, token, NOW, &grant, err, sizeof(err)) == AUTH_OK,
	      "hs256 valid token: %s", err);
	check(grant.subject && strcmp(grant.subject, "dr-who") == 0, "hs256 subject from sub");
	check(grant.expires_at == NOW + 3600, "hs256 expires_at from exp");
	check(json_is_object(grant.claims) &&
	          strcmp(json_string_value(json_object_get(grant.claims, "iss")), ISSUER) == 0,
	      "hs256 claims kept");
	check(auth_grant_allows(&grant, "999", "Condition"), "hs256 user/*.read allows anybody");
	auth_grant_clear(&grant);
	auth_grant_clear(&grant); /* twice is harmless */
	free(token);

	/* Signed with another secret. */
	{
		char *header = header_json("HS256", NULL);
		const char *other = "another-secret-of-more-than-32-bytes!!";

		token = make_token_raw(header, claims, SIGN_HS256, other, strlen(other), NULL);
		expect(keys, token, AUTH_INVALID, "signature does not verify", "hs256 wrong secret");
		free(token);
		free(header);
	}
	/* Payload changed after signing. */
	{
		char *good = make_token("HS256", NULL, claims, SIGN_HS256, NULL);
		char *forged_claims = claims_text("\"patient\":\"124\"");
		char *forged = make_token("HS256", NULL, forged_claims, SIGN_HS256, NULL);
		char *spliced = malloc(strlen(good) + strlen(forged) + 1);

		/* forged header and payload, good signature */
		sprintf(spliced, "%.*s.%s", (int) (strrchr(forged, '.') - forged), forged,
		        strrchr(good, '.') + 1);
		expect(keys, spliced, AUTH_INVALID, "signature does not verify", "hs256 tampered payload");
		free(good);
		free(forged_claims);
		free(forged);
		free(spliced);
	}

	/* alg none and friends. */
	token = make_token("none", NULL, claims, SIGN_NONE, NULL);
	expect(keys, token, AUTH_INVALID, "alg none", "alg none");
	free(token);
	token = make_token("None", NULL, claims, SIGN_HS256, NULL);
	expect(keys, token, AUTH_INVALID, "alg none", "alg None with a signature");
	free(token);
	token = make_token("HS512", NULL, claims, SIGN_HS256, NULL);
	expect(keys, token, AUTH_INVALID, "not accepted", "alg HS512");
	free(token);
	token = make_token_raw("{\"typ\":\"JWT\"}", claims, SIGN_HS256, SECRET, strlen(SECRET), NULL);
	expect(keys, token, AUTH_INVALID, "no alg", "header without alg");
	free(token);
	token = make_token_raw("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", claims, SIGN_HS256, SECRET,
	                       strlen(SECRET), NULL);
	expect(keys, token, AUTH_INVALID, "crit", "crit header");
	free(token);
	token = make_token("RS256", NULL, claims, SIGN_HS256, NULL);
	expect(keys, token, AUTH_INVALID, "no configured key verifies RS256",
	       "RS256 header with only an HS secret");
	free(token);
	free(claims);

	/* Time claims. */
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":%lld}",
	         AUDIENCE, ISSUER, NOW - 31);
	expect_claims(keys, text, AUTH_EXPIRED, "expired", "expired beyond leeway");
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":%lld}",
	         AUDIENCE, ISSUER, NOW - 20);
	expect_claims(keys, text, AUTH_OK, NULL, "expired within leeway");
	snprintf(text, sizeof(text),
	         "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":%lld,\"nbf\":%lld}",
	         AUDIENCE, ISSUER, NOW + 3600, NOW + 60);
	expect_claims(keys, text, AUTH_INVALID, "not valid yet", "nbf in the future");
	snprintf(text, sizeof(text),
	         "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":%lld,\"nbf\":%lld}",
	         AUDIENCE, ISSUER, NOW + 3600, NOW + 20);
	expect_claims(keys, text, AUTH_OK, NULL, "nbf within leeway");
	snprintf(text, sizeof(text),
	         "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":%lld,\"iat\":%lld}",
	         AUDIENCE, ISSUER, NOW + 3600, NOW + 600);
	expect_claims(keys, text, AUTH_INVALID, "issued in the future", "iat in the future");
	snprintf(text, sizeof(text),
	         "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":\"%lld\"}", AUDIENCE,
	         ISSUER, NOW + 3600);
	expect_claims(keys, text, AUTH_INVALID, "not a number", "exp as a string");
	snprintf(text, sizeof(text),
	         "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":%lld.5}", AUDIENCE, ISSUER,
	         NOW + 100);
	expect_claims(keys, text, AUTH_OK, NULL, "exp as a real number");

	/* Absurd dates are clamped, not overflowed. */
	snprintf(
	    text, sizeof(text),
	    "{\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":9223372036854775807,\"nbf\":-9223372036854775807}",
	    AUDIENCE, ISSUER);
	expect_claims(keys, text, AUTH_OK, NULL, "exp at the integer limit");
	snprintf(text, sizeof(text), "{\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":1e300}", AUDIENCE, ISSUER);
	expect_claims(keys, text, AUTH_OK, NULL, "exp 1e300");
	snprintf(text, sizeof(text), "{\"aud\":\"%s\",\"iss\":\"%s\",\"exp\":-1e300}", AUDIENCE,
	         ISSUER);
	expect_claims(keys, text, AUTH_EXPIRED, "expired", "exp -1e300");
	snprintf(text, sizeof(text), "{\"aud\":\"%s\",\"iss\":\"%s\",\"nbf\":1e300}", AUDIENCE, ISSUER);
	expect_claims(keys, text, AUTH_INVALID, "not valid yet", "nbf 1e300");

	/* Audience and issuer. */
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"aud\":\"other\",\"iss\":\"%s\"}", ISSUER);
	expect_claims(keys, text, AUTH_INVALID, "aud does not include", "wrong aud");
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"iss\":\"%s\"}", ISSUER);
	expect_claims(keys, text, AUTH_INVALID, "no aud", "missing aud");
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"aud\":[\"x\",\"%s\"],\"iss\":\"%s\"}",
	         AUDIENCE, ISSUER);
	expect_claims(keys, text, AUTH_OK, NULL, "aud array containing the audience");
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"aud\":[\"x\",\"y\"],\"iss\":\"%s\"}",
	         ISSUER);
	expect_claims(keys, text, AUTH_INVALID, "aud does not include", "aud array without it");
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"aud\":\"%s\",\"iss\":\"https://evil\"}",
	         AUDIENCE);
	expect_claims(keys, text, AUTH_INVALID, "iss is not", "wrong iss");
	snprintf(text, sizeof(text), "{\"sub\":\"dr-who\",\"aud\":\"%s\"}", AUDIENCE);
	expect_claims(keys, text, AUTH_INVALID, "no iss", "missing iss");

	/* Subject fallbacks. */
	snprintf(text, sizeof(text), "{\"preferred_username\":\"nurse\",\"aud\":\"%s\",\"iss\":\"%s\"}",
	         AUDIENCE, ISSUER);
	token = make_token("HS256", NULL, text, SIGN_HS256, NULL);
	check(auth_verify(keys, token, NOW, &grant, err, sizeof(err)) == AUTH_OK &&
	          strcmp(grant.subject, "nurse") == 0,
	      "subject from preferred_username");
	auth_grant_clear(&grant);
	free(token);
	snprintf(text, sizeof(text), "{\"aud\":\"%s\",\"iss\":\"%s\"}", AUDIENCE, ISSUER);
	token = make_token("HS256", NULL, text, SIGN_HS256, NULL);
	check(auth_verify(keys, token, NOW, &grant, err, sizeof(err)) == AUTH_OK &&
	          strcmp(grant.subject, "unknown") == 0 && grant.expires_at == 0 && grant.nrules == 0,
	      "subject unknown, no exp, no scopes");
	auth_grant_clear(&grant);
	free(token);

	/* Malformed tokens. */
	expect(keys, "", AUTH_INVALID, "no token", "empty token");
	expect(keys, "abc", AUTH_INVALID, "three parts", "one part");
	expect(keys, "abc.def", AUTH_INVALID, "three parts", "two parts");
	expect(keys, "a.b.c.d", AUTH_INVALID, "three parts", "four parts");
	expect(keys, ".e30.abc", AUTH_INVALID, "empty header", "empty header");
	expect(keys, "!!!.e30.abc", AUTH_INVALID, "header is not", "header bad base64");
	expect(keys, "eyJhbGciOiJIUzI1NiJ9=.e30.abc", AUTH_INVALID, "header is not",
	       "header with padding");
	{
		char *h = b64url_text("not json");
		char *a = b64url_text("[\"HS256\"]");

		snprintf(text, sizeof(text), "%s.e30.abc", h);
		expect(keys, text, AUTH_INVALID, "header is not", "header not JSON");
		snprintf(text, sizeof(text), "%s.e30.abc", a);
		expect(keys, text, AUTH_INVALID, "header is not", "header a JSON array");
		free(h);
		free(a);
	}
	/* A payload that is not JSON, correctly signed. */
	token = make_token("HS256", NULL, "not json", SIGN_HS256, NULL);
	expect(keys, token, AUTH_INVALID, "payload is not", "payload not JSON");
	free(token);
	/* A signature that is not base64url. */
	token = make_token("HS256", NULL, "{}", SIGN_HS256, NULL);
	token[strlen(token) - 1] = '*';
	expect(keys, token, AUTH_INVALID, "signature is not valid base64url", "signature bad base64");
	free(token);
	/*
	 * A signature spelled with non-zero unused bits decodes to the same bytes
	 * but is not the canonical encoding: strict base64url refuses it.
	 */
	claims = claims_text(NULL);
	token = make_token("HS256", NULL, claims, SIGN_HS256, NULL);
	free(claims);
	expect(keys, token, AUTH_OK, NULL, "canonical signature");
	{
		char *last = token + strlen(token) - 1;
		const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

		/* 43 characters carry 258 bits: the last character's low 2 bits are unused */
		*last = alphabet[(strchr(alphabet, *last) - alphabet) ^ 1];
	}
	expect(keys, token, AUTH_INVALID, "signature is not valid base64url",
	       "non-canonical signature encoding");
	free(token);
	/* An over-long token. */
	{
		char *huge = malloc(20001);

		memset(huge, 'a', 20000);
		huge[20000] = '\0';
		huge[100] = '.';
		huge[200] = '.';
		expect(keys, huge, AUTH_INVALID, "longer than", "over-long token");
		free(huge);
	}
	expect(NULL, "a.b.c", AUTH_INVALID, "no token keys", "no keys");
	auth_keys_free(keys);
}

/* RS256 and ES256 with PEM public keys, and the HS/RS confusion attack. */
static void
test_pem(EVP_PKEY *rsa, EVP_PKEY *rsa_other, EVP_PKEY *ec)
{
	auth_config config = {0};
	auth_keys *keys;
	char *token;
	const char *claims = "{\"sub\":\"dr-who\",\"scope\":\"user/*.read\"}";

	config.public_key_file = write_public_pem("rsa.pem", rsa);
	keys = load_ok(&config, "rsa pem");
	token = make_token("RS256", NULL, claims, SIGN_RS256, rsa);
	expect(keys, token, AUTH_OK, NULL, "rs256 valid");
	free(token);
	token = make_token("RS256", "some-kid", claims, SIGN_RS256, rsa);
	expect(keys, token, AUTH_OK, NULL, "rs256 with a kid against a PEM key");
	free(token);
	token = make_token("RS256", NULL, claims, SIGN_RS256, rsa_other);
	expect(keys, token, AUTH_INVALID, "signature does not verify", "rs256 other key");
	free(token);
	token = make_token("ES256", NULL, claims, SIGN_ES256, ec);
	expect(keys, token, AUTH_INVALID, "no configured key verifies ES256", "es256 against rsa key");
	free(token);
	/* HS/RS confusion: HMAC keyed with the public key PEM itself. */
	{
		FILE *f = fopen(config.public_key_file, "rb");
		char pem[4096];
		size_t n = fread(pem, 1, sizeof(pem), f);
		char *header = header_json("HS256", NULL);

		fclose(f);
		token = make_token_raw(header, claims, SIGN_HS256, pem, n, NULL);
		expect(keys, token, AUTH_INVALID, "no configured key verifies HS256",
		       "hs256 signed with the rsa public pem");
		free(token);
		free(header);
	}
	auth_keys_free(keys);

	/* Both an HS secret and the RSA key: still no confusion. */
	config.hs256_secret_file = write_text("secret2", SECRET);
	keys = load_ok(&config, "secret and rsa pem");
	{
		FILE *f = fopen(config.public_key_file, "rb");
		char pem[4096];
		size_t n = fread(pem, 1, sizeof(pem), f);
		char *header = header_json("HS256", NULL);

		fclose(f);
		token = make_token_raw(header, claims, SIGN_HS256, pem, n, NULL);
		expect(keys, token, AUTH_INVALID, "signature does not verify",
		       "hs256 signed with the pem, secret configured");
		free(token);
		free(header);
	}
	token = make_token("RS256", NULL, claims, SIGN_RS256, rsa);
	expect(keys, token, AUTH_OK, NULL, "rs256 valid with a secret configured too");
	free(token);
	token = make_token("HS256", NULL, claims, SIGN_HS256, NULL);
	expect(keys, token, AUTH_OK, NULL, "hs256 valid with a pem configured too");
	free(token);
	auth_keys_free(keys);
	config.hs256_secret_file = NULL;

	config.public_key_file = write_public_pem("ec.pem", ec);
	keys = load_ok(&config, "ec pem");
	token = make_token("ES256", NULL, claims, SIGN_ES256, ec);
	expect(keys, token, AUTH_OK, NULL, "es256 valid");
	free(token);
	/* A DER signature instead of JOSE r||s. */
	token = make_token("ES256", NULL, claims, SIGN_RS256, ec);
	expect(keys, token, AUTH_INVALID, "signature does not verify", "es256 with a DER signature");
	free(token);
	token = make_token("RS256", NULL, claims, SIGN_RS256, rsa);
	expect(keys, token, AUTH_INVALID, "no configured key verifies RS256", "rs256 against ec key");
	free(token);
	{
		EVP_PKEY *ec_other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");

		token = make_token("ES256", NULL, claims, SIGN_ES256, ec_other);
		expect(keys, token, AUTH_INVALID, "signature does not verify", "es256 other key");
		free(token);
		EVP_PKEY_free(ec_other);
	}
	auth_keys_free(keys);

	/* Key files that are refused. */
	config.public_key_file = write_private_pem("private.pem", rsa);
	load_fails(&config, "holds a private key", "private key pem");
	config.public_key_file = write_text("garbage.pem", "-----BEGIN NOTHING-----\n");
	load_fails(&config, "holds no PEM public key", "garbage pem");
	config.public_key_file = "/nonexistent/key.pem";
	load_fails(&config, "could not open", "missing pem");
	{
		EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 1024);
		EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");

		config.public_key_file = write_public_pem("rsa1024.pem", small);
		load_fails(&config, "fewer than the 2048", "rsa 1024 pem");
		config.public_key_file = write_public_pem("p384.pem", p384);
		load_fails(&config, "only P-256", "ec p-384 pem");
		EVP_PKEY_free(small);
		EVP_PKEY_free(p384);
	}
}

/* JSON Web Key Sets: choice by kid, single-key sets, broken sets. */
static void
test_jwks(EVP_PKEY *rsa, EVP_PKEY *ec)
{
	auth_config config = {0};
	auth_keys *keys;
	char *token;
	const char *claims = "{\"sub\":\"dr-who\",\"scope\":\"user/*.read\"}";

	config.jwks_file = write_jwks("jwks.json", jwk_of(rsa, "rsa-1"), jwk_of(ec, "ec-1"));
	keys = load_ok(&config, "jwks");
	token = make_token("RS256", "rsa-1", claims, SIGN_RS256, rsa);
	expect(keys, token, AUTH_OK, NULL, "jwks rs256 by kid");
	free(token);
	token = make_token("ES256", "ec-1", claims, SIGN_ES256, ec);
	expect(keys, token, AUTH_OK, NULL, "jwks es256 by kid");
	free(token);
	token = make_token("RS256", "rsa-2", claims, SIGN_RS256, rsa);
	expect(keys, token, AUTH_INVALID, "kid \"rsa-2\" matches no", "jwks unknown kid");
	free(token);
	token = make_token("ES256", "rsa-1", claims, SIGN_ES256, ec);
	expect(keys, token, AUTH_INVALID, "names a RS256 key", "jwks kid of another key type");
	free(token);
	token = make_token("RS256", NULL, claims, SIGN_RS256, rsa);
	expect(keys, token, AUTH_INVALID, "without a kid", "jwks of two keys, token without kid");
	free(token);
	token = make_token("HS256", "rsa-1", claims, SIGN_HS256, NULL);
	expect(keys, token, AUTH_INVALID, NULL, "jwks hs256 token naming an rsa kid");
	free(token);
	auth_keys_free(keys);

	/* One key and no kid anywhere. */
	config.jwks_file = write_jwks("jwks1.json", jwk_of(ec, NULL), NULL);
	keys = load_ok(&config, "jwks of one key");
	token = make_token("ES256", NULL, claims, SIGN_ES256, ec);
	expect(keys, token, AUTH_OK, NULL, "jwks single key, token without kid");
	free(token);
	auth_keys_free(keys);

	/* Keys for other uses or algorithms are skipped; broken keys are errors. */
	{
		json_t *enc = jwk_of(rsa, "enc-1");
		json_t *bad = jwk_of(ec, "bad-ec");

		json_object_set_new(enc, "use", json_string("enc"));
		config.jwks_file = write_jwks("jwks-enc.json", enc, NULL);
		load_fails(&config, "no RSA or EC P-256 signing key", "jwks of an encryption key only");
		json_object_set_new(bad, "y", json_string("AAAA"));
		config.jwks_file = write_jwks("jwks-bad.json", bad, NULL);
		load_fails(&config, "bad-ec", "jwks with a broken EC key");
	}
	{
		/* x for y: 32 bytes each, but (almost surely) not a point on P-256 */
		json_t *off_curve = jwk_of(ec, "off-curve");

		json_object_set(off_curve, "y", json_object_get(off_curve, "x"));
		config.jwks_file = write_jwks("jwks-off-curve.json", off_curve, NULL);
		load_fails(&config, "not on P-256", "jwks with an EC point off the curve");
	}
	{
		EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 1024);

		config.jwks_file = write_jwks("jwks-small.json", jwk_of(small, "small"), NULL);
		load_fails(&config, "fewer than the 2048", "jwks with an RSA 1024 key");
		EVP_PKEY_free(small);
	}
	{
		json_t *wrong_alg = jwk_of(rsa, "r");
		json_t *ok = jwk_of(ec, "e");

		json_object_set_new(wrong_alg, "alg", json_string("RS512"));
		json_object_set_new(ok, "alg", json_string("ES256"));
		config.jwks_file = write_jwks("jwks-alg.json", wrong_alg, ok);
		keys = load_ok(&config, "jwks with alg members");
		token = make_token("RS256", "r", claims, SIGN_RS256, rsa);
		expect(keys, token, AUTH_INVALID, "matches no", "jwk for RS512 not used for RS256");
		free(token);
		token = make_token("ES256", "e", claims, SIGN_ES256, ec);
		expect(keys, token, AUTH_OK, NULL, "jwk with alg ES256");
		free(token);
		auth_keys_free(keys);
	}
	config.jwks_file = write_text("jwks-notjson.json", "{\"keys\": [");
	load_fails(&config, "is not valid JSON", "jwks not JSON");
	config.jwks_file = write_text("jwks-nokeys.json", "{\"kty\":\"RSA\"}");
	load_fails(&config, "no \"keys\" array", "jwks without keys");
	config.jwks_file = "/nonexistent/jwks.json";
	load_fails(&config, "could not read", "missing jwks");
}

/* A grant from a scope string, a patient claim (or NULL) and scp (or NULL). */
static void
grant_of(auth_grant *grant, const char *scope, const char *patient, json_t *scp)
{
	json_t *claims = json_object();

	if (scope)
		json_object_set_new(claims, "scope", json_string(scope));
	if (patient)
		json_object_set_new(claims, "patient", json_string(patient));
	if (scp)
		json_object_set_new(claims, "scp", scp);
	memset(grant, 0, sizeof(*grant));
	auth_grant_set_scopes(grant, claims);
	json_decref(claims);
}

/* The SMART scope matrix of auth_grant_allows. */
static void
test_scopes(const char *secret_file)
{
	auth_grant g;

	grant_of(&g, "openid fhirUser launch/patient patient/*.read", "123", NULL);
	check(auth_grant_allows(&g, "123", "Condition"), "patient/*.read: own patient");
	check(auth_grant_allows(&g, "123", NULL), "patient/*.read: own patient, any type");
	check(!auth_grant_allows(&g, "456", "Condition"), "patient/*.read: not another patient");
	check(!auth_grant_allows(&g, "456", NULL), "patient/*.read: nothing of another patient");
	check(!auth_grant_allows(&g, NULL, "Condition"), "patient/*.read: nothing patient-less");
	check(g.patient && strcmp(g.patient, "123") == 0 && g.any_patient_scope && !g.all_patients &&
	          g.all_types,
	      "patient/*.read: summary fields");
	auth_grant_clear(&g);

	grant_of(&g, "patient/Condition.read", "Patient/123", NULL);
	check(auth_grant_allows(&g, "123", "Condition"), "Patient/123 claim means 123");
	check(!auth_grant_allows(&g, "123", "Observation"), "patient/Condition.read: not Observation");
	check(g.ntypes == 1 && strcmp(g.types[0], "Condition") == 0 && !g.all_types,
	      "patient/Condition.read: types summary");
	auth_grant_clear(&g);

	grant_of(&g, "patient/*.read", NULL, NULL);
	check(!auth_grant_allows(&g, "123", NULL) && !auth_grant_allows(&g, "123", "Condition"),
	      "patient scope without patient claim: nothing");
	check(g.patient == NULL && !g.any_patient_scope, "no patient claim: no patient in grant");
	auth_grant_clear(&g);

	grant_of(&g, "user/Condition.read", NULL, NULL);
	check(auth_grant_allows(&g, "1", "Condition") && auth_grant_allows(&g, "2", "Condition"),
	      "user/Condition.read: every patient");
	check(!auth_grant_allows(&g, "1", "Observation"), "user/Condition.read: not Observation");
	check(auth_grant_allows(&g, "1", NULL), "user/Condition.read: something for everybody");
	check(auth_grant_allows(&g, NULL, "Condition"), "user scope: patient-less changes");
	auth_grant_clear(&g);

	/* Levels do not mix. */
	grant_of(&g, "user/Condition.read patient/*.read", "123", NULL);
	check(auth_grant_allows(&g, "456", "Condition"), "mixed: Condition for everybody");
	check(!auth_grant_allows(&g, "456", "Observation"), "mixed: not Observation for others");
	check(auth_grant_allows(&g, "123", "Observation"), "mixed: everything for own patient");
	auth_grant_clear(&g);

	grant_of(&g, "system/*.read", NULL, NULL);
	check(auth_grant_allows(&g, "9", "AllergyIntolerance"), "system/*.read: everything");
	auth_grant_clear(&g);
	grant_of(&g, "user/*.*", NULL, NULL);
	check(auth_grant_allows(&g, "9", "Encounter"), "user/*.*: reads");
	auth_grant_clear(&g);
	grant_of(&g, "user/*.write patient/*.write", "1", NULL);
	check(!auth_grant_allows(&g, "1", NULL) && !auth_grant_allows(&g, "2", "Condition"),
	      "write alone reads nothing");
	auth_grant_clear(&g);

	/* SMART v2. */
	grant_of(&g, "patient/*.rs", "7", NULL);
	check(auth_grant_allows(&g, "7", "Observation") && !auth_grant_allows(&g, "8", "Observation"),
	      "patient/*.rs");
	auth_grant_clear(&g);
	grant_of(&g, "user/Observation.rs", NULL, NULL);
	check(auth_grant_allows(&g, "8", "Observation") && !auth_grant_allows(&g, "8", "Condition"),
	      "user/Observation.rs");
	auth_grant_clear(&g);
	grant_of(&g, "user/Condition.r user/Encounter.cruds user/Procedure.cud user/Immunization.s",
	         NULL, NULL);
	check(auth_grant_allows(&g, "1", "Condition"), "v2 .r reads");
	check(auth_grant_allows(&g, "1", "Encounter"), "v2 .cruds reads");
	check(!auth_grant_allows(&g, "1", "Procedure"), "v2 .cud does not read");
	check(!auth_grant_allows(&g, "1", "Immunization"), "v2 .s alone does not read");
	auth_grant_clear(&g);
	grant_of(&g,
	         "user/Condition.sr user/Encounter.rr user/condition.read user/Patient user/*.readx",
	         NULL, NULL);
	check(g.nrules == 0, "malformed scopes grant nothing (%d rules)", g.nrules);
	auth_grant_clear(&g);
	grant_of(&g, "patient/Observation.rs?category=vital-signs", "5", NULL);
	check(auth_grant_allows(&g, "5", "Observation") && !auth_grant_allows(&g, "5", "Condition"),
	      "v2 query suffix: the whole type");
	auth_grant_clear(&g);

	/* scp as an array, and no scopes at all. */
	grant_of(&g, NULL, NULL, json_pack("[s, s]", "user/Patient.read", "openid"));
	check(auth_grant_allows(&g, "1", "Patient") && !auth_grant_allows(&g, "1", "Condition"),
	      "scp array");
	auth_grant_clear(&g);
	grant_of(&g, "openid profile", NULL, NULL);
	check(!auth_grant_allows(&g, "1", NULL), "no resource scope: no data");
	auth_grant_clear(&g);

	auth_grant_unrestricted(&g);
	check(auth_grant_allows(&g, "1", "Condition") && auth_grant_allows(&g, NULL, NULL) &&
	          strcmp(g.subject, "anonymous") == 0,
	      "unrestricted grant allows everything");
	auth_grant_clear(&g);
	check(g.subject == NULL && g.nrules == 0, "cleared grant is empty");
	check(!auth_grant_allows(&g, "1", NULL), "empty grant allows nothing");

	/* End to end: scopes from a signed token. */
	{
		auth_config config = {.hs256_secret_file = secret_file};
		auth_keys *keys = load_ok(&config, "scopes end to end");
		char *token = make_token("HS256", NULL,
		                         "{\"sub\":\"p\",\"patient\":\"42\",\"scope\":\"patient/*.rs\"}",
		                         SIGN_HS256, NULL);
		char err[256];

		check(auth_verify(keys, token, NOW, &g, err, sizeof(err)) == AUTH_OK &&
		          auth_grant_allows(&g, "42", "Condition") && !auth_grant_allows(&g, "43", NULL),
		      "token scopes: own patient only");
		auth_grant_clear(&g);
		free(token);
		auth_keys_free(keys);
	}
}

/* The "verify" mode: one token against key files given on the command line. */
static int
verify_command(int argc, char **argv)
{
	auth_config config = {0};
	char err[512];
	auth_keys *keys;
	auth_grant grant;
	auth_result result;
	int i;

	for (i = 2; i < argc - 1; i++)
	{
		if (strcmp(argv[i], "--secret") == 0)
			config.hs256_secret_file = argv[++i];
		else if (strcmp(argv[i], "--pem") == 0)
			config.public_key_file = argv[++i];
		else if (strcmp(argv[i], "--jwks") == 0)
			config.jwks_file = argv[++i];
		else if (strcmp(argv[i], "--aud") == 0)
			config.audience = argv[++i];
		else if (strcmp(argv[i], "--iss") == 0)
			config.issuer = argv[++i];
		else if (strcmp(argv[i], "--allows") == 0 && i + 3 < argc)
			i += 2; /* read after verification */
		else
			break;
	}
	if (i != argc - 1)
	{
		fprintf(stderr, "usage: test_auth verify [--secret F] [--pem F] [--jwks F] [--aud A] "
		                "[--iss I] [--allows PATIENT TYPE]... TOKEN\n");
		return 3;
	}
	keys = auth_keys_load(&config, err, sizeof(err));
	if (keys == NULL)
	{
		printf("load: %s\n", err);
		return 3;
	}
	result = auth_verify(keys, argv[argc - 1], (long long) time(NULL), &grant, err, sizeof(err));
	if (result == AUTH_OK)
		printf("ok %s\n", grant.subject);
	else
		printf("%s: %s\n", result == AUTH_EXPIRED ? "expired" : "invalid", err);
	for (i = 2; i < argc - 1; i++)
	{
		if (strcmp(argv[i], "--allows") == 0)
		{
			const char *patient = strcmp(argv[i + 1], "-") == 0 ? NULL : argv[i + 1];
			const char *type = strcmp(argv[i + 2], "-") == 0 ? NULL : argv[i + 2];

			printf("allows %s %s %s\n", argv[i + 1], argv[i + 2],
			       auth_grant_allows(&grant, patient, type) ? "yes" : "no");
			i += 2;
		}
		else if (argv[i][0] == '-')
			i++;
	}
	auth_grant_clear(&grant);
	auth_keys_free(keys);
	return result == AUTH_OK ? 0 : result == AUTH_EXPIRED ? 2 : 1;
}

int
main(int argc, char **argv)
{
	EVP_PKEY *rsa, *rsa_other, *ec;

	if (argc > 1 && strcmp(argv[1], "verify") == 0)
		return verify_command(argc, argv);

	strcpy(tmpdir, "/tmp/test_auth.XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
	{
		perror("test_auth: mkdtemp");
		return 2;
	}
	rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 2048);
	rsa_other = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t) 2048);
	ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (rsa == NULL || rsa_other == NULL || ec == NULL)
	{
		fprintf(stderr, "test_auth: key generation failed\n");
		return 2;
	}

	test_secret_files();
	test_hs256();
	test_pem(rsa, rsa_other, ec);
	test_jwks(rsa, ec);
	test_scopes(write_text("secret-scopes", SECRET));

	EVP_PKEY_free(rsa);
	EVP_PKEY_free(rsa_other);
	EVP_PKEY_free(ec);
	for (int i = 0; i < nfiles; i++)
	{
		unlink(files[i]);
		free(files[i]);
	}
	rmdir(tmpdir);
	printf("auth: %d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
