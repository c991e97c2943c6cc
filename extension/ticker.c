/*
 * ticker.c
 *	  Ticker mode: writers mark shared memory at commit and a background
 *	  worker sends one NOTIFY per tick for all of them.
 */
#include "postgres.h"

#include "fhir_notify.h"

/*
 * Reserves shared memory and registers the background worker.
 */
void
ticker_init(void)
{
}

/*
 * Whether ticker mode can run here (stub until the ticker is written).
 */
bool
ticker_available(void)
{
	return false;
}

/*
 * Wakes the ticker after a commit (stub until the ticker is written).
 */
void
ticker_ring(void)
{
}
