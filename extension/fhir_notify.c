/*
 * fhir_notify.c
 *	  Module entry point: wires up settings and hooks. Nothing else.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "fhir_notify.h"

PG_MODULE_MAGIC;

void _PG_init(void);

/*
 * Registers the extension's settings.
 */
void
_PG_init(void)
{
	MarkGUCPrefixReserved("fhir_notify");
}
