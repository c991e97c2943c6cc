/*
 * compartment.c
 *	  Which patients a FHIR resource belongs to: the FHIR R4 Patient
 *	  compartment, read directly from the jsonb binary.
 *
 * The capture trigger calls fhir_notify_compartment_patient_ids() for every write, so
 * this is a hot path: the compartment is a static table of type -> paths,
 * compiled once and searched by binary search; references are read in place
 * (reference.c) and only the final ids are copied. Nothing here throws on
 * content: odd JSON just routes to nobody.
 */
#include "postgres.h"

#include <stdlib.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include "fhir_notify.h"

#define MAX_PATH_STEPS     4
#define MAX_KEY_LEN        64 /* including the terminating NUL */
#define MAX_TYPE_LEN       64 /* including the terminating NUL */
#define MAX_TYPE_PATHS     4
#define INLINE_COLLECTED   16
#define DEFAULT_EXTRA_LINK "Device.patient, Task.for"

/* One member access; array says the member is an array to walk element-wise. */
typedef struct PathStep
{
	char key[MAX_KEY_LEN];
	int key_len;
	bool array;
} PathStep;

/* A JSON path from the resource to a Reference element, e.g. participant[].actor. */
typedef struct CompartmentPath
{
	int step_count;
	PathStep steps[MAX_PATH_STEPS];
} CompartmentPath;

/* The compartment paths of one resource type. */
typedef struct TypePaths
{
	char type[MAX_TYPE_LEN];
	int type_len;
	int path_count;
	CompartmentPath paths[MAX_TYPE_PATHS];
} TypePaths;

/* One entry of fhir_notify.extra_links: a path outside the R4 compartment. */
typedef struct ExtraLink
{
	char type[MAX_TYPE_LEN];
	int type_len;
	CompartmentPath path;
} ExtraLink;

/* The compiled fhir_notify.extra_links: the GUC's "extra", one malloc'd block. */
typedef struct ExtraLinks
{
	int count;
	ExtraLink links[FLEXIBLE_ARRAY_MEMBER];
} ExtraLinks;

/* An id found in the resource, pointing into the jsonb data. */
typedef struct IdSpan
{
	const char *id;
	int len;
} IdSpan;

/* The ids found so far; small resources never leave the inline array. */
typedef struct Collector
{
	IdSpan *items;
	int count;
	int capacity;
	IdSpan inline_items[INLINE_COLLECTED];
} Collector;

/*
 * The FHIR R4 (4.0.1) Patient CompartmentDefinition joined with the search
 * parameter expressions (README.md, "Routing"); sql/routing_types.sql tests
 * every row. "[]" marks an array.
 * Patient additionally belongs to itself (see fhir_notify_compartment_patient_ids).
 */
static const struct
{
	const char *type;
	const char *paths;
} compartment_source[] = {
    {"Account", "subject[]"},
    {"AdverseEvent", "subject"},
    {"AllergyIntolerance", "patient, recorder, asserter"},
    {"Appointment", "participant[].actor"},
    {"AppointmentResponse", "actor"},
    {"AuditEvent", "agent[].who, entity[].what"},
    {"Basic", "subject, author"},
    {"BodyStructure", "patient"},
    {"CarePlan", "subject, activity[].detail.performer[]"},
    {"CareTeam", "subject, participant[].member"},
    {"ChargeItem", "subject"},
    {"Claim", "patient, payee.party"},
    {"ClaimResponse", "patient"},
    {"ClinicalImpression", "subject"},
    {"Communication", "subject, sender, recipient[]"},
    {"CommunicationRequest", "subject, sender, recipient[], requester"},
    {"Composition", "subject, author[], attester[].party"},
    {"Condition", "subject, asserter"},
    {"Consent", "patient"},
    {"Coverage", "policyHolder, subscriber, beneficiary, payor[]"},
    {"CoverageEligibilityRequest", "patient"},
    {"CoverageEligibilityResponse", "patient"},
    {"DetectedIssue", "patient"},
    {"DeviceRequest", "subject, performer"},
    {"DeviceUseStatement", "subject"},
    {"DiagnosticReport", "subject"},
    {"DocumentManifest", "subject, author[], recipient[]"},
    {"DocumentReference", "subject, author[]"},
    {"Encounter", "subject"},
    {"EnrollmentRequest", "candidate"},
    {"EpisodeOfCare", "patient"},
    {"ExplanationOfBenefit", "patient, payee.party"},
    {"FamilyMemberHistory", "patient"},
    {"Flag", "subject"},
    {"Goal", "subject"},
    {"Group", "member[].entity"},
    {"ImagingStudy", "subject"},
    {"Immunization", "patient"},
    {"ImmunizationEvaluation", "patient"},
    {"ImmunizationRecommendation", "patient"},
    {"Invoice", "subject, recipient"},
    {"List", "subject, source"},
    {"MeasureReport", "subject"},
    {"Media", "subject"},
    {"MedicationAdministration", "subject, performer[].actor"},
    {"MedicationDispense", "subject, receiver[]"},
    {"MedicationRequest", "subject"},
    {"MedicationStatement", "subject"},
    {"MolecularSequence", "patient"},
    {"NutritionOrder", "patient"},
    {"Observation", "subject, performer[]"},
    {"Patient", "link[].other"},
    {"Person", "link[].target"},
    {"Procedure", "subject, performer[].actor"},
    {"Provenance", "target[]"},
    {"QuestionnaireResponse", "subject, author"},
    {"RelatedPerson", "patient"},
    {"RequestGroup", "subject, action[].participant[]"},
    {"ResearchSubject", "individual"},
    {"RiskAssessment", "subject"},
    {"Schedule", "actor[]"},
    {"ServiceRequest", "subject, performer[]"},
    {"Specimen", "subject"},
    {"SupplyDelivery", "patient"},
    {"SupplyRequest", "deliverTo"},
    {"VisionPrescription", "patient"},
};

/* compartment_source compiled and sorted by type, by fhir_notify_compartment_init(). */
static TypePaths compartment_types[lengthof(compartment_source)];
static int compartment_type_count = 0;

/* fhir_notify.extra_links: the setting's text and its compiled form. */
static char *extra_links_setting = NULL;
static const ExtraLinks *extra_links = NULL;

PG_FUNCTION_INFO_V1(patient_refs);
PG_FUNCTION_INFO_V1(patient_refs_typed);

/*
 * Orders counted strings like strcmp orders C strings.
 */
static inline int
span_compare(const char *a, int a_len, const char *b, int b_len)
{
	int c = memcmp(a, b, Min(a_len, b_len));

	if (c != 0)
		return c;
	return (a_len > b_len) - (a_len < b_len);
}

/*
 * Parses one path, e.g. "activity[].detail.performer[]", into out. Member
 * names are [a-z][A-Za-z0-9]*; returns false on anything else.
 */
static bool
parse_path(const char *text, int len, CompartmentPath *out)
{
	int i = 0;

	out->step_count = 0;
	while (i < len)
	{
		PathStep *step;
		int start = i;

		if (out->step_count == MAX_PATH_STEPS)
			return false;
		step = &out->steps[out->step_count++];
		if (!(text[i] >= 'a' && text[i] <= 'z'))
			return false;
		while (i < len &&
		       ((text[i] >= 'a' && text[i] <= 'z') || (text[i] >= 'A' && text[i] <= 'Z') ||
		        (text[i] >= '0' && text[i] <= '9')))
			i++;
		if (i - start >= MAX_KEY_LEN)
			return false;
		memcpy(step->key, text + start, i - start);
		step->key[i - start] = '\0';
		step->key_len = i - start;
		step->array = false;
		if (i + 1 < len && text[i] == '[' && text[i + 1] == ']')
		{
			step->array = true;
			i += 2;
		}
		if (i == len)
			break;
		if (text[i] != '.' || i + 1 == len)
			return false;
		i++;
	}
	return out->step_count > 0;
}

/*
 * Parses one extra link, "Type.path" as in "Device.patient", into out.
 * Types are [A-Z][A-Za-z]*.
 */
static bool
parse_extra_link(const char *text, int len, ExtraLink *out)
{
	int i = 0;

	if (len == 0 || !(text[0] >= 'A' && text[0] <= 'Z'))
		return false;
	while (i < len && ((text[i] >= 'a' && text[i] <= 'z') || (text[i] >= 'A' && text[i] <= 'Z')))
		i++;
	if (i >= MAX_TYPE_LEN || i == len || text[i] != '.')
		return false;
	memcpy(out->type, text, i);
	out->type[i] = '\0';
	out->type_len = i;
	return parse_path(text + i + 1, len - i - 1, &out->path);
}

/*
 * Compiles one entry of compartment_source; a failure is a bug in the table.
 */
static void
compile_type(int index, TypePaths *out)
{
	const char *type = compartment_source[index].type;
	const char *paths = compartment_source[index].paths;

	if (strlen(type) >= MAX_TYPE_LEN)
		elog(ERROR, "compartment type name \"%s\" is too long", type);
	strcpy(out->type, type);
	out->type_len = strlen(type);
	out->path_count = 0;
	while (*paths != '\0')
	{
		const char *end = strchr(paths, ',');
		int len = end ? end - paths : (int) strlen(paths);

		if (out->path_count == MAX_TYPE_PATHS ||
		    !parse_path(paths, len, &out->paths[out->path_count++]))
			elog(ERROR, "bad compartment path \"%.*s\" for type \"%s\"", len, paths, type);
		paths += len;
		while (*paths == ',' || *paths == ' ')
			paths++;
	}
}

/*
 * qsort comparator of compiled types, by type name.
 */
static int
type_paths_compare(const void *a, const void *b)
{
	const TypePaths *x = a;
	const TypePaths *y = b;

	return span_compare(x->type, x->type_len, y->type, y->type_len);
}

/*
 * Validates and compiles a new value of fhir_notify.extra_links: a
 * comma-separated list of Type.path entries, possibly empty.
 */
static bool
check_extra_links(char **newval, void **extra, GucSource source)
{
	const char *s = *newval ? *newval : "";
	int max_links = 1;
	ExtraLinks *links;

	for (const char *p = s; *p; p++)
		if (*p == ',')
			max_links++;
	links = malloc(offsetof(ExtraLinks, links) + max_links * sizeof(ExtraLink));
	if (links == NULL)
	{
		GUC_check_errcode(ERRCODE_OUT_OF_MEMORY);
		GUC_check_errmsg("out of memory");
		return false;
	}
	links->count = 0;

	for (const char *p = s;;)
	{
		const char *end = strchr(p, ',');
		int len = end ? end - p : (int) strlen(p);
		const char *item = p;
		int item_len = len;

		while (item_len > 0 && (*item == ' ' || *item == '\t' || *item == '\n'))
			item++, item_len--;
		while (item_len > 0 && (item[item_len - 1] == ' ' || item[item_len - 1] == '\t' ||
		                        item[item_len - 1] == '\n'))
			item_len--;
		/* An empty list turns every extra link off; an empty entry is a typo. */
		if (item_len == 0 && (end != NULL || links->count > 0))
		{
			free(links);
			GUC_check_errdetail("The list has an empty entry.");
			GUC_check_errhint(
			    "Write entries such as \"Device.patient, Task.for\", or '' for none.");
			return false;
		}
		if (item_len > 0 && !parse_extra_link(item, item_len, &links->links[links->count++]))
		{
			GUC_check_errdetail("Entry \"%.*s\" is not of the form Type.path.", Min(item_len, 200),
			                    item);
			GUC_check_errhint("Write entries such as \"Device.patient\" or "
			                  "\"Observation.performer[]\": a resource type, then member "
			                  "names separated by dots (at most 4), \"[]\" after an array "
			                  "member.");
			free(links);
			return false;
		}
		if (end == NULL)
			break;
		p = end + 1;
	}

	*extra = links;
	return true;
}

/*
 * Installs the compiled value checked by check_extra_links.
 */
static void
assign_extra_links(const char *newval, void *extra)
{
	extra_links = extra;
}

/*
 * Compiles the compartment table and registers the routing settings.
 */
void
fhir_notify_compartment_init(void)
{
	for (int i = 0; i < (int) lengthof(compartment_source); i++)
		compile_type(i, &compartment_types[i]);
	compartment_type_count = lengthof(compartment_source);
	qsort(compartment_types, compartment_type_count, sizeof(TypePaths), type_paths_compare);

	DefineCustomStringVariable(
	    "fhir_notify.extra_links",
	    "References outside the FHIR R4 Patient compartment that also route a resource to a "
	    "patient.",
	    "A comma-separated list of Type.path entries, \"[]\" marking arrays, e.g. "
	    "\"Device.patient, Task.for\"; '' routes by the R4 compartment alone.",
	    &extra_links_setting, DEFAULT_EXTRA_LINK, PGC_SUSET, GUC_LIST_INPUT, check_extra_links,
	    assign_extra_links, NULL);
}

/*
 * The compiled compartment paths of a resource type, or NULL.
 */
static const TypePaths *
find_type(const char *type, int type_len)
{
	int low = 0;
	int high = compartment_type_count - 1;

	while (low <= high)
	{
		int middle = (low + high) / 2;
		const TypePaths *candidate = &compartment_types[middle];
		int c = span_compare(type, type_len, candidate->type, candidate->type_len);

		if (c == 0)
			return candidate;
		if (c < 0)
			high = middle - 1;
		else
			low = middle + 1;
	}
	return NULL;
}

/*
 * Whether a resource of this type can belong to a patient at all: a
 * Patient, a type of the compartment, or one of fhir_notify.extra_links.
 * The capture trigger skips reading resources of other types when their
 * changes would not be recorded anyway.
 */
bool
fhir_notify_compartment_type_routed(const char *type)
{
	int type_len = strlen(type);

	if (type_len == 7 && memcmp(type, "Patient", 7) == 0)
		return true;
	if (find_type(type, type_len) != NULL)
		return true;
	if (extra_links != NULL)
		for (int i = 0; i < extra_links->count; i++)
			if (span_compare(type, type_len, extra_links->links[i].type,
			                 extra_links->links[i].type_len) == 0)
				return true;
	return false;
}

/*
 * Adds one id; a repeat of the previous id (a common case) is dropped here.
 */
static void
collect(Collector *out, const char *id, int len)
{
	if (out->count > 0 &&
	    span_compare(out->items[out->count - 1].id, out->items[out->count - 1].len, id, len) == 0)
		return;
	if (out->count == out->capacity)
	{
		int capacity = out->capacity * 2;

		if (out->items == out->inline_items)
		{
			out->items = palloc(capacity * sizeof(IdSpan));
			memcpy(out->items, out->inline_items, out->count * sizeof(IdSpan));
		}
		else
			out->items = repalloc_huge(out->items, capacity * sizeof(IdSpan));
		out->capacity = capacity;
	}
	out->items[out->count].id = id;
	out->items[out->count].len = len;
	out->count++;
}

static void walk_object(JsonbContainer *object, const PathStep *steps, int step_count,
                        Collector *out);

/*
 * Follows the rest of a path from one value; at the end of the path the
 * value is a Reference element.
 */
static void
walk_value(const JsonbValue *value, const PathStep *steps, int step_count, Collector *out)
{
	const char *id;
	int id_len;

	if (value->type != jbvBinary)
		return;
	if (step_count > 0)
		walk_object(value->val.binary.data, steps, step_count, out);
	else if (fhir_notify_reference_patient_id(value->val.binary.data, &id, &id_len))
		collect(out, id, id_len);
}

/*
 * Follows a path from an object: takes the first step's member, element by
 * element when the step is an array.
 */
static void
walk_object(JsonbContainer *object, const PathStep *steps, int step_count, Collector *out)
{
	JsonbValue member;
	JsonbIterator *it;
	JsonbValue element;
	JsonbIteratorToken token;

	if (!JsonContainerIsObject(object) ||
	    !getKeyJsonValueFromContainer(object, steps->key, steps->key_len, &member))
		return;
	if (!steps->array)
	{
		walk_value(&member, steps + 1, step_count - 1, out);
		return;
	}
	if (member.type != jbvBinary || !JsonContainerIsArray(member.val.binary.data) ||
	    JsonContainerIsScalar(member.val.binary.data))
		return;
	/* The iterator frees itself when it reaches the end of the array. */
	it = JsonbIteratorInit(member.val.binary.data);
	while ((token = JsonbIteratorNext(&it, &element, true)) != WJB_DONE)
	{
		if (token == WJB_ELEM)
			walk_value(&element, steps + 1, step_count - 1, out);
	}
}

/*
 * qsort comparator of collected ids, in strcmp order.
 */
static int
id_span_compare(const void *a, const void *b)
{
	const IdSpan *x = a;
	const IdSpan *y = b;

	return span_compare(x->id, x->len, y->id, y->len);
}

/*
 * Sorts and dedupes the collected ids into result, as separately palloc'd
 * C strings, and frees the collector.
 */
static void
finish(Collector *out, PatientIds *result)
{
	int distinct = 0;

	if (out->count > 1)
		qsort(out->items, out->count, sizeof(IdSpan), id_span_compare);
	for (int i = 0; i < out->count; i++)
	{
		if (distinct > 0 && id_span_compare(&out->items[distinct - 1], &out->items[i]) == 0)
			continue;
		out->items[distinct++] = out->items[i];
	}
	result->count = distinct;
	result->ids = NULL;
	if (distinct > 0)
	{
		result->ids = palloc(distinct * sizeof(char *));
		for (int i = 0; i < distinct; i++)
			result->ids[i] = pnstrdup(out->items[i].id, out->items[i].len);
	}
	if (out->items != out->inline_items)
		pfree(out->items);
}

/*
 * Collects the patients that resource belongs to into result. resource_type
 * NULL reads "resourceType" from the JSON; logical_id NULL reads "id" (the
 * fhirbase layout stores the JSON without it). An unknown type, or a
 * resource that is not an object, belongs to nobody.
 */
void
fhir_notify_compartment_patient_ids(JsonbContainer *resource, const char *resource_type,
                                    const char *logical_id, PatientIds *result)
{
	Collector out;
	const char *type;
	int type_len;
	JsonbValue v;
	const TypePaths *type_paths;

	result->count = 0;
	result->ids = NULL;
	if (resource == NULL || !JsonContainerIsObject(resource))
		return;

	if (resource_type != NULL)
	{
		type = resource_type;
		type_len = strlen(resource_type);
	}
	else if (getKeyJsonValueFromContainer(resource, "resourceType", 12, &v) && v.type == jbvString)
	{
		type = v.val.string.val;
		type_len = v.val.string.len;
	}
	else
		return;

	out.items = out.inline_items;
	out.count = 0;
	out.capacity = INLINE_COLLECTED;

	type_paths = find_type(type, type_len);
	if (type_paths != NULL)
	{
		for (int i = 0; i < type_paths->path_count; i++)
			walk_object(resource, type_paths->paths[i].steps, type_paths->paths[i].step_count,
			            &out);
	}
	if (extra_links != NULL)
	{
		for (int i = 0; i < extra_links->count; i++)
		{
			const ExtraLink *link = &extra_links->links[i];

			if (span_compare(type, type_len, link->type, link->type_len) == 0)
				walk_object(resource, link->path.steps, link->path.step_count, &out);
		}
	}

	/* A Patient belongs to its own compartment. */
	if (type_len == 7 && memcmp(type, "Patient", 7) == 0)
	{
		if (logical_id != NULL)
		{
			if (fhir_notify_patient_id_is_valid(logical_id, strlen(logical_id)))
				collect(&out, logical_id, strlen(logical_id));
		}
		else if (getKeyJsonValueFromContainer(resource, "id", 2, &v) && v.type == jbvString &&
		         fhir_notify_patient_id_is_valid(v.val.string.val, v.val.string.len))
			collect(&out, v.val.string.val, v.val.string.len);
	}

	finish(&out, result);
}

/*
 * The ids as a text[]; '{}' when there are none.
 */
static ArrayType *
ids_to_text_array(const PatientIds *ids)
{
	Datum *elements = palloc(Max(ids->count, 1) * sizeof(Datum));

	for (int i = 0; i < ids->count; i++)
		elements[i] = PointerGetDatum(cstring_to_text(ids->ids[i]));
	return construct_array(elements, ids->count, TEXTOID, -1, false, TYPALIGN_INT);
}

/*
 * SQL: fhir_notify.patient_refs(resource jsonb) RETURNS text[]. The ids of
 * the patients a resource belongs to, distinct and sorted; '{}' for none.
 */
Datum
patient_refs(PG_FUNCTION_ARGS)
{
	Jsonb *resource = PG_GETARG_JSONB_P(0);
	PatientIds ids;

	fhir_notify_compartment_patient_ids(&resource->root, NULL, NULL, &ids);
	PG_RETURN_ARRAYTYPE_P(ids_to_text_array(&ids));
}

/*
 * SQL: fhir_notify.patient_refs(resource jsonb, resource_type text,
 * logical_id text DEFAULT NULL) RETURNS text[]. As above, with the type and
 * id taken from the arguments when not NULL, as the capture trigger does for
 * tables that keep them outside the JSON (fhirbase).
 */
Datum
patient_refs_typed(PG_FUNCTION_ARGS)
{
	Jsonb *resource;
	char *resource_type = NULL;
	char *logical_id = NULL;
	PatientIds ids;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	resource = PG_GETARG_JSONB_P(0);
	if (!PG_ARGISNULL(1))
		resource_type = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (!PG_ARGISNULL(2))
		logical_id = text_to_cstring(PG_GETARG_TEXT_PP(2));

	fhir_notify_compartment_patient_ids(&resource->root, resource_type, logical_id, &ids);
	PG_RETURN_ARRAYTYPE_P(ids_to_text_array(&ids));
}
