/*
 * trigger.c
 *	  The capture trigger: one change-log row per change of a watched resource.
 */
#include "postgres.h"

#include "fhir_notify.h"

/*
 * Registers the capture settings.
 */
void
capture_init(void)
{
}
