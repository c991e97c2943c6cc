/*
 * compartment.c
 *	  Which patients a FHIR resource belongs to: the FHIR R4 Patient
 *	  compartment, read directly from the jsonb.
 */
#include "postgres.h"

#include "fhir_notify.h"

/*
 * Registers the routing settings.
 */
void
compartment_init(void)
{
}

/*
 * Collects the patients that resource belongs to into result.
 */
void
compartment_patient_ids(JsonbContainer *resource, const char *resource_type, const char *logical_id,
                        PatientIds *result)
{
	result->count = 0;
	result->ids = NULL;
}
