-- fhir_notify 0.2.0: the change log, its snapshot ticks, and the functions
-- that capture changes and read them back in order.
\echo Use "CREATE EXTENSION fhir_notify" to load this file. \quit

-- ---------------------------------------------------------------------------
-- The change log. One row per change of a watched resource, written by the
-- capture trigger in the writing transaction, so a rolled-back write leaves
-- nothing. Rows are read back by snapshot ticks (below), never by position
-- alone: positions are taken at insert time but transactions commit in any
-- order.
-- ---------------------------------------------------------------------------
CREATE TABLE fhir_notify.changes (
	position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
	action text NOT NULL CHECK (action IN ('created', 'updated', 'deleted')),
	resource_type text NOT NULL,
	resource_id text NOT NULL,
	version_id text,
	patient_ids text[] NOT NULL,
	resource jsonb,
	actor text,
	changed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	source_table text NOT NULL,
	-- "body": "by_version": the key of the version's row (resource is NULL)
	source_key text
);
CREATE INDEX changes_xid_idx ON fhir_notify.changes (xid);

COMMENT ON TABLE fhir_notify.changes IS
	'Every captured change of a watched FHIR resource, with the patients it belongs to';

-- ---------------------------------------------------------------------------
-- Ticks, as PgQ does it: a tick records a transaction snapshot. The changes
-- of tick N are those whose transaction is visible in tick N's snapshot but
-- was not in tick N-1's. Every committed change therefore falls in exactly
-- one tick however transactions interleave, and a long-open transaction
-- holds back only its own changes. Tick ids are consecutive.
--
-- Every tick also records the log's epoch when it was taken: a random
-- number drawn afresh by the first tick after every server start. A
-- position in the log is (epoch, tick), and it names the same tick for as
-- long as tick `tick` exists with that epoch. A tick committed
-- asynchronously and lost in a crash, a restored database or another
-- database hands out the same tick ids again, but never under the same
-- epoch, so a reader's or a client's position that no longer names the
-- same tick is detected (and answered with a resync), never silently
-- skipped.
-- ---------------------------------------------------------------------------
CREATE TABLE fhir_notify.ticks (
	tick_id bigint PRIMARY KEY,
	snapshot pg_catalog.pg_snapshot NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	epoch bigint NOT NULL
);

COMMENT ON TABLE fhir_notify.ticks IS
	'Snapshot ticks: the changes of tick N became visible between tick N-1 and tick N';

/* A fresh log identity: a random number in [1, 2^48). */
CREATE FUNCTION fhir_notify.new_epoch() RETURNS bigint
LANGUAGE sql VOLATILE
AS $$ SELECT (pg_catalog.floor(pg_catalog.random() * 281474976710655))::bigint + 1 $$;

-- The log's current epoch and the server start it belongs to (one row).
-- tick() takes a new epoch when the server started since the epoch was
-- taken. Its table lock is also what serialises tick(); prune() never
-- takes it.
CREATE TABLE fhir_notify.log_epoch (
	only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
	epoch bigint NOT NULL,
	server_started timestamptz NOT NULL,
	since timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE fhir_notify.log_epoch IS
	'The change log''s identity: ticks taken since the server started carry this epoch';

INSERT INTO fhir_notify.log_epoch (epoch, server_started)
	VALUES (fhir_notify.new_epoch(), pg_catalog.pg_postmaster_start_time());

-- The first tick: changes are delivered from here on.
INSERT INTO fhir_notify.ticks (tick_id, snapshot, epoch)
	SELECT 1, pg_catalog.pg_current_snapshot(), e.epoch FROM fhir_notify.log_epoch e;

/*
 * The one rule of the ticks: the changes that became visible between the
 * snapshots prev and cur. A change is not visible in prev exactly when its
 * xid is at or above prev's xmax or among prev's in-progress xids; both are
 * index lookups. (Scanning from prev's xmin instead would re-read every
 * change written since the oldest open transaction began, for every batch,
 * while a long transaction stays open.) Plain SQL without SET or SECURITY
 * DEFINER, so that the planner inlines it into tick() and batch(), which
 * run it with their own fixed search_path; everything here is qualified.
 */
CREATE FUNCTION fhir_notify.changes_between(prev pg_catalog.pg_snapshot,
                                            cur pg_catalog.pg_snapshot)
RETURNS SETOF fhir_notify.changes
LANGUAGE sql STABLE
AS $$
	SELECT c.* FROM (
		SELECT n.* FROM fhir_notify.changes n
		WHERE n.xid OPERATOR(pg_catalog.>=) pg_catalog.pg_snapshot_xmax(prev)
		  AND n.xid OPERATOR(pg_catalog.<) pg_catalog.pg_snapshot_xmax(cur)
		UNION ALL
		SELECT o.* FROM fhir_notify.changes o
		WHERE o.xid OPERATOR(pg_catalog.=)
		      ANY (ARRAY(SELECT pg_catalog.pg_snapshot_xip(prev)))
	) c
	WHERE pg_catalog.pg_visible_in_snapshot(c.xid, cur)
$$;

/*
 * The body of a change logged with "body": "by_version" (resource NULL,
 * source_key set), read back from the FHIR server's table of versions and
 * completed as the trigger completes what it copies (version_body.c);
 * NULL when the version is gone (expunged) or cannot be read, which the
 * read functions return as the JSON null. Runs the lookup as the watched
 * table's owner. Not SECURITY DEFINER and without SET, on purpose: only the
 * extension's owner may execute it, and it is called by batch(), read() and
 * read_next(), which run as that owner with a fixed search_path; its own
 * queries are fully qualified. The SET would cost 5-8 us on every change
 * read (docs/benchmarks.md).
 */
CREATE FUNCTION fhir_notify.version_body(source_table text, source_key text, version_id text,
                                         resource_type text, resource_id text)
RETURNS jsonb
LANGUAGE c STABLE
AS 'MODULE_PATHNAME', 'fhir_notify_version_body';

/*
 * Records a new tick if any change became visible since the newest tick, and
 * returns the newest tick's id. Callers run it in its own READ COMMITTED
 * transaction (autocommit), before and apart from their read: its lock
 * lasts until that transaction ends. Ticks are serialised by the lock on
 * log_epoch, so tick N+1 is taken only after tick N committed; prune()
 * never takes that lock. When the tick is the only write of its
 * transaction, that transaction commits asynchronously
 * (synchronous_commit = off): a tick lost in a crash is taken again under
 * a new epoch, which readers detect.
 *
 * PL/pgSQL with a generic plan kept for the session and no JIT (the generic
 * plan's cost estimate is above jit_above_cost): the same for batch() and
 * read(), called on every doorbell.
 */
CREATE FUNCTION fhir_notify.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
	newest fhir_notify.ticks;
	current_snapshot pg_snapshot;
	state fhir_notify.log_epoch;
	alone boolean;
BEGIN
	LOCK TABLE fhir_notify.log_epoch IN EXCLUSIVE MODE;
	SELECT * INTO newest FROM fhir_notify.ticks ORDER BY tick_id DESC LIMIT 1;
	current_snapshot := pg_current_snapshot();
	IF NOT EXISTS (
		SELECT 1 FROM fhir_notify.changes_between(newest.snapshot, current_snapshot))
	THEN
		RETURN newest.tick_id;
	END IF;
	alone := pg_current_xact_id_if_assigned() IS NULL;
	SELECT * INTO state FROM fhir_notify.log_epoch;
	IF state.server_started IS DISTINCT FROM pg_postmaster_start_time() THEN
		UPDATE fhir_notify.log_epoch
		SET epoch = fhir_notify.new_epoch(), server_started = pg_postmaster_start_time(),
		    since = clock_timestamp()
		RETURNING * INTO state;
	END IF;
	INSERT INTO fhir_notify.ticks (tick_id, snapshot, epoch)
		VALUES (newest.tick_id + 1, current_snapshot, state.epoch);
	IF alone THEN
		PERFORM set_config('synchronous_commit', 'off', true);
	END IF;
	RETURN newest.tick_id + 1;
END
$$;

/*
 * The changes of one tick, in position order. Empty when the tick or its
 * predecessor no longer exists (pruned, or not yet taken): callers compare
 * with fhir_notify.oldest_tick() to tell a gap from an empty tick.
 */
CREATE FUNCTION fhir_notify.batch(tick bigint)
RETURNS SETOF fhir_notify.changes
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
BEGIN
	RETURN QUERY
	SELECT c.position, c.xid, c.action, c.resource_type, c.resource_id, c.version_id,
	       c.patient_ids, CASE WHEN c.resource IS NULL AND c.source_key IS NOT NULL
	            THEN coalesce(fhir_notify.version_body(c.source_table, c.source_key,
	                                                   c.version_id, c.resource_type,
	                                                   c.resource_id), 'null')
	            ELSE c.resource END, c.actor, c.changed_at,
	       c.source_table, c.source_key
	FROM fhir_notify.ticks cur
	-- the predecessor by its key, whatever a generic plan guesses of the range
	CROSS JOIN LATERAL (SELECT p.snapshot FROM fhir_notify.ticks p
	                    WHERE p.tick_id = cur.tick_id - 1 OFFSET 0) prev
	CROSS JOIN LATERAL fhir_notify.changes_between(prev.snapshot, cur.snapshot) c
	WHERE cur.tick_id = batch.tick
	ORDER BY c.position;
END
$$;

/*
 * The changes of the ticks after after_tick, up to max_ticks ticks, in
 * (tick, position) order: what a reader calls after a doorbell, and what a
 * resuming client is served from.
 */
CREATE FUNCTION fhir_notify.read(after_tick bigint, max_ticks integer DEFAULT 100)
RETURNS TABLE (tick_id bigint, change fhir_notify.changes)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
BEGIN
	RETURN QUERY
	SELECT cur.tick_id, ROW(c.position, c.xid, c.action, c.resource_type, c.resource_id, c.version_id,
	       c.patient_ids, CASE WHEN c.resource IS NULL AND c.source_key IS NOT NULL
	            THEN coalesce(fhir_notify.version_body(c.source_table, c.source_key,
	                                                   c.version_id, c.resource_type,
	                                                   c.resource_id), 'null')
	            ELSE c.resource END, c.actor, c.changed_at,
	       c.source_table, c.source_key)::fhir_notify.changes
	FROM fhir_notify.ticks cur
	-- the predecessor by its key, whatever a generic plan guesses of the range
	CROSS JOIN LATERAL (SELECT p.snapshot FROM fhir_notify.ticks p
	                    WHERE p.tick_id = cur.tick_id - 1 OFFSET 0) prev
	CROSS JOIN LATERAL fhir_notify.changes_between(prev.snapshot, cur.snapshot) c
	WHERE cur.tick_id > read.after_tick
	  AND cur.tick_id <= read.after_tick + read.max_ticks
	ORDER BY cur.tick_id, c.position;
END
$$;

/* The oldest tick whose successor's batch can still be read. */
CREATE FUNCTION fhir_notify.oldest_tick() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT min(tick_id) FROM fhir_notify.ticks $$;

/* The newest tick. */
CREATE FUNCTION fhir_notify.newest_tick() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT max(tick_id) FROM fhir_notify.ticks $$;

/*
 * The epoch of a tick, NULL when there is no such tick (pruned, not yet
 * taken, or lost). A position (epoch, tick) still names the tick it named
 * when tick_epoch(tick) = epoch.
 */
CREATE FUNCTION fhir_notify.tick_epoch(tick bigint) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.epoch FROM fhir_notify.ticks t WHERE t.tick_id OPERATOR(pg_catalog.=) $1 $$;

-- ---------------------------------------------------------------------------
-- Registered readers, as PgQ consumers and replication slots: a reader
-- (a bridge, or anything else reading the log) reads under a name, and the
-- log keeps its confirmed position, the tick up to which it has processed
-- everything. prune() keeps every tick a registered reader still needs,
-- except from a reader that lags by more than fhir_notify.reader_max_lag:
-- that one is dropped (its row stays, marked dropped) and, when it reads
-- again, is told so.
-- ---------------------------------------------------------------------------
CREATE TABLE fhir_notify.reader_positions (
	reader text PRIMARY KEY CHECK (reader <> '' AND length(reader) <= 200),
	tick bigint NOT NULL,
	epoch bigint NOT NULL,
	registered_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	confirmed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	dropped_at timestamptz
);

COMMENT ON TABLE fhir_notify.reader_positions IS
	'Registered readers of the change log and the tick each has confirmed';

/*
 * fhir_notify.reader_max_lag: how far (in time) a registered reader may lag
 * before prune() drops it rather than keep the log for it; NULL for never.
 */
CREATE FUNCTION fhir_notify.reader_max_lag() RETURNS interval
LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'fhir_notify_reader_max_lag';

-- Every registered reader: its confirmed position, how far behind the
-- newest tick it is (ticks, and the age of the oldest tick it has not
-- confirmed) and whether prune() dropped it.
CREATE VIEW fhir_notify.readers AS
	SELECT r.reader, r.tick, r.epoch,
		CASE WHEN r.dropped_at IS NULL THEN 'active' ELSE 'dropped' END AS state,
		((SELECT pg_catalog.max(t.tick_id) FROM fhir_notify.ticks t)
			OPERATOR(pg_catalog.-) r.tick) AS ticks_behind,
		COALESCE(pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-)
		         (SELECT t.created_at FROM fhir_notify.ticks t
		          WHERE t.tick_id OPERATOR(pg_catalog.=) (r.tick OPERATOR(pg_catalog.+) 1)),
		         '0'::interval) AS lag,
		r.registered_at, r.confirmed_at, r.dropped_at
	FROM fhir_notify.reader_positions r;

/*
 * Registers reader at the newest tick, or returns where it is when it is
 * registered already. A reader that prune() dropped is registered again at
 * the newest tick (what it missed is gone: it resyncs).
 */
CREATE FUNCTION fhir_notify.register_reader(reader text)
RETURNS TABLE (tick_id bigint, epoch bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	newest fhir_notify.ticks;
	r fhir_notify.reader_positions;
BEGIN
	IF coalesce(register_reader.reader, '') = '' THEN
		RAISE EXCEPTION 'a reader needs a name';
	END IF;
	SELECT * INTO newest FROM fhir_notify.ticks t ORDER BY t.tick_id DESC LIMIT 1;
	INSERT INTO fhir_notify.reader_positions AS p (reader, tick, epoch)
	VALUES (register_reader.reader, newest.tick_id, newest.epoch)
	ON CONFLICT (reader) DO UPDATE
		SET tick = excluded.tick, epoch = excluded.epoch, registered_at = excluded.registered_at,
		    confirmed_at = excluded.confirmed_at, dropped_at = NULL
		WHERE p.dropped_at IS NOT NULL;
	SELECT * INTO r FROM fhir_notify.reader_positions p WHERE p.reader = register_reader.reader;
	RETURN QUERY SELECT r.tick, r.epoch;
END
$$;

/* Forgets reader: prune() no longer keeps anything for it. */
CREATE FUNCTION fhir_notify.drop_reader(reader text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM fhir_notify.reader_positions p WHERE p.reader = drop_reader.reader;
	RETURN FOUND;
END
$$;

/*
 * What a registered reader calls on each doorbell, in a transaction of its
 * own after tick() committed: confirms (after_epoch, after_tick), the
 * position up to which it has processed everything, and returns the
 * changes of the ticks after it, up to max_ticks ticks.
 *
 * The first row is a header (change NULL): status, and tick_id and epoch of
 * the position the reader is at once it has processed this read's rows
 * (the newest tick read). status:
 *   ok       the position is readable; the changes after it follow
 *   started  after_tick 0: a reader starting afresh, at the newest tick
 *   pruned   the position was pruned (after_tick is older than the oldest
 *            tick): changes were missed; reading carries on from the
 *            oldest tick
 *   dropped  prune() dropped the reader for lagging more than
 *            fhir_notify.reader_max_lag; reading carries on from the
 *            oldest tick
 *   reset    the position names no tick of this log (a tick lost in a
 *            crash and taken again, a restored or another database):
 *            reading carries on from the newest tick
 * A reader answered pruned, dropped or reset has missed changes and tells
 * its own clients to resync. The rows after the header are the changes,
 * with their tick and its epoch, in (tick, position) order. An unknown
 * reader is registered.
 */
CREATE FUNCTION fhir_notify.read_next(reader text, after_epoch bigint, after_tick bigint,
                                      max_ticks integer DEFAULT 100)
RETURNS TABLE (tick_id bigint, epoch bigint, status text, change fhir_notify.changes)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	r fhir_notify.reader_positions;
	oldest bigint;
	newest bigint;
	known_epoch bigint;
	from_tick bigint;
	from_epoch bigint;
	upto bigint;
	upto_epoch bigint;
	verdict text;
	alone boolean := pg_current_xact_id_if_assigned() IS NULL;
BEGIN
	IF coalesce(read_next.reader, '') = '' THEN
		RAISE EXCEPTION 'a reader needs a name';
	END IF;
	SELECT min(t.tick_id), max(t.tick_id) INTO oldest, newest FROM fhir_notify.ticks t;
	SELECT t.epoch INTO known_epoch FROM fhir_notify.ticks t
	WHERE t.tick_id = read_next.after_tick;
	SELECT * INTO r FROM fhir_notify.reader_positions p WHERE p.reader = read_next.reader;

	IF coalesce(read_next.after_tick, 0) = 0 THEN
		verdict := 'started';
		from_tick := newest;
	ELSIF r.dropped_at IS NOT NULL THEN
		verdict := 'dropped';
		from_tick := oldest;
	ELSIF known_epoch IS NOT NULL AND known_epoch = read_next.after_epoch THEN
		verdict := 'ok';
		from_tick := read_next.after_tick;
	ELSIF read_next.after_tick < oldest THEN
		verdict := 'pruned';
		from_tick := oldest;
	ELSE
		verdict := 'reset';
		from_tick := newest;
	END IF;
	SELECT t.epoch INTO from_epoch FROM fhir_notify.ticks t WHERE t.tick_id = from_tick;
	upto := least(newest, from_tick + greatest(coalesce(read_next.max_ticks, 100), 1));
	SELECT t.epoch INTO upto_epoch FROM fhir_notify.ticks t WHERE t.tick_id = upto;

	IF r.reader IS NULL THEN
		INSERT INTO fhir_notify.reader_positions AS p (reader, tick, epoch)
		VALUES (read_next.reader, from_tick, from_epoch)
		ON CONFLICT DO NOTHING;
	ELSIF r.dropped_at IS NOT NULL OR verdict <> 'ok'
	      OR ((r.tick IS DISTINCT FROM from_tick OR r.epoch IS DISTINCT FROM from_epoch)
	          AND r.confirmed_at < clock_timestamp() - interval '1 second') THEN
		-- At most once a second while all is well: a confirmation a little
		-- behind only makes prune() keep a little more. Not while a prune
		-- is dropping the reader: that prune's verdict comes next time.
		UPDATE fhir_notify.reader_positions p
		SET tick = from_tick, epoch = from_epoch, confirmed_at = clock_timestamp(),
		    dropped_at = NULL
		WHERE p.reader IN (SELECT q.reader FROM fhir_notify.reader_positions q
		                   WHERE q.reader = read_next.reader FOR UPDATE SKIP LOCKED);
	END IF;
	IF alone THEN
		-- a confirmation lost in a crash only makes prune() keep more
		PERFORM set_config('synchronous_commit', 'off', true);
	END IF;

	RETURN QUERY SELECT upto, upto_epoch, verdict, NULL::fhir_notify.changes;
	RETURN QUERY
	SELECT cur.tick_id, cur.epoch, NULL::text, ROW(c.position, c.xid, c.action, c.resource_type, c.resource_id, c.version_id,
	       c.patient_ids, CASE WHEN c.resource IS NULL AND c.source_key IS NOT NULL
	            THEN coalesce(fhir_notify.version_body(c.source_table, c.source_key,
	                                                   c.version_id, c.resource_type,
	                                                   c.resource_id), 'null')
	            ELSE c.resource END, c.actor, c.changed_at,
	       c.source_table, c.source_key)::fhir_notify.changes
	FROM fhir_notify.ticks cur
	-- the predecessor by its key, whatever a generic plan guesses of the range
	CROSS JOIN LATERAL (SELECT p.snapshot FROM fhir_notify.ticks p
	                    WHERE p.tick_id = cur.tick_id - 1 OFFSET 0) prev
	CROSS JOIN LATERAL fhir_notify.changes_between(prev.snapshot, cur.snapshot) c
	WHERE cur.tick_id > from_tick AND cur.tick_id <= upto
	ORDER BY cur.tick_id, c.position;
	-- A prune that committed between the checks above and the read may have
	-- taken the ticks the read needed: then it is not to be trusted.
	IF upto > from_tick AND NOT EXISTS (
		SELECT 1 FROM fhir_notify.ticks t WHERE t.tick_id = from_tick AND t.epoch = from_epoch)
	THEN
		RAISE EXCEPTION 'the change log was pruned past tick % during the read', from_tick
			USING ERRCODE = 'serialization_failure', HINT = 'Read again.';
	END IF;
END
$$;

/*
 * Deletes ticks older than keep and the changes that only those ticks
 * delivered, and returns the number of changes deleted. Every tick taken
 * within keep stays readable (its predecessor is kept too), the newest
 * tick is always kept, and so is every tick a registered reader has not
 * confirmed, unless that reader lags by more than
 * fhir_notify.reader_max_lag: then it is dropped (see read_next()). A
 * client whose cursor is older than the oldest remaining tick is told to
 * resync.
 *
 * Takes no lock that tick() or a read waits for: the deletes only mark
 * rows that concurrent reads (MVCC) and ticks never touch.
 */
CREATE FUNCTION fhir_notify.prune(keep interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	newest bigint;
	keep_from bigint;
	max_lag interval := fhir_notify.reader_max_lag();
	oldest_kept fhir_notify.ticks;
	deleted bigint;
BEGIN
	SELECT max(t.tick_id) INTO newest FROM fhir_notify.ticks t;
	SELECT min(t.tick_id) - 1 INTO keep_from FROM fhir_notify.ticks t
	WHERE t.created_at >= clock_timestamp() - keep;
	keep_from := least(coalesce(keep_from, newest), newest);

	-- Readers that lag past the limit (the oldest tick they have not
	-- confirmed and their last confirmation both older than it) and that
	-- the keep would prune past are dropped (not waited for while they
	-- read: they are not lagging).
	IF max_lag IS NOT NULL THEN
		UPDATE fhir_notify.reader_positions p SET dropped_at = clock_timestamp()
		WHERE p.reader IN (
			SELECT q.reader FROM fhir_notify.reader_positions q
			JOIN fhir_notify.ticks unread ON unread.tick_id = q.tick + 1
			WHERE q.dropped_at IS NULL AND q.tick < keep_from
			  AND unread.created_at < clock_timestamp() - max_lag
			  AND q.confirmed_at < clock_timestamp() - max_lag
			FOR UPDATE OF q SKIP LOCKED);
	END IF;
	SELECT least(keep_from, min(p.tick)) INTO keep_from
	FROM fhir_notify.reader_positions p WHERE p.dropped_at IS NULL;

	SELECT * INTO oldest_kept FROM fhir_notify.ticks t
	WHERE t.tick_id >= keep_from ORDER BY t.tick_id LIMIT 1;
	DELETE FROM fhir_notify.ticks t WHERE t.tick_id < oldest_kept.tick_id;
	DELETE FROM fhir_notify.changes c
	WHERE c.xid < pg_snapshot_xmax(oldest_kept.snapshot)
	  AND pg_visible_in_snapshot(c.xid, oldest_kept.snapshot);
	GET DIAGNOSTICS deleted = ROW_COUNT;
	RETURN deleted;
END
$$;

/*
 * Lets a reader (the bridge's role) read the change log: USAGE on the
 * schema and EXECUTE on tick, read, read_next, batch, oldest_tick,
 * newest_tick, tick_epoch and register_reader, SELECT on the readers view,
 * nothing else (no table, no prune, no drop_reader, no capture trigger).
 * Run by the extension's owner or a superuser.
 */
CREATE FUNCTION fhir_notify.grant_reader(reader regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF reader IS NULL THEN
		RAISE EXCEPTION 'cannot grant reading to a NULL role';
	END IF;
	EXECUTE format('GRANT USAGE ON SCHEMA fhir_notify TO %s', reader);
	EXECUTE format('GRANT EXECUTE ON FUNCTION fhir_notify.tick(), '
	               'fhir_notify.read(bigint, integer), fhir_notify.batch(bigint), '
	               'fhir_notify.oldest_tick(), fhir_notify.newest_tick(), '
	               'fhir_notify.tick_epoch(bigint), '
	               'fhir_notify.read_next(text, bigint, bigint, integer), '
	               'fhir_notify.register_reader(text) TO %s', reader);
	EXECUTE format('GRANT SELECT ON fhir_notify.readers TO %s', reader);
END
$$;

/* Takes back what grant_reader() gave. */
CREATE FUNCTION fhir_notify.revoke_reader(reader regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF reader IS NULL THEN
		RAISE EXCEPTION 'cannot revoke reading from a NULL role';
	END IF;
	EXECUTE format('REVOKE SELECT ON fhir_notify.readers FROM %s', reader);
	EXECUTE format('REVOKE EXECUTE ON FUNCTION fhir_notify.tick(), '
	               'fhir_notify.read(bigint, integer), fhir_notify.batch(bigint), '
	               'fhir_notify.oldest_tick(), fhir_notify.newest_tick(), '
	               'fhir_notify.tick_epoch(bigint), '
	               'fhir_notify.read_next(text, bigint, bigint, integer), '
	               'fhir_notify.register_reader(text) FROM %s', reader);
	EXECUTE format('REVOKE USAGE ON SCHEMA fhir_notify FROM %s', reader);
END
$$;
-- ---------------------------------------------------------------------------
-- Routing (compartment.c)
-- ---------------------------------------------------------------------------

/*
 * The ids of the Patients a FHIR resource belongs to (the R4 Patient
 * compartment plus fhir_notify.extra_links), distinct and sorted in C
 * collation; '{}' when none. The same routine the capture trigger uses.
 */
CREATE FUNCTION fhir_notify.patient_refs(resource jsonb) RETURNS text[]
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'patient_refs';

COMMENT ON FUNCTION fhir_notify.patient_refs(jsonb) IS
	'The ids of the patients a FHIR resource belongs to, distinct and sorted';

/*
 * The same with the resource type and logical id given, as for tables that
 * keep them outside the JSON (fhirbase stores the JSON without "id"); a NULL
 * argument is read from the JSON.
 */
CREATE FUNCTION fhir_notify.patient_refs(resource jsonb, resource_type text,
	logical_id text DEFAULT NULL) RETURNS text[]
LANGUAGE c IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'patient_refs_typed';

COMMENT ON FUNCTION fhir_notify.patient_refs(jsonb, text, text) IS
	'The ids of the patients a FHIR resource of the given type and id belongs to';


-- ---------------------------------------------------------------------------
-- Capture: watch(), unwatch(), the trigger (trigger.c, layout.c)
-- ---------------------------------------------------------------------------

-- What is watched. The trigger itself reads its layout from its arguments;
-- this table is the record of what watch() was asked for.
CREATE TABLE fhir_notify.watched_tables (
	relation regclass PRIMARY KEY,
	layout text NOT NULL,
	options jsonb NOT NULL,
	trigger_arguments text[] NOT NULL,
	since timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE fhir_notify.watched_tables IS
	'The tables fhir_notify.watch() put a capture trigger on';

-- pg_dump keeps its rows (the triggers are dumped with their tables);
-- regclass is dumped by name and survives pg_upgrade.
SELECT pg_catalog.pg_extension_config_dump('fhir_notify.watched_tables', '');

-- The watched tables that still exist and still have the capture trigger
-- (a dropped table's oid may be reused), by name.
CREATE VIEW fhir_notify.watched AS
	SELECT w.relation AS "table", w.layout, w.options, w.since
	FROM fhir_notify.watched_tables w
	WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
	              WHERE t.tgrelid OPERATOR(pg_catalog.=) w.relation
	                AND t.tgname OPERATOR(pg_catalog.=) 'fhir_notify_capture');

/* The row trigger: records each change of a watched table (trigger.c). */
CREATE FUNCTION fhir_notify.capture() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'fhir_notify_capture';

/* The statement trigger that warns that a TRUNCATE is not streamed. */
CREATE FUNCTION fhir_notify.capture_truncate() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', 'fhir_notify_capture_truncate';

/*
 * The capture trigger's arguments for tbl: its layout resolved against the
 * table's columns (layout.c). Errors name the column and what was expected.
 */
CREATE FUNCTION fhir_notify.resolve_layout(tbl regclass, layout text, options jsonb)
RETURNS text[]
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'fhir_notify_resolve_layout';

/*
 * Raises "must be owner of table" unless the calling session's role has the
 * privileges of tbl's owner (ownership.c). watch() and unwatch() run as the
 * extension's owner, so they check for their caller.
 */
CREATE FUNCTION fhir_notify.check_table_owner(tbl regclass) RETURNS void
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'fhir_notify_check_table_owner';

/* Drops the capture triggers of tbl that exist. */
CREATE FUNCTION fhir_notify.drop_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	name text;
BEGIN
	FOR name IN
		SELECT t.tgname FROM pg_trigger t
		WHERE t.tgrelid = tbl
		  AND t.tgname IN ('fhir_notify_capture', 'fhir_notify_truncate')
		  AND NOT t.tgisinternal
	LOOP
		EXECUTE format('DROP TRIGGER %I ON %s', name, tbl);
	END LOOP;
END
$$;

/*
 * Starts capturing the changes of tbl. layout is 'auto', 'wintehr', 'jsonb',
 * 'fhirbase', 'hapi' or 'medplum'; options name columns ({"resource": "content", "type": ...,
 * "id": ..., "version": ..., "deleted": ...}) and {"record_unrouted": true}
 * records changes that belong to no patient; {"body": "by_version"} logs the
 * version's key instead of the body (hapi, medplum, wintehr; version_body()).
 * Watching again replaces.
 * SECURITY DEFINER, so that a role granted EXECUTE on it (and USAGE on the
 * schema) can watch the tables it owns, and only those, without any right
 * on the trigger function or watched_tables.
 */
CREATE FUNCTION fhir_notify.watch(tbl regclass, layout text DEFAULT 'auto',
                                  options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	arguments text[];
	argument_list text;
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'cannot watch a NULL table';
	END IF;
	PERFORM fhir_notify.check_table_owner(tbl);
	arguments := fhir_notify.resolve_layout(tbl, coalesce(layout, 'auto'),
	                                        coalesce(options, '{}'));
	SELECT string_agg(quote_literal(a), ', ' ORDER BY n) INTO argument_list
	FROM unnest(arguments) WITH ORDINALITY AS u(a, n);

	PERFORM fhir_notify.drop_triggers(tbl);
	EXECUTE format('CREATE TRIGGER fhir_notify_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
	               'FOR EACH ROW EXECUTE FUNCTION fhir_notify.capture(%s)', tbl, argument_list);
	EXECUTE format('CREATE TRIGGER fhir_notify_truncate AFTER TRUNCATE ON %s '
	               'FOR EACH STATEMENT EXECUTE FUNCTION fhir_notify.capture_truncate()', tbl);

	DELETE FROM fhir_notify.watched_tables w
	WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t
	                  WHERE t.tgrelid = w.relation AND t.tgname = 'fhir_notify_capture');
	INSERT INTO fhir_notify.watched_tables AS w (relation, layout, options, trigger_arguments)
	VALUES (tbl, substr(arguments[1], length('layout=') + 1), coalesce(options, '{}'), arguments)
	ON CONFLICT (relation) DO UPDATE
		SET layout = excluded.layout, options = excluded.options,
		    trigger_arguments = excluded.trigger_arguments,
		    since = CASE WHEN w.trigger_arguments = excluded.trigger_arguments
		                 THEN w.since ELSE excluded.since END;
END
$$;

/*
 * Stops capturing the changes of tbl. Not watched: nothing to do. Like
 * watch(), for tbl's owner and superusers.
 */
CREATE FUNCTION fhir_notify.unwatch(tbl regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM fhir_notify.check_table_owner(tbl);
	PERFORM fhir_notify.drop_triggers(tbl);
	DELETE FROM fhir_notify.watched_tables w WHERE w.relation = tbl;
END
$$;

-- ---------------------------------------------------------------------------
-- Medplum: every resource table of a schema, and those added later
-- ---------------------------------------------------------------------------

-- The schemas fhir_notify.watch_medplum() watches. Resource tables created
-- (or altered into shape) there later are watched by the event trigger
-- fhir_notify_watch_new_tables.
CREATE TABLE fhir_notify.watched_schemas (
	schema_name regnamespace PRIMARY KEY,
	layout text NOT NULL,
	options jsonb NOT NULL,
	since timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE fhir_notify.watched_schemas IS
	'The schemas whose resource tables fhir_notify.watch_medplum() watches, new ones included';

SELECT pg_catalog.pg_extension_config_dump('fhir_notify.watched_schemas', '');

/*
 * Whether tbl is one of Medplum's resource tables: named like a resource
 * type, with content text, id, deleted boolean, compartments and
 * "lastUpdated" (its _History and lookup tables are not).
 */
CREATE FUNCTION fhir_notify.is_medplum_table(tbl regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition
	   AND c.relname ~ '^[A-Z][A-Za-z0-9]*$'
	   AND (SELECT count(*) FROM pg_attribute a
	        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
	          AND ((a.attname = 'content' AND a.atttypid IN ('text'::regtype, 'varchar'::regtype))
	               OR (a.attname = 'deleted' AND a.atttypid = 'boolean'::regtype)
	               OR a.attname IN ('id', 'compartments', 'lastUpdated'))) = 5
	FROM pg_class c WHERE c.oid = tbl
$$;

/*
 * Watches every Medplum resource table of a schema with the medplum layout,
 * and registers the schema so that tables Medplum's migrations add later
 * are watched when they are created. Safe to run again: tables already
 * watched with the same options are left alone (no trigger is replaced).
 * Returns how many resource tables of the schema are watched.
 */
CREATE FUNCTION fhir_notify.watch_medplum(schema_name regnamespace DEFAULT 'public',
                                          options jsonb DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	tbl regclass;
	watched integer := 0;
	added integer := 0;
BEGIN
	IF schema_name IS NULL THEN
		RAISE EXCEPTION 'cannot watch a NULL schema';
	END IF;
	options := coalesce(options, '{}');
	INSERT INTO fhir_notify.watched_schemas AS s (schema_name, layout, options)
	VALUES (schema_name, 'medplum', options)
	ON CONFLICT ON CONSTRAINT watched_schemas_pkey DO UPDATE
		SET options = excluded.options,
		    since = CASE WHEN s.options = excluded.options THEN s.since ELSE excluded.since END;
	FOR tbl IN
		SELECT c.oid::regclass FROM pg_class c
		WHERE c.relnamespace = schema_name AND fhir_notify.is_medplum_table(c.oid)
		ORDER BY c.relname
	LOOP
		watched := watched + 1;
		CONTINUE WHEN EXISTS (
			SELECT 1 FROM fhir_notify.watched w
			JOIN fhir_notify.watched_tables t ON t.relation = w."table"
			WHERE w."table" = tbl AND w.layout = 'medplum' AND w.options = options
			  AND t.trigger_arguments = fhir_notify.resolve_layout(tbl, 'medplum', options));
		PERFORM fhir_notify.watch(tbl, 'medplum', options);
		added := added + 1;
	END LOOP;
	RAISE NOTICE 'schema % has % Medplum resource tables, all watched (% newly)',
		schema_name, watched, added;
	RETURN watched;
END
$$;

/*
 * Stops watching the Medplum resource tables of a schema and forgets the
 * schema. Returns how many tables were unwatched.
 */
CREATE FUNCTION fhir_notify.unwatch_medplum(schema_name regnamespace DEFAULT 'public')
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	tbl regclass;
	unwatched integer := 0;
BEGIN
	DELETE FROM fhir_notify.watched_schemas s WHERE s.schema_name = unwatch_medplum.schema_name;
	FOR tbl IN
		SELECT w.relation FROM fhir_notify.watched_tables w
		JOIN pg_class c ON c.oid = w.relation
		WHERE c.relnamespace = unwatch_medplum.schema_name AND w.layout = 'medplum'
	LOOP
		PERFORM fhir_notify.unwatch(tbl);
		unwatched := unwatched + 1;
	END LOOP;
	RETURN unwatched;
END
$$;

/*
 * The event trigger's function: watches a Medplum resource table created
 * or altered in a schema watch_medplum() registered, when its owner is the
 * owner of the resource tables already watched there (or of the schema),
 * so that no other role can make a table whose rows reach patient rooms.
 * Runs as the extension's owner; never fails the DDL (a migration of the
 * FHIR server): problems are warnings.
 */
CREATE FUNCTION fhir_notify.watch_new_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
	command record;
	registration record;
	owner oid;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM fhir_notify.watched_schemas) THEN
		RETURN;
	END IF;
	FOR command IN
		SELECT DISTINCT d.objid FROM pg_event_trigger_ddl_commands() d
		WHERE d.object_type = 'table' AND d.classid = 'pg_class'::regclass
	LOOP
		SELECT s.*, c.relowner, n.nspowner INTO registration
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN fhir_notify.watched_schemas s ON s.schema_name = c.relnamespace
		WHERE c.oid = command.objid;
		CONTINUE WHEN NOT FOUND;
		-- Recorded as watched: also while pg_restore recreates the table, before
		-- its trigger (dumped with it) is restored.
		CONTINUE WHEN EXISTS (SELECT 1 FROM fhir_notify.watched_tables w
		                      WHERE w.relation = command.objid);
		CONTINUE WHEN NOT fhir_notify.is_medplum_table(command.objid);
		owner := registration.relowner;
		IF NOT (owner = registration.nspowner
		        OR (registration.nspowner = 'pg_database_owner'::regrole
		            AND owner = (SELECT datdba FROM pg_database WHERE datname = current_database()))
		        OR EXISTS (SELECT 1 FROM fhir_notify.watched_tables w
		                   JOIN pg_class c ON c.oid = w.relation
		                   WHERE c.relnamespace = registration.schema_name
		                     AND w.layout = 'medplum' AND c.relowner = owner)) THEN
			RAISE WARNING 'fhir_notify: new table % is not watched: its owner % owns neither the '
				'schema nor the resource tables watched there', command.objid::regclass,
				owner::regrole
				USING HINT = format('SELECT fhir_notify.watch(%L, ''medplum'') watches it.',
				                    command.objid::regclass);
			CONTINUE;
		END IF;
		BEGIN
			PERFORM fhir_notify.watch(command.objid::regclass, 'medplum', registration.options);
		EXCEPTION WHEN OTHERS THEN
			RAISE WARNING 'fhir_notify: new table % is not watched: %', command.objid::regclass,
				SQLERRM;
		END;
	END LOOP;
EXCEPTION WHEN OTHERS THEN
	RAISE WARNING 'fhir_notify: new tables not checked for watching: %', SQLERRM;
END
$$;

CREATE EVENT TRIGGER fhir_notify_watch_new_tables ON ddl_command_end
	WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
	EXECUTE FUNCTION fhir_notify.watch_new_tables();

-- ---------------------------------------------------------------------------
-- Doorbell and ticker (doorbell.c, ticker.c)
-- ---------------------------------------------------------------------------


-- ---------------------------------------------------------------------------
-- Presence: who has which patient's chart open, and what they are editing,
-- shared by every bridge on this database (the bridge's presence.c). One
-- row per connection and patient; a person is the rows of one user_id. The
-- tables are UNLOGGED: presence is a few seconds' worth of state, not worth
-- WAL, and after a crash every bridge rejoins anyway. presence_rooms.seq
-- changes (from one sequence, so a value never comes back) whenever a
-- room's rows change; a bridge re-reads only rooms whose seq is not the one
-- it saw. Rows of a bridge that stops heartbeating are deleted by the others
-- once they are older than the ttl they pass.
-- ---------------------------------------------------------------------------
CREATE UNLOGGED TABLE fhir_notify.presence (
	patient_id text NOT NULL,
	bridge text NOT NULL,
	connection text NOT NULL,
	user_id text NOT NULL,
	display text,
	role text,
	fhir_user text,
	editing text[] NOT NULL DEFAULT '{}',
	since timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	PRIMARY KEY (patient_id, bridge, connection)
);
CREATE INDEX presence_bridge_idx ON fhir_notify.presence (bridge);

COMMENT ON TABLE fhir_notify.presence IS
	'Who has which patient open through which bridge connection, and what they edit';

CREATE UNLOGGED TABLE fhir_notify.presence_rooms (
	patient_id text PRIMARY KEY,
	seq bigint NOT NULL
);

COMMENT ON TABLE fhir_notify.presence_rooms IS
	'A number that changes whenever the presence rows of a patient change';

CREATE SEQUENCE fhir_notify.presence_seq;

-- One heartbeat per bridge, not per row: a bridge with 10,000 viewers
-- writes one row every few seconds to stay alive.
CREATE UNLOGGED TABLE fhir_notify.presence_bridges (
	bridge text PRIMARY KEY,
	heartbeat timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE fhir_notify.presence_bridges IS
	'The bridges keeping presence rows, and when each last said it was alive';

/* The doorbell of presence changes: the change log's channel plus _presence. */
CREATE FUNCTION fhir_notify.presence_ring() RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT pg_notify(coalesce(nullif(current_setting('fhir_notify.channel', true), ''),
	                          'fhir_notify') || '_presence', '')
$$;

/*
 * Applies one bridge's batch of presence changes: entries is a JSON array of
 * {"connection", "patient_id", "user", "name", "role", "fhir_user",
 * "editing": ["Type/id", ...]} (join, or update: since is kept) and
 * {"connection", "patient_id", "gone": true} (leave). Every room touched
 * gets a new seq and the doorbell rings once. Returns the rows changed.
 */
CREATE FUNCTION fhir_notify.presence_set(bridge text, entries jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	changed integer;
	rooms text[];
BEGIN
	IF bridge IS NULL OR entries IS NULL OR jsonb_typeof(entries) <> 'array' THEN
		RAISE EXCEPTION 'presence_set needs a bridge name and a JSON array of entries';
	END IF;
	WITH batch AS (
		-- the last entry of a connection and patient wins
		SELECT DISTINCT ON (e->>'patient_id', e->>'connection')
		       e->>'connection' AS connection, e->>'patient_id' AS patient_id,
		       left(e->>'user', 256) AS user_id, left(e->>'name', 256) AS display,
		       left(e->>'role', 256) AS role, left(e->>'fhir_user', 256) AS fhir_user,
		       ARRAY(SELECT left(x, 200) FROM jsonb_array_elements_text(
		                 CASE WHEN jsonb_typeof(e->'editing') = 'array' THEN e->'editing'
		                      ELSE '[]' END) AS x LIMIT 16) AS editing,
		       coalesce(e->'gone' = 'true', false) AS gone
		FROM jsonb_array_elements(entries) WITH ORDINALITY AS a(e, i)
		WHERE e->>'connection' IS NOT NULL AND e->>'patient_id' IS NOT NULL
		  AND (e->>'user' IS NOT NULL OR e->'gone' = 'true')
		ORDER BY e->>'patient_id', e->>'connection', i DESC
	), removed AS (
		DELETE FROM fhir_notify.presence p
		USING batch b
		WHERE b.gone AND p.patient_id = b.patient_id AND p.bridge = presence_set.bridge
		  AND p.connection = b.connection
		RETURNING p.patient_id
	), upserted AS (
		INSERT INTO fhir_notify.presence AS p
			(patient_id, bridge, connection, user_id, display, role, fhir_user, editing)
		SELECT b.patient_id, presence_set.bridge, b.connection, b.user_id, b.display, b.role,
		       b.fhir_user, b.editing
		FROM batch b WHERE NOT b.gone
		ORDER BY b.patient_id, b.connection
		ON CONFLICT (patient_id, bridge, connection) DO UPDATE
			SET user_id = excluded.user_id, display = excluded.display, role = excluded.role,
			    fhir_user = excluded.fhir_user, editing = excluded.editing
			WHERE (p.user_id, p.display, p.role, p.fhir_user, p.editing)
			      IS DISTINCT FROM
			      (excluded.user_id, excluded.display, excluded.role, excluded.fhir_user,
			       excluded.editing)
		RETURNING p.patient_id
	)
	SELECT count(*), array_agg(DISTINCT t.patient_id ORDER BY t.patient_id)
	INTO changed, rooms
	FROM (SELECT patient_id FROM removed UNION ALL SELECT patient_id FROM upserted) t;

	INSERT INTO fhir_notify.presence_bridges AS h (bridge) VALUES (presence_set.bridge)
	ON CONFLICT (bridge) DO UPDATE SET heartbeat = clock_timestamp();
	IF changed > 0 THEN
		INSERT INTO fhir_notify.presence_rooms AS r (patient_id, seq)
		SELECT u.patient_id, nextval('fhir_notify.presence_seq')
		FROM unnest(rooms) AS u(patient_id)
		ON CONFLICT (patient_id) DO UPDATE SET seq = nextval('fhir_notify.presence_seq');
		PERFORM fhir_notify.presence_ring();
	END IF;
	RETURN changed;
END
$$;

/*
 * A bridge says it is alive (one row write), and the rows of every bridge
 * silent for longer than ttl are deleted: a bridge that died leaves no
 * ghosts. Returns the number of presence rows deleted.
 */
CREATE FUNCTION fhir_notify.presence_heartbeat(bridge text, ttl interval) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	expired integer := 0;
	dead text;
BEGIN
	INSERT INTO fhir_notify.presence_bridges AS h (bridge) VALUES (presence_heartbeat.bridge)
	ON CONFLICT (bridge) DO UPDATE SET heartbeat = clock_timestamp();
	FOR dead IN
		SELECT h.bridge FROM fhir_notify.presence_bridges h
		WHERE h.heartbeat < clock_timestamp() - ttl
		ORDER BY h.bridge FOR UPDATE SKIP LOCKED
	LOOP
		expired := expired + fhir_notify.presence_leave_bridge(dead);
	END LOOP;
	-- rooms left empty need no row (a room without one reads as seq 0)
	DELETE FROM fhir_notify.presence_rooms r
	WHERE NOT EXISTS (SELECT 1 FROM fhir_notify.presence p WHERE p.patient_id = r.patient_id);
	RETURN expired;
END
$$;

/*
 * A bridge that shuts down takes its rows with it (and presence_heartbeat
 * takes those of a dead one). Returns how many.
 */
CREATE FUNCTION fhir_notify.presence_leave_bridge(bridge text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
	n integer;
	rooms text[];
BEGIN
	WITH gone AS (
		DELETE FROM fhir_notify.presence p WHERE p.bridge = presence_leave_bridge.bridge
		RETURNING p.patient_id
	)
	SELECT count(*), array_agg(DISTINCT g.patient_id ORDER BY g.patient_id) INTO n, rooms
	FROM gone g;
	DELETE FROM fhir_notify.presence_bridges h WHERE h.bridge = presence_leave_bridge.bridge;
	IF n > 0 THEN
		UPDATE fhir_notify.presence_rooms r SET seq = nextval('fhir_notify.presence_seq')
		WHERE r.patient_id = ANY (rooms);
		PERFORM fhir_notify.presence_ring();
	END IF;
	-- a room left empty needs no row (a room without one reads as seq 0)
	DELETE FROM fhir_notify.presence_rooms r
	WHERE r.patient_id = ANY (rooms)
	  AND NOT EXISTS (SELECT 1 FROM fhir_notify.presence p WHERE p.patient_id = r.patient_id);
	RETURN n;
END
$$;

/*
 * The presence rows of the rooms among patients whose seq is not the one
 * in seen (same order; 0 for a room never seen), one row per connection
 * (leaving out those of except_bridge: a bridge knows its own), or one row
 * with NULL connection for a room that has none. All in one snapshot: seq
 * and rows agree.
 */
CREATE FUNCTION fhir_notify.presence_read(patients text[], seen bigint[],
                                          except_bridge text DEFAULT NULL)
RETURNS TABLE (patient_id text, seq bigint, bridge text, connection text, user_id text,
               display text, role text, fhir_user text, editing text[], since timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT q.patient_id, q.seq, p.bridge, p.connection, p.user_id, p.display, p.role,
	       p.fhir_user, p.editing, p.since
	FROM (SELECT w.patient_id, coalesce(r.seq, 0) AS seq
	      FROM unnest(patients, seen) AS w(patient_id, seen_seq)
	      LEFT JOIN fhir_notify.presence_rooms r ON r.patient_id = w.patient_id
	      WHERE coalesce(r.seq, 0) IS DISTINCT FROM coalesce(w.seen_seq, 0)) q
	LEFT JOIN fhir_notify.presence p ON p.patient_id = q.patient_id
	                                 AND p.bridge IS DISTINCT FROM except_bridge
	ORDER BY q.patient_id, p.since, p.connection
$$;

/*
 * Lets a bridge's role keep presence: EXECUTE on presence_set,
 * presence_heartbeat, presence_leave_bridge and presence_read (with
 * grant_reader() for the change log).
 */
CREATE FUNCTION fhir_notify.grant_presence(bridge_role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF bridge_role IS NULL THEN
		RAISE EXCEPTION 'cannot grant presence to a NULL role';
	END IF;
	EXECUTE format('GRANT USAGE ON SCHEMA fhir_notify TO %s', bridge_role);
	EXECUTE format('GRANT EXECUTE ON FUNCTION fhir_notify.presence_set(text, jsonb), '
	               'fhir_notify.presence_heartbeat(text, interval), '
	               'fhir_notify.presence_leave_bridge(text), '
	               'fhir_notify.presence_read(text[], bigint[], text) TO %s', bridge_role);
END
$$;

/* Takes back what grant_presence() gave (the schema's USAGE stays: grant_reader may need it). */
CREATE FUNCTION fhir_notify.revoke_presence(bridge_role regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF bridge_role IS NULL THEN
		RAISE EXCEPTION 'cannot revoke presence from a NULL role';
	END IF;
	EXECUTE format('REVOKE EXECUTE ON FUNCTION fhir_notify.presence_set(text, jsonb), '
	               'fhir_notify.presence_heartbeat(text, interval), '
	               'fhir_notify.presence_leave_bridge(text), '
	               'fhir_notify.presence_read(text[], bigint[], text) FROM %s', bridge_role);
END
$$;

REVOKE ALL ON fhir_notify.presence, fhir_notify.presence_rooms, fhir_notify.presence_bridges,
	fhir_notify.presence_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION fhir_notify.presence_ring(), fhir_notify.presence_set(text, jsonb),
	fhir_notify.presence_heartbeat(text, interval), fhir_notify.presence_leave_bridge(text),
	fhir_notify.presence_read(text[], bigint[], text), fhir_notify.grant_presence(regrole),
	fhir_notify.revoke_presence(regrole) FROM PUBLIC;


REVOKE ALL ON ALL TABLES IN SCHEMA fhir_notify FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fhir_notify FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Resume points for clients that send no cursor (bridge/resume_points.c)
-- ---------------------------------------------------------------------------

/*
 * How far the bridge has served a user's subscription to a patient: every
 * change of the patient up to (tick, position) that the subscription takes
 * has been written to the user's connection. A client that subscribes again
 * with the same id and no cursor (WintEHR's after every reconnect) is
 * replayed what came after, on whichever bridge it reaches. Claimed when
 * the subscription starts, saved on disconnect, periodically and at
 * shutdown; a point is never ahead of what was delivered (a crash costs
 * duplicates, not gaps).
 */
CREATE TABLE fhir_notify.resume_points (
	user_id text NOT NULL,
	patient_id text NOT NULL,
	subscription_id text NOT NULL,
	tick bigint NOT NULL,
	"position" bigint NOT NULL,
	epoch bigint NOT NULL, -- the cursor's epoch (fhir_notify.tick_epoch())
	saved_at timestamptz NOT NULL,
	PRIMARY KEY (user_id, patient_id, subscription_id)
);
CREATE INDEX resume_points_saved_at ON fhir_notify.resume_points (saved_at);

/* The readers of the change log (grant_reader) may keep resume points. */
CREATE FUNCTION fhir_notify.check_resume_caller() RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NOT pg_catalog.has_function_privilege(session_user, 'fhir_notify.tick()', 'EXECUTE') THEN
		RAISE EXCEPTION 'permission denied for resume points: % is not a reader of the change log',
			session_user
			USING ERRCODE = '42501',
			      HINT = 'SELECT fhir_notify.grant_reader(''' || session_user || ''')';
	END IF;
END
$$;

/*
 * Saves points (arrays of equal length; a key given twice keeps its last
 * point) and forgets those not saved for max_age.
 */
CREATE FUNCTION fhir_notify.save_resume_points(user_ids text[], patient_ids text[],
	subscription_ids text[], ticks bigint[], positions bigint[], epochs bigint[],
	max_age interval)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM fhir_notify.check_resume_caller();
	DELETE FROM fhir_notify.resume_points WHERE saved_at < now() - max_age;
	INSERT INTO fhir_notify.resume_points AS r
		(user_id, patient_id, subscription_id, tick, "position", epoch, saved_at)
	SELECT DISTINCT ON (k.u, k.p, k.s) k.u, k.p, k.s, k.t, k.pos, k.e, now()
	FROM unnest(user_ids, patient_ids, subscription_ids, ticks, positions, epochs)
		WITH ORDINALITY AS k(u, p, s, t, pos, e, ord)
	ORDER BY k.u, k.p, k.s, k.ord DESC
	ON CONFLICT (user_id, patient_id, subscription_id) DO UPDATE
		SET tick = excluded.tick, "position" = excluded."position", epoch = excluded.epoch,
			saved_at = excluded.saved_at;
END
$$;

/*
 * The points saved within max_age for the keys given (arrays of equal
 * length): ord is the key's place in the arrays, from 1. A key without one
 * gets the point given for it (ticks, positions, epochs), saved before the
 * answer: a subscription that starts from there cannot lose what comes
 * after, even if its bridge crashes before it saves a point of its own.
 */
CREATE FUNCTION fhir_notify.claim_resume_points(user_ids text[], patient_ids text[],
	subscription_ids text[], ticks bigint[], positions bigint[], epochs bigint[],
	max_age interval)
RETURNS TABLE (ord integer, tick bigint, "position" bigint, epoch bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM fhir_notify.check_resume_caller();
	DELETE FROM fhir_notify.resume_points r
	USING unnest(user_ids, patient_ids, subscription_ids) AS k(u, p, s)
	WHERE r.user_id = k.u AND r.patient_id = k.p AND r.subscription_id = k.s
		AND r.saved_at < now() - max_age;
	RETURN QUERY
	SELECT k.ord::integer, r.tick, r."position", r.epoch
	FROM unnest(user_ids, patient_ids, subscription_ids) WITH ORDINALITY AS k(u, p, s, ord)
	JOIN fhir_notify.resume_points r
		ON r.user_id = k.u AND r.patient_id = k.p AND r.subscription_id = k.s;
	INSERT INTO fhir_notify.resume_points AS r
		(user_id, patient_id, subscription_id, tick, "position", epoch, saved_at)
	SELECT DISTINCT ON (k.u, k.p, k.s) k.u, k.p, k.s, k.t, k.pos, k.e, now()
	FROM unnest(user_ids, patient_ids, subscription_ids, ticks, positions, epochs)
		WITH ORDINALITY AS k(u, p, s, t, pos, e, ord)
	ORDER BY k.u, k.p, k.s, k.ord
	ON CONFLICT (user_id, patient_id, subscription_id) DO NOTHING;
END
$$;

REVOKE ALL ON fhir_notify.resume_points FROM PUBLIC;
REVOKE ALL ON FUNCTION fhir_notify.check_resume_caller() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fhir_notify.save_resume_points(text[], text[], text[], bigint[], bigint[],
	bigint[], interval) TO PUBLIC;
GRANT EXECUTE ON FUNCTION fhir_notify.claim_resume_points(text[], text[], text[], bigint[],
	bigint[], bigint[], interval) TO PUBLIC;
