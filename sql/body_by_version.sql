-- "body": "by_version": the log keeps the version's key, and read(),
-- batch() and read_next() read the body back from the server's table of
-- versions. Every layout twice, in schema c (body copy) and schema v
-- (body by_version), written the same way: the bodies read back must be
-- the bodies copied. Then a version expunged before delivery.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse
SET fhir_notify.warning_interval = 0;

CREATE SCHEMA c;
CREATE SCHEMA v;
CREATE FUNCTION make_tables(s text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	-- WintEHR
	EXECUTE format('CREATE TABLE %I.resources (id bigserial PRIMARY KEY,
		resource_type varchar NOT NULL, fhir_id varchar NOT NULL,
		version_id integer NOT NULL DEFAULT 1, last_updated timestamptz NOT NULL DEFAULT now(),
		deleted boolean DEFAULT false, resource jsonb NOT NULL, UNIQUE (resource_type, fhir_id))', s);
	EXECUTE format('CREATE TABLE %I.resource_history (id bigserial PRIMARY KEY,
		resource_id bigint, version_id int, operation varchar, resource jsonb)', s);
	EXECUTE format('CREATE INDEX ON %I.resource_history (resource_id, version_id)', s);
	-- Medplum
	EXECUTE format('CREATE TABLE %I."Observation" (id uuid NOT NULL PRIMARY KEY,
		content text NOT NULL, "lastUpdated" timestamptz NOT NULL,
		deleted boolean NOT NULL DEFAULT false, "projectId" uuid NOT NULL,
		__version integer NOT NULL, compartments uuid[] NOT NULL)', s);
	EXECUTE format('CREATE TABLE %I."Observation_History" ("versionId" uuid NOT NULL PRIMARY KEY,
		id uuid NOT NULL, content text NOT NULL, "lastUpdated" timestamptz NOT NULL)', s);
	-- HAPI
	EXECUTE format('CREATE TABLE %I.hfj_resource (res_id bigint PRIMARY KEY,
		partition_id integer, res_type varchar(40) NOT NULL, fhir_id varchar(64) NOT NULL,
		res_ver bigint NOT NULL, res_updated timestamp(6))', s);
	EXECUTE format('CREATE TABLE %I.hfj_res_ver (pid bigint PRIMARY KEY,
		res_id bigint NOT NULL, res_type varchar(40) NOT NULL, res_ver bigint NOT NULL,
		res_encoding varchar(5) NOT NULL, res_text_vc text, res_text oid,
		res_updated timestamp(6) NOT NULL, partition_id integer,
		CONSTRAINT idx_resver_id_ver UNIQUE (res_id, res_ver))', s);
END $$;
SELECT make_tables('c'), make_tables('v');

SELECT fhir_notify.watch('c.resources'), fhir_notify.watch('v.resources', 'wintehr',
	'{"body": "by_version"}');
SELECT fhir_notify.watch('c."Observation"', 'medplum'),
	fhir_notify.watch('v."Observation"', 'medplum', '{"body": "by_version"}');
SELECT fhir_notify.watch('c.hfj_res_ver', 'hapi'),
	fhir_notify.watch('v.hfj_res_ver', 'hapi', '{"body": "by_version"}');
SELECT "table", options FROM fhir_notify.watched ORDER BY 1::text;

CREATE TABLE lobs (name text PRIMARY KEY, oid oid);
INSERT INTO lobs VALUES
	('c', lo_from_bytea(0, '\x1f8b08000000000002ff15ca410a80201005d0bbfcb5d0ba76d1055a7401d31f1934868e508877afdefa5524e65892e3f25cc480298a0f1aa2c02097f5a0530cf55b1b13c5fd65b61a28da5d3d9a818b9eff50dedfc498753f2d5a7b0141700e4f5a000000')),
	('v', lo_from_bytea(0, '\x1f8b08000000000002ff15ca410a80201005d0bbfcb5d0ba76d1055a7401d31f1934868e508877afdefa5524e65892e3f25cc480298a0f1aa2c02097f5a0530cf55b1b13c5fd65b61a28da5d3d9a818b9eff50dedfc498753f2d5a7b0141700e4f5a000000'));

-- The same writes in both schemas, each as its server makes them.
CREATE FUNCTION write_all(s text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	body jsonb := '{"resourceType": "Condition", "id": "cond-1", "meta": {"versionId": "1"},
		"subject": {"reference": "Patient/p1"}, "code": {"text": "Sepsis"}}';
	rid bigint;
BEGIN
	-- WintEHR: a create and an update, each with its history row
	EXECUTE format('INSERT INTO %I.resources (resource_type, fhir_id, resource)
		VALUES (''Condition'', ''cond-1'', $1) RETURNING id', s) INTO rid USING body;
	EXECUTE format('INSERT INTO %I.resource_history (resource_id, version_id, operation, resource)
		VALUES ($1, 1, ''create'', $2)', s) USING rid, body;
	body := jsonb_set(body, '{meta,versionId}', '"2"') || '{"note": [{"text": "better"}]}';
	EXECUTE format('UPDATE %I.resources SET version_id = 2, resource = $1 WHERE id = $2', s)
		USING body, rid;
	EXECUTE format('INSERT INTO %I.resource_history (resource_id, version_id, operation, resource)
		VALUES ($1, 2, ''update'', $2)', s) USING rid, body;
	-- a resource without id in its JSON (completed with the column's)
	EXECUTE format('INSERT INTO %I.resources (resource_type, fhir_id, resource)
		VALUES (''Observation'', ''obs-9'', $1) RETURNING id', s) INTO rid
		USING '{"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}'::jsonb;
	EXECUTE format('INSERT INTO %I.resource_history (resource_id, version_id, operation, resource)
		VALUES ($1, 1, ''create'', $2)', s)
		USING rid, '{"resourceType": "Observation", "subject": {"reference": "Patient/p1"}}'::jsonb;
	-- Medplum: content text, the same in the _History row
	EXECUTE format('INSERT INTO %I."Observation" VALUES (''00000000-0000-0000-0000-0000000000a1'',
		$1, now(), false, ''00000000-0000-0000-0000-0000000000ff'', 1, ''{}'')', s)
		USING '{"resourceType":"Observation","id":"00000000-0000-0000-0000-0000000000a1","meta":{"versionId":"00000000-0000-0000-0000-0000000000b1"},"subject":{"reference":"Patient/p2"}}';
	EXECUTE format('INSERT INTO %I."Observation_History" VALUES (''00000000-0000-0000-0000-0000000000b1'',
		''00000000-0000-0000-0000-0000000000a1'', $1, now())', s)
		USING '{"resourceType":"Observation","id":"00000000-0000-0000-0000-0000000000a1","meta":{"versionId":"00000000-0000-0000-0000-0000000000b1"},"subject":{"reference":"Patient/p2"}}';
	-- HAPI: a JSON version without id or meta, then a JSONC one
	EXECUTE format('INSERT INTO %I.hfj_resource VALUES (7, NULL, ''Condition'', ''h-7'', 2, ''2025-10-01 12:00:00'')', s);
	EXECUTE format('INSERT INTO %I.hfj_res_ver VALUES (1, 7, ''Condition'', 1, ''JSON'',
		''{"resourceType":"Condition","subject":{"reference":"Patient/p3"}}'', NULL,
		''2025-10-01 12:00:00.5'', NULL)', s);
	EXECUTE format('INSERT INTO %I.hfj_resource VALUES (8, NULL, ''Condition'', ''h-8'', 1, ''2025-10-01 12:00:00'')', s);
	EXECUTE format('INSERT INTO %I.hfj_res_ver VALUES (2, 8, ''Condition'', 1, ''JSONC'', NULL,
		(SELECT oid FROM lobs WHERE name = $1), ''2025-10-02 00:00:00'', NULL)', s) USING s;
END $$;
SELECT write_all('c');
SELECT write_all('v');

-- What the log keeps: the copy, or the key.
SELECT split_part(source_table, '.', 1) AS s, resource_type, resource_id, version_id,
       resource IS NOT NULL AS copied, source_key IS NOT NULL AS keyed
FROM fhir_notify.changes ORDER BY position;

-- read(), batch() and read_next() return the copied body for every by_version change.
SELECT fhir_notify.tick() > 1 AS ticked;
CREATE TEMP TABLE got AS
	SELECT 'read' AS via, (r.change).* FROM fhir_notify.read(0) r
	UNION ALL
	SELECT 'batch', b.* FROM fhir_notify.batch(fhir_notify.newest_tick()) b
	UNION ALL
	SELECT 'read_next', (n.change).*
	FROM fhir_notify.read_next('t', fhir_notify.tick_epoch(1), 1) n WHERE n.status IS NULL;
SELECT g.via, g.resource_type, g.resource_id, g.version_id,
       g.resource = k.resource AS same_body, g.resource IS NOT NULL AS has_body
FROM got g
JOIN got k ON k.via = g.via AND k.source_table = 'c.' || split_part(g.source_table, '.', 2)
          AND (k.resource_type, k.resource_id, k.version_id) = (g.resource_type, g.resource_id, g.version_id)
WHERE g.source_table LIKE 'v.%'
ORDER BY g.via, g.position;
SELECT resource FROM got WHERE via = 'read' AND source_table = 'v.hfj_res_ver' ORDER BY position;

-- A reader role (grant_reader) gets the bodies through read(), with a search_path
-- of its own, and cannot call version_body() itself.
CREATE ROLE regress_bv_reader;
SELECT fhir_notify.grant_reader('regress_bv_reader');
SET ROLE regress_bv_reader;
SET search_path = public, pg_catalog;
SELECT count(*) FILTER (WHERE (r.change).resource IS NOT NULL) AS with_body, count(*)
FROM fhir_notify.read(0) r;
SELECT fhir_notify.version_body('v.hfj_res_ver', '7', '1', 'Condition', 'h-7');
RESET search_path;
RESET ROLE;

-- An expunged version: the change is still read, with the JSON null as body.
DELETE FROM v.resource_history WHERE version_id = 1 AND resource->>'resourceType' = 'Condition';
DELETE FROM v.hfj_res_ver WHERE res_id = 7;
DELETE FROM v."Observation_History";
SELECT (r.change).source_table, (r.change).resource_id, (r.change).version_id,
       jsonb_typeof((r.change).resource) AS body
FROM fhir_notify.read(0) r WHERE (r.change).source_table LIKE 'v.%' ORDER BY (r.change).position;

-- Errors and fall-backs at watch() time.
SELECT fhir_notify.watch('v.resources', 'wintehr', '{"body": "sometimes"}');
CREATE TABLE plain (id text, resource jsonb);
SELECT fhir_notify.watch('plain', 'jsonb', '{"body": "by_version"}');
DROP INDEX v.resource_history_resource_id_version_id_idx;
SELECT fhir_notify.watch('v.resources', 'wintehr', '{"body": "by_version"}');
SELECT trigger_arguments FROM fhir_notify.watched_tables WHERE relation = 'v.resources'::regclass;

-- version_body() is the extension owner's (no PUBLIC EXECUTE), called by the
-- read functions, which run as the owner with a fixed search_path.
SELECT has_function_privilege('public', 'fhir_notify.version_body(text,text,text,text,text)', 'EXECUTE');
SELECT proconfig, prosecdef FROM pg_proc WHERE proname = 'version_body';

SELECT lo_unlink(oid) FROM lobs;
DROP SCHEMA c, v CASCADE;
DROP TABLE plain, lobs;
DROP FUNCTION make_tables(text), write_all(text);
DROP EXTENSION fhir_notify CASCADE;
DROP ROLE regress_bv_reader;
