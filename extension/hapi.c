/*
 * hapi.c
 *	  What the hapi layout reads besides the version row the trigger fires
 *	  on: the logical id in hfj_resource, the previous version's body, and
 *	  bodies kept gzip'd in large objects (res_encoding JSONC).
 *
 * Both lookups are index scans of the unique indexes HAPI has, (res_id)
 * of hfj_resource and (res_id, res_ver) of hfj_res_ver (with partition_id
 * in partition mode), chosen once per watched table and backend: no
 * planning, no executor. A schema without such indexes falls back to one
 * saved SPI plan per table, prepared once (the plan cache replans it after
 * DDL), run as the watched table's owner like a foreign-key check.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_am.h"
#include "catalog/pg_index.h"
#include "commands/defrem.h"
#include "executor/tuptable.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
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
 * The btree index of rel whose leading key columns are columns of t with
 * a value (res_id among them), compared by their default operator class:
 * the one with the most such columns. Unique or not: every row found is
 * checked against all values anyway.
 */
static HapiIndex
find_index(Relation rel, const HapiTable *t, bool with_partition)
{
	HapiIndex best;
	ListCell *lc;
	List *indexes = RelationGetIndexList(rel);

	memset(&best, 0, sizeof(best));
	foreach (lc, indexes)
	{
		Relation index = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = index->rd_index;
		HapiIndex candidate;
		bool has_res_id = false;

		memset(&candidate, 0, sizeof(candidate));
		candidate.indexid = RelationGetRelid(index);
		if (index->rd_rel->relam == BTREE_AM_OID && form->indisvalid &&
		    RelationGetIndexPredicate(index) == NIL)
		{
			for (int i = 0; i < form->indnkeyatts && i < HAPI_KEYS; i++)
			{
				AttrNumber attnum = form->indkey.values[i];
				int key = -1;

				for (int k = 0; k < HAPI_KEYS; k++)
					if (t->attnums[k] != 0 && t->attnums[k] == attnum &&
					    (k != HAPI_PARTITION || with_partition))
						key = k;
				if (key < 0 || index->rd_opfamily[i] != get_opclass_family(GetDefaultOpClass(
				                                            t->types[key], BTREE_AM_OID)))
					break;
				candidate.keys[candidate.nkeys++] = key;
				has_res_id |= key == HAPI_RES_ID;
			}
		}
		if (has_res_id && candidate.nkeys > best.nkeys)
			best = candidate;
		index_close(index, AccessShareLock);
	}
	list_free(indexes);
	return best;
}

/* Reads the lookup columns of one table; false when a type is not HAPI's. */
static bool
describe_table(Relation rel, HapiTable *t, bool with_version)
{
	static const char *const names[HAPI_KEYS] = {"res_id", "res_ver", "partition_id"};
	TupleDesc desc = RelationGetDescr(rel);

	t->relid = RelationGetRelid(rel);
	for (int k = 0; k < HAPI_KEYS; k++)
	{
		if (k == HAPI_RES_VER && !with_version)
			continue;
		t->attnums[k] = get_attnum(t->relid, names[k]);
		if (t->attnums[k] == InvalidAttrNumber)
		{
			t->attnums[k] = 0;
			continue;
		}
		t->types[k] = TupleDescAttr(desc, t->attnums[k] - 1)->atttypid;
		if (t->types[k] != INT8OID && t->types[k] != INT4OID)
			return false;
	}
	for (int mode = 0; mode < 2; mode++)
		t->index[mode] = find_index(rel, t, mode == 1);
	return t->attnums[HAPI_RES_ID] != 0;
}

/*
 * Finds out, once per watched table and backend, the columns and indexes
 * of both tables; lookups are index scans where both have an index led by
 * res_id (and partition_id, res_ver) for the mode (see can_scan).
 */
static void
prepare_direct(HapiTables *tables)
{
	Oid namespace = get_rel_namespace(tables->version_relid);
	Oid resource_relid = get_relname_relid("hfj_resource", namespace);
	Relation rel;
	bool ok;

	tables->direct = -1;
	if (resource_relid == InvalidOid)
		return;
	rel = table_open(resource_relid, AccessShareLock);
	ok = describe_table(rel, &tables->resource, false);
	table_close(rel, AccessShareLock);
	rel = table_open(tables->version_relid, AccessShareLock);
	ok = ok && describe_table(rel, &tables->version, true);
	table_close(rel, AccessShareLock);
	tables->fhir_id = get_attnum(resource_relid, "fhir_id");
	tables->encoding = get_attnum(tables->version_relid, "res_encoding");
	tables->text = get_attnum(tables->version_relid, "res_text_vc");
	tables->lob = get_attnum(tables->version_relid, "res_text");
	if (ok && tables->fhir_id != InvalidAttrNumber && tables->encoding != InvalidAttrNumber &&
	    tables->text != InvalidAttrNumber && tables->lob != InvalidAttrNumber &&
	    tables->version.attnums[HAPI_RES_VER] != 0)
		tables->direct = 1;
}

/* Whether lookups with (or without) a partition_id can be index scans. */
static bool
can_scan(const HapiTables *tables, bool with_partition)
{
	int mode = with_partition ? 1 : 0;

	return tables->direct > 0 && tables->resource.index[mode].indexid != InvalidOid &&
	       tables->version.index[mode].indexid != InvalidOid;
}

static Datum
key_datum(Oid type, int64 value)
{
	return type == INT8OID ? Int64GetDatum(value) : Int32GetDatum((int32) value);
}

/* A text-like column of slot as a string in the current context, or NULL. */
static char *
slot_text(TupleTableSlot *slot, AttrNumber attnum)
{
	bool isnull;
	Datum value = slot_getattr(slot, attnum, &isnull);

	return isnull ? NULL : TextDatumGetCString(value);
}

/*
 * Finds the row of t whose lookup columns equal values (partition_id only
 * when with_partition) by an index scan in the active snapshot, and calls
 * read on it. Returns whether a row was found.
 */
static bool
scan_one(const HapiTable *t, bool with_partition, const int64 values[HAPI_KEYS],
         void (*read)(TupleTableSlot *slot, void *arg), void *arg)
{
	const HapiIndex *ix = &t->index[with_partition ? 1 : 0];
	Relation rel = table_open(t->relid, AccessShareLock);
	Relation index = index_open(ix->indexid, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	ScanKeyData keys[HAPI_KEYS];
	IndexScanDesc scan;
	bool found = false;

	for (int i = 0; i < ix->nkeys; i++)
	{
		int k = ix->keys[i];

		ScanKeyInit(&keys[i], i + 1, BTEqualStrategyNumber,
		            t->types[k] == INT8OID ? F_INT8EQ : F_INT4EQ,
		            key_datum(t->types[k], values[k]));
	}
	scan = index_beginscan(rel, index, GetActiveSnapshot(), ix->nkeys, 0);
	index_rescan(scan, keys, ix->nkeys, NULL, 0);
	while (!found && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool match = true;

		/* Every value counts, also those the index does not lead with. */
		for (int k = 0; k < HAPI_KEYS && match; k++)
		{
			bool isnull;
			Datum value;

			if (t->attnums[k] == 0 || (k == HAPI_PARTITION && !with_partition))
				continue;
			value = slot_getattr(slot, t->attnums[k], &isnull);
			match = !isnull && (t->types[k] == INT8OID ? DatumGetInt64(value)
			                                           : (int64) DatumGetInt32(value)) == values[k];
		}
		if (match)
		{
			read(slot, arg);
			found = true;
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	table_close(rel, AccessShareLock);
	return found;
}

typedef struct ReadArg
{
	HapiTables *tables;
	char **fhir_id;
	HapiVersion *version;
} ReadArg;

static void
read_resource_row(TupleTableSlot *slot, void *arg)
{
	ReadArg *a = arg;

	*a->fhir_id = slot_text(slot, a->tables->fhir_id);
}

static void
read_version_row(TupleTableSlot *slot, void *arg)
{
	ReadArg *a = arg;
	bool isnull;
	Datum lob;

	a->version->encoding = slot_text(slot, a->tables->encoding);
	a->version->found = a->version->encoding != NULL;
	a->version->text = slot_text(slot, a->tables->text);
	lob = slot_getattr(slot, a->tables->lob, &isnull);
	a->version->lob = isnull ? InvalidOid : DatumGetObjectId(lob);
}

/* fhir_notify_hapi_lookup() by index scans. */
static bool
lookup_direct(HapiTables *tables, int64 res_id, bool has_partition, int32 partition_id,
              int64 previous_version, char **fhir_id, HapiVersion *previous)
{
	int64 values[HAPI_KEYS];
	ReadArg arg = {tables, fhir_id, previous};

	values[HAPI_RES_ID] = res_id;
	values[HAPI_RES_VER] = previous_version;
	values[HAPI_PARTITION] = partition_id;
	if (!scan_one(&tables->resource, has_partition, values, read_resource_row, &arg))
		return false;
	if (previous_version > 0)
		scan_one(&tables->version, has_partition, values, read_version_row, &arg);
	return true;
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
	if (tables->direct == 0)
		prepare_direct(tables);
	if (can_scan(tables, has_partition))
		return lookup_direct(tables, res_id, has_partition, partition_id, previous_version, fhir_id,
		                     previous);

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
