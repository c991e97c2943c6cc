/*
 * layout.c
 *	  Where a watched table keeps type, id, version and deleted state:
 *	  recognising the layout of a table at watch() time, checking its
 *	  columns, and carrying the result in the capture trigger's arguments.
 *
 * Five layouts (see README): wintehr (fhir.resources with a soft-delete
 * flag), jsonb (any table with a jsonb resource column), fhirbase (one
 * table per resource type, id and txid in columns), hapi (HAPI FHIR JPA's
 * hfj_res_ver: one row per version, the JSON as text, the id in
 * hfj_resource) and medplum (one table per type, the JSON as text in
 * "content"). Every configuration error is raised here, at watch() time,
 * never on a clinical write.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/genam.h"
#include "access/table.h"
#include "catalog/pg_am.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "fhir_notify.h"
#include "layout.h"

PG_FUNCTION_INFO_V1(fhir_notify_resolve_layout);

/* The resource types of FHIR R4, for naming one-table-per-type tables. */
static const char *const fhir_types[] = {
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
};

/*
 * The options of a layout: the keys watch()'s options object accepts, and
 * the "key=value" trigger arguments that carry the resolved layout to the
 * capture trigger (after "layout=<kind>", in this order). One row per Layout
 * field; a new option is a new row here and a new field in Layout.
 */
typedef enum LayoutOptionType
{
	OPTION_COLUMN, /* a column name (char *); JSON null: the layout has none */
	OPTION_TEXT,   /* a value (char *); JSON null: none */
	OPTION_BOOL    /* true or false (bool); always written to the arguments */
} LayoutOptionType;

typedef struct LayoutOption
{
	const char *key;
	LayoutOptionType type;
	bool required; /* JSON null is refused: the layout cannot do without it */
	size_t offset; /* of the field in Layout */
} LayoutOption;

#define L(field) offsetof(Layout, field)

static const LayoutOption layout_options[] = {
    {"resource", OPTION_COLUMN, true, L(resource_column)},
    {"type", OPTION_COLUMN, false, L(type_column)},
    {"id", OPTION_COLUMN, false, L(id_column)},
    {"version", OPTION_COLUMN, false, L(version_column)},
    {"deleted", OPTION_COLUMN, false, L(deleted_column)},
    {"deleted_value", OPTION_TEXT, false, L(deleted_value)},
    {"type_name", OPTION_TEXT, false, L(type_name)},
    {"record_unrouted", OPTION_BOOL, false, L(record_unrouted)},
    {"body", OPTION_TEXT, false, L(body)},
};

#undef L

/* "layout=<kind>" and one argument per option must fit in LAYOUT_MAX_ARGS. */
StaticAssertDecl(lengthof(layout_options) + 1 <= LAYOUT_MAX_ARGS,
                 "LAYOUT_MAX_ARGS is too small for the layout options");

static char **
option_string(Layout *layout, const LayoutOption *option)
{
	Assert(option->type != OPTION_BOOL);
	return (char **) ((char *) layout + option->offset);
}

static bool *
option_bool(Layout *layout, const LayoutOption *option)
{
	Assert(option->type == OPTION_BOOL);
	return (bool *) ((char *) layout + option->offset);
}

static const LayoutOption *
find_option(const char *key)
{
	for (size_t i = 0; i < lengthof(layout_options); i++)
		if (strcmp(layout_options[i].key, key) == 0)
			return &layout_options[i];
	return NULL;
}

/* "resource, type, ...": the option keys watch() accepts, for error messages. */
static char *
known_options(void)
{
	StringInfoData keys;

	initStringInfo(&keys);
	for (size_t i = 0; i < lengthof(layout_options); i++)
		appendStringInfo(&keys, "%s%s", i > 0 ? ", " : "", layout_options[i].key);
	return keys.data;
}

/*
 * The name of a layout as users write it.
 */
const char *
fhir_notify_layout_kind_name(LayoutKind kind)
{
	switch (kind)
	{
		case LAYOUT_WINTEHR:
			return "wintehr";
		case LAYOUT_JSONB:
			return "jsonb";
		case LAYOUT_FHIRBASE:
			return "fhirbase";
		case LAYOUT_HAPI:
			return "hapi";
		case LAYOUT_MEDPLUM:
			return "medplum";
	}
	return "unknown";
}

/*
 * The layout a name (as fhir_notify_layout_kind_name() writes it) stands for; false
 * when none ('auto' is none).
 */
bool
fhir_notify_layout_kind_from_name(const char *name, LayoutKind *kind)
{
	static const LayoutKind kinds[] = {LAYOUT_WINTEHR, LAYOUT_JSONB, LAYOUT_FHIRBASE, LAYOUT_HAPI,
	                                   LAYOUT_MEDPLUM};

	for (size_t i = 0; i < lengthof(kinds); i++)
		if (strcmp(name, fhir_notify_layout_kind_name(kinds[i])) == 0)
		{
			*kind = kinds[i];
			return true;
		}
	return false;
}

/*
 * Whether a layout keeps the resource as JSON text (parsed by the trigger)
 * rather than jsonb.
 */
bool
fhir_notify_layout_text_resource(LayoutKind kind)
{
	return kind == LAYOUT_HAPI || kind == LAYOUT_MEDPLUM;
}

/*
 * Whether name can be a resource type of Medplum's (R4 and its own, like
 * Project or Bot): a capitalised identifier of letters and digits.
 */
static bool
plausible_type_name(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len >= 64 || name[0] < 'A' || name[0] > 'Z')
		return false;
	for (size_t i = 1; i < len; i++)
		if (!((name[i] >= 'A' && name[i] <= 'Z') || (name[i] >= 'a' && name[i] <= 'z') ||
		      (name[i] >= '0' && name[i] <= '9')))
			return false;
	return true;
}

/*
 * The FHIR resource type a table name stands for (patient -> Patient,
 * medicationrequest -> MedicationRequest), or NULL when none.
 */
const char *
fhir_notify_layout_fhir_type_name(const char *name)
{
	for (size_t i = 0; i < lengthof(fhir_types); i++)
		if (pg_strcasecmp(fhir_types[i], name) == 0)
			return fhir_types[i];
	return NULL;
}

/*
 * The type of a table's column, or InvalidOid when it has no such column.
 */
static Oid
column_type(Relation rel, const char *name)
{
	TupleDesc desc = RelationGetDescr(rel);

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);

		if (!attr->attisdropped && strcmp(NameStr(attr->attname), name) == 0)
			return attr->atttypid;
	}
	return InvalidOid;
}

/* Whether type is text or a text-like type whose output is its value. */
static bool
is_text_type(Oid type)
{
	return type == TEXTOID || type == VARCHAROID || type == BPCHAROID || type == NAMEOID;
}

/*
 * The only jsonb column of a table, "resource" when there are several, or
 * NULL when there is none or the choice is ambiguous.
 */
static char *
guess_resource_column(Relation rel, int *jsonb_columns)
{
	TupleDesc desc = RelationGetDescr(rel);
	char *found = NULL;

	*jsonb_columns = 0;
	if (column_type(rel, "resource") == JSONBOID)
		return pstrdup("resource");
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);

		if (!attr->attisdropped && attr->atttypid == JSONBOID)
		{
			(*jsonb_columns)++;
			found = NameStr(attr->attname);
		}
	}
	return *jsonb_columns == 1 ? pstrdup(found) : NULL;
}

/*
 * Reads watch()'s options object into layout, overriding what the layout
 * chose. Unknown keys and values of the wrong JSON type are errors.
 */
static void
apply_options(Jsonb *options, Layout *layout, bool *deleted_value_given)
{
	JsonbIterator *it;
	JsonbValue value;
	JsonbIteratorToken token;
	char *key = NULL;

	*deleted_value_given = false;
	if (options == NULL)
		return;
	if (!JB_ROOT_IS_OBJECT(options) || JB_ROOT_IS_SCALAR(options))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("watch() options must be a JSON object"),
		                errhint("Pass options => '{\"resource\": \"content\"}' to name the "
		                        "column that holds the resource.")));

	it = JsonbIteratorInit(&options->root);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		const LayoutOption *option;

		if (token == WJB_KEY)
		{
			key = pnstrdup(value.val.string.val, value.val.string.len);
			continue;
		}
		if (token != WJB_VALUE)
			continue;

		option = find_option(key);
		if (option == NULL)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("unknown watch() option \"%s\"", key),
			                errdetail("Known options are %s.", known_options())));
		if (option->offset == offsetof(Layout, deleted_value))
			*deleted_value_given = true;

		if (option->type == OPTION_BOOL)
		{
			if (value.type != jbvBool)
				ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				                errmsg("watch() option \"%s\" must be true or false", key)));
			*option_bool(layout, option) = value.val.boolean;
		}
		else if (value.type == jbvNull && !option->required)
			*option_string(layout, option) = NULL; /* null: this layout has no such column */
		else if (value.type == jbvString && value.val.string.len > 0)
			*option_string(layout, option) = pnstrdup(value.val.string.val, value.val.string.len);
		else
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("watch() option \"%s\" must be a column name", key),
			                errhint("Pass options => '{\"%s\": \"column_name\"}'.", key)));
	}
}

/*
 * Raises the error for a column the layout needs but the table lacks.
 */
static void
missing_column(Relation rel, const Layout *layout, const char *option, const char *column,
               const char *what)
{
	ereport(ERROR,
	        (errcode(ERRCODE_UNDEFINED_COLUMN),
	         errmsg("table \"%s\" has no column \"%s\"", RelationGetRelationName(rel), column),
	         errdetail("The %s layout expects %s in column \"%s\".",
	                   fhir_notify_layout_kind_name(layout->kind), what, column),
	         errhint("Pass options => '{\"%s\": \"column_name\"}' to name the column that "
	                 "holds it.",
	                 option)));
}

/*
 * Checks that every column the layout names exists with a usable type.
 */
static void
check_columns(Relation rel, Layout *layout, bool deleted_value_given)
{
	const char *relname = RelationGetRelationName(rel);
	Oid type;
	struct
	{
		const char *option;
		char *column;
		const char *what;
	} optional[] = {
	    {"type", layout->type_column, "the resource type"},
	    {"id", layout->id_column, "the logical id"},
	    {"version", layout->version_column, "the version"},
	};

	type = column_type(rel, layout->resource_column);
	if (type == InvalidOid)
		missing_column(rel, layout, "resource", layout->resource_column, "the resource JSON");
	if (fhir_notify_layout_text_resource(layout->kind))
	{
		if (type != TEXTOID && type != VARCHAROID)
			ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
			                errmsg("column \"%s\" of table \"%s\" is of type %s, not text",
			                       layout->resource_column, relname, format_type_be(type)),
			                errdetail("The %s layout reads the resource as JSON text.",
			                          fhir_notify_layout_kind_name(layout->kind))));
	}
	else if (type != JSONBOID)
		ereport(ERROR,
		        (errcode(ERRCODE_DATATYPE_MISMATCH),
		         errmsg("column \"%s\" of table \"%s\" is of type %s, not jsonb",
		                layout->resource_column, relname, format_type_be(type)),
		         errhint("Convert the column to jsonb (ALTER TABLE ... ALTER COLUMN %s TYPE jsonb "
		                 "USING %s::jsonb), or name another column with options => "
		                 "'{\"resource\": \"column_name\"}'.",
		                 quote_identifier(layout->resource_column),
		                 quote_identifier(layout->resource_column))));

	for (size_t i = 0; i < lengthof(optional); i++)
		if (optional[i].column != NULL && column_type(rel, optional[i].column) == InvalidOid)
			missing_column(rel, layout, optional[i].option, optional[i].column, optional[i].what);

	layout->deleted_kind = DELETED_NONE;
	if (layout->deleted_column != NULL)
	{
		type = column_type(rel, layout->deleted_column);
		if (type == InvalidOid)
			missing_column(rel, layout, "deleted", layout->deleted_column, "the deleted flag");
		if (type == BOOLOID)
		{
			if (deleted_value_given)
				ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				                errmsg("watch() option \"deleted_value\" needs a text column, "
				                       "but column \"%s\" is boolean",
				                       layout->deleted_column)));
			layout->deleted_kind = DELETED_BOOLEAN;
		}
		else if (is_text_type(type))
		{
			layout->deleted_kind = DELETED_STATUS;
			if (layout->deleted_value == NULL)
				layout->deleted_value = pstrdup("deleted");
		}
		else
			ereport(ERROR,
			        (errcode(ERRCODE_DATATYPE_MISMATCH),
			         errmsg("column \"%s\" of table \"%s\" is of type %s, not boolean or text",
			                layout->deleted_column, relname, format_type_be(type)),
			         errhint("Pass options => '{\"deleted\": null}' when the table marks no "
			                 "deleted rows.")));
	}
	if (layout->deleted_kind != DELETED_STATUS)
		layout->deleted_value = NULL;

	if (layout->type_name != NULL && layout->kind == LAYOUT_MEDPLUM)
	{
		if (!plausible_type_name(layout->type_name))
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("\"%s\" is not a resource type name", layout->type_name),
			                errdetail("The medplum layout takes the type from the table's name."),
			                errhint("Pass options => '{\"type_name\": \"Observation\"}'.")));
	}
	else if (layout->type_name != NULL)
	{
		const char *canonical = fhir_notify_layout_fhir_type_name(layout->type_name);

		if (canonical == NULL || strcmp(canonical, layout->type_name) != 0)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("\"%s\" is not a FHIR R4 resource type", layout->type_name),
			                canonical ? errhint("Did you mean \"%s\"?", canonical) : 0));
	}
}

/*
 * Whether the table looks like HAPI FHIR JPA's version table hfj_res_ver.
 */
static bool
looks_like_hapi_versions(Relation rel)
{
	return column_type(rel, "res_id") != InvalidOid && column_type(rel, "res_ver") != InvalidOid &&
	       column_type(rel, "res_type") != InvalidOid &&
	       column_type(rel, "res_encoding") != InvalidOid &&
	       column_type(rel, "res_text_vc") != InvalidOid;
}

/*
 * Whether the table looks like one of Medplum's resource tables: content
 * text, deleted, compartments and "lastUpdated" (its _History tables have
 * neither deleted nor compartments).
 */
static bool
looks_like_medplum(Relation rel)
{
	Oid content = column_type(rel, "content");

	return (content == TEXTOID || content == VARCHAROID) && column_type(rel, "id") != InvalidOid &&
	       column_type(rel, "deleted") == BOOLOID &&
	       column_type(rel, "compartments") != InvalidOid &&
	       column_type(rel, "lastUpdated") != InvalidOid;
}

/*
 * Checks what the hapi layout needs besides the columns every layout has:
 * the version row's res_id, res_encoding, res_text and res_updated, and a
 * table hfj_resource(res_id, fhir_id) in the same schema.
 */
static void
check_hapi(Relation rel, Layout *layout)
{
	static const struct
	{
		const char *column;
		const char *what;
	} needed[] = {
	    {"res_id", "the internal id of the resource"},
	    {"res_encoding", "the encoding of the body (JSON, JSONC, DEL, ESR)"},
	    {"res_text", "the large object of a JSONC body"},
	    {"res_updated", "the time of the version"},
	};
	Oid namespace = RelationGetNamespace(rel);
	Oid resource_table = get_relname_relid("hfj_resource", namespace);

	for (size_t i = 0; i < lengthof(needed); i++)
		if (column_type(rel, needed[i].column) == InvalidOid)
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
			                errmsg("table \"%s\" has no column \"%s\"",
			                       RelationGetRelationName(rel), needed[i].column),
			                errdetail("The hapi layout expects %s in column \"%s\" of HAPI's "
			                          "version table.",
			                          needed[i].what, needed[i].column)));
	if (resource_table == InvalidOid)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
		                errmsg("schema \"%s\" has no table \"hfj_resource\"",
		                       get_namespace_name(namespace)),
		                errdetail("The hapi layout takes the logical id from hfj_resource.fhir_id, "
		                          "in the schema of the watched version table.")));
	if (get_attnum(resource_table, "res_id") == InvalidAttrNumber ||
	    get_attnum(resource_table, "fhir_id") == InvalidAttrNumber ||
	    (column_type(rel, "partition_id") != InvalidOid &&
	     get_attnum(resource_table, "partition_id") == InvalidAttrNumber))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
		                errmsg("table \"hfj_resource\" lacks res_id, fhir_id or partition_id"),
		                errdetail("The hapi layout looks the logical id up by res_id.")));
	if (layout->id_column != NULL || layout->deleted_column != NULL)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("the hapi layout takes the id from hfj_resource and deletes from "
		                       "res_encoding"),
		                errhint("Leave out the options \"id\" and \"deleted\".")));
}

/*
 * Whether a layout's rows log the version's key instead of the body.
 */
bool
fhir_notify_layout_by_version(const Layout *layout)
{
	return layout->body != NULL && strcmp(layout->body, "by_version") == 0;
}

/* Whether relid has a btree index whose leading columns are exactly attnums (any order). */
static bool
has_leading_index(Oid relid, const AttrNumber *attnums, int n)
{
	Relation rel = table_open(relid, AccessShareLock);
	List *indexes = RelationGetIndexList(rel);
	ListCell *lc;
	bool found = false;

	foreach (lc, indexes)
	{
		Relation index = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = index->rd_index;
		int matched = 0;

		if (form->indisvalid && index->rd_rel->relam == BTREE_AM_OID && form->indnkeyatts >= n &&
		    heap_attisnull(index->rd_indextuple, Anum_pg_index_indpred, NULL))
			for (int i = 0; i < n; i++)
				for (int j = 0; j < n; j++)
					if (form->indkey.values[i] == attnums[j])
						matched++;
		index_close(index, AccessShareLock);
		if (matched == n)
		{
			found = true;
			break;
		}
	}
	list_free(indexes);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Where the server of a layout keeps every version of the resources of
 * rel, when it does and the versions can be found by an index: HAPI's
 * hfj_res_ver is rel itself (res_id, res_ver), Medplum's "<Type>_History"
 * ("versionId"), WintEHR's fhir.resource_history (resource_id,
 * version_id), in rel's schema. history->relid is InvalidOid, with
 * history->problem, when none fits.
 */
void
fhir_notify_layout_history(Relation rel, LayoutKind kind, LayoutHistory *history)
{
	Oid namespace = RelationGetNamespace(rel);
	const char *schema = get_namespace_name(namespace);
	const char *name = NULL;
	const char *keys[2] = {NULL, NULL};
	const char *body = NULL;
	Oid relid;
	AttrNumber attnums[2];

	memset(history, 0, sizeof(*history));
	switch (kind)
	{
		case LAYOUT_HAPI:
			name = RelationGetRelationName(rel);
			keys[0] = "res_id";
			keys[1] = "res_ver";
			body = "res_text_vc";
			break;
		case LAYOUT_MEDPLUM:
			name = psprintf("%s_History", RelationGetRelationName(rel));
			keys[0] = "versionId";
			body = "content";
			break;
		case LAYOUT_WINTEHR:
			name = "resource_history";
			keys[0] = "resource_id";
			keys[1] = "version_id";
			body = "resource";
			if (get_attnum(RelationGetRelid(rel), "id") == InvalidAttrNumber)
			{
				history->problem = "the table has no column \"id\" (the key of resource_history)";
				return;
			}
			break;
		default:
			history->problem = "the layout keeps no history of versions";
			return;
	}
	relid = get_relname_relid(name, namespace);
	if (relid == InvalidOid)
	{
		history->problem = psprintf("schema \"%s\" has no table \"%s\"", schema, name);
		return;
	}
	history->nkeys = keys[1] != NULL ? 2 : 1;
	for (int i = 0; i < history->nkeys; i++)
	{
		attnums[i] = get_attnum(relid, keys[i]);
		if (attnums[i] == InvalidAttrNumber)
		{
			history->problem = psprintf("table \"%s\" has no column \"%s\"", name, keys[i]);
			return;
		}
		history->key_columns[i] = pstrdup(quote_identifier(keys[i]));
		history->key_types[i] = get_atttype(relid, attnums[i]);
	}
	if (get_attnum(relid, body) == InvalidAttrNumber)
	{
		history->problem = psprintf("table \"%s\" has no column \"%s\"", name, body);
		return;
	}
	if (!has_leading_index(relid, attnums, history->nkeys))
	{
		history->problem =
		    history->nkeys == 2
		        ? psprintf("table \"%s\" has no index on (%s, %s)", name, keys[0], keys[1])
		        : psprintf("table \"%s\" has no index on (%s)", name, keys[0]);
		return;
	}
	history->relid = relid;
	history->table = quote_qualified_identifier(schema, name);
	history->body_column = pstrdup(quote_identifier(body));
}

/*
 * Checks the option "body": 'copy' (the default) or 'by_version', which
 * needs a layout whose server keeps every version, and the versions'
 * table and index. A table without them is watched with 'copy' and a
 * warning; a layout without history is an error.
 */
static void
check_body(Relation rel, Layout *layout)
{
	LayoutHistory history;

	if (layout->body == NULL || strcmp(layout->body, "copy") == 0)
	{
		layout->body = NULL;
		return;
	}
	if (strcmp(layout->body, "by_version") != 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("watch() option \"body\" must be \"copy\" or \"by_version\"")));
	if (layout->kind != LAYOUT_HAPI && layout->kind != LAYOUT_MEDPLUM &&
	    layout->kind != LAYOUT_WINTEHR)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("the %s layout keeps no versions to read bodies back from",
		                       fhir_notify_layout_kind_name(layout->kind)),
		                errdetail("\"body\": \"by_version\" is for the hapi, medplum and wintehr "
		                          "layouts."),
		                errhint("Leave out the option \"body\" (the log copies the body).")));
	fhir_notify_layout_history(rel, layout->kind, &history);
	if (history.relid == InvalidOid)
	{
		ereport(WARNING,
		        (errmsg("table \"%s\" is watched with \"body\": \"copy\"",
		                RelationGetRelationName(rel)),
		         errdetail("Bodies cannot be read back by version: %s.", history.problem),
		         layout->kind == LAYOUT_WINTEHR
		             ? errhint("CREATE INDEX ON %s.resource_history (resource_id, version_id);",
		                       quote_identifier(get_namespace_name(RelationGetNamespace(rel))))
		             : 0));
		layout->body = NULL;
	}
}

/*
 * The layout a table's columns look like, for layout 'auto'.
 */
static LayoutKind
recognise_layout(Relation rel)
{
	int jsonb_columns;

	if (looks_like_hapi_versions(rel))
		return LAYOUT_HAPI;
	if (column_type(rel, "res_id") != InvalidOid && column_type(rel, "fhir_id") != InvalidOid &&
	    column_type(rel, "res_type") != InvalidOid && column_type(rel, "res_ver") != InvalidOid)
		ereport(
		    ERROR,
		    (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		     errmsg("table \"%s\" is HAPI FHIR JPA's resource table", RelationGetRelationName(rel)),
		     errdetail("HAPI writes every version of a resource as a row of hfj_res_ver; that "
		               "table is the one to watch."),
		     errhint("SELECT fhir_notify.watch('hfj_res_ver');")));
	if (looks_like_medplum(rel))
		return LAYOUT_MEDPLUM;

	if (column_type(rel, "resource") == JSONBOID &&
	    column_type(rel, "resource_type") != InvalidOid &&
	    column_type(rel, "fhir_id") != InvalidOid && column_type(rel, "version_id") != InvalidOid &&
	    column_type(rel, "deleted") == BOOLOID)
		return LAYOUT_WINTEHR;
	if (column_type(rel, "resource") == JSONBOID && column_type(rel, "id") != InvalidOid &&
	    column_type(rel, "txid") != InvalidOid)
		return LAYOUT_FHIRBASE;
	if (guess_resource_column(rel, &jsonb_columns) != NULL)
		return LAYOUT_JSONB;

	if (jsonb_columns == 0)
		ereport(
		    ERROR,
		    (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		     errmsg("cannot recognise the layout of table \"%s\"", RelationGetRelationName(rel)),
		     errdetail("The table has no jsonb column to take the resource from."),
		     errhint("Pass layout => 'jsonb' with options => '{\"resource\": "
		             "\"content\"}' to name the jsonb column that holds the resource.")));
	ereport(
	    ERROR,
	    (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
	     errmsg("cannot recognise the layout of table \"%s\"", RelationGetRelationName(rel)),
	     errdetail("The table has %d jsonb columns and none is named \"resource\".", jsonb_columns),
	     errhint("Pass options => '{\"resource\": \"content\"}' to name the column that "
	             "holds the resource.")));
	return LAYOUT_JSONB; /* not reached */
}

/*
 * Resolves layout_name ('auto', 'wintehr', 'jsonb' or 'fhirbase') and
 * options against the columns of rel. Raises an error naming the column and
 * what was expected when the table does not fit.
 */
void
fhir_notify_layout_resolve(Relation rel, const char *layout_name, Jsonb *options, Layout *layout)
{
	bool automatic = false;
	bool deleted_value_given;
	int jsonb_columns;

	memset(layout, 0, sizeof(*layout));
	if (strcmp(layout_name, "auto") == 0)
	{
		automatic = true;
		layout->kind = recognise_layout(rel);
	}
	else if (!fhir_notify_layout_kind_from_name(layout_name, &layout->kind))
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("unknown layout \"%s\"", layout_name),
		                errhint("Known layouts are auto, wintehr, jsonb, fhirbase, hapi and "
		                        "medplum.")));

	switch (layout->kind)
	{
		case LAYOUT_WINTEHR:
			layout->resource_column = pstrdup("resource");
			layout->type_column = pstrdup("resource_type");
			layout->id_column = pstrdup("fhir_id");
			layout->version_column = pstrdup("version_id");
			layout->deleted_column = pstrdup("deleted");
			break;
		case LAYOUT_FHIRBASE:
			layout->resource_column = pstrdup("resource");
			layout->id_column = pstrdup("id");
			layout->version_column = pstrdup("txid");
			if (column_type(rel, "status") != InvalidOid)
				layout->deleted_column = pstrdup("status");
			if (column_type(rel, "resource_type") != InvalidOid)
				layout->type_column = pstrdup("resource_type");
			break;
		case LAYOUT_JSONB:
			layout->resource_column = guess_resource_column(rel, &jsonb_columns);
			break;
		case LAYOUT_HAPI:
			/* The id is looked up in hfj_resource, deletes are res_encoding DEL. */
			layout->resource_column = pstrdup("res_text_vc");
			layout->type_column = pstrdup("res_type");
			layout->version_column = pstrdup("res_ver");
			break;
		case LAYOUT_MEDPLUM:
			/* The version is meta.versionId of the content. */
			layout->resource_column = pstrdup("content");
			layout->id_column = pstrdup("id");
			layout->deleted_column = pstrdup("deleted");
			layout->type_name = pstrdup(RelationGetRelationName(rel));
			break;
	}

	apply_options(options, layout, &deleted_value_given);

	if (layout->resource_column == NULL)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("table \"%s\" has no jsonb column named \"resource\"",
		                       RelationGetRelationName(rel)),
		                errdetail("The jsonb layout takes the resource from a jsonb column."),
		                errhint("Pass options => '{\"resource\": \"content\"}' to name the column "
		                        "that holds the resource.")));

	/* One table per type: the type comes from the table's name. */
	if (layout->kind == LAYOUT_FHIRBASE && layout->type_column == NULL && layout->type_name == NULL)
	{
		const char *type_name = fhir_notify_layout_fhir_type_name(RelationGetRelationName(rel));

		if (type_name == NULL)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("cannot tell the resource type of table \"%s\"",
			                       RelationGetRelationName(rel)),
			                errdetail("The fhirbase layout takes the type from a column "
			                          "\"resource_type\" or from the table's name."),
			                errhint("Pass options => '{\"type_name\": \"Observation\"}'.")));
		layout->type_name = pstrdup(type_name);
	}

	check_columns(rel, layout, deleted_value_given);
	if (layout->kind == LAYOUT_HAPI)
		check_hapi(rel, layout);
	check_body(rel, layout);

	if (automatic && layout->kind == LAYOUT_HAPI)
		ereport(NOTICE,
		        (errmsg("table \"%s\" uses the hapi layout (HAPI FHIR JPA)",
		                RelationGetRelationName(rel)),
		         errdetail("Every inserted version is a change: the body from res_text_vc (or the "
		                   "gzip large object res_text), the id from hfj_resource.fhir_id.")));
	else if (automatic && layout->kind == LAYOUT_MEDPLUM)
		ereport(
		    NOTICE,
		    (errmsg("table \"%s\" uses the medplum layout (Medplum)", RelationGetRelationName(rel)),
		     errdetail("The resource is the JSON text in column \"content\", of type %s.",
		               layout->type_name),
		     errhint("SELECT fhir_notify.watch_medplum('%s') watches every resource table of "
		             "the schema, and those added later.",
		             get_namespace_name(RelationGetNamespace(rel)))));
	else if (automatic)
		ereport(NOTICE, (errmsg("table \"%s\" uses the %s layout", RelationGetRelationName(rel),
		                        fhir_notify_layout_kind_name(layout->kind)),
		                 errdetail("The resource is in column \"%s\".", layout->resource_column)));
}

/*
 * Appends "key=value" to args when value is set; returns the new count.
 */
static int
add_arg(char **args, int nargs, const char *key, const char *value)
{
	if (value != NULL)
		args[nargs++] = psprintf("%s=%s", key, value);
	return nargs;
}

/*
 * Writes the layout as trigger arguments; returns how many.
 */
int
fhir_notify_layout_to_args(const Layout *layout, char **args)
{
	int nargs = 0;

	nargs = add_arg(args, nargs, "layout", fhir_notify_layout_kind_name(layout->kind));
	for (size_t i = 0; i < lengthof(layout_options); i++)
	{
		const LayoutOption *option = &layout_options[i];

		if (option->type == OPTION_BOOL)
			nargs = add_arg(args, nargs, option->key,
			                *option_bool((Layout *) layout, option) ? "true" : "false");
		else
			nargs = add_arg(args, nargs, option->key, *option_string((Layout *) layout, option));
	}
	Assert(nargs <= LAYOUT_MAX_ARGS);
	return nargs;
}

/*
 * Reads trigger arguments written by fhir_notify_layout_to_args() back into a layout,
 * in the current memory context. Column types are not checked here.
 */
void
fhir_notify_layout_from_args(int nargs, char **args, Layout *layout)
{
	memset(layout, 0, sizeof(*layout));
	layout->kind = LAYOUT_JSONB;
	for (int i = 0; i < nargs; i++)
	{
		char *equals = strchr(args[i], '=');
		char *key;
		char *value;
		const LayoutOption *option;

		if (equals == NULL)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			                errmsg("malformed fhir_notify.capture() argument \"%s\"", args[i]),
			                errhint("Run fhir_notify.watch() again for this table.")));
		key = pnstrdup(args[i], equals - args[i]);
		value = pstrdup(equals + 1);

		if (strcmp(key, "layout") == 0)
		{
			if (!fhir_notify_layout_kind_from_name(value, &layout->kind))
				layout->kind = LAYOUT_JSONB;
		}
		else if ((option = find_option(key)) == NULL)
			continue; /* written by a later version: ignored, as before */
		else if (option->type == OPTION_BOOL)
			*option_bool(layout, option) = strcmp(value, "true") == 0;
		else
			*option_string(layout, option) = value;
	}
	if (layout->deleted_column != NULL)
		layout->deleted_kind = layout->deleted_value != NULL ? DELETED_STATUS : DELETED_BOOLEAN;
}

/*
 * SQL: fhir_notify.resolve_layout(tbl regclass, layout text, options jsonb)
 * RETURNS text[]. The capture trigger's arguments for tbl; watch() calls it.
 */
Datum
fhir_notify_resolve_layout(PG_FUNCTION_ARGS)
{
	Oid relid = PG_GETARG_OID(0);
	char *layout_name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Jsonb *options = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	Relation rel;
	Layout layout;
	char *args[LAYOUT_MAX_ARGS];
	Datum elems[LAYOUT_MAX_ARGS];
	int nargs;

	rel = table_open(relid, AccessShareLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
	    rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
		                errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
		                errdetail("Only tables can be watched.")));
	/*
	 * A temporary table is written even in read-only transactions, where
	 * the change log cannot be, and dies with its session.
	 */
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE),
		                errmsg("cannot watch temporary table \"%s\"", RelationGetRelationName(rel)),
		                errdetail("Writes to a temporary table may happen in read-only "
		                          "transactions, which cannot record them.")));
	if (strcmp(get_namespace_name(RelationGetNamespace(rel)), "fhir_notify") == 0)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
		                errmsg("table \"%s\" belongs to fhir_notify and cannot be watched",
		                       RelationGetRelationName(rel))));

	fhir_notify_layout_resolve(rel, layout_name, options, &layout);
	nargs = fhir_notify_layout_to_args(&layout, args);
	table_close(rel, AccessShareLock);

	for (int i = 0; i < nargs; i++)
		elems[i] = CStringGetTextDatum(args[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, nargs, TEXTOID, -1, false, TYPALIGN_INT));
}
