/*
 * auth.h
 *	  JSON Web Token verification and SMART on FHIR scopes.
 */
#ifndef BRIDGE_AUTH_H
#define BRIDGE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <jansson.h>

/* Where the verification keys come from; unset members are not used. */
typedef struct auth_config
{
	const char *hs256_secret_file; /* HS256 shared secret (whole file, trailing newline dropped) */
	const char *public_key_file;   /* RS256 or ES256 public key, PEM */
	const char *jwks_file;         /* JSON Web Key Set; keys chosen by "kid" */
	const char *audience;          /* required "aud" when set */
	const char *issuer;            /* required "iss" when set */
	long leeway_seconds;           /* clock skew allowed on exp/nbf */
	/*
	 * For tokens without SMART scopes (no "scope" or "scp" claim, as
	 * WintEHR's {sub, role, exp}): the scopes of every scopes_by_claim entry
	 * ("CLAIM=VALUE:SCOPES", NULL-terminated) whose claim has that value,
	 * else default_scopes (space-separated; NULL: none).
	 */
	const char *default_scopes;
	char **scopes_by_claim;
} auth_config;

typedef struct auth_keys auth_keys;

typedef enum auth_result
{
	AUTH_OK = 0,
	AUTH_INVALID, /* malformed, bad signature, wrong alg, aud, iss, kid, not yet valid */
	AUTH_EXPIRED  /* valid signature but "exp" has passed */
} auth_result;

/*
 * One read right from one SMART scope: the changes of resource type `type`
 * (NULL: every type) of every patient, or, when patient_only, only of the
 * grant's patient. auth_grant_allows checks these rules one by one, so
 * rights of different levels never mix (user/Condition.read with a
 * patient-level wildcard read scope gives Condition for everybody and every
 * type for the token's patient, not every type for everybody).
 */
typedef struct auth_scope_rule
{
	bool patient_only;
	char *type;
} auth_scope_rule;

/* What a verified token may receive. */
typedef struct auth_grant
{
	char *subject;          /* "sub" (or "preferred_username"), never NULL after AUTH_OK */
	char *patient;          /* the "patient" claim when the scopes are patient-level, else NULL */
	bool all_patients;      /* a user/ or system/ read scope */
	bool any_patient_scope; /* a patient/ read scope (limited to `patient`) */
	bool all_types;         /* a wildcard type in some read scope */
	char **types;           /* resource types readable when !all_types */
	int ntypes;
	long long expires_at; /* "exp" in seconds since the epoch, 0 if none */
	json_t *claims;       /* the whole payload, for the welcome message */
	/*
	 * The exact rights; the summary fields above lose which level a type
	 * came from, so decide with auth_grant_allows, not with them.
	 */
	auth_scope_rule *rules;
	int nrules;
	/*
	 * Where the rights came from, for log lines: "the token's scopes",
	 * "--scopes-by-claim role=physician", "--default-scopes", or why there
	 * are none.
	 */
	char *scopes_from;
} auth_grant;

/*
 * Loads the configured keys (every configured source; at least one is
 * needed); NULL with a message in err on failure. Reloading is the caller's:
 * load the new set, swap, free the old one.
 */
auth_keys *auth_keys_load(const auth_config *config, char *err, size_t errlen);
void auth_keys_free(auth_keys *keys);

/*
 * Verifies token (signature, alg pinned to the key type, exp, nbf, aud,
 * iss) at time now and fills grant from its claims. On failure err says why
 * (for the log, never key material) and grant is left empty. grant is
 * overwritten: clear an earlier grant before reusing it.
 */
auth_result auth_verify(const auth_keys *keys, const char *token, long long now, auth_grant *grant,
                        char *err, size_t errlen);

/*
 * Whether grant may receive resource_type changes of patient_id (NULL: any
 * type, i.e. whether it may receive anything of that patient). A NULL
 * patient_id asks about changes that belong to no patient: only user/ and
 * system/ scopes allow those.
 */
bool auth_grant_allows(const auth_grant *grant, const char *patient_id, const char *resource_type);

/* A grant that allows everything, for --insecure-no-auth (subject "anonymous"). */
void auth_grant_unrestricted(auth_grant *grant);

/* Frees what grant holds and empties it; safe on an empty grant. */
void auth_grant_clear(auth_grant *grant);

/*
 * Fills grant's rights from the SMART scopes in claims ("scope" string,
 * "scp" array or string) and the "patient" claim. Used by auth_verify;
 * exposed for tests.
 */
void auth_grant_set_scopes(auth_grant *grant, json_t *claims);

/* Scopes for tokens that carry none (see auth_config); opaque. */
typedef struct auth_scope_defaults auth_scope_defaults;

/*
 * Parses the default-scopes and scopes-by-claim settings; NULL with a
 * message in err when an entry is malformed or a scope grants no read
 * right (a typo would otherwise silently grant nothing). Both unset: an
 * empty set, not NULL.
 */
auth_scope_defaults *auth_scope_defaults_parse(const char *default_scopes, char **scopes_by_claim,
                                               char *err, size_t errlen);
void auth_scope_defaults_free(auth_scope_defaults *defaults);

/*
 * auth_grant_set_scopes, and for a token without "scope" and "scp" the
 * scopes defaults gives it (defaults may be NULL: none).
 */
void auth_grant_set_scopes_or_defaults(auth_grant *grant, json_t *claims,
                                       const auth_scope_defaults *defaults);

#endif /* BRIDGE_AUTH_H */
