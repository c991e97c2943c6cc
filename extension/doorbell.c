/*
 * doorbell.c
 *	  The doorbell: one tiny NOTIFY per committing transaction that captured
 *	  a change, never the resource itself.
 */
#include "postgres.h"

#include "fhir_notify.h"

/*
 * Registers the doorbell settings.
 */
void
doorbell_init(void)
{
}

/*
 * Called for every captured change; rings at most once per transaction.
 */
void
doorbell_ring(void)
{
}
