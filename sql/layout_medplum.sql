-- The medplum layout: Medplum 5.x's tables, one per resource type, the FHIR
-- JSON as text in "content", written statement by statement the way
-- Medplum writes them: REPEATABLE READ, an upsert of the resource table,
-- the history row, the lookup tables.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse
SET fhir_notify.warning_interval = 0;

CREATE VIEW log AS
	SELECT action, resource_type, left(resource_id, 8) AS id, left(version_id, 8) AS version,
	       (SELECT array_agg(left(p, 8)) FROM unnest(patient_ids) p) AS patients,
	       resource IS NULL AS no_resource
	FROM fhir_notify.changes ORDER BY position;

-- Medplum's schema: a resource table, its _History table and lookup tables
-- per type (the columns that matter, and a few search columns).
CREATE FUNCTION medplum_tables(type text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format('CREATE TABLE %I (id uuid NOT NULL PRIMARY KEY, content text NOT NULL,
		"lastUpdated" timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false,
		"projectId" uuid NOT NULL, __version integer NOT NULL, compartments uuid[] NOT NULL,
		subject text, patient text, performer text[], code text[], "_source" text,
		"_profile" text[], "___tag" uuid[])', type);
	EXECUTE format('CREATE TABLE %I ("versionId" uuid NOT NULL PRIMARY KEY, id uuid NOT NULL,
		content text NOT NULL, "lastUpdated" timestamptz NOT NULL)', type || '_History');
	EXECUTE format('CREATE TABLE %I ("resourceId" uuid NOT NULL, "targetId" uuid NOT NULL,
		code text NOT NULL, PRIMARY KEY ("resourceId", "targetId", code))', type || '_References');
END $$;
SELECT medplum_tables('Patient'), medplum_tables('Observation'), medplum_tables('Project');
CREATE TABLE "HumanName" ("resourceId" uuid NOT NULL, name text, given text, family text);

-- One call watches every resource table of the schema (not the _History
-- and lookup tables), and running it again changes nothing.
SELECT fhir_notify.watch_medplum('public');
SELECT fhir_notify.watch_medplum('public');
SELECT "table", layout FROM fhir_notify.watched ORDER BY 1::text;

\set project '''11111111-1111-4111-8111-111111111111'''
\set pa '''aaaaaaaa-0000-4000-8000-000000000001'''
\set pb '''bbbbbbbb-0000-4000-8000-000000000002'''
\set pc '''cccccccc-0000-4000-8000-000000000003'''
\set o1 '''0b000001-0000-4000-8000-000000000000'''

-- The two patients (create: the upsert inserts).
BEGIN ISOLATION LEVEL REPEATABLE READ;
INSERT INTO "Patient" (id, content, "lastUpdated", deleted, "projectId", __version, compartments)
	VALUES (:pa, format('{"resourceType":"Patient","id":"%s","meta":{"project":"%s","versionId":"a0000001-0000-4000-8000-000000000000","lastUpdated":"2025-10-01T09:00:00.000Z","compartment":[{"reference":"Project/%s"},{"reference":"Patient/%s"}]},"name":[{"family":"A"}]}', :pa, :project, :project, :pa),
	        '2025-10-01 09:00:00+00', false, :project, 7, ARRAY[:project, :pa]::uuid[])
	ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, "lastUpdated" = EXCLUDED."lastUpdated",
		deleted = EXCLUDED.deleted, "projectId" = EXCLUDED."projectId", __version = EXCLUDED.__version,
		compartments = EXCLUDED.compartments;
INSERT INTO "Patient_History" ("versionId", id, content, "lastUpdated")
	VALUES ('a0000001-0000-4000-8000-000000000000', :pa, '{}', '2025-10-01 09:00:00+00');
INSERT INTO "HumanName" VALUES (:pa, 'A', NULL, 'A');
INSERT INTO "Patient" (id, content, "lastUpdated", deleted, "projectId", __version, compartments)
	VALUES (:pb, format('{"resourceType":"Patient","id":"%s","meta":{"project":"%s","versionId":"b0000001-0000-4000-8000-000000000000","lastUpdated":"2025-10-01T09:00:00.000Z"},"name":[{"family":"B"}]}', :pb, :project),
	        '2025-10-01 09:00:00+00', false, :project, 7, ARRAY[:project, :pb]::uuid[])
	ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, "lastUpdated" = EXCLUDED."lastUpdated",
		deleted = EXCLUDED.deleted, "projectId" = EXCLUDED."projectId", __version = EXCLUDED.__version,
		compartments = EXCLUDED.compartments;
COMMIT;

-- What every write of an Observation does, with its versionId, subject and
-- meta.compartment/compartments (which Medplum fills; not trusted here).
CREATE FUNCTION write_observation(obs uuid, version text, subj text, comp text,
	del boolean DEFAULT false, status text DEFAULT 'final') RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	content text := CASE WHEN del THEN '' ELSE format(
		'{"resourceType":"Observation","id":"%s","meta":{"project":"11111111-1111-4111-8111-111111111111","versionId":"%s","lastUpdated":"2025-10-01T10:00:00.000Z","author":{"reference":"Practitioner/dr1"},"compartment":[{"reference":"Project/11111111-1111-4111-8111-111111111111"},{"reference":"Patient/%s"}]},"status":"%s","code":{"text":"HbA1c"},"subject":{"reference":"Patient/%s"}}',
		obs, version, comp, status, subj) END;
BEGIN
	INSERT INTO "Observation" (id, content, "lastUpdated", deleted, "projectId", __version,
		compartments, subject, code)
	VALUES (obs, content, now(), del, '11111111-1111-4111-8111-111111111111',
		CASE WHEN del THEN -1 ELSE 7 END,
		CASE WHEN del THEN '{}' ELSE ARRAY['11111111-1111-4111-8111-111111111111', comp]::uuid[] END,
		CASE WHEN del THEN NULL ELSE 'Patient/' || subj END, '{HbA1c}')
	ON CONFLICT ("id") DO UPDATE SET content = EXCLUDED.content, "lastUpdated" = EXCLUDED."lastUpdated",
		deleted = EXCLUDED.deleted, "projectId" = EXCLUDED."projectId", __version = EXCLUDED.__version,
		compartments = EXCLUDED.compartments, subject = EXCLUDED.subject, code = EXCLUDED.code;
	INSERT INTO "Observation_History" ("versionId", id, content, "lastUpdated")
		VALUES (gen_random_uuid(), obs, content, now());
	DELETE FROM "Observation_References" r WHERE r."resourceId" = obs;
	IF NOT del THEN
		INSERT INTO "Observation_References" VALUES (obs, subj::uuid, 'subject') ON CONFLICT DO NOTHING;
	END IF;
END $$;

-- create, update, a move to patient b (meta.compartment still says a,
-- which does not count), a delete (deleted = true, content = '').
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT write_observation(:o1, 'c0000001-0000-4000-8000-000000000000', :pa, :pa);
COMMIT;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT write_observation(:o1, 'c0000002-0000-4000-8000-000000000000', :pa, :pa, status => 'amended');
COMMIT;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT write_observation(:o1, 'c0000003-0000-4000-8000-000000000000', :pb, :pa, status => 'amended');
COMMIT;
-- no-op update: Medplum writes nothing. A reindex rewrites the row with the
-- same content and versionId (other search columns): no change, even when
-- the content text is serialised differently.
UPDATE "Observation" SET __version = 8, code = '{HbA1c,4548-4}' WHERE id = :o1;
UPDATE "Observation" SET content = jsonb_pretty(content::jsonb) WHERE id = :o1;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT write_observation(:o1, 'c0000004-0000-4000-8000-000000000000', :pb, :pb, del => true);
COMMIT;
SELECT * FROM log;
SELECT count(*) AS history_rows FROM "Observation_History";

-- The logged resource is the content as Medplum stores it.
SELECT resource->>'id' = :o1 AS id, resource->'meta'->>'versionId' AS version_id,
       resource->'subject' AS subject
	FROM fhir_notify.changes WHERE action = 'updated' ORDER BY position;

-- A transaction Bundle of 40 resources: one REPEATABLE READ transaction.
TRUNCATE fhir_notify.changes;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(write_observation(format('0b0000%s-0000-4000-8000-000000000000', 10 + i)::uuid,
	format('d00000%s-0000-4000-8000-000000000000', 10 + i),
	CASE WHEN i % 2 = 0 THEN 'aaaaaaaa-0000-4000-8000-000000000001' ELSE 'bbbbbbbb-0000-4000-8000-000000000002' END,
	'aaaaaaaa-0000-4000-8000-000000000001'))
	FROM generate_series(1, 40) i;
COMMIT;
SELECT action, patients, count(*) FROM log GROUP BY 1, 2 ORDER BY 2;
SELECT count(DISTINCT xid) AS transactions FROM fhir_notify.changes;

-- Medplum's own types (Project, Login, ...) belong to no patient: not read.
TRUNCATE fhir_notify.changes;
INSERT INTO "Project" (id, content, "lastUpdated", "projectId", __version, compartments)
	VALUES (:project, 'not json at all', now(), :project, 7, '{}');
-- Content that is no JSON never fails the write.
SELECT write_observation('0b000099-0000-4000-8000-000000000000', 'e0000001-0000-4000-8000-000000000000', :pa, :pa);
UPDATE "Observation" SET content = '{"resourceType": "Observation", "subject": '
	WHERE id = '0b000099-0000-4000-8000-000000000000';
SELECT * FROM log;

-- A resource table that Medplum's migrations add later is watched when it
-- is created (event trigger), and so is one created first and then altered
-- into shape; tables of another owner are not.
TRUNCATE fhir_notify.changes;
SELECT medplum_tables('Immunization');
CREATE TABLE "Flag" (id uuid PRIMARY KEY, content text NOT NULL, "lastUpdated" timestamptz NOT NULL);
ALTER TABLE "Flag" ADD COLUMN deleted boolean NOT NULL DEFAULT false,
	ADD COLUMN "projectId" uuid, ADD COLUMN __version integer, ADD COLUMN compartments uuid[];
CREATE ROLE medplum_intruder;
GRANT CREATE ON SCHEMA public TO medplum_intruder;
SET ROLE medplum_intruder;
CREATE TABLE "Goal" (id uuid PRIMARY KEY, content text NOT NULL, "lastUpdated" timestamptz NOT NULL,
	deleted boolean NOT NULL DEFAULT false, compartments uuid[] NOT NULL);
RESET ROLE;
SELECT "table", layout FROM fhir_notify.watched ORDER BY 1::text;
INSERT INTO "Immunization" (id, content, "lastUpdated", "projectId", __version, compartments)
	VALUES ('1a000001-0000-4000-8000-000000000000',
	        format('{"resourceType":"Immunization","id":"1a000001-0000-4000-8000-000000000000","meta":{"versionId":"f0000001-0000-4000-8000-000000000000"},"patient":{"reference":"Patient/%s"}}', :pb),
	        now(), :project, 7, ARRAY[:project, :pb]::uuid[]);
SELECT * FROM log;

-- One table by hand: explicit, or recognised.
SELECT fhir_notify.unwatch_medplum('public');
SELECT count(*) FROM fhir_notify.watched;
CREATE TABLE "Condition" (id uuid PRIMARY KEY, content text NOT NULL, "lastUpdated" timestamptz NOT NULL,
	deleted boolean NOT NULL DEFAULT false, compartments uuid[] NOT NULL);
SELECT count(*) FROM fhir_notify.watched;
SELECT fhir_notify.watch('"Observation"', 'medplum');
\set VERBOSITY default
SELECT fhir_notify.watch('"Condition"');
\set VERBOSITY terse
SELECT fhir_notify.watch('"Observation_History"', 'medplum');
SELECT "table", layout FROM fhir_notify.watched ORDER BY 1::text;

-- Clean up.
DROP VIEW log;
DROP FUNCTION medplum_tables(text), write_observation(uuid, text, text, text, boolean, text);
DROP TABLE "Patient", "Patient_History", "Patient_References", "Observation", "Observation_History",
	"Observation_References", "Project", "Project_History", "Project_References", "HumanName",
	"Immunization", "Immunization_History", "Immunization_References", "Flag", "Goal", "Condition";
REVOKE CREATE ON SCHEMA public FROM medplum_intruder;
DROP ROLE medplum_intruder;
DROP EXTENSION fhir_notify CASCADE;
