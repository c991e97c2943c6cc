/*
 * hapi.h
 *	  Lookups of the hapi layout (HAPI FHIR JPA's hfj_resource and
 *	  hfj_res_ver) for the capture trigger.
 */
#ifndef FHIR_NOTIFY_HAPI_H
#define FHIR_NOTIFY_HAPI_H

#include "executor/spi.h"
#include "utils/timestamp.h"

/* The columns a lookup has values for: res_id, res_ver, partition_id. */
enum
{
	HAPI_RES_ID,
	HAPI_RES_VER,
	HAPI_PARTITION,
	HAPI_KEYS
};

/* A btree index whose leading columns are lookup columns (res_id among them). */
typedef struct HapiIndex
{
	Oid indexid; /* InvalidOid: none fits */
	int nkeys;
	int keys[HAPI_KEYS]; /* which lookup column each leading index column is */
} HapiIndex;

/* One table a lookup reads: its columns and, per mode, the index it scans. */
typedef struct HapiTable
{
	Oid relid;
	AttrNumber attnums[HAPI_KEYS]; /* 0 when the table has no such column */
	Oid types[HAPI_KEYS];          /* INT8OID or INT4OID */
	HapiIndex index[2];            /* without, with partition_id known */
} HapiTable;

/*
 * The tables of one watched hfj_res_ver and how to look rows up in them:
 * index scans (direct = 1) when both tables have a fitting index, else
 * saved SPI plans.
 */
typedef struct HapiTables
{
	char *resource_table;                    /* qualified hfj_resource of the same schema */
	char *version_table;                     /* qualified watched table */
	Oid owner;                               /* the watched table's owner: lookups run as it */
	Oid version_relid;                       /* the watched table */
	int direct;                              /* 0 not known yet, 1 index scans, -1 SPI */
	HapiTable resource;                      /* hfj_resource */
	HapiTable version;                       /* hfj_res_ver */
	AttrNumber fhir_id, encoding, text, lob; /* columns read */
	SPIPlanPtr plans[2];                     /* by res_id; by partition_id and res_id */
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
