-- Medplum 5.x's tables for the types written here, in schema medplum: one
-- table per resource type ("Patient", "Observation", "Condition": id uuid,
-- the FHIR JSON as content text, "lastUpdated", deleted, "projectId",
-- __version, compartments uuid[], and search columns with their indexes),
-- "<Type>_History" and "<Type>_References". 100 Patients and :seeded - 100
-- Observations (even numbers) and Conditions (odd), for the update scripts.
-- Ids are uuids made from numbers: patient p is
-- 00000000-0000-4000-8000-(100000000000 + p), seeded resource g is
-- 30000000-0000-4000-8000-(100000000000 + g).
CREATE SCHEMA medplum;
SET search_path = medplum, public;
CREATE FUNCTION pg_temp.medplum_tables(type text, search_columns text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format('CREATE TABLE %I (id uuid NOT NULL PRIMARY KEY, content text NOT NULL,
		"lastUpdated" timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false,
		"projectId" uuid NOT NULL, __version integer NOT NULL, compartments uuid[] NOT NULL,
		"_source" text, "_profile" text[], %s)', type, search_columns);
	EXECUTE format('CREATE INDEX ON %I ("lastUpdated")', type);
	EXECUTE format('CREATE INDEX ON %I ("projectId")', type);
	EXECUTE format('CREATE INDEX ON %I USING gin (compartments)', type);
	EXECUTE format('CREATE INDEX ON %I USING gin ("_profile")', type);
	EXECUTE format('CREATE TABLE %I ("versionId" uuid NOT NULL PRIMARY KEY, id uuid NOT NULL,
		content text NOT NULL, "lastUpdated" timestamptz NOT NULL)', type || '_History');
	EXECUTE format('CREATE INDEX ON %I (id)', type || '_History');
	EXECUTE format('CREATE INDEX ON %I ("lastUpdated")', type || '_History');
	EXECUTE format('CREATE TABLE %I ("resourceId" uuid NOT NULL, "targetId" uuid NOT NULL,
		code text NOT NULL, PRIMARY KEY ("resourceId", "targetId", code))', type || '_References');
	EXECUTE format('CREATE INDEX ON %I ("targetId", code)', type || '_References');
END
$$;
SELECT pg_temp.medplum_tables('Patient', 'name text[], family text[], given text[], gender text, birthdate date');
CREATE INDEX ON "Patient" USING gin (name);
CREATE INDEX ON "Patient" (birthdate);
SELECT pg_temp.medplum_tables('Observation', 'subject text, patient text, encounter text,
	performer text[], code text[], category text[], status text, date timestamptz,
	"valueQuantity" double precision');
CREATE INDEX ON "Observation" (subject);
CREATE INDEX ON "Observation" (patient);
CREATE INDEX ON "Observation" (encounter);
CREATE INDEX ON "Observation" USING gin (code);
CREATE INDEX ON "Observation" USING gin (category);
CREATE INDEX ON "Observation" (status);
CREATE INDEX ON "Observation" (date);
SELECT pg_temp.medplum_tables('Condition', 'subject text, patient text, encounter text,
	code text[], category text[], "clinicalStatus" text, "verificationStatus" text,
	"onsetDate" timestamptz, "recordedDate" timestamptz');
CREATE INDEX ON "Condition" (subject);
CREATE INDEX ON "Condition" (patient);
CREATE INDEX ON "Condition" (encounter);
CREATE INDEX ON "Condition" USING gin (code);
CREATE INDEX ON "Condition" USING gin (category);
CREATE INDEX ON "Condition" ("clinicalStatus");
CREATE INDEX ON "Condition" ("onsetDate");

INSERT INTO "Patient" (id, content, "lastUpdated", "projectId", __version, compartments, name,
                       family, given, gender, birthdate)
SELECT pid::uuid,
       json_build_object('resourceType', 'Patient',
                         'name', json_build_array(json_build_object(
                             'family', 'Family' || g, 'given', json_build_array('Given' || g))),
                         'gender', CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END,
                         'birthDate', '1970-01-01', 'id', pid,
                         'meta', json_build_object(
                             'project', 'aaaaaaaa-0000-4000-8000-000000000001',
                             'versionId', '40000000-0000-4000-8000-' || (100000000000 + g),
                             'lastUpdated', '2026-11-26T10:00:00.000Z',
                             'compartment', json_build_array(
                                 json_build_object('reference', 'Project/aaaaaaaa-0000-4000-8000-000000000001'),
                                 json_build_object('reference', 'Patient/' || pid))))::text,
       '2026-11-26 10:00+00', 'aaaaaaaa-0000-4000-8000-000000000001', 7,
       ARRAY['aaaaaaaa-0000-4000-8000-000000000001', pid]::uuid[],
       ARRAY['Given' || g || ' Family' || g], ARRAY['Family' || g], ARRAY['Given' || g],
       CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END, '1970-01-01'
FROM generate_series(1, 100) g, LATERAL (SELECT '00000000-0000-4000-8000-' || (100000000000 + g) AS pid) i;

CREATE TEMP TABLE seed AS
SELECT g, '30000000-0000-4000-8000-' || (100000000000 + g) AS id,
       '00000000-0000-4000-8000-' || (100000000000 + g % 100 + 1) AS patient,
       CASE WHEN g % 2 = 0 THEN 'Observation' ELSE 'Condition' END AS type
FROM generate_series(101, :seeded) g;
CREATE TEMP TABLE seed_content AS
SELECT s.*, json_build_object('resourceType', s.type, 'status', 'final',
           'code', json_build_object('coding', json_build_array(json_build_object(
               'system', 'http://loinc.org', 'code', '8867-4', 'display', 'Heart rate'))),
           'subject', json_build_object('reference', 'Patient/' || s.patient),
           'encounter', json_build_object('reference', 'Encounter/50000000-0000-4000-8000-' || (100000000000 + s.g)),
           'valueQuantity', json_build_object('value', s.g % 120 + 50, 'unit', '/min'),
           'note', json_build_array(json_build_object('text', repeat('x', 600))),
           'id', s.id,
           'meta', json_build_object(
               'project', 'aaaaaaaa-0000-4000-8000-000000000001',
               'versionId', '40000000-0000-4000-8000-' || (100000000000 + s.g),
               'lastUpdated', '2026-11-26T10:00:00.000Z',
               'compartment', json_build_array(
                   json_build_object('reference', 'Project/aaaaaaaa-0000-4000-8000-000000000001'),
                   json_build_object('reference', 'Patient/' || s.patient))))::text AS content
FROM seed s;
INSERT INTO "Observation" (id, content, "lastUpdated", "projectId", __version, compartments,
                           subject, patient, encounter, code, status, "valueQuantity")
SELECT id::uuid, content, '2026-11-26 10:00+00', 'aaaaaaaa-0000-4000-8000-000000000001', 7,
       ARRAY['aaaaaaaa-0000-4000-8000-000000000001', patient]::uuid[],
       'Patient/' || patient, 'Patient/' || patient, 'Encounter/50000000-0000-4000-8000-' || (100000000000 + g),
       ARRAY['http://loinc.org|8867-4'], 'final', g % 120 + 50
FROM seed_content WHERE type = 'Observation';
INSERT INTO "Condition" (id, content, "lastUpdated", "projectId", __version, compartments,
                         subject, patient, encounter, code, "clinicalStatus")
SELECT id::uuid, content, '2026-11-26 10:00+00', 'aaaaaaaa-0000-4000-8000-000000000001', 7,
       ARRAY['aaaaaaaa-0000-4000-8000-000000000001', patient]::uuid[],
       'Patient/' || patient, 'Patient/' || patient, 'Encounter/50000000-0000-4000-8000-' || (100000000000 + g),
       ARRAY['http://loinc.org|8867-4'], 'active'
FROM seed_content WHERE type = 'Condition';
INSERT INTO "Observation_History" ("versionId", id, content, "lastUpdated")
SELECT ('40000000-0000-4000-8000-' || (100000000000 + g))::uuid, id::uuid, content, '2026-11-26 10:00+00'
FROM seed_content WHERE type = 'Observation';
INSERT INTO "Condition_History" ("versionId", id, content, "lastUpdated")
SELECT ('40000000-0000-4000-8000-' || (100000000000 + g))::uuid, id::uuid, content, '2026-11-26 10:00+00'
FROM seed_content WHERE type = 'Condition';
INSERT INTO "Observation_References" ("resourceId", "targetId", code)
SELECT id::uuid, patient::uuid, c FROM seed, unnest(ARRAY['subject', 'patient']) c WHERE type = 'Observation';
INSERT INTO "Condition_References" ("resourceId", "targetId", code)
SELECT id::uuid, patient::uuid, c FROM seed, unnest(ARRAY['subject', 'patient']) c WHERE type = 'Condition';
RESET search_path;
