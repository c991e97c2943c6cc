/*
 * auth_signature.c
 *	  Checking a JWS signature with one key, by that key's algorithm only.
 */
#include "auth_internal.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/hmac.h>

#define ES256_COORDINATE 32

/* HMAC-SHA256 over the signing input, compared in constant time. */
static bool
verify_hs256(const auth_key *key, const char *input, size_t input_len,
             const unsigned char *signature, size_t signature_len)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_len = 0;

	if (signature_len != 32)
		return false;
	if (HMAC(EVP_sha256(), key->secret, (int) key->secret_len, (const unsigned char *) input,
	         input_len, mac, &mac_len) == NULL ||
	    mac_len != 32)
		return false;
	return CRYPTO_memcmp(mac, signature, 32) == 0;
}

/* An RSASSA-PKCS1-v1_5 or ECDSA (DER) signature with SHA-256. */
static bool
verify_digest(EVP_PKEY *pkey, const char *input, size_t input_len, const unsigned char *signature,
              size_t signature_len)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok;

	if (ctx == NULL)
		return false;
	ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
	     EVP_DigestVerify(ctx, signature, signature_len, (const unsigned char *) input,
	                      input_len) == 1;
	EVP_MD_CTX_free(ctx);
	return ok;
}

/*
 * ES256: JOSE sends r||s, 32 bytes each (RFC 7518 3.4); OpenSSL wants the
 * DER ECDSA-Sig-Value, so convert first.
 */
static bool
verify_es256(const auth_key *key, const char *input, size_t input_len,
             const unsigned char *signature, size_t signature_len)
{
	ECDSA_SIG *sig;
	BIGNUM *r, *s;
	unsigned char *der = NULL;
	int der_len;
	bool ok;

	if (signature_len != 2 * ES256_COORDINATE)
		return false;
	sig = ECDSA_SIG_new();
	r = BN_bin2bn(signature, ES256_COORDINATE, NULL);
	s = BN_bin2bn(signature + ES256_COORDINATE, ES256_COORDINATE, NULL);
	if (sig == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(sig, r, s))
	{
		ECDSA_SIG_free(sig);
		BN_free(r);
		BN_free(s);
		return false;
	}
	der_len = i2d_ECDSA_SIG(sig, &der);
	ECDSA_SIG_free(sig);
	if (der_len <= 0)
		return false;
	ok = verify_digest(key->pkey, input, input_len, der, (size_t) der_len);
	OPENSSL_free(der);
	return ok;
}

/*
 * Whether signature is valid for the signing input under key. OpenSSL's
 * error queue is emptied afterwards: a failed check leaves entries there
 * that would otherwise confuse the next TLS call on this thread.
 */
bool
auth_signature_verify(const auth_key *key, const char *signing_input, size_t input_len,
                      const unsigned char *signature, size_t signature_len)
{
	bool ok = false;

	switch (key->alg)
	{
		case AUTH_ALG_HS256:
			ok = key->secret != NULL &&
			     verify_hs256(key, signing_input, input_len, signature, signature_len);
			break;
		case AUTH_ALG_RS256:
			ok = key->pkey != NULL && signature_len == (size_t) EVP_PKEY_get_size(key->pkey) &&
			     verify_digest(key->pkey, signing_input, input_len, signature, signature_len);
			break;
		case AUTH_ALG_ES256:
			ok = key->pkey != NULL &&
			     verify_es256(key, signing_input, input_len, signature, signature_len);
			break;
	}
	ERR_clear_error();
	return ok;
}
