/*
 * change_log.c
 *	  Appends rows to fhir_notify.changes for the capture trigger, as the
 *	  table's owner.
 *
 * Two ways, same result. The direct way forms the tuple itself (position
 * from the identity sequence, the transaction's xid8, the clock) and
 * inserts it and its index entries without the executor: starting an
 * executor per row (SPI) re-reads the table's CHECK constraint and
 * defaults every time and cost about twice as much per captured row. It is
 * used only while the table looks exactly as the install script made it:
 * the known columns, plain indexes, only the action CHECK, no NOT NULL on
 * the columns it may leave NULL, no triggers, no rules, no row security.
 * Anything else (someone added a trigger, a constraint or an expression
 * index) falls back to a plan prepared once per backend and executed
 * through SPI, which honours all of it. fhir_notify.direct_insert = off
 * forces the SPI way.
 *
 * The table is locked before that choice is made: locking processes the
 * invalidations of DDL that committed meanwhile, so the choice and the row
 * are made from the table as it is now, not as an earlier transaction saw it.
 */
#include "postgres.h"

#include <limits.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "datatype/timestamp.h"
#include "utils/xid8.h"

#include "change_log.h"

/* The columns of fhir_notify.changes, in the order of the install script. */
enum
{
	COL_POSITION,
	COL_XID,
	COL_ACTION,
	COL_RESOURCE_TYPE,
	COL_RESOURCE_ID,
	COL_VERSION_ID,
	COL_PATIENT_IDS,
	COL_RESOURCE,
	COL_ACTOR,
	COL_CHANGED_AT,
	COL_SOURCE_TABLE,
	COL_SOURCE_KEY, /* 0.2.0; a 0.1.0 table (the new library before ALTER EXTENSION UPDATE) lacks it
	                 */
	N_COLUMNS
};

static const struct
{
	const char *name;
	Oid type;
} change_columns[N_COLUMNS] = {
    {"position", INT8OID},          {"xid", XID8OID},          {"action", TEXTOID},
    {"resource_type", TEXTOID},     {"resource_id", TEXTOID},  {"version_id", TEXTOID},
    {"patient_ids", TEXTARRAYOID},  {"resource", JSONBOID},    {"actor", TEXTOID},
    {"changed_at", TIMESTAMPTZOID}, {"source_table", TEXTOID}, {"source_key", TEXTOID},
};

/* fhir_notify.direct_insert */
static bool direct_insert_enabled = true;

/* fhir_notify.reader_max_lag, seconds; 0: never drop a registered reader */
static int reader_max_lag_s = 86400;

/* What is known about the change log, until its relcache entry changes. */
static bool log_known = false;
static Oid log_relid = InvalidOid;
static Oid log_owner = InvalidOid;
static Oid log_sequence = InvalidOid;
static int log_natts = 0;       /* columns of the table, dropped ones included */
static bool log_direct = false; /* the table fits the direct way */
static AttrNumber log_attnums[N_COLUMNS];
static bool log_has_source_key = false; /* the table has source_key */

/* The SPI way's plan, kept for the life of the backend. */
static SPIPlanPtr insert_plan = NULL;
static bool insert_plan_source_key = false; /* the plan writes source_key */

/*
 * Forgets what is known about the change log when it (or anything, for
 * InvalidOid) changes.
 */
static void
change_log_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == log_relid)
		log_known = false;
}

/*
 * Registers the setting and the invalidation callback.
 */
void
fhir_notify_change_log_init(void)
{
	DefineCustomBoolVariable(
	    "fhir_notify.direct_insert", "Writes change-log rows without the executor when possible.",
	    "Off writes every row through a prepared INSERT (slower; for comparison).",
	    &direct_insert_enabled, true, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable(
	    "fhir_notify.reader_max_lag",
	    "How far behind a registered reader of the change log may be before prune() drops it.",
	    "A reader whose oldest unconfirmed tick is older than this no longer holds back "
	    "fhir_notify.prune(); when it reads again it is told it was dropped. 0: never.",
	    &reader_max_lag_s, 86400, 0, INT_MAX, PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	CacheRegisterRelcacheCallback(change_log_relcache_callback, (Datum) 0);
}

/*
 * Whether every index of rel is on plain columns, without a predicate, so
 * that its entries can be formed without an executor.
 */
static bool
plain_indexes(Relation rel)
{
	List *indexes = RelationGetIndexList(rel);
	ListCell *lc;
	bool plain = true;

	foreach (lc, indexes)
	{
		HeapTuple tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index index;

		if (!HeapTupleIsValid(tuple))
			elog(ERROR, "cache lookup failed for index %u", lfirst_oid(lc));
		index = (Form_pg_index) GETSTRUCT(tuple);
		if (!heap_attisnull(tuple, Anum_pg_index_indexprs, NULL) ||
		    !heap_attisnull(tuple, Anum_pg_index_indpred, NULL) || index->indisexclusion ||
		    !index->indimmediate)
			plain = false;
		ReleaseSysCache(tuple);
	}
	list_free(indexes);
	return plain;
}

/*
 * Whether the table's CHECK constraints are only the install script's
 * (action IN ...), which the direct way satisfies by construction. Any
 * other constraint is left to the executor.
 */
static bool
only_install_checks(TupleDesc desc)
{
	if (desc->constr == NULL || desc->constr->num_check == 0)
		return true;
	return desc->constr->num_check == 1 &&
	       strcmp(desc->constr->check[0].ccname, "changes_action_check") == 0;
}

/*
 * Describes the change log from rel, which the caller has locked (so its
 * relcache entry is current): owner, identity sequence, where each column
 * is, and whether the direct way fits it.
 */
static void
change_log_describe(Relation rel)
{
	TupleDesc desc = RelationGetDescr(rel);
	int live_columns = 0;

	log_relid = RelationGetRelid(rel);
	log_owner = rel->rd_rel->relowner;
	log_natts = desc->natts;
	log_direct = rel->rd_rel->relkind == RELKIND_RELATION && !rel->rd_rel->relrowsecurity &&
	             rel->trigdesc == NULL && !rel->rd_rel->relhasrules && only_install_checks(desc) &&
	             plain_indexes(rel);

	for (int c = 0; c < N_COLUMNS; c++)
		log_attnums[c] = InvalidAttrNumber;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);

		if (attr->attisdropped)
			continue;
		live_columns++;
		for (int c = 0; c < N_COLUMNS; c++)
			if (strcmp(NameStr(attr->attname), change_columns[c].name) == 0 &&
			    attr->atttypid == change_columns[c].type)
				log_attnums[c] = attr->attnum;
	}
	log_has_source_key = log_attnums[COL_SOURCE_KEY] != InvalidAttrNumber;
	if (live_columns != N_COLUMNS - (log_has_source_key ? 0 : 1))
		log_direct = false;
	for (int c = 0; c < N_COLUMNS; c++)
		if (log_attnums[c] == InvalidAttrNumber && c != COL_SOURCE_KEY)
			log_direct = false;
	/* The direct way may write NULL there; a NOT NULL added later is the executor's. */
	if (log_direct && (TupleDescAttr(desc, log_attnums[COL_VERSION_ID] - 1)->attnotnull ||
	                   TupleDescAttr(desc, log_attnums[COL_RESOURCE] - 1)->attnotnull))
		log_direct = false;
	if (log_direct && TupleDescAttr(desc, log_attnums[COL_POSITION] - 1)->attidentity == '\0')
		log_direct = false;
	if (log_direct)
#if PG_VERSION_NUM >= 170000
		log_sequence = getIdentitySequence(rel, log_attnums[COL_POSITION], true);
#else
		log_sequence = getIdentitySequence(log_relid, log_attnums[COL_POSITION], true);
#endif
	else
		log_sequence = InvalidOid;
	if (!OidIsValid(log_sequence))
		log_direct = false;
	log_known = true;
}

/*
 * Opens the change log with RowExclusiveLock and makes sure what is known
 * about it is current. The lock comes first: taking it processes pending
 * invalidations, so DDL that committed since (an index, a column, a
 * trigger) is seen before the direct way decides how to write the row.
 */
static Relation
change_log_open(void)
{
	Relation rel;

	if (log_known)
	{
		rel = try_relation_open(log_relid, RowExclusiveLock);
		if (rel != NULL && log_known)
			return rel;
		if (rel != NULL)
			table_close(rel, NoLock);
	}

	/*
	 * By name, without the permission checks of a RangeVar lookup: the
	 * writing role has no USAGE on the schema. A table dropped and made
	 * again while we waited for the lock is looked up again.
	 */
	log_known = false;
	for (;;)
	{
		Oid namespace = get_namespace_oid("fhir_notify", true);
		Oid relid = OidIsValid(namespace) ? get_relname_relid("changes", namespace) : InvalidOid;

		if (!OidIsValid(relid))
			ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
			                errmsg("relation \"fhir_notify.changes\" does not exist"),
			                errhint("Reinstall the extension: DROP EXTENSION fhir_notify CASCADE; "
			                        "CREATE EXTENSION fhir_notify;")));
		rel = try_relation_open(relid, RowExclusiveLock);
		if (rel != NULL && RelationGetNamespace(rel) == namespace &&
		    strcmp(RelationGetRelationName(rel), "changes") == 0)
			break;
		if (rel != NULL)
			table_close(rel, RowExclusiveLock);
	}
	change_log_describe(rel);
	return rel;
}

/*
 * The row's patient ids as a text[] datum.
 */
static Datum
patient_array(const PatientIds *patients)
{
	Datum *ids = palloc(sizeof(Datum) * (patients->count + 1));

	for (int i = 0; i < patients->count; i++)
		ids[i] = CStringGetTextDatum(patients->ids[i]);
	return PointerGetDatum(construct_array(ids, patients->count, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * The direct way: forms the tuple and inserts it with its index entries.
 */
static void
append_direct(Relation rel, const ChangeRow *row)
{
	Datum values[N_COLUMNS];
	bool nulls[N_COLUMNS];
	Datum *tuple_values;
	bool *tuple_nulls;
	HeapTuple tuple;

	memset(nulls, 0, sizeof(nulls));
	values[COL_POSITION] = Int64GetDatum(nextval_internal(log_sequence, true));
	values[COL_XID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	values[COL_ACTION] = CStringGetTextDatum(row->action);
	values[COL_RESOURCE_TYPE] = CStringGetTextDatum(row->resource_type);
	values[COL_RESOURCE_ID] = CStringGetTextDatum(row->resource_id);
	if (row->version_id != NULL)
		values[COL_VERSION_ID] = CStringGetTextDatum(row->version_id);
	else
		nulls[COL_VERSION_ID] = true;
	values[COL_PATIENT_IDS] = patient_array(row->patients);
	if (row->has_resource)
		values[COL_RESOURCE] = row->resource;
	else
		nulls[COL_RESOURCE] = true;
	values[COL_ACTOR] = CStringGetTextDatum(row->actor);
	values[COL_CHANGED_AT] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[COL_SOURCE_TABLE] = CStringGetTextDatum(row->source_table);
	if (row->source_key != NULL)
		values[COL_SOURCE_KEY] = CStringGetTextDatum(row->source_key);
	else
		nulls[COL_SOURCE_KEY] = true;

	/*
	 * The table's column order; dropped columns (NULL) may sit between the
	 * known ones, so the row is as wide as the table, not as N_COLUMNS.
	 */
	Assert(RelationGetDescr(rel)->natts == log_natts);
	tuple_values = palloc0(sizeof(Datum) * log_natts);
	tuple_nulls = palloc(sizeof(bool) * log_natts);
	memset(tuple_nulls, true, sizeof(bool) * log_natts);
	for (int c = 0; c < N_COLUMNS; c++)
	{
		if (log_attnums[c] == InvalidAttrNumber)
			continue; /* source_key of a 0.1.0 table: the row has none (see append) */
		tuple_values[log_attnums[c] - 1] = values[c];
		tuple_nulls[log_attnums[c] - 1] = nulls[c];
	}

	tuple = heap_form_tuple(RelationGetDescr(rel), tuple_values, tuple_nulls);
	/* Inserts the heap tuple and an entry in every (plain) index. */
	CatalogTupleInsert(rel, tuple);
}

/*
 * The SPI way: a prepared INSERT that the executor runs with everything the
 * table has (defaults, constraints, triggers, any index).
 */
static void
append_spi(const ChangeRow *row)
{
	static Oid argtypes[9] = {TEXTOID,  TEXTOID, TEXTOID, TEXTOID, TEXTARRAYOID,
	                          JSONBOID, TEXTOID, TEXTOID, TEXTOID};
	Datum values[9];
	char nulls[9];
	int rc;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(row->action);
	values[1] = CStringGetTextDatum(row->resource_type);
	values[2] = CStringGetTextDatum(row->resource_id);
	if (row->version_id != NULL)
		values[3] = CStringGetTextDatum(row->version_id);
	else
		nulls[3] = 'n';
	values[4] = patient_array(row->patients);
	if (row->has_resource)
		values[5] = row->resource;
	else
		nulls[5] = 'n';
	values[6] = CStringGetTextDatum(row->actor);
	values[7] = CStringGetTextDatum(row->source_table);
	if (row->source_key != NULL)
		values[8] = CStringGetTextDatum(row->source_key);
	else
		nulls[8] = 'n';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (insert_plan == NULL || insert_plan_source_key != log_has_source_key)
	{
		SPIPlanPtr plan = SPI_prepare(
		    log_has_source_key ? "INSERT INTO fhir_notify.changes (action, resource_type, "
		                         "resource_id, version_id, "
		                         "patient_ids, resource, actor, source_table, source_key) "
		                         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
		                       : "INSERT INTO fhir_notify.changes (action, resource_type, "
		                         "resource_id, version_id, "
		                         "patient_ids, resource, actor, source_table) "
		                         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
		    log_has_source_key ? 9 : 8, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		if (insert_plan != NULL)
			SPI_freeplan(insert_plan);
		insert_plan = plan;
		insert_plan_source_key = log_has_source_key;
	}
	rc = SPI_execute_plan(insert_plan, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "insert into fhir_notify.changes failed: %s", SPI_result_code_string(rc));
	SPI_finish();
}

/*
 * fhir_notify.reader_max_lag() for prune(): the setting as an interval, NULL
 * when readers are never dropped. A function, so that calling it loads the
 * library and the setting is defined (and checked) before it is read.
 */
PG_FUNCTION_INFO_V1(fhir_notify_reader_max_lag);

Datum
fhir_notify_reader_max_lag(PG_FUNCTION_ARGS)
{
	Interval *lag;

	if (reader_max_lag_s <= 0)
		PG_RETURN_NULL();
	lag = palloc0(sizeof(Interval));
	lag->time = (int64) reader_max_lag_s * USECS_PER_SEC;
	PG_RETURN_INTERVAL_P(lag);
}

/*
 * Whether the log has the source_key column (0.2.0; a 0.1.0 table before
 * ALTER EXTENSION UPDATE has not, and its rows keep the body). Opening the
 * table takes the lock that append() would take anyway, so the column
 * cannot go away between this answer and the row.
 */
bool
fhir_notify_change_log_has_source_key(void)
{
	Relation rel = change_log_open();

	table_close(rel, NoLock);
	return log_has_source_key;
}

/*
 * Appends one row to fhir_notify.changes with the rights of the table's
 * owner (like SECURITY DEFINER), so the writing role needs no grant.
 */
void
fhir_notify_change_log_append(const ChangeRow *row)
{
	Oid save_userid;
	int save_sec_context;
	Relation rel;

	rel = change_log_open();
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(log_owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
	                                      SECURITY_RESTRICTED_OPERATION);
	if (log_direct && direct_insert_enabled)
		append_direct(rel, row);
	else
		append_spi(row);
	/* On error the (sub)transaction abort restores the user, as for SECURITY DEFINER. */
	SetUserIdAndSecContext(save_userid, save_sec_context);
	table_close(rel, NoLock);
}
