/*
 * auth_scopes.c
 *	  SMART on FHIR scopes: what a verified token may read, as a list of
 *	  (level, resource type) rules, and the grant's lifetime.
 *
 * Read rights come from v1 scopes (patient/Condition.read, user/Patient.read,
 * permissions "read" or "*"; "write" alone reads nothing) and v2 scopes
 * (user/Observation.rs, .r, .cruds: any permission string with "r"; "s"
 * alone does not read). The type may be the wildcard "*". A v2 query
 * suffix (patient/Observation.rs?category=vital-signs) is dropped: the
 * right covers the whole type, broader than the query, as the bridge cannot
 * evaluate FHIR search parameters on a change.
 */
#include "auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCOPE_MAX_LENGTH 256
#define TYPE_MAX_LENGTH  64

/* Whether name can be a FHIR resource type (an upper-case letter, then letters). */
static bool
valid_type_name(const char *name)
{
	size_t length = strlen(name);

	if (length == 0 || length > TYPE_MAX_LENGTH || name[0] < 'A' || name[0] > 'Z')
		return false;
	for (size_t i = 1; i < length; i++)
	{
		char c = name[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
			return false;
	}
	return true;
}

/*
 * Whether a permission grants reading: v1 "read" or "*", or a v2 string of
 * c, r, u, d, s (each at most once, in that order) that contains r.
 */
static bool
permission_reads(const char *permission)
{
	const char *order = "cruds";
	const char *next = order;
	bool reads = false;

	if (strcmp(permission, "read") == 0 || strcmp(permission, "*") == 0)
		return true;
	if (permission[0] == '\0')
		return false;
	for (const char *p = permission; *p != '\0'; p++)
	{
		const char *at = strchr(next, *p);

		if (at == NULL)
			return false;
		if (*p == 'r')
			reads = true;
		next = at + 1;
	}
	return reads;
}

/* Adds a rule to grant (fails closed: on no memory the right is not given). */
static void
add_rule(auth_grant *grant, bool patient_only, const char *type)
{
	auth_scope_rule *grown;
	char *copy = NULL;

	for (int i = 0; i < grant->nrules; i++)
	{
		auth_scope_rule *rule = &grant->rules[i];

		if (rule->patient_only == patient_only &&
		    ((rule->type == NULL && type == NULL) ||
		     (rule->type != NULL && type != NULL && strcmp(rule->type, type) == 0)))
			return;
	}
	if (type != NULL && (copy = strdup(type)) == NULL)
		return;
	grown = realloc(grant->rules, sizeof(auth_scope_rule) * (size_t) (grant->nrules + 1));
	if (grown == NULL)
	{
		free(copy);
		return;
	}
	grant->rules = grown;
	grant->rules[grant->nrules].patient_only = patient_only;
	grant->rules[grant->nrules].type = copy;
	grant->nrules++;
}

/*
 * Turns one scope into a rule when it grants reading. Scopes that are not
 * resource scopes (openid, launch/patient, fhirUser) or are malformed are
 * ignored: they grant nothing.
 */
static void
add_scope(auth_grant *grant, const char *scope, size_t length, bool have_patient)
{
	char text[SCOPE_MAX_LENGTH + 1];
	char *slash, *dot, *query;
	bool patient_only;

	if (length == 0 || length > SCOPE_MAX_LENGTH)
		return;
	memcpy(text, scope, length);
	text[length] = '\0';
	if ((query = strchr(text, '?')) != NULL)
		*query = '\0';
	slash = strchr(text, '/');
	dot = strrchr(text, '.');
	if (slash == NULL || dot == NULL || dot < slash)
		return;
	*slash = '\0';
	*dot = '\0';
	if (strcmp(text, "patient") == 0)
		patient_only = true;
	else if (strcmp(text, "user") == 0 || strcmp(text, "system") == 0)
		patient_only = false;
	else
		return;
	if (!permission_reads(dot + 1))
		return;
	/* A patient scope without a patient to apply to grants nothing. */
	if (patient_only && !have_patient)
		return;
	if (strcmp(slash + 1, "*") == 0)
		add_rule(grant, patient_only, NULL);
	else if (valid_type_name(slash + 1))
		add_rule(grant, patient_only, slash + 1);
}

/* Adds the rules of a space-separated scope string. */
static void
add_scope_string(auth_grant *grant, const char *scopes, bool have_patient)
{
	const char *p = scopes;

	while (*p != '\0')
	{
		size_t length;

		while (*p == ' ')
			p++;
		length = strcspn(p, " ");
		add_scope(grant, p, length, have_patient);
		p += length;
	}
}

/* Adds a concrete type to the grant's summary list once. */
static void
add_summary_type(auth_grant *grant, const char *type)
{
	char **grown;
	char *copy;

	for (int i = 0; i < grant->ntypes; i++)
	{
		if (strcmp(grant->types[i], type) == 0)
			return;
	}
	if ((copy = strdup(type)) == NULL)
		return;
	grown = realloc(grant->types, sizeof(char *) * (size_t) (grant->ntypes + 1));
	if (grown == NULL)
	{
		free(copy);
		return;
	}
	grant->types = grown;
	grant->types[grant->ntypes++] = copy;
}

/* Fills the grant's summary fields from its rules. */
static void
summarise_rules(auth_grant *grant, const char *patient)
{
	for (int i = 0; i < grant->nrules; i++)
	{
		auth_scope_rule *rule = &grant->rules[i];

		if (rule->patient_only)
			grant->any_patient_scope = true;
		else
			grant->all_patients = true;
		if (rule->type == NULL)
			grant->all_types = true;
		else
			add_summary_type(grant, rule->type);
	}
	/* Should this fail, patient rules match nobody (auth_grant_allows). */
	if (grant->any_patient_scope && patient != NULL)
		grant->patient = strdup(patient);
}

/*
 * Fills grant's rights from the SMART scopes in claims ("scope", or "scp" as
 * an array or string) and the "patient" claim ("123" or "Patient/123").
 */
void
auth_grant_set_scopes(auth_grant *grant, json_t *claims)
{
	const char *patient = json_string_value(json_object_get(claims, "patient"));
	json_t *scope = json_object_get(claims, "scope");
	json_t *scp = json_object_get(claims, "scp");
	bool have_patient;

	if (patient != NULL && strncmp(patient, "Patient/", 8) == 0)
		patient += 8;
	have_patient = patient != NULL && patient[0] != '\0';
	if (json_is_string(scope))
		add_scope_string(grant, json_string_value(scope), have_patient);
	if (json_is_string(scp))
		add_scope_string(grant, json_string_value(scp), have_patient);
	else if (json_is_array(scp))
	{
		size_t index;
		json_t *item;

		json_array_foreach(scp, index, item)
		{
			if (json_is_string(item))
				add_scope(grant, json_string_value(item), strlen(json_string_value(item)),
				          have_patient);
		}
	}
	summarise_rules(grant, have_patient ? patient : NULL);
}

/* One --scopes-by-claim entry: tokens whose claim has value get scopes. */
typedef struct claim_scopes
{
	char *claim;
	char *value;
	char *scopes;
	char *label; /* "--scopes-by-claim claim=value", for log lines */
} claim_scopes;

struct auth_scope_defaults
{
	char *default_scopes; /* NULL: none */
	claim_scopes *by_claim;
	int nby_claim;
};

static char *
copy_span(const char *s, size_t n)
{
	char *copy = malloc(n + 1);

	if (copy != NULL)
	{
		memcpy(copy, s, n);
		copy[n] = '\0';
	}
	return copy;
}

/*
 * Checks that every scope in a space-separated list grants reading (given
 * a patient for patient/ scopes); false with a message naming the first
 * that does not, and for an empty list.
 */
static bool
check_scope_list(const char *scopes, const char *what, char *err, size_t errlen)
{
	const char *p = scopes;
	int count = 0;

	while (*p != '\0')
	{
		size_t length;
		auth_grant probe;

		while (*p == ' ')
			p++;
		length = strcspn(p, " ");
		if (length == 0)
			break;
		memset(&probe, 0, sizeof(probe));
		add_scope(&probe, p, length, true);
		if (probe.nrules == 0)
		{
			snprintf(err, errlen, "%s: scope \"%.*s\" grants no read right", what,
			         (int) (length > 64 ? 64 : length), p);
			auth_grant_clear(&probe);
			return false;
		}
		auth_grant_clear(&probe);
		count++;
		p += length;
	}
	if (count == 0)
	{
		snprintf(err, errlen, "%s: no scopes given", what);
		return false;
	}
	return true;
}

/* See auth.h. */
auth_scope_defaults *
auth_scope_defaults_parse(const char *default_scopes, char **scopes_by_claim, char *err,
                          size_t errlen)
{
	auth_scope_defaults *defaults = calloc(1, sizeof(auth_scope_defaults));
	int n = 0;

	if (defaults == NULL)
		goto no_memory;
	if (default_scopes != NULL && default_scopes[0] != '\0')
	{
		if (!check_scope_list(default_scopes, "--default-scopes", err, errlen))
			goto fail;
		if ((defaults->default_scopes = strdup(default_scopes)) == NULL)
			goto no_memory;
	}
	while (scopes_by_claim != NULL && scopes_by_claim[n] != NULL)
		n++;
	if (n > 0 && (defaults->by_claim = calloc((size_t) n, sizeof(claim_scopes))) == NULL)
		goto no_memory;
	for (int i = 0; i < n; i++)
	{
		const char *entry = scopes_by_claim[i];
		const char *eq = strchr(entry, '=');
		const char *colon = eq ? strchr(eq + 1, ':') : NULL;
		claim_scopes *cs = &defaults->by_claim[i];
		char what[200];

		if (eq == NULL || colon == NULL || eq == entry || colon == eq + 1)
		{
			snprintf(err, errlen,
			         "--scopes-by-claim \"%.64s\": expected CLAIM=VALUE:SCOPES, e.g. "
			         "role=physician:user/*.read",
			         entry);
			goto fail;
		}
		snprintf(what, sizeof(what), "--scopes-by-claim %.*s", (int) (colon - entry), entry);
		if (!check_scope_list(colon + 1, what, err, errlen))
			goto fail;
		cs->claim = copy_span(entry, (size_t) (eq - entry));
		cs->value = copy_span(eq + 1, (size_t) (colon - eq - 1));
		cs->scopes = strdup(colon + 1);
		cs->label = strdup(what);
		defaults->nby_claim++;
		if (!cs->claim || !cs->value || !cs->scopes || !cs->label)
			goto no_memory;
	}
	return defaults;

no_memory:
	snprintf(err, errlen, "out of memory");
fail:
	auth_scope_defaults_free(defaults);
	return NULL;
}

/* See auth.h. */
void
auth_scope_defaults_free(auth_scope_defaults *defaults)
{
	if (defaults == NULL)
		return;
	for (int i = 0; i < defaults->nby_claim; i++)
	{
		free(defaults->by_claim[i].claim);
		free(defaults->by_claim[i].value);
		free(defaults->by_claim[i].scopes);
		free(defaults->by_claim[i].label);
	}
	free(defaults->by_claim);
	free(defaults->default_scopes);
	free(defaults);
}

/* Whether claim is value, or an array holding it. */
static bool
claim_has_value(json_t *claim, const char *value)
{
	size_t index;
	json_t *item;

	if (json_is_string(claim))
		return strcmp(json_string_value(claim), value) == 0;
	json_array_foreach(claim, index, item)
	{
		if (json_is_string(item) && strcmp(json_string_value(item), value) == 0)
			return true;
	}
	return false;
}

/* Appends text to grant->scopes_from ("a, b"). */
static void
note_scopes_from(auth_grant *grant, const char *text)
{
	size_t old = grant->scopes_from ? strlen(grant->scopes_from) : 0;
	char *grown = realloc(grant->scopes_from, old + strlen(text) + 3);

	if (grown == NULL)
		return;
	if (old > 0)
		strcpy(grown + old, ", ");
	strcpy(grown + (old > 0 ? old + 2 : 0), text);
	grant->scopes_from = grown;
}

/* See auth.h. */
void
auth_grant_set_scopes_or_defaults(auth_grant *grant, json_t *claims,
                                  const auth_scope_defaults *defaults)
{
	const char *patient = json_string_value(json_object_get(claims, "patient"));
	bool have_patient;
	bool matched = false;

	if (json_object_get(claims, "scope") != NULL || json_object_get(claims, "scp") != NULL)
	{
		auth_grant_set_scopes(grant, claims);
		note_scopes_from(grant, "the token's scopes");
		return;
	}
	if (patient != NULL && strncmp(patient, "Patient/", 8) == 0)
		patient += 8;
	have_patient = patient != NULL && patient[0] != '\0';
	for (int i = 0; defaults != NULL && i < defaults->nby_claim; i++)
	{
		const claim_scopes *cs = &defaults->by_claim[i];

		if (!claim_has_value(json_object_get(claims, cs->claim), cs->value))
			continue;
		add_scope_string(grant, cs->scopes, have_patient);
		note_scopes_from(grant, cs->label);
		matched = true;
	}
	if (!matched && defaults != NULL && defaults->default_scopes != NULL)
	{
		add_scope_string(grant, defaults->default_scopes, have_patient);
		note_scopes_from(grant, "--default-scopes");
		matched = true;
	}
	if (!matched)
		note_scopes_from(grant, "none: the token has no scope claim and no --default-scopes or "
		                        "--scopes-by-claim applies");
	summarise_rules(grant, have_patient ? patient : NULL);
}

/*
 * Whether grant may receive resource_type changes of patient_id. Each rule
 * is checked on its own: a patient rule needs the grant's own patient.
 */
bool
auth_grant_allows(const auth_grant *grant, const char *patient_id, const char *resource_type)
{
	for (int i = 0; i < grant->nrules; i++)
	{
		const auth_scope_rule *rule = &grant->rules[i];

		if (rule->patient_only && (patient_id == NULL || grant->patient == NULL ||
		                           strcmp(patient_id, grant->patient) != 0))
			continue;
		if (resource_type == NULL || rule->type == NULL || strcmp(rule->type, resource_type) == 0)
			return true;
	}
	return false;
}

/* A grant that allows everything, for --insecure-no-auth. */
void
auth_grant_unrestricted(auth_grant *grant)
{
	memset(grant, 0, sizeof(*grant));
	grant->subject = strdup("anonymous");
	grant->claims = json_object();
	grant->all_patients = true;
	grant->all_types = true;
	add_rule(grant, false, NULL);
}

/* Frees what grant holds and empties it; safe on an empty grant. */
void
auth_grant_clear(auth_grant *grant)
{
	free(grant->subject);
	free(grant->patient);
	for (int i = 0; i < grant->ntypes; i++)
		free(grant->types[i]);
	free(grant->types);
	for (int i = 0; i < grant->nrules; i++)
		free(grant->rules[i].type);
	free(grant->rules);
	json_decref(grant->claims);
	free(grant->scopes_from);
	memset(grant, 0, sizeof(*grant));
}
