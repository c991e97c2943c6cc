/*
 * version_body.c
 *	  The body of a change logged with "body": "by_version", read back at
 *	  delivery from the FHIR server's own table of versions.
 *
 * A change of a table watched with body by_version is logged without the
 * resource: source_key and version_id name the version's row (HAPI's
 * hfj_res_ver (res_id, res_ver), Medplum's "<Type>_History" ("versionId"),
 * WintEHR's fhir.resource_history (resource_id, version_id)), which the
 * server wrote in the same transaction. read(), batch() and read_next()
 * call fhir_notify.version_body() for such rows and return the same body
 * the trigger would have copied: HAPI's text parsed (or its gzip large
 * object inflated) with id, meta.versionId and meta.lastUpdated added,
 * Medplum's text parsed, and every body completed with resourceType and
 * id, as the trigger completes them. A version gone from that table (an
 * expunge, a history cleanup) or unreadable gives NULL: the reader
 * returns the change with the JSON null as resource.
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"

#include "fhir_notify.h"
#include "hapi.h"
#include "json_text.h"
#include "layout.h"

PG_FUNCTION_INFO_V1(fhir_notify_version_body);

/* What is known of one source_table, per backend, until a relation changes. */
typedef struct VersionSource
{
	char name[NAMEDATALEN * 2 + 8]; /* hash key: source_table as logged */
	bool valid;
	bool usable;     /* a watched table whose versions can be read */
	LayoutKind kind; /* hapi, medplum or wintehr */
	Oid owner;       /* the watched table's owner: lookups run as it */
	SPIPlanPtr plan; /* the lookup of one version */
} VersionSource;

static HTAB *version_sources = NULL;

/* Any relation changed: plans and tables are looked up again. */
static void
version_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	VersionSource *source;

	if (version_sources == NULL)
		return;
	hash_seq_init(&status, version_sources);
	while ((source = hash_seq_search(&status)) != NULL)
		source->valid = false;
}

/* The layout watched_tables records for relid, or NULL when it is not watched. */
static char *
watched_layout(Oid relid)
{
	Oid argtypes[1] = {OIDOID};
	Datum values[1] = {ObjectIdGetDatum(relid)};
	char *layout = NULL;

	if (SPI_execute_with_args("SELECT layout FROM fhir_notify.watched_tables "
	                          "WHERE relation OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
	                          1, argtypes, values, NULL, true, 1) == SPI_OK_SELECT &&
	    SPI_processed > 0)
	{
		char *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (value != NULL)
			layout = MemoryContextStrdup(TopMemoryContext, value); /* SPI memory goes */
	}
	return layout;
}

/*
 * (Re)builds what is known of a source table: its layout (from
 * watched_tables), the table of its versions, and a saved plan looking one
 * version up by its index. Runs inside SPI.
 */
static void
build_source(VersionSource *source)
{
	List *names;
	Oid relid;
	char *layout_name;
	bool known;
	Relation rel;
	LayoutHistory history;
	StringInfoData query;
	Oid argtypes[2] = {TEXTOID, TEXTOID};
	SPIPlanPtr plan;

	if (source->plan != NULL)
		SPI_freeplan(source->plan);
	source->plan = NULL;
	source->usable = false;
	source->valid = true;

#if PG_VERSION_NUM >= 160000
	names = stringToQualifiedNameList(source->name, NULL);
#else
	names = stringToQualifiedNameList(source->name);
#endif
	relid = RangeVarGetRelid(makeRangeVarFromNameList(names), AccessShareLock, true);
	if (!OidIsValid(relid))
		return;
	layout_name = watched_layout(relid);
	if (layout_name == NULL)
		return;
	known = fhir_notify_layout_kind_from_name(layout_name, &source->kind);
	pfree(layout_name);
	if (!known)
		return;
	rel = table_open(relid, NoLock);
	source->owner = rel->rd_rel->relowner;
	fhir_notify_layout_history(rel, source->kind, &history);
	table_close(rel, NoLock);
	if (!OidIsValid(history.relid))
		return;

	initStringInfo(&query);
	if (source->kind == LAYOUT_HAPI)
		appendStringInfo(&query, "SELECT res_encoding, res_text_vc, res_text, res_updated FROM %s",
		                 history.table);
	else
		appendStringInfo(&query, "SELECT %s FROM %s", history.body_column, history.table);
	for (int i = 0; i < history.nkeys; i++)
		appendStringInfo(&query, " %s %s OPERATOR(pg_catalog.=) CAST($%d AS %s)",
		                 i == 0 ? "WHERE" : "AND", history.key_columns[i], i + 1,
		                 format_type_be_qualified(history.key_types[i]));
	appendStringInfoString(&query, " LIMIT 1");
	plan = SPI_prepare(query.data, history.nkeys, argtypes);
	if (plan == NULL || SPI_keepplan(plan) != 0)
		return;
	source->plan = plan;
	source->usable = true;
}

/* The HAPI body of a version row (res_encoding, res_text_vc, res_text, res_updated). */
static Jsonb *
hapi_body(VersionSource *source, HeapTuple tuple, TupleDesc desc, const char *id,
          const char *version)
{
	char *encoding = SPI_getvalue(tuple, desc, 1);
	bool isnull;
	Datum value;
	JsonInject inject;
	Jsonb *parsed = NULL;
	const char *problem;

	inject.id = id;
	inject.version_id = version;
	inject.last_updated = NULL;
	value = SPI_getbinval(tuple, desc, 4, &isnull);
	if (!isnull)
		inject.last_updated = fhir_notify_hapi_instant(DatumGetTimestamp(value));
	if (encoding == NULL)
		return NULL;
	if (strcmp(encoding, "JSON") == 0)
	{
		char *json = SPI_getvalue(tuple, desc, 2);

		if (json == NULL || !fhir_notify_json_parse(json, strlen(json), &inject, &parsed, &problem))
			return NULL;
	}
	else if (strcmp(encoding, "JSONC") == 0)
	{
		HapiTables tables;
		char *compressed;
		size_t compressed_len;
		char *json;
		size_t json_len;

		value = SPI_getbinval(tuple, desc, 3, &isnull);
		if (isnull)
			return NULL;
		memset(&tables, 0, sizeof(tables));
		tables.owner = source->owner;
		if (!fhir_notify_hapi_read_lob(&tables, DatumGetObjectId(value), &compressed,
		                               &compressed_len, &problem) ||
		    !fhir_notify_gunzip(compressed, compressed_len, &json, &json_len, &problem) ||
		    !fhir_notify_json_parse(json, json_len, &inject, &parsed, &problem))
			return NULL;
	}
	return parsed;
}

/*
 * SQL: fhir_notify.version_body(source_table text, source_key text,
 * version_id text, resource_type text, resource_id text) RETURNS jsonb.
 * The body of the version, completed as the trigger completes what it
 * copies, or NULL when the version is gone or cannot be read.
 */
Datum
fhir_notify_version_body(PG_FUNCTION_ARGS)
{
	char *table_name;
	char *type;
	char *id;
	char *version;
	VersionSource *source;
	bool found;
	MemoryContext caller = CurrentMemoryContext;
	Oid save_userid;
	int save_sec_context;
	Datum values[2];
	int rc;
	Jsonb *body = NULL;

	for (int i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			PG_RETURN_NULL();
	table_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	version = text_to_cstring(PG_GETARG_TEXT_PP(2));
	type = text_to_cstring(PG_GETARG_TEXT_PP(3));
	id = text_to_cstring(PG_GETARG_TEXT_PP(4));
	if (strlen(table_name) >= sizeof(source->name))
		PG_RETURN_NULL();

	if (version_sources == NULL)
	{
		HASHCTL ctl;

		ctl.keysize = sizeof(source->name);
		ctl.entrysize = sizeof(VersionSource);
		version_sources =
		    hash_create("fhir_notify version sources", 16, &ctl, HASH_ELEM | HASH_STRINGS);
		CacheRegisterRelcacheCallback(version_relcache_callback, (Datum) 0);
	}
	source = hash_search(version_sources, table_name, HASH_ENTER, &found);
	if (!found)
	{
		source->valid = false;
		source->plan = NULL;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!source->valid)
		build_source(source);
	if (!source->usable)
	{
		SPI_finish();
		PG_RETURN_NULL();
	}

	/* The lookup runs as the watched table's owner, like the trigger's. */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(source->owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
	                                          SECURITY_RESTRICTED_OPERATION);
	values[0] = PG_GETARG_DATUM(1);
	values[1] = PG_GETARG_DATUM(2);
	rc = SPI_execute_plan(source->plan, values, NULL, true, 1);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "fhir_notify: version lookup failed: %s", SPI_result_code_string(rc));

	if (SPI_processed > 0)
	{
		HeapTuple tuple = SPI_tuptable->vals[0];
		TupleDesc desc = SPI_tuptable->tupdesc;
		MemoryContext spi = MemoryContextSwitchTo(caller);
		const char *problem;

		if (source->kind == LAYOUT_HAPI)
			body = hapi_body(source, tuple, desc, id, version);
		else if (source->kind == LAYOUT_MEDPLUM)
		{
			char *json = SPI_getvalue(tuple, desc, 1);

			if (json == NULL || !fhir_notify_json_parse(json, strlen(json), NULL, &body, &problem))
				body = NULL;
		}
		else
		{
			bool isnull;
			Datum value = SPI_getbinval(tuple, desc, 1, &isnull);

			if (!isnull && SPI_gettypeid(desc, 1) == JSONBOID)
				body = DatumGetJsonbPCopy(value);
		}
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();

	if (body == NULL || !JB_ROOT_IS_OBJECT(body) || JB_ROOT_IS_SCALAR(body))
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(fhir_notify_complete_resource(body, type, id));
}
