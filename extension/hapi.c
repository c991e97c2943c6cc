/*
 * hapi.c
 *	  What the hapi layout reads besides the version row the trigger fires
 *	  on: the logical id in hfj_resource, the previous version's body, and
 *	  bodies kept gzip'd in large objects (res_encoding JSONC).
 *
 * Both lookups are one saved plan per watched table, prepared on first use
 * in a backend and kept (the plan cache replans it after DDL): no per-row
 * planning. They run as the watched table's owner, like a foreign-key
 * check, so any role HAPI writes as can be captured.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "hapi.h"

/* Large objects larger than this are not read (HAPI bodies are KBs). */
#define MAX_LOB_BYTES (64 * 1024 * 1024)

/*
 * Prepares the lookup: the resource row by res_id (its fhir_id) and, left
 * joined, the version row (res_id, $2), both within partition $3 when the
 * tables are partitioned (HAPI's partition mode puts partition_id first in
 * the keys).
 */
static SPIPlanPtr
prepare_lookup(const HapiTables *tables, bool by_partition)
{
	Oid argtypes[3] = {INT8OID, INT8OID, INT4OID};
	char *query;
	SPIPlanPtr plan;

	query = psprintf("SELECT r.fhir_id, v.res_encoding, v.res_text_vc, v.res_text "
	                 "FROM %s r LEFT JOIN %s v "
	                 "ON v.res_id OPERATOR(pg_catalog.=) r.res_id "
	                 "AND v.res_ver OPERATOR(pg_catalog.=) $2%s "
	                 "WHERE r.res_id OPERATOR(pg_catalog.=) $1%s",
	                 tables->resource_table, tables->version_table,
	                 by_partition ? " AND v.partition_id OPERATOR(pg_catalog.=) $3" : "",
	                 by_partition ? " AND r.partition_id OPERATOR(pg_catalog.=) $3" : "");
	plan = SPI_prepare(query, by_partition ? 3 : 2, argtypes);
	if (plan == NULL)
		elog(ERROR, "fhir_notify: cannot prepare the HAPI lookup: %s",
		     SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	pfree(query);
	return plan;
}

/* The text of column n of the SPI result row, in context, or NULL. */
static char *
result_text(HeapTuple tuple, TupleDesc desc, int n, MemoryContext context)
{
	bool isnull;
	Datum value = SPI_getbinval(tuple, desc, n, &isnull);
	Oid type = SPI_gettypeid(desc, n);
	MemoryContext old;
	char *result;

	if (isnull)
		return NULL;
	old = MemoryContextSwitchTo(context);
	if (type == TEXTOID || type == VARCHAROID)
		result = TextDatumGetCString(value);
	else
		result = SPI_getvalue(tuple, desc, n);
	MemoryContextSwitchTo(old);
	return result;
}

/*
 * Looks up the fhir_id of res_id and, when previous_version > 0, that
 * version's row. Strings are allocated in the caller's memory context.
 * Returns false when hfj_resource has no row for res_id.
 */
bool
fhir_notify_hapi_lookup(HapiTables *tables, int64 res_id, bool has_partition, int32 partition_id,
                        int64 previous_version, char **fhir_id, HapiVersion *previous)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid save_userid;
	int save_sec_context;
	Datum values[3];
	char nulls[3] = {' ', ' ', ' '};
	SPIPlanPtr *plan = &tables->plans[has_partition ? 1 : 0];
	bool found = false;
	int rc;

	*fhir_id = NULL;
	memset(previous, 0, sizeof(*previous));
	values[0] = Int64GetDatum(res_id);
	values[1] = Int64GetDatum(previous_version);
	values[2] = Int32GetDatum(partition_id);

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(tables->owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
	                                          SECURITY_RESTRICTED_OPERATION);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (*plan == NULL)
		*plan = prepare_lookup(tables, has_partition);
	rc = SPI_execute_plan(*plan, values, nulls, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "fhir_notify: HAPI lookup failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		HeapTuple tuple = SPI_tuptable->vals[0];
		TupleDesc desc = SPI_tuptable->tupdesc;
		bool isnull;
		Datum lob;

		found = true;
		*fhir_id = result_text(tuple, desc, 1, caller);
		previous->encoding = result_text(tuple, desc, 2, caller);
		previous->found = previous->encoding != NULL;
		previous->text = result_text(tuple, desc, 3, caller);
		lob = SPI_getbinval(tuple, desc, 4, &isnull);
		previous->lob = isnull ? InvalidOid : DatumGetObjectId(lob);
	}
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return found;
}

/*
 * Reads large object lob whole, as the watched table's owner, into a
 * buffer in the current memory context. A missing or unreadable large
 * object is no error: returns false with *problem set. The read runs in a
 * subtransaction so that its error can be caught safely.
 */
bool
fhir_notify_hapi_read_lob(const HapiTables *tables, Oid lob, char **data, size_t *len,
                          const char **problem)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid save_userid;
	int save_sec_context;
	volatile bool ok = false;
	StringInfo buffer = makeStringInfo();

	*data = NULL;
	*len = 0;
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller);
	PG_TRY();
	{
		bytea *bytes;

		SetUserIdAndSecContext(tables->owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
		                                          SECURITY_RESTRICTED_OPERATION);
		/* lo_get(), as SQL calls it: it opens and closes the large object properly. */
		bytes = DatumGetByteaPP(DirectFunctionCall1(be_lo_get, ObjectIdGetDatum(lob)));
		if (VARSIZE_ANY_EXHDR(bytes) > MAX_LOB_BYTES)
			ereport(ERROR, (errmsg("the large object is larger than 64 MB")));
		appendBinaryStringInfo(buffer, VARDATA_ANY(bytes), VARSIZE_ANY_EXHDR(bytes));
		SetUserIdAndSecContext(save_userid, save_sec_context);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
		ok = true;
	}
	PG_CATCH();
	{
		ErrorData *error;

		MemoryContextSwitchTo(caller);
		error = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
		SetUserIdAndSecContext(save_userid, save_sec_context);
		*problem =
		    psprintf("large object %u of the JSONC body cannot be read: %s", lob, error->message);
		FreeErrorData(error);
	}
	PG_END_TRY();
	if (!ok)
		return false;
	*data = buffer->data;
	*len = buffer->len;
	return true;
}

/*
 * A HAPI timestamp (timestamp without time zone, UTC) as a FHIR instant:
 * 2025-10-01T12:00:00.123Z (microseconds when it has them), or NULL.
 */
char *
fhir_notify_hapi_instant(Timestamp timestamp)
{
	struct pg_tm tm;
	fsec_t fsec;

	if (TIMESTAMP_NOT_FINITE(timestamp) ||
	    timestamp2tm(timestamp, NULL, &tm, &fsec, NULL, NULL) != 0 || tm.tm_year < 1 ||
	    tm.tm_year > 9999)
		return NULL;
	if (fsec % 1000 == 0)
		return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year, tm.tm_mon, tm.tm_mday,
		                tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (fsec / 1000));
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year, tm.tm_mon, tm.tm_mday,
	                tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}
