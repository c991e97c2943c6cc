/*
 * test_wintehr.c
 *	  Unit tests of what running beside WintEHR needs: scopes for tokens
 *	  that carry none (--default-scopes, --scopes-by-claim), the per-address
 *	  count of failed authentications, the client address behind a
 *	  trusted reverse proxy, and the update a delete of a
 *	  Condition or an AllergyIntolerance becomes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "auth.h"
#include "auth_limit.h"
#include "change.h"
#include "log.h"
#include "proxy.h"

static int failures;

#define CHECK(cond)                                                                                \
	do                                                                                             \
	{                                                                                              \
		if (!(cond))                                                                               \
		{                                                                                          \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
			failures++;                                                                            \
		}                                                                                          \
	} while (0)

/* The grant a token with these claims (JSON text) gets under defaults. */
static void
grant_for(const char *claims_json, const auth_scope_defaults *defaults, auth_grant *grant)
{
	json_t *claims = json_loads(claims_json, 0, NULL);

	memset(grant, 0, sizeof(*grant));
	auth_grant_set_scopes_or_defaults(grant, claims, defaults);
	json_decref(claims);
}

static void
test_scope_defaults(void)
{
	char *by_claim[] = {"role=physician:user/*.read", "role=nurse:user/Observation.rs",
	                    "groups=pharmacy:user/MedicationRequest.read", NULL};
	char err[256] = "";
	auth_scope_defaults *defaults =
	    auth_scope_defaults_parse("user/Condition.read", by_claim, err, sizeof(err));
	auth_scope_defaults *none = auth_scope_defaults_parse(NULL, NULL, err, sizeof(err));
	auth_grant grant;

	CHECK(defaults != NULL);
	CHECK(none != NULL);

	/* a physician: everything of everybody */
	grant_for("{\"sub\":\"dr.a\",\"role\":\"physician\"}", defaults, &grant);
	CHECK(auth_grant_allows(&grant, "p1", "Observation"));
	CHECK(auth_grant_allows(&grant, "p2", NULL));
	CHECK(strcmp(grant.scopes_from, "--scopes-by-claim role=physician") == 0);
	auth_grant_clear(&grant);

	/* a nurse: Observation only; the default does not add Condition */
	grant_for("{\"sub\":\"n\",\"role\":\"nurse\"}", defaults, &grant);
	CHECK(auth_grant_allows(&grant, "p1", "Observation"));
	CHECK(!auth_grant_allows(&grant, "p1", "Condition"));
	auth_grant_clear(&grant);

	/* an array claim; two entries match: both apply */
	grant_for("{\"sub\":\"x\",\"role\":\"nurse\",\"groups\":[\"a\",\"pharmacy\"]}", defaults,
	          &grant);
	CHECK(auth_grant_allows(&grant, "p1", "Observation"));
	CHECK(auth_grant_allows(&grant, "p1", "MedicationRequest"));
	CHECK(!auth_grant_allows(&grant, "p1", "Condition"));
	CHECK(strstr(grant.scopes_from, "role=nurse") && strstr(grant.scopes_from, "groups=pharmacy"));
	auth_grant_clear(&grant);

	/* no entry matches: --default-scopes */
	grant_for("{\"sub\":\"c\",\"role\":\"clerk\"}", defaults, &grant);
	CHECK(auth_grant_allows(&grant, "p1", "Condition"));
	CHECK(!auth_grant_allows(&grant, "p1", "Observation"));
	CHECK(strcmp(grant.scopes_from, "--default-scopes") == 0);
	auth_grant_clear(&grant);

	/* a token with scopes keeps its own, even when they grant nothing */
	grant_for("{\"sub\":\"dr.a\",\"role\":\"physician\",\"scope\":\"openid\"}", defaults, &grant);
	CHECK(!auth_grant_allows(&grant, "p1", NULL));
	CHECK(strcmp(grant.scopes_from, "the token's scopes") == 0);
	auth_grant_clear(&grant);
	grant_for("{\"sub\":\"dr.a\",\"scp\":[\"patient/*.read\"],\"patient\":\"p9\"}", defaults,
	          &grant);
	CHECK(auth_grant_allows(&grant, "p9", "Condition"));
	CHECK(!auth_grant_allows(&grant, "p1", "Condition"));
	auth_grant_clear(&grant);

	/* nothing configured: nothing, and the grant says why */
	grant_for("{\"sub\":\"dr.a\",\"role\":\"physician\"}", none, &grant);
	CHECK(!auth_grant_allows(&grant, "p1", NULL));
	CHECK(strstr(grant.scopes_from, "no scope claim") != NULL);
	auth_grant_clear(&grant);
	grant_for("{\"sub\":\"dr.a\"}", NULL, &grant);
	CHECK(!auth_grant_allows(&grant, "p1", NULL));
	auth_grant_clear(&grant);

	/* a patient/ default applies to the token's patient claim */
	{
		auth_scope_defaults *patient_level =
		    auth_scope_defaults_parse("patient/*.read", NULL, err, sizeof(err));

		CHECK(patient_level != NULL);
		grant_for("{\"sub\":\"pat\",\"patient\":\"Patient/p7\"}", patient_level, &grant);
		CHECK(auth_grant_allows(&grant, "p7", "Condition"));
		CHECK(!auth_grant_allows(&grant, "p1", "Condition"));
		auth_grant_clear(&grant);
		auth_scope_defaults_free(patient_level);
	}

	auth_scope_defaults_free(defaults);
	auth_scope_defaults_free(none);
}

static void
test_scope_defaults_errors(void)
{
	char err[256];
	char *no_equals[] = {"physician:user/*.read", NULL};
	char *no_colon[] = {"role=physician", NULL};
	char *empty_value[] = {"role=:user/*.read", NULL};
	char *typo[] = {"role=physician:user/*.raed", NULL};
	char *no_scopes[] = {"role=physician: ", NULL};

	CHECK(auth_scope_defaults_parse("user/*.write", NULL, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "--default-scopes") && strstr(err, "user/*.write"));
	CHECK(auth_scope_defaults_parse("openid", NULL, err, sizeof(err)) == NULL);
	CHECK(auth_scope_defaults_parse(NULL, no_equals, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "CLAIM=VALUE:SCOPES") != NULL);
	CHECK(auth_scope_defaults_parse(NULL, no_colon, err, sizeof(err)) == NULL);
	CHECK(auth_scope_defaults_parse(NULL, empty_value, err, sizeof(err)) == NULL);
	CHECK(auth_scope_defaults_parse(NULL, typo, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "role=physician") && strstr(err, "user/*.raed"));
	CHECK(auth_scope_defaults_parse(NULL, no_scopes, err, sizeof(err)) == NULL);
	CHECK(strstr(err, "no scopes") != NULL);
}

static void
test_failure_limit(void)
{
	long long t = 1000000000LL;
	int retry = 0;

	log_min_level = LOG_LEVEL_ERROR; /* the lines themselves are checked end to end */
	for (int i = 0; i < 3; i++)
		CHECK(!auth_failure_record("10.0.0.1", "upgrade", "bad", 3, t + i, &retry));
	CHECK(auth_failure_record("10.0.0.1", "upgrade", "bad", 3, t + 4, &retry));
	CHECK(retry == 10);
	CHECK(auth_failure_record("10.0.0.1", "upgrade", "bad", 3, t + 4000000, &retry));
	CHECK(retry == 6);
	/* another address has its own count; no limit: never over */
	CHECK(!auth_failure_record("10.0.0.2", "upgrade", "bad", 3, t + 5, NULL));
	for (int i = 0; i < 10; i++)
		CHECK(!auth_failure_record("10.0.0.3", "upgrade", "bad", 0, t + 6, NULL));
	CHECK(auth_failures_tracked() == 3);
	/* the interval ends: counting starts over */
	CHECK(
	    !auth_failure_record("10.0.0.1", "upgrade", "bad", 3, t + AUTH_FAILURE_INTERVAL_US, NULL));
	/* quiet addresses are forgotten an interval after their last failure */
	auth_failures_sweep(t + AUTH_FAILURE_INTERVAL_US + 10);
	CHECK(auth_failures_tracked() == 1);
	auth_failures_sweep(t + 3 * AUTH_FAILURE_INTERVAL_US);
	CHECK(auth_failures_tracked() == 0);
	/* past the table's size, further addresses share one entry */
	for (int i = 0; i < AUTH_FAILURE_MAX_ADDRESSES + 10; i++)
	{
		char address[32];

		snprintf(address, sizeof(address), "10.1.%d.%d", i / 256, i % 256);
		auth_failure_record(address, "upgrade", "bad", 3, t, NULL);
	}
	CHECK(auth_failures_tracked() == AUTH_FAILURE_MAX_ADDRESSES + 1);
	auth_failures_free();
	CHECK(auth_failures_tracked() == 0);
	log_min_level = LOG_LEVEL_INFO;
}

/* A change log row as fhir_notify.read() gives it (CHANGE_COLUMNS), as a PGresult. */
static PGresult *
log_row(long long position, const char *action, const char *type, const char *id,
        const char *patients, const char *resource)
{
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attrs[CHANGE_NCOLUMNS];
	char tick[24], pos[24];
	const char *values[CHANGE_NCOLUMNS];

	memset(attrs, 0, sizeof(attrs));
	for (int i = 0; i < CHANGE_NCOLUMNS; i++)
		attrs[i].name = "c";
	PQsetResultAttrs(res, CHANGE_NCOLUMNS, attrs);
	snprintf(tick, sizeof(tick), "%d", 7);
	snprintf(pos, sizeof(pos), "%lld", position);
	values[0] = tick;
	values[1] = pos;
	values[2] = action;
	values[3] = type;
	values[4] = id;
	values[5] = "1";
	values[6] = patients;
	values[7] = resource;
	values[8] = "nurse.jones";
	values[9] = "2026-12-01T00:00:00.000000Z";
	values[10] = "1764547200000000";
	for (int i = 0; i < CHANGE_NCOLUMNS; i++)
		PQsetvalue(res, 0, i, (char *) values[i], values[i] ? (int) strlen(values[i]) : -1);
	return res;
}

/* The data object of c's update for patient number i. */
static json_t *
update_data(change *c, int i)
{
	json_t *root = json_loads((const char *) message_payload(c->messages[i]), 0, NULL);
	json_t *data = json_incref(json_object_get(root, "data"));

	json_decref(root);
	return data;
}

static change *
change_of(long long position, const char *action, const char *type, const char *id,
          const char *patients, const char *resource)
{
	PGresult *res = log_row(position, action, type, id, patients, resource);
	change *c = change_from_row(res, 0, 0);

	PQclear(res);
	return c;
}

static void
test_delete_events(void)
{
	const char *allergy = "{\"resourceType\":\"AllergyIntolerance\",\"id\":\"a1\",\"code\":"
	                      "{\"text\":\"Peanuts\"}}";
	change *c;
	json_t *data;

	CHECK(strcmp(change_delete_event("Condition"), "condition.deleted") == 0);
	CHECK(strcmp(change_delete_event("AllergyIntolerance"), "allergy.deleted") == 0);
	CHECK(change_delete_event("MedicationRequest") == NULL);

	/* created: no event_type, the body as read */
	c = change_of(1, "created", "AllergyIntolerance", "a1", "[\"p1\"]", allergy);
	data = update_data(c, 0);
	CHECK(json_object_get(data, "event_type") == NULL);
	CHECK(strcmp(json_string_value(json_object_get(json_object_get(data, "resource"), "id")),
	             "a1") == 0);
	json_decref(data);
	change_unref(c);
	CHECK(change_bodies_count() == 1);

	/* its delete: allergy.deleted with the last body; a second patient gets the stub */
	c = change_of(2, "deleted", "AllergyIntolerance", "a1", "[\"p1\",\"p2\"]", NULL);
	CHECK(c->npatients == 2);
	data = update_data(c, 0);
	CHECK(strcmp(json_string_value(json_object_get(data, "event_type")), "allergy.deleted") == 0);
	CHECK(strcmp(json_string_value(json_object_get(
	                 json_object_get(json_object_get(data, "resource"), "code"), "text")),
	             "Peanuts") == 0);
	CHECK(strcmp(json_string_value(json_object_get(data, "action")), "deleted") == 0);
	json_decref(data);
	data = update_data(c, 1);
	{
		json_t *stub = json_pack("{s:s, s:s}", "resourceType", "AllergyIntolerance", "id", "a1");

		CHECK(json_equal(json_object_get(data, "resource"), stub));
		json_decref(stub);
	}
	json_decref(data);
	change_unref(c);

	/* a delete replayed from before the body was read: the stub */
	c = change_of(0, "deleted", "AllergyIntolerance", "a1", "[\"p1\"]", NULL);
	data = update_data(c, 0);
	CHECK(json_object_size(json_object_get(data, "resource")) == 2);
	json_decref(data);
	change_unref(c);

	/* a Condition never read: condition.deleted with the stub */
	c = change_of(3, "deleted", "Condition", "c\"9", "[\"p1\"]", NULL);
	data = update_data(c, 0);
	CHECK(strcmp(json_string_value(json_object_get(data, "event_type")), "condition.deleted") == 0);
	CHECK(strcmp(json_string_value(json_object_get(json_object_get(data, "resource"), "id")),
	             "c\"9") == 0);
	CHECK(strcmp(
	          json_string_value(json_object_get(json_object_get(data, "resource"), "resourceType")),
	          "Condition") == 0);
	json_decref(data);
	change_unref(c);

	/* other types: resource null and no event_type, as before */
	c = change_of(4, "deleted", "MedicationRequest", "m1", "[\"p1\"]", NULL);
	data = update_data(c, 0);
	CHECK(json_is_null(json_object_get(data, "resource")));
	CHECK(json_object_get(data, "event_type") == NULL);
	json_decref(data);
	change_unref(c);
	CHECK(change_bodies_count() == 1);

	/* bounded: the least recently written bodies are forgotten */
	for (int i = 0; i < 10100; i++)
	{
		char id[16];

		snprintf(id, sizeof(id), "x%d", i);
		change_unref(change_of(10 + i, "updated", "Condition", id, "[\"p1\"]", "{}"));
	}
	CHECK(change_bodies_count() == 10000);
	change_bodies_free();
	CHECK(change_bodies_count() == 0);
}

/* proxy_client_address(peer, forwarded) equals expected. */
static bool
address_is(const char *peer, const char *forwarded, const char *expected)
{
	char out[PROXY_ADDRESS_LEN];

	proxy_client_address(peer, forwarded, out, sizeof(out));
	if (strcmp(out, expected) != 0)
		fprintf(stderr, "peer %s, X-Forwarded-For \"%s\": %s, expected %s\n", peer,
		        forwarded ? forwarded : "(none)", out, expected);
	return strcmp(out, expected) == 0;
}

static void
test_trusted_proxies(void)
{
	char *none[] = {NULL};
	char *lists[] = {"127.0.0.1, 10.0.0.0/8", "fd00::/8 ::1", NULL};
	char *bad[][2] = {
	    {"10.0.0.0/33", NULL}, {"nginx", NULL}, {"10.0.0.1/", NULL}, {"::1/129", NULL}};
	char err[256];

	/* no trusted proxy: the header is the client's to forge, so ignored */
	CHECK(proxy_configure(none, err, sizeof(err)));
	CHECK(address_is("127.0.0.1", "203.0.113.7", "127.0.0.1"));

	CHECK(proxy_configure(lists, err, sizeof(err)));
	CHECK(address_is("127.0.0.1", "203.0.113.7", "203.0.113.7"));
	CHECK(address_is("127.0.0.1", NULL, "127.0.0.1"));
	CHECK(address_is("::ffff:127.0.0.1", " 203.0.113.7 ", "203.0.113.7"));
	/* from a peer that is not a proxy, the header counts for nothing */
	CHECK(address_is("198.51.100.2", "203.0.113.7", "198.51.100.2"));
	/* a forged entry left of the proxy's is not believed; trusted hops are skipped */
	CHECK(address_is("127.0.0.1", "1.1.1.1, 203.0.113.7, 10.1.2.3", "203.0.113.7"));
	CHECK(address_is("10.9.9.9", "203.0.113.7:51234", "203.0.113.7"));
	CHECK(address_is("::1", "[2001:db8::5]:443", "2001:db8::5"));
	CHECK(address_is("fd12::1", "2001:db8::6", "2001:db8::6"));
	/* every hop trusted: the left-most one */
	CHECK(address_is("127.0.0.1", "10.0.0.5, 10.0.0.6", "10.0.0.5"));
	/* not an address: nothing left of it is vouched for */
	CHECK(address_is("127.0.0.1", "203.0.113.7, unknown", "127.0.0.1"));
	CHECK(address_is("127.0.0.1", "203.0.113.7, unknown, 10.0.0.1", "10.0.0.1"));
	CHECK(address_is("127.0.0.1", "", "127.0.0.1"));
	/* 10.0.0.0/8 is not 11.x; a /8 is not a /9 */
	CHECK(address_is("11.0.0.1", "203.0.113.7", "11.0.0.1"));

	/* a bad entry is refused with the entry named, and the list kept */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
	{
		err[0] = '\0';
		CHECK(!proxy_configure(bad[i], err, sizeof(err)));
		CHECK(strstr(err, bad[i][0]) != NULL);
	}
	CHECK(address_is("127.0.0.1", "203.0.113.7", "203.0.113.7"));
	proxy_free();
	CHECK(address_is("127.0.0.1", "203.0.113.7", "127.0.0.1"));
}

int
main(void)
{
	test_scope_defaults();
	test_scope_defaults_errors();
	test_failure_limit();
	test_delete_events();
	test_trusted_proxies();
	if (failures)
	{
		fprintf(stderr, "test_wintehr: %d checks failed\n", failures);
		return 1;
	}
	printf("test_wintehr: all checks passed\n");
	return 0;
}
