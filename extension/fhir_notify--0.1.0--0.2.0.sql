-- fhir_notify 0.1.0 -> 0.2.0. Every change to fhir_notify--0.2.0.sql since
-- 0.1.0 is made here too, one section per feature, so that an updated
-- database ends with exactly what a fresh 0.2.0 install has
-- (sql/upgrade_path.sql compares the two).
\echo Use "ALTER EXTENSION fhir_notify UPDATE TO '0.2.0'" to load this file. \quit

-- watch() for table owners: roles granted EXECUTE on watch() and unwatch()
-- (and USAGE on the schema) may watch the tables they own.
CREATE FUNCTION fhir_notify.check_table_owner(tbl regclass) RETURNS void
LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'fhir_notify_check_table_owner';
REVOKE ALL ON FUNCTION fhir_notify.check_table_owner(regclass) FROM PUBLIC;

CREATE OR REPLACE FUNCTION fhir_notify.watch(tbl regclass, layout text DEFAULT 'auto',
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

CREATE OR REPLACE FUNCTION fhir_notify.unwatch(tbl regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM fhir_notify.check_table_owner(tbl);
	PERFORM fhir_notify.drop_triggers(tbl);
	DELETE FROM fhir_notify.watched_tables w WHERE w.relation = tbl;
END
$$;

-- medplum layout: watch_medplum(), unwatch_medplum() and the event trigger
-- that watches resource tables Medplum's migrations add later

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

REVOKE ALL ON fhir_notify.watched_schemas FROM PUBLIC;
REVOKE ALL ON FUNCTION fhir_notify.is_medplum_table(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION fhir_notify.watch_medplum(regnamespace, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION fhir_notify.unwatch_medplum(regnamespace) FROM PUBLIC;
REVOKE ALL ON FUNCTION fhir_notify.watch_new_tables() FROM PUBLIC;

-- presence
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
