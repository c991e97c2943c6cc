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
	source_table text NOT NULL
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
-- ---------------------------------------------------------------------------
CREATE TABLE fhir_notify.ticks (
	tick_id bigint PRIMARY KEY,
	snapshot pg_catalog.pg_snapshot NOT NULL,
	created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);

COMMENT ON TABLE fhir_notify.ticks IS
	'Snapshot ticks: the changes of tick N became visible between tick N-1 and tick N';

-- The first tick: changes are delivered from here on.
INSERT INTO fhir_notify.ticks (tick_id, snapshot)
	VALUES (1, pg_catalog.pg_current_snapshot());

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
 * Records a new tick if any change became visible since the newest tick, and
 * returns the newest tick's id. Callers run it in its own READ COMMITTED
 * transaction (autocommit). Ticks are serialised by a table lock, so tick
 * N+1 is taken only after tick N committed.
 */
CREATE FUNCTION fhir_notify.tick() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	newest fhir_notify.ticks;
	current_snapshot pg_snapshot;
BEGIN
	LOCK TABLE fhir_notify.ticks IN EXCLUSIVE MODE;
	SELECT * INTO newest FROM fhir_notify.ticks ORDER BY tick_id DESC LIMIT 1;
	current_snapshot := pg_current_snapshot();
	IF NOT EXISTS (
		SELECT 1 FROM fhir_notify.changes_between(newest.snapshot, current_snapshot))
	THEN
		RETURN newest.tick_id;
	END IF;
	INSERT INTO fhir_notify.ticks (tick_id, snapshot)
		VALUES (newest.tick_id + 1, current_snapshot);
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
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT c.*
	FROM fhir_notify.ticks cur
	JOIN fhir_notify.ticks prev ON prev.tick_id = cur.tick_id - 1
	CROSS JOIN LATERAL fhir_notify.changes_between(prev.snapshot, cur.snapshot) c
	WHERE cur.tick_id = tick
	ORDER BY c.position
$$;

/*
 * The changes of the ticks after after_tick, up to max_ticks ticks, in
 * (tick, position) order: what a reader calls after a doorbell, and what a
 * resuming client is served from.
 */
CREATE FUNCTION fhir_notify.read(after_tick bigint, max_ticks integer DEFAULT 100)
RETURNS TABLE (tick_id bigint, change fhir_notify.changes)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
	SELECT t.tick_id, c
	FROM fhir_notify.ticks t,
	     LATERAL fhir_notify.batch(t.tick_id) c
	WHERE t.tick_id > after_tick
	  AND t.tick_id <= after_tick + max_ticks
	ORDER BY t.tick_id, c.position
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
 * Deletes ticks older than keep (always keeping the newest) and the changes
 * that only those ticks delivered. Returns the number of changes deleted.
 * A client whose cursor is older than the oldest remaining tick is told to
 * resync.
 */
CREATE FUNCTION fhir_notify.prune(keep interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	oldest_kept fhir_notify.ticks;
	deleted bigint;
BEGIN
	LOCK TABLE fhir_notify.ticks IN EXCLUSIVE MODE;
	SELECT * INTO oldest_kept FROM fhir_notify.ticks
	WHERE created_at >= clock_timestamp() - keep
	   OR tick_id = (SELECT max(tick_id) FROM fhir_notify.ticks)
	ORDER BY tick_id LIMIT 1;
	DELETE FROM fhir_notify.ticks WHERE tick_id < oldest_kept.tick_id;
	DELETE FROM fhir_notify.changes c
	WHERE c.xid < pg_snapshot_xmax(oldest_kept.snapshot)
	  AND pg_visible_in_snapshot(c.xid, oldest_kept.snapshot);
	GET DIAGNOSTICS deleted = ROW_COUNT;
	RETURN deleted;
END
$$;

/*
 * Lets a reader (the bridge's role) read the change log: USAGE on the
 * schema and EXECUTE on tick, read, batch, oldest_tick and newest_tick,
 * nothing else (no table, no prune, no capture trigger). Run by the
 * extension's owner or a superuser.
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
	               'fhir_notify.oldest_tick(), fhir_notify.newest_tick() TO %s', reader);
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
	EXECUTE format('REVOKE EXECUTE ON FUNCTION fhir_notify.tick(), '
	               'fhir_notify.read(bigint, integer), fhir_notify.batch(bigint), '
	               'fhir_notify.oldest_tick(), fhir_notify.newest_tick() FROM %s', reader);
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
 * records changes that belong to no patient. Watching again replaces.
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



REVOKE ALL ON ALL TABLES IN SCHEMA fhir_notify FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA fhir_notify FROM PUBLIC;
