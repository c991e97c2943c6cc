/*
 * doorbell.c
 *	  The doorbell: one tiny NOTIFY per committing transaction that captured
 *	  a change, never the resource itself.
 *
 * The trigger calls fhir_notify_doorbell_ring() for every captured change; that only
 * sets a flag. The NOTIFY itself is queued once, just before commit, from a
 * transaction callback: NOTIFY is transactional, so a rolled-back
 * transaction rings nothing, and a transaction that is PREPAREd (two-phase
 * commit forbids NOTIFY) does not fail because of us; its changes are read
 * at the next doorbell or the reader's safety poll. The payload is the
 * committing transaction's id (decimal, 64 bits, as pg_current_xact_id()),
 * a hint only: readers take the facts from the change log, and anyone who
 * can connect can NOTIFY on any channel. A reader that knows a snapshot in
 * which that transaction is visible, taken before a tick it has read or is
 * reading, may skip the read the doorbell asks for: the changes are in
 * that tick or an earlier one.
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "commands/async.h"
#include "utils/guc.h"

#include "fhir_notify.h"

typedef enum DoorbellMode
{
	DOORBELL_COMMIT,
	DOORBELL_OFF,
	DOORBELL_TICKER
} DoorbellMode;

static const struct config_enum_entry doorbell_modes[] = {
    {"commit", DOORBELL_COMMIT, false},
    {"off", DOORBELL_OFF, false},
    {"ticker", DOORBELL_TICKER, false},
    {NULL, 0, false},
};

/* fhir_notify.doorbell and fhir_notify.channel. */
static int doorbell_mode = DOORBELL_COMMIT;
static char *doorbell_channel = NULL;

/* Whether the current transaction captured a change. */
static bool doorbell_pending = false;

/*
 * Refuses the ticker mode when this build or this server cannot run the
 * ticker, so that nobody waits for doorbells that never come.
 */
static bool
check_doorbell(int *newval, void **extra, GucSource source)
{
	if (*newval == DOORBELL_TICKER && !fhir_notify_ticker_available())
	{
		GUC_check_errdetail("The ticker needs fhir_notify loaded at server start.");
		GUC_check_errhint("Set shared_preload_libraries = 'fhir_notify' and restart the server, "
		                  "or use fhir_notify.doorbell = 'commit'.");
		return false;
	}
	return true;
}

/*
 * Accepts only channel names NOTIFY accepts, so that ringing at commit
 * cannot fail.
 */
static bool
check_channel(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("The channel name must not be empty.");
		return false;
	}
	if (strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("The channel name must be shorter than %d bytes.", NAMEDATALEN);
		return false;
	}
	return true;
}

/*
 * Rings the doorbell of a transaction that captured changes: queues the
 * NOTIFY just before commit, or wakes the ticker once it committed.
 */
static void
doorbell_xact_callback(XactEvent event, void *arg)
{
	if (!doorbell_pending)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (doorbell_mode == DOORBELL_COMMIT)
			{
				FullTransactionId xid = GetTopFullTransactionIdIfAny();
				char payload[24] = "";

				if (FullTransactionIdIsValid(xid))
					snprintf(payload, sizeof(payload), UINT64_FORMAT,
					         U64FromFullTransactionId(xid));
				Async_Notify(doorbell_channel, payload);
			}
			break;
		case XACT_EVENT_COMMIT:
			if (doorbell_mode == DOORBELL_TICKER)
				fhir_notify_ticker_ring();
			doorbell_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_ABORT:
			doorbell_pending = false;
			break;
		default:
			break;
	}
}

/*
 * Registers the doorbell settings and the commit callback.
 */
void
fhir_notify_doorbell_init(void)
{
	DefineCustomStringVariable(
	    "fhir_notify.channel", "The NOTIFY channel of the doorbell.",
	    "Readers LISTEN on it. Only superusers may change it, so that an application role "
	    "cannot silence the doorbell.",
	    &doorbell_channel, "fhir_notify", PGC_SUSET, 0, check_channel, NULL, NULL);
	DefineCustomEnumVariable(
	    "fhir_notify.doorbell", "How readers learn of committed changes.",
	    "commit: one NOTIFY per committing transaction that captured a change; off: none "
	    "(readers poll); ticker: a background worker sends one NOTIFY per tick for all "
	    "transactions.",
	    &doorbell_mode, DOORBELL_COMMIT, doorbell_modes, PGC_SUSET, 0, check_doorbell, NULL, NULL);
	RegisterXactCallback(doorbell_xact_callback, NULL);
}

/*
 * Called for every captured change; rings at most once per transaction.
 */
void
fhir_notify_doorbell_ring(void)
{
	doorbell_pending = true;
}
