/*
 * fhir_notify.c
 *	  Module entry point: wires up settings, hooks and the ticker. Nothing else.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "fhir_notify.h"

PG_MODULE_MAGIC;

/*
 * MarkGUCPrefixReserved() is new in PostgreSQL 15; before it,
 * EmitWarningsOnPlaceholders() warns about (but keeps) placeholders under
 * the prefix, such as a misspelt fhir_notify.* setting.
 */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

void _PG_init(void);

/*
 * Registers every setting of the extension, and the ticker's shared memory
 * and background worker when loaded through shared_preload_libraries.
 */
void
_PG_init(void)
{
	fhir_notify_compartment_init();
	fhir_notify_capture_init();
	fhir_notify_doorbell_init();
	if (process_shared_preload_libraries_in_progress)
		fhir_notify_ticker_init();

	MarkGUCPrefixReserved("fhir_notify");
}
