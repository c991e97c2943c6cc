-- fhir_notify 0.1.0 -> 0.2.0. Every change to fhir_notify--0.2.0.sql since
-- 0.1.0 is made here too, one section per feature, so that an updated
-- database ends with exactly what a fresh 0.2.0 install has
-- (sql/upgrade_path.sql compares the two).
\echo Use "ALTER EXTENSION fhir_notify UPDATE TO '0.2.0'" to load this file. \quit

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
