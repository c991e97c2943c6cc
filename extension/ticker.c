/*
 * ticker.c
 *	  Ticker mode: writers mark shared memory at commit and a background
 *	  worker sends one NOTIFY per tick for all of them.
 *
 * A NOTIFY in a transaction takes a database-wide lock at commit that
 * serialises every committing transaction that notified; with many writers
 * that costs a large share of their throughput. In ticker mode
 * (fhir_notify.doorbell = ticker) a writer instead bumps a counter in shared
 * memory and sets the worker's latch, after its commit record is written and
 * it is visible to others. The worker wakes, and sends one NOTIFY on
 * fhir_notify.channel in fhir_notify.ticker_database for all commits since
 * its previous one, at most once per fhir_notify.ticker_interval.
 *
 * While its previous NOTIFY is unanswered (nobody called fhir_notify.tick()
 * since: the readers have not started reading), the worker holds the next
 * one back, for up to fhir_notify.ticker_answer_timeout: a reader that is
 * busy reading takes a tick when it is done (the NOTIFYs meanwhile would
 * only be coalesced into that one follow-up read), and that tick's
 * snapshot has every commit made until then. Every commit is still
 * followed by a NOTIFY sent after it became visible, only later: a reader
 * that never ticks (a LISTEN alone) hears one at least every
 * ticker_answer_timeout while commits come.
 *
 * Needs shared_preload_libraries: without it there is no shared memory and
 * no worker, fhir_notify_ticker_available() is false and the doorbell setting refuses
 * the ticker.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "commands/async.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "fhir_notify.h"

/* What the worker is called in pg_stat_activity.backend_type and the log. */
#define TICKER_WORKER_TYPE "fhir_notify ticker"

/* How long the worker sleeps when nothing happens: a safety net only. */
#define TICKER_IDLE_TIMEOUT_MS 10000

/* Seconds before the postmaster restarts a worker that died. */
#define TICKER_RESTART_SECONDS 1

/* The doorbell's channel when the doorbell settings are not loaded. */
#define TICKER_DEFAULT_CHANNEL "fhir_notify"

/* The payload of a tick's NOTIFY: a doorbell carries no facts. */
#define TICKER_PAYLOAD "tick"

/*
 * Shared between the writers and the worker.
 */
typedef struct TickerShared
{
	/* Bumped once by every transaction that committed a captured change. */
	pg_atomic_uint64 commits;
	/*
	 * The value of commits the last NOTIFY covered; kept here rather than in
	 * the worker so that a restarted worker rings for commits it missed.
	 */
	pg_atomic_uint64 notified;
	/* Bumped by every call of fhir_notify.tick() in the ticker's database. */
	pg_atomic_uint64 ticks;
	/*
	 * Nonzero while the worker holds a NOTIFY back waiting for a tick: the
	 * tick or the timeout wakes it, so writers need not set its latch.
	 */
	pg_atomic_uint32 holding;
	/* The worker's database, InvalidOid until it connected. */
	Oid database;
	/* Protects worker_latch. */
	slock_t mutex;
	/* The running worker's latch, NULL while no worker runs. */
	Latch *worker_latch;
} TickerShared;

/* Settings (only defined when loaded through shared_preload_libraries). */
static char *ticker_database = NULL;
static int ticker_interval_ms = 1;
static int ticker_answer_timeout_ms = 10;

/* Our shared memory; NULL when not preloaded. */
static TickerShared *ticker_shared = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static fmgr_hook_type prev_fmgr_hook = NULL;

static void ticker_fmgr_hook(FmgrHookEventType event, FmgrInfo *flinfo, Datum *private);

PGDLLEXPORT void fhir_notify_ticker_main(Datum main_arg);

/*
 * Asks for the shared memory of the ticker (PG15 and later).
 */
#if PG_VERSION_NUM >= 150000
static void
ticker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(TickerShared)));
}
#endif

/*
 * Creates or attaches to the shared memory of the ticker.
 */
static void
ticker_shmem_startup(void)
{
	bool found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ticker_shared = ShmemInitStruct("fhir_notify ticker", sizeof(TickerShared), &found);
	if (!found)
	{
		pg_atomic_init_u64(&ticker_shared->commits, 0);
		pg_atomic_init_u64(&ticker_shared->notified, 0);
		pg_atomic_init_u64(&ticker_shared->ticks, 0);
		pg_atomic_init_u32(&ticker_shared->holding, 0);
		ticker_shared->database = InvalidOid;
		SpinLockInit(&ticker_shared->mutex);
		ticker_shared->worker_latch = NULL;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Defines the ticker's settings, reserves its shared memory and registers
 * its background worker. Called from _PG_init only while
 * shared_preload_libraries is being processed.
 */
void
fhir_notify_ticker_init(void)
{
	BackgroundWorker worker;

	DefineCustomStringVariable("fhir_notify.ticker_database",
	                           "Database in which the ticker sends its NOTIFY.",
	                           "LISTEN/NOTIFY is per database: ticker mode serves this "
	                           "database only.",
	                           &ticker_database, "postgres", PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable(
	    "fhir_notify.ticker_interval", "Minimum time between two NOTIFYs of the ticker.",
	    "A tick after a quiet spell is sent at once; commits that come "
	    "sooner share the next tick.",
	    &ticker_interval_ms, 1, 0, 10000, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable(
	    "fhir_notify.ticker_answer_timeout",
	    "Longest time the ticker holds a NOTIFY back while its previous one is unanswered.",
	    "Unanswered: nobody called fhir_notify.tick() since the previous NOTIFY (the readers "
	    "have not started reading). 0 sends one per ticker_interval, answered or not.",
	    &ticker_answer_timeout_ms, 10, 0, 10000, PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ticker_shmem_request;
#else
	RequestAddinShmemSpace(MAXALIGN(sizeof(TickerShared)));
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ticker_shmem_startup;
	prev_fmgr_hook = fmgr_hook;
	fmgr_hook = ticker_fmgr_hook;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = TICKER_RESTART_SECONDS;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "fhir_notify");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "fhir_notify_ticker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, TICKER_WORKER_TYPE);
	snprintf(worker.bgw_type, BGW_MAXLEN, TICKER_WORKER_TYPE);
	RegisterBackgroundWorker(&worker);
}

/*
 * Whether ticker mode can work in this server: the library was loaded
 * through shared_preload_libraries, so the shared memory and the worker
 * exist. True also while the postmaster preloads us, before the shared
 * memory is made, so that fhir_notify.doorbell = ticker in
 * postgresql.conf is accepted.
 */
bool
fhir_notify_ticker_available(void)
{
	return ticker_shared != NULL || process_shared_preload_libraries_in_progress;
}

/*
 * Wakes the worker: called by the doorbell once after a transaction that
 * captured changes committed (its commit record is written and it is
 * visible to new snapshots, so the tick the bridge takes on the doorbell
 * sees it). Must not fail: the transaction has already committed. A
 * spinlock and an atomic add, cheap enough for every commit.
 */
void
fhir_notify_ticker_ring(void)
{
	Latch *latch;

	if (ticker_shared == NULL)
		return;
	pg_atomic_fetch_add_u64(&ticker_shared->commits, 1);
	/* A full barrier above: a worker that stops holding reads this commit. */
	if (pg_atomic_read_u32(&ticker_shared->holding) != 0)
		return;
	SpinLockAcquire(&ticker_shared->mutex);
	latch = ticker_shared->worker_latch;
	SpinLockRelease(&ticker_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Whether fn_oid is fhir_notify.tick(), what a reader calls first on every
 * doorbell.
 */
static bool
ticker_is_tick(Oid fn_oid)
{
	HeapTuple tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	bool is_tick = false;

	if (HeapTupleIsValid(tuple))
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tuple);

		is_tick = proc->pronargs == 0 && strcmp(NameStr(proc->proname), "tick") == 0 &&
		          proc->pronamespace == get_namespace_oid("fhir_notify", true);
		ReleaseSysCache(tuple);
	}
	return is_tick;
}

/*
 * Counts the calls of fhir_notify.tick() in the ticker's database: a reader
 * answering the ticker's NOTIFY. tick() is SECURITY DEFINER, so every call
 * of it passes here (fmgr_security_definer), before its body takes its
 * snapshot; other functions do not (needs_fmgr_hook is left alone).
 */
static void
ticker_fmgr_hook(FmgrHookEventType event, FmgrInfo *flinfo, Datum *private)
{
	if (prev_fmgr_hook)
		prev_fmgr_hook(event, flinfo, private);
	if (event != FHET_START || ticker_shared == NULL || ticker_shared->database != MyDatabaseId ||
	    !ticker_is_tick(flinfo->fn_oid))
		return;
	pg_atomic_fetch_add_u64(&ticker_shared->ticks, 1);
	if (pg_atomic_read_u32(&ticker_shared->holding) != 0)
	{
		Latch *latch;

		SpinLockAcquire(&ticker_shared->mutex);
		latch = ticker_shared->worker_latch;
		SpinLockRelease(&ticker_shared->mutex);
		if (latch != NULL)
			SetLatch(latch);
	}
}

/*
 * Sends one NOTIFY on the doorbell's channel in a transaction of its own.
 */
static void
ticker_send_notify(void)
{
	const char *channel = GetConfigOption("fhir_notify.channel", true, false);

	if (channel == NULL || channel[0] == '\0')
		channel = TICKER_DEFAULT_CHANNEL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, "fhir_notify ticker: notify");
	Async_Notify(channel, TICKER_PAYLOAD);
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Forgets the worker's latch when the worker exits, so that writers stop
 * setting it.
 */
static void
ticker_detach(int code, Datum arg)
{
	SpinLockAcquire(&ticker_shared->mutex);
	if (ticker_shared->worker_latch == MyLatch)
	{
		ticker_shared->worker_latch = NULL;
		ticker_shared->database = InvalidOid;
	}
	pg_atomic_write_u32(&ticker_shared->holding, 0);
	SpinLockRelease(&ticker_shared->mutex);
}

/*
 * The ticker's background worker: waits on its latch, and for every wake-up
 * with new commits sends one NOTIFY, no sooner than ticker_interval after
 * the previous one, and while no tick answered the previous one, no sooner
 * than ticker_answer_timeout after it.
 */
void
fhir_notify_ticker_main(Datum main_arg)
{
	TimestampTz last_notify = 0;
	uint64 ticks_at_notify = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	if (ticker_shared == NULL)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
		                errmsg("fhir_notify ticker started without its shared memory")));

	BackgroundWorkerInitializeConnection(ticker_database, NULL, 0);

	before_shmem_exit(ticker_detach, (Datum) 0);
	SpinLockAcquire(&ticker_shared->mutex);
	ticker_shared->worker_latch = MyLatch;
	ticker_shared->database = MyDatabaseId;
	SpinLockRelease(&ticker_shared->mutex);
	/* A worker that died holding must not leave writers silent. */
	pg_atomic_write_u32(&ticker_shared->holding, 0);

	ereport(LOG, (errmsg("fhir_notify ticker started in database \"%s\"", ticker_database)));

	for (;;)
	{
		uint64 commits;

		/* Reset first: a commit after this point sets the latch again. */
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		if (ShutdownRequestPending)
		{
			/*
			 * Exit status 1: the postmaster restarts us after
			 * pg_terminate_backend, and not at shutdown.
			 */
			ereport(LOG, (errmsg("fhir_notify ticker shutting down")));
			proc_exit(1);
		}
		if (ConfigReloadPending)
		{
			int old_interval_ms = ticker_interval_ms;

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (ticker_interval_ms != old_interval_ms)
				ereport(LOG,
				        (errmsg("fhir_notify ticker interval is now %d ms", ticker_interval_ms)));
		}

		commits = pg_atomic_read_u64(&ticker_shared->commits);
		if (commits != pg_atomic_read_u64(&ticker_shared->notified))
		{
			TimestampTz now = GetCurrentTimestamp();
			long wait_ms = 0;
			bool unanswered = false;

			if (last_notify != 0)
			{
				TimestampTz due = TimestampTzPlusMilliseconds(last_notify, ticker_interval_ms);

				if (ticker_answer_timeout_ms > 0 &&
				    pg_atomic_read_u64(&ticker_shared->ticks) == ticks_at_notify)
				{
					TimestampTz answer_due =
					    TimestampTzPlusMilliseconds(last_notify, ticker_answer_timeout_ms);

					if (answer_due > due)
					{
						due = answer_due;
						unanswered = true;
					}
				}
				if (due > now)
					wait_ms = (long) ((due - now + 999) / 1000);
			}
			if (wait_ms > 0 && unanswered)
			{
				/*
				 * The previous NOTIFY is unanswered: the readers have not
				 * called tick() since. Wait for a tick() (the fmgr hook sets
				 * the latch) or the timeout; writers need not wake us meanwhile. The
				 * tick count is read again after holding is set, so a tick
				 * in between is not slept through.
				 */
				pg_atomic_exchange_u32(&ticker_shared->holding, 1);
				if (pg_atomic_read_u64(&ticker_shared->ticks) == ticks_at_notify)
					(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					                 wait_ms, PG_WAIT_EXTENSION);
				pg_atomic_exchange_u32(&ticker_shared->holding, 0);
				continue;
			}
			if (wait_ms > 0)
			{
				/*
				 * Too soon after the previous tick: sleep out the gap,
				 * without the latch, which writers keep setting. Commits
				 * in the meantime share the tick.
				 */
				(void) WaitLatch(NULL, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait_ms,
				                 PG_WAIT_EXTENSION);
				continue;
			}
			/*
			 * tick() calls from here on answer this NOTIFY: read before it is sent,
			 * so that a reader quicker than us is not taken for silent.
			 */
			ticks_at_notify = pg_atomic_read_u64(&ticker_shared->ticks);
			ticker_send_notify();
			pg_atomic_write_u64(&ticker_shared->notified, commits);
			last_notify = GetCurrentTimestamp();
			continue;
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
		                 TICKER_IDLE_TIMEOUT_MS, PG_WAIT_EXTENSION);
	}
}
