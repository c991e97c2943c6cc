/*
 * reference.c
 *	  Reads the Patient id out of one FHIR Reference element, directly from
 *	  the jsonb binary. Nothing is allocated: the id returned points into the
 *	  jsonb data.
 *
 * A Reference names a Patient when it is one of
 *	  {"reference": "Patient/123"}                          relative
 *	  {"reference": "https://host/fhir/Patient/123"}        absolute
 *	  {"reference": "Patient/123/_history/2"}               versioned
 *	  {"reference": "urn:uuid:123", "type": "Patient"}      bundle placeholder
 *	  {"resourceType": "Patient", "id": "123"}              Aidbox / fhirbase
 * Contained ("#p1"), conditional ("Patient?identifier=...") and
 * identifier-only references cannot be routed without a lookup and never
 * count. When the element has a "type", it must be "Patient" too.
 */
#include "postgres.h"

#include "fhir_notify.h"

#define PATIENT_TYPE "Patient"
#define URN_UUID     "urn:uuid:"

/*
 * Whether the counted string s equals the C string literal.
 */
static inline bool
span_equals(const char *s, int len, const char *literal)
{
	int literal_len = strlen(literal);

	return len == literal_len && memcmp(s, literal, len) == 0;
}

/*
 * Looks up key in an object and returns its value when it is a string.
 */
static bool
string_member(JsonbContainer *object, const char *key, const char **value, int *len)
{
	JsonbValue v;

	if (!getKeyJsonValueFromContainer(object, key, strlen(key), &v) || v.type != jbvString)
		return false;
	*value = v.val.string.val;
	*len = v.val.string.len;
	return true;
}

/*
 * Whether id is a FHIR logical id: 1 to 64 characters of [A-Za-z0-9.-].
 * Everything else is refused so that no odd string ever becomes a room name.
 */
bool
fhir_notify_patient_id_is_valid(const char *id, int len)
{
	if (len < 1 || len > PATIENT_ID_MAX_LEN)
		return false;
	for (int i = 0; i < len; i++)
	{
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-'))
			return false;
	}
	return true;
}

/*
 * The start of the '/'-separated segment of s that ends at end: the index
 * just after the previous '/', or 0 when there is none.
 */
static int
segment_start(const char *s, int end)
{
	int i = end;

	while (i > 0 && s[i - 1] != '/')
		i--;
	return i;
}

/*
 * Finds the Patient id in a reference string. typed_patient says the
 * element's "type" is "Patient", which alone makes a urn:uuid placeholder
 * a Patient. On success *id points into ref.
 */
static bool
reference_string_patient_id(const char *ref, int len, bool typed_patient, const char **id,
                            int *id_len)
{
	int id_start, id_end, type_start, type_end;

	if (len > (int) strlen(URN_UUID) && memcmp(ref, URN_UUID, strlen(URN_UUID)) == 0)
	{
		if (!typed_patient)
			return false;
		*id = ref + strlen(URN_UUID);
		*id_len = len - strlen(URN_UUID);
		return fhir_notify_patient_id_is_valid(*id, *id_len);
	}

	/* Conditional references need a search, fragments point inside a resource. */
	if (memchr(ref, '?', len) != NULL || memchr(ref, '#', len) != NULL)
		return false;

	/* The type and the id are the last two segments, after any /_history/n. */
	id_end = len;
	id_start = segment_start(ref, id_end);
	if (id_start == 0)
		return false;
	type_end = id_start - 1;
	type_start = segment_start(ref, type_end);
	if (span_equals(ref + type_start, type_end - type_start, "_history"))
	{
		if (type_start == 0)
			return false;
		id_end = type_start - 1;
		id_start = segment_start(ref, id_end);
		if (id_start == 0)
			return false;
		type_end = id_start - 1;
		type_start = segment_start(ref, type_end);
	}
	if (!span_equals(ref + type_start, type_end - type_start, PATIENT_TYPE))
		return false;

	*id = ref + id_start;
	*id_len = id_end - id_start;
	return fhir_notify_patient_id_is_valid(*id, *id_len);
}

/*
 * Finds the Patient id a Reference element points to. Anything that is not
 * one of the forms above (numbers, arrays, other types, bad ids) yields
 * nothing rather than an error: routing must never fail a clinical write.
 */
bool
fhir_notify_reference_patient_id(JsonbContainer *element, const char **id, int *id_len)
{
	JsonbValue v;
	bool typed_patient = false;
	const char *s;
	int len;

	if (!JsonContainerIsObject(element))
		return false;

	if (getKeyJsonValueFromContainer(element, "type", 4, &v))
	{
		if (v.type != jbvString || !span_equals(v.val.string.val, v.val.string.len, PATIENT_TYPE))
			return false;
		typed_patient = true;
	}

	if (getKeyJsonValueFromContainer(element, "reference", 9, &v))
	{
		if (v.type != jbvString)
			return false;
		return reference_string_patient_id(v.val.string.val, v.val.string.len, typed_patient, id,
		                                   id_len);
	}

	/* The Aidbox / fhirbase form: {"resourceType": "Patient", "id": "123"} */
	if (string_member(element, "resourceType", &s, &len) && span_equals(s, len, PATIENT_TYPE) &&
	    string_member(element, "id", id, id_len))
		return fhir_notify_patient_id_is_valid(*id, *id_len);

	return false;
}
