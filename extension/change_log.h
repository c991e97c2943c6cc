/*
 * change_log.h
 *	  Appending rows to fhir_notify.changes from C.
 */
#ifndef FHIR_NOTIFY_CHANGE_LOG_H
#define FHIR_NOTIFY_CHANGE_LOG_H

#include "fhir_notify.h"

/*
 * One row of fhir_notify.changes; NULL version_id is SQL NULL, and so is
 * resource when has_resource is false. resource is a jsonb datum, possibly
 * still compressed or toasted as the watched table stored it.
 */
typedef struct ChangeRow
{
	const char *action;
	const char *resource_type;
	const char *resource_id;
	const char *version_id;
	const PatientIds *patients;
	bool has_resource;
	Datum resource;
	const char *actor;
	const char *source_table;
	const char *source_key; /* body by_version: the key of the version's row, else NULL */
} ChangeRow;

extern void fhir_notify_change_log_init(void);
extern void fhir_notify_change_log_append(const ChangeRow *row);
extern bool fhir_notify_change_log_has_source_key(void);

#endif /* FHIR_NOTIFY_CHANGE_LOG_H */
