/*
 * auth.c
 *	  Verifying a JSON Web Token: compact parsing, the signature by a key
 *	  whose type pins the algorithm, then the registered claims.
 */
#include "auth_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base64url.h"

/* Longer tokens are refused before any work (a header is 8 KB at most anyway). */
#define TOKEN_MAX_LENGTH 16384
/* Dates are clamped to +-2^52 seconds, where doubles are still exact. */
#define NUMERIC_DATE_LIMIT (1LL << 52)

/* Formats a failure reason into err and returns AUTH_INVALID. */
static auth_result
fail(char *err, size_t errlen, const char *format, ...)
{
	va_list args;

	va_start(args, format);
	vsnprintf(err, errlen, format, args);
	va_end(args);
	return AUTH_INVALID;
}

/* Decodes one base64url part of a token and parses it as a JSON object. */
static json_t *
decode_json_part(const char *part, size_t length)
{
	unsigned char *bytes;
	size_t nbytes;
	json_t *object;

	if (!base64url_decode(part, length, &bytes, &nbytes))
		return NULL;
	object = json_loadb((const char *) bytes, nbytes, JSON_REJECT_DUPLICATES, NULL);
	free(bytes);
	if (object != NULL && !json_is_object(object))
	{
		json_decref(object);
		return NULL;
	}
	return object;
}

/*
 * Whether key may check a token with header alg and kid. A token with a kid
 * uses the key of that kid, or a key without kid (a PEM file or secret);
 * a token without kid uses a key without kid, or the only key of a JWKS.
 */
static bool
key_fits(const auth_keys *keys, const auth_key *key, auth_key_alg alg, const char *kid)
{
	if (key->alg != alg)
		return false;
	if (key->kid == NULL)
		return true;
	if (kid != NULL)
		return strcmp(key->kid, kid) == 0;
	return keys->njwks == 1;
}

/*
 * Checks the signature with the keys that fit alg and kid. The algorithm
 * comes from the header, but only keys of that algorithm's type are tried:
 * an HS256 token is never checked with an RSA key's bytes as its secret.
 */
static auth_result
check_signature(const auth_keys *keys, const char *token, size_t signing_len,
                const char *signature_part, auth_key_alg alg, const char *kid, char *err,
                size_t errlen)
{
	unsigned char *signature;
	size_t signature_len;
	char safe_kid[80];
	int tried = 0;

	auth_sanitize(kid ? kid : "", safe_kid, sizeof(safe_kid));
	if (kid != NULL)
	{
		for (int i = 0; i < keys->nkeys; i++)
		{
			if (keys->keys[i].kid != NULL && strcmp(keys->keys[i].kid, kid) == 0 &&
			    keys->keys[i].alg != alg)
				return fail(err, errlen, "token kid \"%s\" names a %s key but the token is %s",
				            safe_kid, auth_alg_name(keys->keys[i].alg), auth_alg_name(alg));
		}
	}
	if (!base64url_decode(signature_part, strlen(signature_part), &signature, &signature_len))
		return fail(err, errlen, "token signature is not valid base64url");
	for (int i = 0; i < keys->nkeys; i++)
	{
		if (!key_fits(keys, &keys->keys[i], alg, kid))
			continue;
		tried++;
		if (auth_signature_verify(&keys->keys[i], token, signing_len, signature, signature_len))
		{
			free(signature);
			return AUTH_OK;
		}
	}
	free(signature);
	if (tried > 0)
		return fail(err, errlen, "token signature does not verify (%s%s%s%s)", auth_alg_name(alg),
		            kid ? ", kid \"" : "", kid ? safe_kid : "", kid ? "\"" : "");
	if (kid != NULL)
		return fail(err, errlen, "token kid \"%s\" matches no configured %s key", safe_kid,
		            auth_alg_name(alg));
	return fail(err, errlen, "no configured key verifies %s tokens%s", auth_alg_name(alg),
	            keys->njwks > 1 ? " without a kid" : "");
}

/*
 * Reads a NumericDate claim into *value. False when present but not a
 * number; *present says whether it was there.
 */
static bool
numeric_claim(json_t *claims, const char *name, long long *value, bool *present)
{
	json_t *claim = json_object_get(claims, name);

	*present = claim != NULL;
	*value = 0;
	if (claim == NULL)
		return true;
	/*
	 * Clamped far beyond any real date, so that adding the leeway cannot
	 * overflow and a huge real converts without undefined behaviour.
	 */
	if (json_is_integer(claim))
	{
		json_int_t number = json_integer_value(claim);

		*value = number > NUMERIC_DATE_LIMIT    ? NUMERIC_DATE_LIMIT
		         : number < -NUMERIC_DATE_LIMIT ? -NUMERIC_DATE_LIMIT
		                                        : (long long) number;
	}
	else if (json_is_real(claim))
	{
		double number = json_real_value(claim);

		*value = number > (double) NUMERIC_DATE_LIMIT    ? NUMERIC_DATE_LIMIT
		         : number < -(double) NUMERIC_DATE_LIMIT ? -NUMERIC_DATE_LIMIT
		                                                 : (long long) number;
	}
	else
		return false;
	return true;
}

/* Whether the "aud" claim (a string or an array of strings) holds audience. */
static bool
audience_matches(json_t *aud, const char *audience)
{
	size_t index;
	json_t *item;

	if (json_is_string(aud))
		return strcmp(json_string_value(aud), audience) == 0;
	json_array_foreach(aud, index, item)
	{
		if (json_is_string(item) && strcmp(json_string_value(item), audience) == 0)
			return true;
	}
	return false;
}

/* Checks exp, nbf, iat, aud and iss against the configuration at time now. */
static auth_result
check_claims(const auth_keys *keys, json_t *claims, long long now, long long *expires_at, char *err,
             size_t errlen)
{
	long long exp, nbf, iat;
	bool has_exp, has_nbf, has_iat;
	long leeway = keys->leeway_seconds;

	if (!numeric_claim(claims, "exp", &exp, &has_exp) ||
	    !numeric_claim(claims, "nbf", &nbf, &has_nbf) ||
	    !numeric_claim(claims, "iat", &iat, &has_iat))
		return fail(err, errlen, "token exp, nbf or iat is not a number");
	if (has_nbf && nbf > now + leeway)
		return fail(err, errlen, "token is not valid yet (nbf is %lld seconds ahead)", nbf - now);
	if (has_iat && iat > now + leeway)
		return fail(err, errlen, "token is issued in the future (iat is %lld seconds ahead)",
		            iat - now);
	if (keys->audience != NULL)
	{
		json_t *aud = json_object_get(claims, "aud");

		if (aud == NULL)
			return fail(err, errlen, "token has no aud (expected \"%s\")", keys->audience);
		if (!audience_matches(aud, keys->audience))
			return fail(err, errlen, "token aud does not include \"%s\"", keys->audience);
	}
	if (keys->issuer != NULL)
	{
		const char *iss = json_string_value(json_object_get(claims, "iss"));

		if (iss == NULL)
			return fail(err, errlen, "token has no iss (expected \"%s\")", keys->issuer);
		if (strcmp(iss, keys->issuer) != 0)
			return fail(err, errlen, "token iss is not \"%s\"", keys->issuer);
	}
	/* Last, so that an expired token that is also wrong says what is wrong. */
	*expires_at = has_exp ? exp : 0;
	if (has_exp && now >= exp + leeway)
	{
		snprintf(err, errlen, "token expired %lld seconds ago", now - exp);
		return AUTH_EXPIRED;
	}
	return AUTH_OK;
}

/* The subject: "sub", else "preferred_username", else "unknown". */
static char *
claims_subject(json_t *claims)
{
	const char *subject = json_string_value(json_object_get(claims, "sub"));

	if (subject == NULL || subject[0] == '\0')
		subject = json_string_value(json_object_get(claims, "preferred_username"));
	if (subject == NULL || subject[0] == '\0')
		subject = "unknown";
	return strdup(subject);
}

/*
 * Parses the header, checks the signature before anything else of the
 * token is believed, then checks the claims and fills grant.
 */
static auth_result
verify_token(const auth_keys *keys, const char *token, long long now, auth_grant *grant, char *err,
             size_t errlen)
{
	size_t length = strlen(token);
	const char *dot1 = strchr(token, '.');
	const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	json_t *header;
	const char *alg_name;
	json_t *kid_value;
	auth_key_alg alg;
	auth_result result;
	json_t *claims;

	if (length > TOKEN_MAX_LENGTH)
		return fail(err, errlen, "token is longer than %d bytes", TOKEN_MAX_LENGTH);
	if (dot1 == NULL || dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
		return fail(err, errlen, "token is not a JWS compact serialisation (three parts)");
	if (dot1 == token || dot2 == dot1 + 1)
		return fail(err, errlen, "token has an empty header or payload");
	header = decode_json_part(token, (size_t) (dot1 - token));
	if (header == NULL)
		return fail(err, errlen, "token header is not base64url-encoded JSON object");
	alg_name = json_string_value(json_object_get(header, "alg"));
	kid_value = json_object_get(header, "kid");
	if (alg_name == NULL)
		result = fail(err, errlen, "token header has no alg");
	else if (strcasecmp(alg_name, "none") == 0)
		result = fail(err, errlen, "token alg none is refused: tokens must be signed");
	else if (!auth_alg_parse(alg_name, &alg))
	{
		char safe_alg[80];

		auth_sanitize(alg_name, safe_alg, sizeof(safe_alg));
		result = fail(err, errlen, "token alg \"%s\" is not accepted (HS256, RS256, ES256 only)",
		              safe_alg);
	}
	else if (json_object_get(header, "crit") != NULL)
		result = fail(err, errlen, "token header has crit extensions, which are not supported");
	else if (kid_value != NULL && !json_is_string(kid_value))
		result = fail(err, errlen, "token header kid is not a string");
	else
		result = check_signature(keys, token, (size_t) (dot2 - token), dot2 + 1, alg,
		                         json_string_value(kid_value), err, errlen);
	json_decref(header);
	if (result != AUTH_OK)
		return result;

	claims = decode_json_part(dot1 + 1, (size_t) (dot2 - dot1 - 1));
	if (claims == NULL)
		return fail(err, errlen, "token payload is not base64url-encoded JSON object");
	result = check_claims(keys, claims, now, &grant->expires_at, err, errlen);
	if (result != AUTH_OK)
	{
		json_decref(claims);
		return result;
	}
	grant->claims = claims;
	grant->subject = claims_subject(claims);
	if (grant->subject == NULL)
		return fail(err, errlen, "out of memory");
	auth_grant_set_scopes_or_defaults(grant, claims, keys->scope_defaults);
	return AUTH_OK;
}

/* Verifies token at time now and fills grant; on failure grant stays empty. */
auth_result
auth_verify(const auth_keys *keys, const char *token, long long now, auth_grant *grant, char *err,
            size_t errlen)
{
	auth_result result;

	memset(grant, 0, sizeof(*grant));
	if (errlen > 0)
		err[0] = '\0';
	if (keys == NULL)
		return fail(err, errlen, "no token keys are loaded");
	if (token == NULL || token[0] == '\0')
		return fail(err, errlen, "no token");
	result = verify_token(keys, token, now, grant, err, errlen);
	if (result != AUTH_OK)
		auth_grant_clear(grant);
	return result;
}
