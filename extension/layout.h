/*
 * layout.h
 *	  Where a watched table keeps the resource JSON, its type, logical id,
 *	  version and deleted state.
 *
 * watch() resolves a layout once against the table's columns and stores it
 * in the capture trigger's arguments as "key=value" strings; the trigger
 * parses them back when it first meets the trigger in a backend.
 */
#ifndef FHIR_NOTIFY_LAYOUT_H
#define FHIR_NOTIFY_LAYOUT_H

#include "utils/jsonb.h"
#include "utils/relcache.h"

typedef enum LayoutKind
{
	LAYOUT_WINTEHR,
	LAYOUT_JSONB,
	LAYOUT_FHIRBASE,
	LAYOUT_HAPI,   /* HAPI FHIR JPA: hfj_res_ver, one row per version, JSON as text */
	LAYOUT_MEDPLUM /* Medplum: one table per type, JSON as text in "content" */
} LayoutKind;

/* How the deleted column says a resource is deleted. */
typedef enum DeletedKind
{
	DELETED_NONE,    /* no column: only a row DELETE deletes */
	DELETED_BOOLEAN, /* a boolean column, true when deleted */
	DELETED_STATUS   /* a text column equal to deleted_value when deleted */
} DeletedKind;

/* A resolved layout. Column names are NULL when the layout has none. */
typedef struct Layout
{
	LayoutKind kind;
	char *resource_column; /* jsonb column (text for hapi and medplum), always set */
	char *type_column;     /* resource type; else type_name, else JSON resourceType */
	char *id_column;       /* logical id; else JSON id */
	char *version_column;  /* version; else JSON meta.versionId */
	char *deleted_column;
	DeletedKind deleted_kind;
	char *deleted_value;  /* for DELETED_STATUS */
	char *type_name;      /* fixed resource type of every row (one table per type) */
	bool record_unrouted; /* record changes that belong to no patient */
	char *body;           /* "by_version": the log keeps the version's key, not the body;
	                       * NULL or "copy": the log copies the body */
} Layout;

/* Where a layout that keeps every version keeps them (for body by_version). */
typedef struct LayoutHistory
{
	Oid relid;            /* the history table; InvalidOid: none fits */
	char *table;          /* its schema-qualified, quoted name */
	char *key_columns[2]; /* quoted columns source_key (and version_id) are looked up by */
	Oid key_types[2];
	int nkeys;
	char *body_column;   /* quoted column of the body */
	const char *problem; /* why none fits */
} LayoutHistory;

extern const char *fhir_notify_layout_kind_name(LayoutKind kind);
extern bool fhir_notify_layout_kind_from_name(const char *name, LayoutKind *kind);
extern bool fhir_notify_layout_text_resource(LayoutKind kind);
extern void fhir_notify_layout_resolve(Relation rel, const char *layout_name, Jsonb *options,
                                       Layout *layout);
extern int fhir_notify_layout_to_args(const Layout *layout, char **args);
extern void fhir_notify_layout_from_args(int nargs, char **args, Layout *layout);
extern const char *fhir_notify_layout_fhir_type_name(const char *name);
extern bool fhir_notify_layout_by_version(const Layout *layout);
extern void fhir_notify_layout_history(Relation rel, LayoutKind kind, LayoutHistory *history);

/* Most trigger arguments fhir_notify_layout_to_args() produces. */
#define LAYOUT_MAX_ARGS 10

#endif /* FHIR_NOTIFY_LAYOUT_H */
