/*
 * fhir_notify.h
 *	  Declarations shared by the files of the fhir_notify extension.
 *
 * One file per concern:
 *	  fhir_notify.c   _PG_init: wiring only
 *	  compartment.c   which patients a resource belongs to (patient_refs)
 *	  reference.c     the Patient id in one Reference element
 *	  layout.c        where a watched table keeps type, id, version, deleted
 *	  trigger.c       the capture trigger: writes the change log
 *	  json_text.c     resources kept as JSON text or gzip, read without errors
 *	  hapi.c          the hapi layout's lookups in hfj_resource and large objects
 *	  version_body.c  bodies read back by version at delivery (body by_version)
 *	  doorbell.c      the NOTIFY doorbell rung once per committing transaction
 *	  ticker.c        the background worker that rings for everybody (ticker mode)
 *	  ownership.c     who may watch a table (its owner, through watch())
 */
#ifndef FHIR_NOTIFY_H
#define FHIR_NOTIFY_H

#include "utils/jsonb.h"

/*
 * The bare ids of the Patients a resource belongs to: distinct, sorted by
 * strcmp, palloc'd in the caller's memory context.
 */
typedef struct PatientIds
{
	int count;
	char **ids;
} PatientIds;

/* compartment.c */
extern void fhir_notify_compartment_init(void);
extern void fhir_notify_compartment_patient_ids(JsonbContainer *resource, const char *resource_type,
                                                const char *logical_id, PatientIds *result);
extern bool fhir_notify_compartment_type_routed(const char *type);

/* reference.c: one Reference element -> Patient id (pointing into the jsonb) */
#define PATIENT_ID_MAX_LEN 64
extern bool fhir_notify_patient_id_is_valid(const char *id, int len);
extern bool fhir_notify_reference_patient_id(JsonbContainer *element, const char **id, int *id_len);

/* trigger.c */
extern void fhir_notify_capture_init(void);
extern Jsonb *fhir_notify_complete_resource(Jsonb *resource, const char *type, const char *id);

/* doorbell.c */
extern void fhir_notify_doorbell_init(void);
extern void fhir_notify_doorbell_ring(void);

/* ticker.c */
extern void fhir_notify_ticker_init(void);

/*
 * Whether fhir_notify.doorbell = 'ticker' can work in this server. Called by
 * the setting's check hook, also while _PG_init runs, before fhir_notify_ticker_init().
 */
extern bool fhir_notify_ticker_available(void);

/*
 * Wakes the ticker: called once after a transaction that captured changes
 * committed, in ticker mode. Must not raise an error.
 */
extern void fhir_notify_ticker_ring(void);

#endif /* FHIR_NOTIFY_H */
