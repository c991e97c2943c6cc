/*
 * ownership.c
 *	  Who may watch a table: its owner (or a member of the owning role) and
 *	  superusers, among the roles allowed to call watch() at all.
 *
 * watch() and unwatch() are SECURITY DEFINER: they create triggers that
 * run fhir_notify.capture() and write fhir_notify.watched_tables, neither of
 * which the caller may do. Inside them current_user is the extension's
 * owner, so the check asks about the role that was current when the call
 * began: GetOuterUserId(), the session's role (as SET ROLE set it), which a
 * SECURITY DEFINER function does not change.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "fhir_notify.h"

PG_FUNCTION_INFO_V1(fhir_notify_check_table_owner);

/*
 * SQL: fhir_notify.check_table_owner(tbl regclass) RETURNS void. Raises
 * "must be owner of table" unless the session's current role has the
 * privileges of tbl's owner (superusers do).
 */
Datum
fhir_notify_check_table_owner(PG_FUNCTION_ARGS)
{
	Oid relid = PG_GETARG_OID(0);
	HeapTuple tuple;
	Oid owner;
	Oid caller = GetOuterUserId();

	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE),
		                errmsg("relation with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);

	if (!has_privs_of_role(caller, owner))
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
		                errmsg("must be owner of table %s", get_rel_name(relid)),
		                errdetail("Role \"%s\" may watch and unwatch only the tables it owns.",
		                          GetUserNameFromId(caller, false))));
	PG_RETURN_VOID();
}
