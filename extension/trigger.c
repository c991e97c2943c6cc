/*
 * trigger.c
 *	  The capture trigger: one change-log row per change of a watched resource.
 *
 * fhir_notify.capture() runs AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW
 * on every watched table, so it is on the path of every clinical write. It
 * therefore
 *	  - never fails a write because of what the resource contains: odd JSON
 *	    is recorded as far as it can be and earns a rate-limited WARNING;
 *	  - does no catalog lookups per row: the layout is parsed from the
 *	    trigger's arguments once per backend and kept, keyed by trigger oid,
 *	    until the table's relcache entry is invalidated;
 *	  - appends to the change log as its owner (like SECURITY DEFINER; see
 *	    change_log.c), so the writing role needs no grant on fhir_notify
 *	    and cannot write the log itself;
 *	  - does all per-row work in a memory context reset after every row.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "fhir_notify.h"
#include "change_log.h"
#include "hapi.h"
#include "json_text.h"
#include "layout.h"

PG_FUNCTION_INFO_V1(fhir_notify_capture);
PG_FUNCTION_INFO_V1(fhir_notify_capture_truncate);

/* fhir_notify.actor: who is writing, as the application says it. */
static char *capture_actor = NULL;

/* fhir_notify.warning_interval: seconds between content warnings. */
static int capture_warning_interval = 60;

/* A watched column: its attribute number and output function. */
typedef struct CaptureColumn
{
	AttrNumber attnum; /* 0 when the layout has no such column */
	Oid type;
	bool is_text; /* text-like: read without the output function */
	FmgrInfo output;
} CaptureColumn;

/* What the trigger knows about one watched table, per backend. */
typedef struct CaptureTarget
{
	Oid trigger_oid;       /* hash key */
	Oid relid;             /* the table the trigger fires on */
	Oid source_relid;      /* the table that was watched: relid, or a partition's root */
	bool valid;            /* false once the relation changed: rebuild */
	MemoryContext context; /* holds what the entry points to */
	bool columns_ok;       /* false when a column named at watch() time is gone or altered */
	char *problem;         /* what is wrong with it, for the warning */
	Layout layout;
	char *source_table; /* schema-qualified name of the table */
	CaptureColumn resource;
	CaptureColumn type;
	CaptureColumn id;
	CaptureColumn version;
	CaptureColumn deleted;
	bool text_resource; /* the resource column is JSON text (hapi, medplum) */
	/* hapi: the other columns of hfj_res_ver it reads, and its lookups */
	CaptureColumn encoding;  /* res_encoding */
	CaptureColumn lob;       /* res_text */
	CaptureColumn res_id;    /* res_id */
	CaptureColumn partition; /* partition_id, attnum 0 when absent */
	CaptureColumn updated;   /* res_updated */
	HapiTables hapi;
	bool by_version;   /* body by_version: log the version's key, not the body */
	CaptureColumn key; /* wintehr by_version: the internal id, resource_history's key */
} CaptureTarget;

/* One side (OLD or NEW) of a change, read from the row. */
typedef struct RowImage
{
	bool usable;        /* type and id known: the change can be recorded */
	bool deleted;       /* the row marks the resource deleted */
	Jsonb *resource;    /* NULL when the column is NULL */
	Datum raw_resource; /* the jsonb to log: the column as stored (maybe toasted), or parsed */
	Datum stored;       /* the resource column as stored, 0 when NULL */
	int64 res_id;       /* hapi: the internal id */
	bool is_object;     /* resource is a JSON object, so it can be routed */
	char *type;
	char *id;
	char *version;
	char *source_key; /* body by_version: the key of the version's row */
	PatientIds patients;
	const char *problem; /* what is odd about the content, for the warning */
} RowImage;

static HTAB *capture_targets = NULL;
static MemoryContext capture_cache_context = NULL;
static MemoryContext capture_row_context = NULL;
static int capture_depth = 0;

/*
 * What capture_warning() says became of the change: not recorded (false),
 * recorded without patients (true), or as below.
 */
#define RECORDED_WITHOUT_RESOURCE 2 /* an unreadable new version of a text layout */
#define RECORDED_PREVIOUS_UNKNOWN 3 /* hapi: the previous version cannot be read */

/* Rate limit of content warnings. */
static TimestampTz last_warning = 0;
static int suppressed_warnings = 0;

/*
 * Forgets what is cached about a relation when it changes (columns renamed,
 * trigger replaced, extension dropped); InvalidOid means every relation.
 */
static void
capture_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	CaptureTarget *target;

	if (capture_targets == NULL)
		return;
	hash_seq_init(&status, capture_targets);
	while ((target = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || target->relid == relid || target->source_relid == relid ||
		    (target->hapi.resource.relid != InvalidOid && target->hapi.resource.relid == relid))
			target->valid = false;
}

/*
 * Forgets every cached table when a schema changes (renamed: the source
 * table's qualified name changes without a relcache invalidation).
 */
static void
capture_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	capture_relcache_callback(arg, InvalidOid);
}

/*
 * Registers the capture settings.
 */
void
fhir_notify_capture_init(void)
{
	DefineCustomStringVariable(
	    "fhir_notify.actor", "Who makes the changes of this session or transaction.",
	    "Recorded with every captured change. The application may SET LOCAL it per "
	    "transaction; when empty the session user and application_name are recorded. "
	    "Any session may set it to anything: it is what the writer says, not proof.",
	    &capture_actor, "", PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("fhir_notify.warning_interval",
	                        "Least seconds between two warnings about odd resource content.",
	                        "Warnings in between are counted and the count reported with the "
	                        "next one. 0 warns about every row.",
	                        &capture_warning_interval, 60, 0, 86400, PGC_SUSET, GUC_UNIT_S, NULL,
	                        NULL, NULL);
	CacheRegisterRelcacheCallback(capture_relcache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, capture_namespace_callback, (Datum) 0);
	fhir_notify_change_log_init();
}

/*
 * Warns about a change that could not be captured as written, at most once
 * per fhir_notify.warning_interval per backend, with the count of warnings
 * left out since the last one. Never an error: the clinical write goes on.
 */
static void
capture_warning(const char *source_table, const char *problem, int recorded)
{
	TimestampTz now = GetCurrentTimestamp();

	if (capture_warning_interval > 0 && last_warning != 0 &&
	    !TimestampDifferenceExceeds(last_warning, now, capture_warning_interval * 1000))
	{
		suppressed_warnings++;
		return;
	}
	ereport(
	    WARNING,
	    (errcode(ERRCODE_DATA_EXCEPTION),
	     recorded == RECORDED_WITHOUT_RESOURCE
	         ? errmsg("fhir_notify: change of \"%s\" recorded without the resource, for the "
	                  "patients of the previous version: %s",
	                  source_table, problem)
	     : recorded == RECORDED_PREVIOUS_UNKNOWN
	         ? errmsg("fhir_notify: change of \"%s\" recorded without the patients of the previous "
	                  "version: %s",
	                  source_table, problem)
	     : recorded
	         ? errmsg("fhir_notify: change of \"%s\" recorded without patients: %s", source_table,
	                  problem)
	         : errmsg("fhir_notify: change of \"%s\" not recorded: %s", source_table, problem),
	     suppressed_warnings > 0 ? errdetail("%d similar warnings were suppressed before this one.",
	                                         suppressed_warnings)
	                             : 0));
	last_warning = now;
	suppressed_warnings = 0;
}

/*
 * Finds a column of the relation by name and prepares to read it.
 * Returns false when the relation has no such column any more.
 */
static bool
resolve_column(TupleDesc desc, const char *name, CaptureColumn *column, MemoryContext context)
{
	memset(column, 0, sizeof(*column));
	if (name == NULL)
		return true;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);
		Oid output;
		bool varlena;

		if (attr->attisdropped || strcmp(NameStr(attr->attname), name) != 0)
			continue;
		column->attnum = attr->attnum;
		column->type = attr->atttypid;
		column->is_text = attr->atttypid == TEXTOID || attr->atttypid == VARCHAROID;
		getTypeOutputInfo(attr->atttypid, &output, &varlena);
		fmgr_info_cxt(output, &column->output, context);
		return true;
	}
	return false;
}

/*
 * The schema-qualified name of the table that was watched: the table the
 * trigger fires on, or for a partition the partitioned table watch() was
 * given (whose trigger PostgreSQL cloned onto the partition).
 */
static char *
watched_table_name(Relation rel, Trigger *trigger, Oid *source_relid)
{
	Oid relid = RelationGetRelid(rel);

	if (trigger->tgisclone && rel->rd_rel->relispartition)
	{
		List *ancestors = get_partition_ancestors(relid);

		if (ancestors != NIL)
			relid = llast_oid(ancestors);
	}
	*source_relid = relid;
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
	                                  get_rel_name(relid));
}

/*
 * Whether the schema still has the hfj_resource(res_id, fhir_id) that the
 * hapi layout looks ids up in (checked when the table is first met).
 */
static bool
hapi_resource_table_ok(Oid namespace)
{
	Oid relid = get_relname_relid("hfj_resource", namespace);

	return relid != InvalidOid && get_attnum(relid, "res_id") != InvalidAttrNumber &&
	       get_attnum(relid, "fhir_id") != InvalidAttrNumber;
}

/*
 * The cached description of the table a trigger fires on, (re)built from the
 * trigger's arguments and the relation's columns when missing or stale.
 */
static CaptureTarget *
capture_target(TriggerData *trigdata)
{
	Trigger *trigger = trigdata->tg_trigger;
	Relation rel = trigdata->tg_relation;
	TupleDesc desc = RelationGetDescr(rel);
	CaptureTarget *target;
	MemoryContext old;
	bool found;
	struct
	{
		const char *name;
		CaptureColumn *column;
	} columns[10];
	int ncolumns = 5;

	if (capture_targets == NULL)
	{
		HASHCTL ctl;

		capture_cache_context = AllocSetContextCreate(TopMemoryContext, "fhir_notify capture cache",
		                                              ALLOCSET_DEFAULT_SIZES);
		capture_row_context = AllocSetContextCreate(TopMemoryContext, "fhir_notify capture row",
		                                            ALLOCSET_DEFAULT_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureTarget);
		ctl.hcxt = capture_cache_context;
		capture_targets = hash_create("fhir_notify watched tables", 16, &ctl,
		                              HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}

	target = hash_search(capture_targets, &trigger->tgoid, HASH_ENTER, &found);
	if (!found)
	{
		target->valid = false;
		target->relid = InvalidOid;
		target->source_relid = InvalidOid;
		target->context = AllocSetContextCreate(capture_cache_context, "fhir_notify watched table",
		                                        ALLOCSET_SMALL_SIZES);
		memset(&target->hapi, 0, sizeof(target->hapi));
	}
	if (target->valid)
		return target;

	/*
	 * Nothing uses a stale entry between two rows: its memory can go. A
	 * capture nested in another (a trigger on the change log writing a
	 * watched table) may rebuild the entry the outer capture is still
	 * reading; then the old memory is left to the cache context instead.
	 */
	if (capture_depth == 0)
	{
		MemoryContextReset(target->context);
		for (int i = 0; i < (int) lengthof(target->hapi.plans); i++)
			if (target->hapi.plans[i] != NULL)
				SPI_freeplan(target->hapi.plans[i]);
	}
	else
		target->context = AllocSetContextCreate(capture_cache_context, "fhir_notify watched table",
		                                        ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(target->context);
	target->relid = RelationGetRelid(rel);
	fhir_notify_layout_from_args(trigger->tgnargs, trigger->tgargs, &target->layout);
	target->source_table = watched_table_name(rel, trigger, &target->source_relid);
	columns[0].name = target->layout.resource_column;
	columns[0].column = &target->resource;
	columns[1].name = target->layout.type_column;
	columns[1].column = &target->type;
	columns[2].name = target->layout.id_column;
	columns[2].column = &target->id;
	columns[3].name = target->layout.version_column;
	columns[3].column = &target->version;
	columns[4].name = target->layout.deleted_column;
	columns[4].column = &target->deleted;
	target->text_resource = fhir_notify_layout_text_resource(target->layout.kind);
	memset(&target->hapi, 0, sizeof(target->hapi));
	memset(&target->encoding, 0, sizeof(target->encoding));
	memset(&target->lob, 0, sizeof(target->lob));
	memset(&target->res_id, 0, sizeof(target->res_id));
	memset(&target->partition, 0, sizeof(target->partition));
	memset(&target->updated, 0, sizeof(target->updated));
	if (target->layout.kind == LAYOUT_HAPI)
	{
		columns[5].name = "res_encoding";
		columns[5].column = &target->encoding;
		columns[6].name = "res_text";
		columns[6].column = &target->lob;
		columns[7].name = "res_id";
		columns[7].column = &target->res_id;
		columns[8].name = "res_updated";
		columns[8].column = &target->updated;
		ncolumns = 9;
		/* partition_id is optional. */
		resolve_column(desc, "partition_id", &target->partition, target->context);
		target->hapi.version_table = quote_qualified_identifier(
		    get_namespace_name(RelationGetNamespace(rel)), RelationGetRelationName(rel));
		target->hapi.resource_table = quote_qualified_identifier(
		    get_namespace_name(RelationGetNamespace(rel)), "hfj_resource");
		target->hapi.owner = rel->rd_rel->relowner;
		target->hapi.version_relid = RelationGetRelid(rel);
	}
	memset(&target->key, 0, sizeof(target->key));
	target->by_version = fhir_notify_layout_by_version(&target->layout);
	if (target->by_version && target->layout.kind == LAYOUT_WINTEHR &&
	    !resolve_column(desc, "id", &target->key, target->context))
		target->by_version = false; /* no key: the body is copied */
	target->columns_ok = true;
	target->problem = NULL;
	for (int i = 0; i < ncolumns && target->columns_ok; i++)
		if (!resolve_column(desc, columns[i].name, columns[i].column, target->context))
		{
			target->columns_ok = false;
			target->problem =
			    psprintf("column \"%s\" named at watch() time is gone", columns[i].name);
		}
	if (target->layout.resource_column == NULL)
	{
		target->columns_ok = false;
		target->problem = "the trigger names no resource column";
	}
	/*
	 * The types watch() checked may have been altered since; reading a json
	 * or text column as jsonb, or a text column as boolean, would read
	 * garbage (and crashed the server).
	 */
	else if (target->columns_ok && target->text_resource)
	{
		if (!target->resource.is_text)
		{
			target->columns_ok = false;
			target->problem =
			    psprintf("column \"%s\" is of type %s now, not text",
			             target->layout.resource_column, format_type_be(target->resource.type));
		}
		else if (target->layout.kind == LAYOUT_HAPI &&
		         !hapi_resource_table_ok(RelationGetNamespace(rel)))
		{
			target->columns_ok = false;
			target->problem = "table hfj_resource (res_id, fhir_id) of its schema is gone";
		}
		else if (target->layout.kind == LAYOUT_HAPI &&
		         (target->lob.type != OIDOID ||
		          (target->res_id.type != INT8OID && target->res_id.type != INT4OID) ||
		          (target->version.type != INT8OID && target->version.type != INT4OID) ||
		          (target->partition.attnum != 0 && target->partition.type != INT4OID) ||
		          target->updated.type != TIMESTAMPOID))
		{
			target->columns_ok = false;
			target->problem = "the columns of hfj_res_ver are not of HAPI's types (res_id and "
			                  "res_ver bigint, res_text oid, res_updated timestamp, partition_id "
			                  "integer)";
		}
	}
	else if (target->columns_ok && target->resource.type != JSONBOID)
	{
		target->columns_ok = false;
		target->problem =
		    psprintf("column \"%s\" is of type %s now, not jsonb", target->layout.resource_column,
		             format_type_be(target->resource.type));
	}
	if (target->columns_ok && target->deleted.attnum != 0 &&
	    (target->layout.deleted_kind == DELETED_BOOLEAN ? target->deleted.type != BOOLOID
	                                                    : target->deleted.type == BOOLOID))
	{
		target->columns_ok = false;
		target->problem =
		    psprintf("column \"%s\" is of type %s now, not %s", target->layout.deleted_column,
		             format_type_be(target->deleted.type),
		             target->layout.deleted_kind == DELETED_BOOLEAN ? "boolean" : "text");
	}
	MemoryContextSwitchTo(old);
	target->valid = true;
	return target;
}

/*
 * The text of a column of tuple, or NULL when the column is absent or NULL.
 */
static char *
column_text(HeapTuple tuple, TupleDesc desc, CaptureColumn *column)
{
	bool isnull;
	Datum value;

	if (column->attnum == 0)
		return NULL;
	value = heap_getattr(tuple, column->attnum, desc, &isnull);
	if (isnull)
		return NULL;
	if (column->is_text)
		return TextDatumGetCString(value);
	return OutputFunctionCall(&column->output, value);
}

/*
 * The string value of key in a JSON object, or NULL when it is absent or not
 * a string.
 */
static char *
json_string(JsonbContainer *object, const char *key)
{
	JsonbValue value;

	if (getKeyJsonValueFromContainer(object, key, strlen(key), &value) == NULL ||
	    value.type != jbvString)
		return NULL;
	return pnstrdup(value.val.string.val, value.val.string.len);
}

/*
 * meta.versionId of a JSON resource, or NULL.
 */
static char *
json_version(JsonbContainer *object)
{
	JsonbValue meta;

	if (getKeyJsonValueFromContainer(object, "meta", 4, &meta) == NULL || meta.type != jbvBinary ||
	    !JsonContainerIsObject(meta.val.binary.data))
		return NULL;
	return json_string(meta.val.binary.data, "versionId");
}

/*
 * Reads the deleted flag of a row.
 */
static void
read_deleted(CaptureTarget *target, HeapTuple tuple, TupleDesc desc, RowImage *image)
{
	bool isnull;
	Datum value;

	if (target->deleted.attnum != 0 && target->layout.deleted_kind == DELETED_BOOLEAN)
	{
		value = heap_getattr(tuple, target->deleted.attnum, desc, &isnull);
		image->deleted = !isnull && DatumGetBool(value);
	}
	else if (target->deleted.attnum != 0)
	{
		/* Any text-like type (varchar, char(n), name): by its output, blank-padding aside. */
		char *status = column_text(tuple, desc, &target->deleted);

		if (status != NULL && target->deleted.type == BPCHAROID)
		{
			int len = strlen(status);

			while (len > 0 && status[len - 1] == ' ')
				status[--len] = '\0';
		}
		image->deleted = status != NULL && strcmp(status, target->layout.deleted_value) == 0;
	}
}

/*
 * Makes image's resource from JSON text (parsed once, with inject's
 * members added); a text that is no JSON is noted in image->problem.
 */
static void
parse_resource(RowImage *image, const char *text, int len, const JsonInject *inject)
{
	Jsonb *parsed;
	const char *problem;

	if (!fhir_notify_json_parse(text, len, inject, &parsed, &problem))
	{
		image->problem = problem;
		return;
	}
	image->resource = parsed;
	image->raw_resource = JsonbPGetDatum(parsed);
	image->is_object = JB_ROOT_IS_OBJECT(parsed) && !JB_ROOT_IS_SCALAR(parsed);
}

/*
 * Reads the resource column: jsonb as stored, or JSON text parsed. Returns
 * whether the column holds exactly what before's did (then before's
 * resource is reused, not read again).
 */
static bool
read_resource(CaptureTarget *target, HeapTuple tuple, TupleDesc desc, RowImage *image,
              const RowImage *before, const JsonInject *inject)
{
	bool isnull;
	Datum value = heap_getattr(tuple, target->resource.attnum, desc, &isnull);

	if (isnull)
		return false;
	image->stored = value;
	/* An UPDATE that left the JSON alone stores the same bytes (or toast pointer). */
	if (before != NULL && before->resource != NULL &&
	    datumIsEqual(value, before->stored, false, -1))
	{
		image->resource = before->resource;
		image->raw_resource = before->raw_resource;
		image->is_object = before->is_object;
		return true;
	}
	if (target->text_resource)
	{
		char *json = TextDatumGetCString(value);

		parse_resource(image, json, strlen(json), inject);
		return false;
	}
	image->raw_resource = value;
	image->resource = DatumGetJsonbP(value);
	image->is_object = JB_ROOT_IS_OBJECT(image->resource) && !JB_ROOT_IS_SCALAR(image->resource);
	return false;
}

/* An integer column (bigint or integer) of tuple; false when NULL. */
static bool
column_int64(HeapTuple tuple, TupleDesc desc, CaptureColumn *column, int64 *result)
{
	bool isnull;
	Datum value;

	if (column->attnum == 0)
		return false;
	value = heap_getattr(tuple, column->attnum, desc, &isnull);
	if (isnull)
		return false;
	*result = column->type == INT8OID ? DatumGetInt64(value) : DatumGetInt32(value);
	return true;
}

/*
 * The body of a HAPI version row by its res_encoding: JSON text, gzip JSON
 * in a large object (JSONC), a delete (DEL), or kept outside (ESR).
 */
static void
read_hapi_body(CaptureTarget *target, RowImage *image, const char *encoding, const char *json,
               Oid lob, const JsonInject *inject)
{
	if (encoding == NULL)
		image->problem = "res_encoding is NULL";
	else if (strcmp(encoding, "DEL") == 0)
		image->deleted = true;
	else if (strcmp(encoding, "JSON") == 0)
	{
		if (json != NULL)
			parse_resource(image, json, strlen(json), inject);
	}
	else if (strcmp(encoding, "JSONC") == 0)
	{
		char *compressed;
		size_t compressed_len;
		char *json;
		size_t json_len;

		if (lob == InvalidOid)
			image->problem = "the JSONC body has no large object (res_text is NULL)";
		else if (!fhir_notify_hapi_read_lob(&target->hapi, lob, &compressed, &compressed_len,
		                                    &image->problem))
			;
		else if (!fhir_notify_gunzip(compressed, compressed_len, &json, &json_len, &image->problem))
			;
		else
			parse_resource(image, json, json_len, inject);
	}
	else if (strcmp(encoding, "ESR") == 0)
		image->problem = "the body is stored outside the database (res_encoding ESR)";
	else
		image->problem = psprintf("unknown res_encoding \"%s\"", encoding);
}

/*
 * Reads a version row of hfj_res_ver: type, version and body from its
 * columns, the logical id from hfj_resource (reused from before when it is
 * the same resource), and, when previous is not NULL and this is not the
 * first version, the previous version with the patients it belonged to.
 */
static void
read_hapi(CaptureTarget *target, HeapTuple tuple, TupleDesc desc, RowImage *image,
          const RowImage *before, RowImage *previous)
{
	int64 version = 0;
	int64 previous_version = 0;
	int64 partition_id = 0;
	bool has_partition;
	bool isnull;
	Datum value;
	char *encoding;
	Oid lob = InvalidOid;
	HapiVersion prior;
	JsonInject inject;

	if (previous != NULL)
		memset(previous, 0, sizeof(*previous));
	if (!column_int64(tuple, desc, &target->res_id, &image->res_id))
	{
		image->problem = "res_id is NULL";
		return;
	}
	if (column_int64(tuple, desc, &target->version, &version))
		image->version = psprintf(INT64_FORMAT, version);
	has_partition = column_int64(tuple, desc, &target->partition, &partition_id);
	encoding = column_text(tuple, desc, &target->encoding);

	/*
	 * The previous version matters only for the patients it belonged to:
	 * not for a first version, nor for a type that belongs to nobody.
	 */
	if (previous != NULL && version > 1 && image->type != NULL &&
	    fhir_notify_compartment_type_routed(image->type))
		previous_version = version - 1;

	memset(&prior, 0, sizeof(prior));
	if (before != NULL && before->usable && before->res_id == image->res_id)
		image->id = before->id;
	else if (!fhir_notify_hapi_lookup(&target->hapi, image->res_id, has_partition,
	                                  (int32) partition_id, previous_version, &image->id, &prior))
		image->problem =
		    psprintf("hfj_resource has no row with res_id " INT64_FORMAT, image->res_id);
	if (image->id == NULL)
		return;

	/* What a FHIR read returns: id, meta.versionId and meta.lastUpdated. */
	inject.id = image->id;
	inject.version_id = image->version;
	inject.last_updated = NULL;
	value = heap_getattr(tuple, target->updated.attnum, desc, &isnull);
	if (!isnull)
		inject.last_updated = fhir_notify_hapi_instant(DatumGetTimestamp(value));

	/*
	 * Each side is parsed with its own id, version and time (no reuse of
	 * before's: in-place rewrites of version rows are rare).
	 */
	if (encoding != NULL && strcmp(encoding, "JSON") == 0)
	{
		read_resource(target, tuple, desc, image, NULL, &inject);
		if (image->resource == NULL && image->problem == NULL)
			image->problem = "the JSON body (res_text_vc) is NULL";
	}
	else
	{
		value = heap_getattr(tuple, target->lob.attnum, desc, &isnull);
		if (!isnull)
			lob = DatumGetObjectId(value);
		read_hapi_body(target, image, encoding, NULL, lob, &inject);
	}

	if (previous != NULL && prior.found)
	{
		previous->type = image->type;
		previous->id = image->id;
		previous->res_id = image->res_id;
		previous->version = psprintf(INT64_FORMAT, version - 1);
		read_hapi_body(target, previous, prior.encoding, prior.text, prior.lob, NULL);
		previous->usable = true;
		if (previous->is_object)
			fhir_notify_compartment_patient_ids(&previous->resource->root, previous->type,
			                                    previous->id, &previous->patients);
	}
}

/*
 * Reads one side of a change from tuple: resource, type, id, version,
 * deleted state, and the patients it belongs to. Odd content is noted in
 * image->problem; image->usable is false when the change cannot be
 * recorded at all (no type or no id). For the hapi layout, previous (when
 * not NULL) gets the previous version.
 */
static void
read_image(CaptureTarget *target, HeapTuple tuple, TupleDesc desc, RowImage *image,
           const RowImage *before, RowImage *previous)
{
	bool same_json = false;

	memset(image, 0, sizeof(*image));
	read_deleted(target, tuple, desc, image);

	image->type = column_text(tuple, desc, &target->type);
	if (image->type == NULL && target->layout.type_name != NULL)
		image->type = target->layout.type_name;

	if (target->layout.kind == LAYOUT_HAPI)
		read_hapi(target, tuple, desc, image, before, previous);
	else
	{
		/* A deleted row's text may be no JSON at all (Medplum writes ''). */
		if (!(target->text_resource && image->deleted))
			same_json = read_resource(target, tuple, desc, image, before, NULL);

		if (image->type == NULL && image->is_object)
			image->type = json_string(&image->resource->root, "resourceType");

		image->id = column_text(tuple, desc, &target->id);
		if (image->id == NULL && image->is_object)
			image->id = json_string(&image->resource->root, "id");

		image->version = column_text(tuple, desc, &target->version);
		if (image->version == NULL && image->is_object)
			image->version = json_version(&image->resource->root);
	}

	if (target->by_version)
	{
		if (target->layout.kind == LAYOUT_HAPI && image->version != NULL)
			image->source_key = psprintf(INT64_FORMAT, image->res_id);
		else if (target->layout.kind == LAYOUT_MEDPLUM)
			image->source_key = image->version;
		else if (target->layout.kind == LAYOUT_WINTEHR)
			image->source_key = column_text(tuple, desc, &target->key);
	}

	image->usable = image->type != NULL && image->id != NULL;
	if (image->problem != NULL)
		;
	else if (image->resource == NULL && !image->deleted)
		image->problem = "the resource is NULL";
	else if (image->resource != NULL && !image->is_object)
		image->problem = "the resource is not a JSON object";
	else if (image->type == NULL)
		image->problem = "the resource has no resourceType";
	else if (image->id == NULL)
		image->problem = "the resource has no id";
	if (!image->usable)
		return;
	if (same_json && before->usable && strcmp(before->type, image->type) == 0 &&
	    strcmp(before->id, image->id) == 0)
		image->patients = before->patients;
	else if (image->is_object)
		fhir_notify_compartment_patient_ids(&image->resource->root, image->type, image->id,
		                                    &image->patients);
}

/*
 * Whether two versions of a resource are the same: same version and equal
 * JSON (jsonb equality, so key order and number formatting do not count).
 * Medplum's meta.versionId is new on every write: the same one is the same
 * version, whatever a reindex rewrote.
 */
static bool
same_content(CaptureTarget *target, RowImage *old, RowImage *new)
{
	if ((old->version == NULL) != (new->version == NULL))
		return false;
	if (old->version != NULL && strcmp(old->version, new->version) != 0)
		return false;
	if (old->version != NULL && target->layout.kind == LAYOUT_MEDPLUM)
		return true;
	if (old->resource == NULL || new->resource == NULL)
		return old->resource == new->resource;
	if (VARSIZE(old->resource) == VARSIZE(new->resource) &&
	    memcmp(old->resource, new->resource, VARSIZE(old->resource)) == 0)
		return true;
	return compareJsonbContainers(&old->resource->root, &new->resource->root) == 0;
}

/*
 * The patients in a but not in b; both are sorted by strcmp.
 */
static PatientIds
patients_removed(PatientIds *a, PatientIds *b)
{
	PatientIds removed = {0, NULL};
	int j = 0;

	if (a->count == 0)
		return removed;
	removed.ids = palloc(sizeof(char *) * a->count);
	for (int i = 0; i < a->count; i++)
	{
		int cmp = 1;

		while (j < b->count && (cmp = strcmp(b->ids[j], a->ids[i])) < 0)
			j++;
		if (j >= b->count || cmp != 0)
			removed.ids[removed.count++] = a->ids[i];
	}
	return removed;
}

/*
 * Adds the type and id to a resource that lacks them (fhirbase keeps both
 * outside the JSON), so readers always get a complete resource.
 */
Jsonb *
fhir_notify_complete_resource(Jsonb *resource, const char *type, const char *id)
{
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbValue value;
	JsonbValue *result = NULL;
	JsonbIteratorToken token;
	bool has_type;
	bool has_id;
	JsonbContainer *root = &resource->root;

	has_type = getKeyJsonValueFromContainer(root, "resourceType", 12, &value) != NULL;
	has_id = getKeyJsonValueFromContainer(root, "id", 2, &value) != NULL;
	if (has_type && has_id)
		return resource;

	it = JsonbIteratorInit(root);
	while ((token = JsonbIteratorNext(&it, &value, true)) != WJB_DONE)
	{
		result = pushJsonbValue(&state, token, token < WJB_BEGIN_ARRAY ? &value : NULL);
		if (token == WJB_BEGIN_OBJECT)
		{
			JsonbValue key;
			JsonbValue text;

			key.type = text.type = jbvString;
			if (!has_type)
			{
				key.val.string.val = "resourceType";
				key.val.string.len = 12;
				text.val.string.val = (char *) type;
				text.val.string.len = strlen(type);
				pushJsonbValue(&state, WJB_KEY, &key);
				pushJsonbValue(&state, WJB_VALUE, &text);
			}
			if (!has_id)
			{
				key.val.string.val = "id";
				key.val.string.len = 2;
				text.val.string.val = (char *) id;
				text.val.string.len = strlen(id);
				pushJsonbValue(&state, WJB_KEY, &key);
				pushJsonbValue(&state, WJB_VALUE, &text);
			}
		}
	}
	return JsonbValueToJsonb(result);
}

/*
 * The actor to record: fhir_notify.actor, or else the session user and the
 * application name, as in "alice (wintehr-backend)".
 */
static char *
current_actor(void)
{
	char *user;

	if (capture_actor != NULL && capture_actor[0] != '\0')
		return capture_actor;
	user = GetUserNameFromId(GetSessionUserId(), true);
	if (user == NULL)
		user = "unknown";
	if (application_name != NULL && application_name[0] != '\0')
		return psprintf("%s (%s)", user, application_name);
	return user;
}

/*
 * Appends one row to the change log and rings the doorbell. Unrouted
 * changes are skipped unless the table records them.
 */
static void
record_change(CaptureTarget *target, const char *action, RowImage *image, PatientIds *patients,
              bool with_resource)
{
	ChangeRow row;

	if (patients->count == 0 && !target->layout.record_unrouted)
		return;

	row.action = action;
	row.resource_type = image->type;
	row.resource_id = image->id;
	row.version_id = image->version;
	row.patients = patients;
	row.has_resource = with_resource && image->resource != NULL;
	row.resource = (Datum) 0;
	row.source_key = NULL;
	/*
	 * body by_version: the version's row holds the body, written in this
	 * transaction; the log keeps its key and read() reads it back. Only a
	 * JSON object (what is read back is completed the same way), and only
	 * once the log has the column (a 0.1.0 table before the update copies).
	 */
	if (row.has_resource && target->by_version && image->source_key != NULL &&
	    image->version != NULL && image->is_object && fhir_notify_change_log_has_source_key())
	{
		row.has_resource = false;
		row.source_key = image->source_key;
	}
	if (row.has_resource)
	{
		Jsonb *complete = image->is_object ? fhir_notify_complete_resource(image->resource,
		                                                                   image->type, image->id)
		                                   : image->resource;

		/*
		 * Unchanged JSON is logged as the table stored it: a large resource
		 * is then copied compressed instead of compressed a second time.
		 */
		row.resource = complete == image->resource ? image->raw_resource : JsonbPGetDatum(complete);
	}
	row.actor = current_actor();
	row.source_table = target->source_table;
	fhir_notify_change_log_append(&row);

	fhir_notify_doorbell_ring();
}

/*
 * Whether a text layout's resource could not be read (not JSON, a large
 * object gone): then who it belongs to now is unknown, not nobody.
 */
static bool
unreadable(const CaptureTarget *target, const RowImage *image)
{
	return target->text_resource && image->resource == NULL && !image->deleted &&
	       image->problem != NULL;
}

/*
 * Warns (rate-limited) about odd content of one side of a change; creates
 * says that no earlier version's patients would receive it.
 */
static void
warn_content(CaptureTarget *target, RowImage *image, bool creates)
{
	if (image->problem != NULL)
		capture_warning(target->source_table, image->problem,
		                image->usable && unreadable(target, image) && !creates
		                    ? RECORDED_WITHOUT_RESOURCE
		                    : image->usable);
}

/*
 * Whether a row of a text layout can be left unread: its type, known
 * without the JSON, belongs to no patient, and the table does not record
 * unrouted changes. Parsing a Medplum Login or a HAPI Practitioner would
 * only find nobody to tell.
 */
static bool
unroutable_row(CaptureTarget *target, HeapTuple tuple, TupleDesc desc)
{
	char *type;

	if (!target->text_resource || target->layout.record_unrouted)
		return false;
	type = column_text(tuple, desc, &target->type);
	if (type == NULL)
		type = target->layout.type_name;
	return type != NULL && !fhir_notify_compartment_type_routed(type);
}

/* Whether a column holds the same bytes in two rows (both NULL counts). */
static bool
same_column(HeapTuple a, HeapTuple b, TupleDesc desc, CaptureColumn *column)
{
	Form_pg_attribute attr;
	bool a_null;
	bool b_null;
	Datum a_value;
	Datum b_value;

	if (column->attnum == 0)
		return true;
	attr = TupleDescAttr(desc, column->attnum - 1);
	a_value = heap_getattr(a, column->attnum, desc, &a_null);
	b_value = heap_getattr(b, column->attnum, desc, &b_null);
	if (a_null || b_null)
		return a_null == b_null;
	return datumIsEqual(a_value, b_value, attr->attbyval, attr->attlen);
}

/*
 * Whether an UPDATE of a text layout left every column the layout reads as
 * it was (a Medplum reindex, a HAPI row touched in place): then nothing is
 * parsed and nothing changed.
 */
static bool
text_row_unchanged(CaptureTarget *target, HeapTuple old, HeapTuple new, TupleDesc desc)
{
	CaptureColumn *columns[] = {
	    &target->resource, &target->type, &target->id,     &target->version,   &target->deleted,
	    &target->encoding, &target->lob,  &target->res_id, &target->partition, &target->updated};

	if (!target->text_resource)
		return false;
	for (int i = 0; i < (int) lengthof(columns); i++)
		if (!same_column(old, new, desc, columns[i]))
			return false;
	return true;
}

/*
 * A new version row of HAPI's hfj_res_ver: created (version 1, or after a
 * delete), updated (with a deleted row for the patients the previous
 * version belonged to and this one does not), or deleted (a DEL row, for
 * the previous version's patients).
 */
static void
capture_hapi_version(CaptureTarget *target, HeapTuple tuple, TupleDesc desc)
{
	RowImage new;
	RowImage previous;
	PatientIds removed;

	read_image(target, tuple, desc, &new, NULL, &previous);
	warn_content(target, &new, !(previous.usable && !previous.deleted));
	if (!new.usable)
		return;
	if (previous.problem != NULL)
		capture_warning(target->source_table, previous.problem, RECORDED_PREVIOUS_UNKNOWN);

	if (new.deleted)
	{
		if (previous.usable && previous.deleted)
			return; /* deleted already */
		if (!previous.usable)
			capture_warning(target->source_table,
			                "the previous version of a deleted resource is not in hfj_res_ver",
			                RECORDED_PREVIOUS_UNKNOWN);
		record_change(target, "deleted", &new, previous.usable ? &previous.patients : &new.patients,
		              false);
		return;
	}
	if (!previous.usable)
	{
		record_change(target, strcmp(new.version, "1") == 0 ? "created" : "updated", &new,
		              &new.patients, true);
		return;
	}
	if (previous.deleted)
	{
		record_change(target, "created", &new, &new.patients, true); /* re-created */
		return;
	}
	if (unreadable(target, &new))
	{
		/* Nothing known of the new version: its patients are told to read it. */
		record_change(target, "updated", &new, &previous.patients, false);
		return;
	}
	removed = patients_removed(&previous.patients, &new.patients);
	if (removed.count > 0)
		record_change(target, "deleted", &new, &removed, false);
	record_change(target, "updated", &new, &new.patients, true);
}

/*
 * Works out what a row change means for the resource and records it:
 * created, updated, deleted (hard or soft), undeleted, and patients that an
 * update took away from the resource.
 */
static void
capture_row(CaptureTarget *target, TriggerData *trigdata)
{
	TupleDesc desc = RelationGetDescr(trigdata->tg_relation);
	RowImage old;
	RowImage new;
	PatientIds removed;

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		if (unroutable_row(target, trigdata->tg_trigtuple, desc))
			return;
		if (target->layout.kind == LAYOUT_HAPI)
		{
			capture_hapi_version(target, trigdata->tg_trigtuple, desc);
			return;
		}
		read_image(target, trigdata->tg_trigtuple, desc, &new, NULL, NULL);
		warn_content(target, &new, true);
		if (new.usable && !new.deleted)
			record_change(target, "created", &new, &new.patients, true);
		return;
	}
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		/* HAPI deletes version rows only to expunge history: no change. */
		if (target->layout.kind == LAYOUT_HAPI ||
		    unroutable_row(target, trigdata->tg_trigtuple, desc))
			return;
		read_image(target, trigdata->tg_trigtuple, desc, &old, NULL, NULL);
		warn_content(target, &old, true);
		if (old.usable && !old.deleted)
			record_change(target, "deleted", &old, &old.patients, false);
		return;
	}

	if (text_row_unchanged(target, trigdata->tg_trigtuple, trigdata->tg_newtuple, desc) ||
	    (unroutable_row(target, trigdata->tg_trigtuple, desc) &&
	     unroutable_row(target, trigdata->tg_newtuple, desc)))
		return;
	read_image(target, trigdata->tg_trigtuple, desc, &old, NULL, NULL);
	read_image(target, trigdata->tg_newtuple, desc, &new, &old, NULL);
	/* Odd old content loses nothing. */
	warn_content(target, &new, !(old.usable && !old.deleted));
	if (!new.usable)
		return;
	if (!old.usable || (old.deleted && !new.deleted))
	{
		if (!new.deleted)
			record_change(target, "created", &new, &new.patients, true);
		return;
	}
	if (old.deleted)
		return; /* still deleted */
	if (new.deleted)
	{
		/* Soft delete: the patients are those of the resource as it was. */
		old.version = new.version;
		record_change(target, "deleted", &old, &old.patients, false);
		return;
	}
	if (strcmp(old.type, new.type) != 0 || strcmp(old.id, new.id) != 0)
	{
		/* The row now holds another resource. */
		record_change(target, "deleted", &old, &old.patients, false);
		record_change(target, "created", &new, &new.patients, true);
		return;
	}
	if (same_content(target, &old, &new))
		return;
	if (unreadable(target, &new))
	{
		/* Nothing known of the new version: its patients are told to read it. */
		record_change(target, "updated", &new, &old.patients, false);
		return;
	}

	removed = patients_removed(&old.patients, &new.patients);
	if (removed.count > 0)
	{
		/* Those patients' charts must drop the resource. */
		record_change(target, "deleted", &new, &removed, false);
	}
	record_change(target, "updated", &new, &new.patients, true);
}

/*
 * SQL: fhir_notify.capture() RETURNS trigger. The row trigger watch()
 * installs; its arguments are the table's layout.
 */
Datum
fhir_notify_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	CaptureTarget *target;
	MemoryContext row_context;
	MemoryContext old;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
		                errmsg("fhir_notify.capture() must be called as a trigger")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
		                errmsg("fhir_notify.capture() must be fired AFTER ... FOR EACH ROW"),
		                errhint("Install it with fhir_notify.watch().")));

	target = capture_target(trigdata);
	if (!target->columns_ok)
	{
		char *problem =
		    psprintf("%s; run fhir_notify.watch() again for this table", target->problem);

		capture_warning(target->source_table, problem, false);
		pfree(problem);
		return PointerGetDatum(NULL);
	}

	/*
	 * A capture nested in another (a trigger on the change log itself) gets
	 * its own context so it cannot reset the outer one's memory.
	 */
	row_context = capture_depth == 0 ? capture_row_context
	                                 : AllocSetContextCreate(CurrentMemoryContext,
	                                                         "fhir_notify nested capture row",
	                                                         ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(row_context);
	old = MemoryContextSwitchTo(row_context);
	capture_depth++;
	PG_TRY();
	{
		capture_row(target, trigdata);
	}
	PG_FINALLY();
	{
		capture_depth--;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(row_context);
	if (row_context != capture_row_context)
		MemoryContextDelete(row_context);
	return PointerGetDatum(NULL);
}

/*
 * SQL: fhir_notify.capture_truncate() RETURNS trigger. TRUNCATE removes rows
 * without row triggers, so the change log cannot tell anybody; say so.
 */
Datum
fhir_notify_capture_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
		                errmsg("fhir_notify.capture_truncate() must be called as a trigger")));
	ereport(WARNING, (errmsg("truncate of watched table \"%s\" is not recorded in the change log",
	                         RelationGetRelationName(trigdata->tg_relation)),
	                  errdetail("Clients are not told that the resources of this table are gone."),
	                  errhint("Delete rows with DELETE to have the deletions streamed.")));
	return PointerGetDatum(NULL);
}
