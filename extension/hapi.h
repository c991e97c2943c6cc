/*
 * hapi.h
 *	  Lookups of the hapi layout (HAPI FHIR JPA's hfj_resource and
 *	  hfj_res_ver) for the capture trigger.
 */
#ifndef FHIR_NOTIFY_HAPI_H
#define FHIR_NOTIFY_HAPI_H

#include "executor/spi.h"
#include "utils/timestamp.h"

/* The tables of one watched hfj_res_ver and its saved lookup plans. */
typedef struct HapiTables
{
	char *resource_table; /* qualified hfj_resource of the same schema */
	char *version_table;  /* qualified watched table */
	Oid owner;            /* the watched table's owner: lookups run as it */
	SPIPlanPtr plans[2];  /* by res_id; by partition_id and res_id */
} HapiTables;

/* A version row found by the lookup. */
typedef struct HapiVersion
{
	bool found;
	char *encoding; /* res_encoding */
	char *text;     /* res_text_vc, or NULL */
	Oid lob;        /* res_text, or InvalidOid */
} HapiVersion;

extern bool fhir_notify_hapi_lookup(HapiTables *tables, int64 res_id, bool has_partition,
                                    int32 partition_id, int64 previous_version, char **fhir_id,
                                    HapiVersion *previous);
extern bool fhir_notify_hapi_read_lob(const HapiTables *tables, Oid lob, char **data, size_t *len,
                                      const char **problem);
extern char *fhir_notify_hapi_instant(Timestamp timestamp);

#endif /* FHIR_NOTIFY_HAPI_H */
