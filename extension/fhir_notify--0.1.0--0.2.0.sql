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
