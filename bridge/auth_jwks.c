/*
 * auth_jwks.c
 *	  Reading a JSON Web Key Set (RFC 7517): RSA keys from n/e, EC P-256 keys
 *	  from x/y, each chosen later by its "kid".
 */
#include "auth_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>

#include "base64url.h"

/* Decodes the base64url member name of jwk; false when missing or bad. */
static bool
jwk_bytes(json_t *jwk, const char *name, unsigned char **out, size_t *outlen)
{
	const char *text = json_string_value(json_object_get(jwk, name));

	return text != NULL && base64url_decode(text, strlen(text), out, outlen) && *outlen > 0;
}

/* Builds an RSA public key from the JWK members n and e. */
static EVP_PKEY *
jwk_rsa(json_t *jwk, const char **problem)
{
	unsigned char *n = NULL, *e = NULL;
	size_t nlen, elen;
	BIGNUM *bn_n = NULL, *bn_e = NULL;
	OSSL_PARAM_BLD *build = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;

	if (!jwk_bytes(jwk, "n", &n, &nlen) || !jwk_bytes(jwk, "e", &e, &elen))
	{
		*problem = "RSA key without valid base64url \"n\" and \"e\"";
		goto done;
	}
	*problem = "RSA key that OpenSSL rejects";
	bn_n = BN_bin2bn(n, (int) nlen, NULL);
	bn_e = BN_bin2bn(e, (int) elen, NULL);
	build = OSSL_PARAM_BLD_new();
	if (bn_n == NULL || bn_e == NULL || build == NULL ||
	    !OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
	    !OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_E, bn_e) ||
	    (params = OSSL_PARAM_BLD_to_param(build)) == NULL)
		goto done;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
		pkey = NULL;
done:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(build);
	BN_free(bn_n);
	BN_free(bn_e);
	free(n);
	free(e);
	return pkey;
}

/*
 * Builds an EC P-256 public key from the JWK members x and y, and checks
 * that the point is on the curve.
 */
static EVP_PKEY *
jwk_ec(json_t *jwk, const char **problem)
{
	const char *curve = json_string_value(json_object_get(jwk, "crv"));
	unsigned char *x = NULL, *y = NULL;
	size_t xlen, ylen;
	unsigned char point[65];
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY_CTX *check = NULL;
	EVP_PKEY *pkey = NULL;

	if (curve == NULL || strcmp(curve, "P-256") != 0)
	{
		*problem = "EC key not on curve P-256 (only ES256 is supported)";
		return NULL;
	}
	if (!jwk_bytes(jwk, "x", &x, &xlen) || !jwk_bytes(jwk, "y", &y, &ylen) || xlen != 32 ||
	    ylen != 32)
	{
		*problem = "EC key without valid 32-byte \"x\" and \"y\"";
		goto done;
	}
	/* An uncompressed SEC 1 point: 0x04 || x || y. */
	point[0] = 0x04;
	memcpy(point + 1, x, 32);
	memcpy(point + 33, y, 32);
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point));
	params[2] = OSSL_PARAM_construct_end();
	*problem = "EC key whose point is not on P-256";
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
	{
		pkey = NULL;
		goto done;
	}
	check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
	if (check == NULL || EVP_PKEY_public_check(check) != 1)
	{
		EVP_PKEY_free(pkey);
		pkey = NULL;
	}
done:
	EVP_PKEY_CTX_free(check);
	EVP_PKEY_CTX_free(ctx);
	free(x);
	free(y);
	return pkey;
}

/*
 * Adds one JWK to keys. Keys for other uses ("use" other than "sig") or of
 * other types are skipped (*skipped set), as a JWKS may list them for other
 * parties; a key of a supported type that is broken is an error.
 */
static bool
jwks_add_key(auth_keys *keys, json_t *jwk, int index, bool *skipped, char *err, size_t errlen)
{
	const char *kty = json_string_value(json_object_get(jwk, "kty"));
	const char *use = json_string_value(json_object_get(jwk, "use"));
	const char *alg = json_string_value(json_object_get(jwk, "alg"));
	const char *kid = json_string_value(json_object_get(jwk, "kid"));
	const char *problem = "key";
	auth_key key = {0};
	char what[64];
	char safe_kid[80];

	*skipped = false;
	auth_sanitize(kid ? kid : "", safe_kid, sizeof(safe_kid));
	if (!json_is_object(jwk) || kty == NULL)
	{
		snprintf(err, errlen, "key %d has no \"kty\"", index);
		return false;
	}
	if ((use != NULL && strcmp(use, "sig") != 0) ||
	    (strcmp(kty, "RSA") != 0 && strcmp(kty, "EC") != 0))
	{
		*skipped = true;
		return true;
	}
	if (strcmp(kty, "RSA") == 0)
	{
		key.alg = AUTH_ALG_RS256;
		key.pkey = jwk_rsa(jwk, &problem);
	}
	else
	{
		key.alg = AUTH_ALG_ES256;
		key.pkey = jwk_ec(jwk, &problem);
	}
	ERR_clear_error();
	if (key.pkey == NULL)
	{
		snprintf(err, errlen, "key %d (kid \"%s\") is an %s", index, safe_kid, problem);
		return false;
	}
	snprintf(what, sizeof(what), "key %d", index);
	if (!auth_public_key_alg(key.pkey, what, &key.alg, err, errlen))
	{
		EVP_PKEY_free(key.pkey);
		return false;
	}
	/* A JWK that names its algorithm is only good for that one. */
	if (alg != NULL && strcmp(alg, auth_alg_name(key.alg)) != 0)
	{
		EVP_PKEY_free(key.pkey);
		*skipped = true;
		return true;
	}
	if (kid != NULL && (key.kid = strdup(kid)) == NULL)
	{
		EVP_PKEY_free(key.pkey);
		snprintf(err, errlen, "out of memory");
		return false;
	}
	if (!auth_keys_append(keys, &key))
	{
		EVP_PKEY_free(key.pkey);
		free(key.kid);
		snprintf(err, errlen, "out of memory");
		return false;
	}
	keys->njwks++;
	return true;
}

/* Adds the keys of the JSON Web Key Set in file to keys. */
bool
auth_jwks_load(auth_keys *keys, const char *file, char *err, size_t errlen)
{
	json_error_t error;
	json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &error);
	json_t *list;
	char inner[512];
	size_t index;
	json_t *jwk;
	int added = 0;

	if (root == NULL)
	{
		/* Parse errors quote the text they stopped at: keep file contents out. */
		if (json_error_code(&error) == json_error_cannot_open_file)
			snprintf(err, errlen, "could not read JWKS file \"%s\": %s", file, error.text);
		else
			snprintf(err, errlen, "JWKS file \"%s\" is not valid JSON (line %d, column %d)", file,
			         error.line, error.column);
		return false;
	}
	list = json_object_get(root, "keys");
	if (!json_is_array(list))
	{
		snprintf(err, errlen, "JWKS file \"%s\" has no \"keys\" array", file);
		json_decref(root);
		return false;
	}
	json_array_foreach(list, index, jwk)
	{
		bool skipped;

		if (!jwks_add_key(keys, jwk, (int) index, &skipped, inner, sizeof(inner)))
		{
			snprintf(err, errlen, "JWKS file \"%s\": %s", file, inner);
			json_decref(root);
			return false;
		}
		if (!skipped)
			added++;
	}
	json_decref(root);
	if (added == 0)
	{
		snprintf(err, errlen, "JWKS file \"%s\" has no RSA or EC P-256 signing key", file);
		return false;
	}
	return true;
}
