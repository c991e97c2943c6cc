-- Statement shapes a FHIR server uses, on the WintEHR layout: upsert (INSERT
-- ... ON CONFLICT DO UPDATE), COPY, multi-row UPDATE, an UPDATE that puts
-- another resource in the row, a soft delete that also changes the patient,
-- an undelete for another patient, and row movement between partitions.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE FUNCTION condition(id text, patient text, note text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_strip_nulls(jsonb_build_object('resourceType', 'Condition', 'id', id,
		'subject', jsonb_build_object('reference', 'Patient/' || patient), 'note', note)) $$;

CREATE TABLE resources (
	id bigserial PRIMARY KEY, resource_type varchar NOT NULL, fhir_id varchar NOT NULL,
	version_id integer NOT NULL DEFAULT 1, deleted boolean DEFAULT false,
	resource jsonb NOT NULL, UNIQUE (resource_type, fhir_id));
SELECT fhir_notify.watch('resources', 'wintehr');
CREATE VIEW log AS
	SELECT action, resource_type, resource_id, version_id, patient_ids,
	       resource->>'note' AS note
	FROM fhir_notify.changes ORDER BY position;

-- Upsert: created, then updated (the same values again: nothing).
INSERT INTO resources (resource_type, fhir_id, resource)
	VALUES ('Condition', 'u1', condition('u1', 'p1'))
	ON CONFLICT (resource_type, fhir_id) DO UPDATE
	SET resource = excluded.resource, version_id = resources.version_id + 1;
INSERT INTO resources (resource_type, fhir_id, resource)
	VALUES ('Condition', 'u1', condition('u1', 'p1', 'upserted'))
	ON CONFLICT (resource_type, fhir_id) DO UPDATE
	SET resource = excluded.resource, version_id = resources.version_id + 1;
INSERT INTO resources (resource_type, fhir_id, version_id, resource)
	VALUES ('Condition', 'u1', 2, condition('u1', 'p1', 'upserted'))
	ON CONFLICT (resource_type, fhir_id) DO UPDATE
	SET resource = excluded.resource, version_id = excluded.version_id;
SELECT * FROM log;
TRUNCATE fhir_notify.changes;

-- COPY, then one UPDATE of many rows.
COPY resources (resource_type, fhir_id, resource) FROM stdin;
Condition	k1	{"resourceType": "Condition", "id": "k1", "subject": {"reference": "Patient/p1"}}
Condition	k2	{"resourceType": "Condition", "id": "k2", "subject": {"reference": "Patient/p2"}}
Condition	k3	{"resourceType": "Condition", "id": "k3"}
\.
UPDATE resources SET version_id = version_id + 1, resource = resource || '{"note": "bulk"}'
	WHERE fhir_id LIKE 'k%';
SELECT * FROM log;
TRUNCATE fhir_notify.changes;

-- The row now holds another resource: the old one is deleted for its
-- patients, the new one created for its own.
UPDATE resources SET fhir_id = 'k1-renamed', version_id = 1,
	resource = condition('k1-renamed', 'p9') WHERE fhir_id = 'k1';
UPDATE resources SET resource_type = 'AllergyIntolerance', version_id = 1,
	resource = jsonb_build_object('resourceType', 'AllergyIntolerance', 'id', 'k2',
		'patient', jsonb_build_object('reference', 'Patient/p2'))
	WHERE fhir_id = 'k2';
-- Soft delete that also moves the resource to another patient: the
-- deletion goes to the patient it belonged to.
UPDATE resources SET deleted = true, version_id = version_id + 1,
	resource = condition('k1-renamed', 'p8') WHERE fhir_id = 'k1-renamed';
-- Undeleted for yet another patient: created for that one.
UPDATE resources SET deleted = false, version_id = version_id + 1,
	resource = condition('k1-renamed', 'p7') WHERE fhir_id = 'k1-renamed';
SELECT * FROM log;
TRUNCATE fhir_notify.changes;

-- Row movement between partitions: a delete from one, a create in the other.
CREATE TABLE parted (resource_type text, fhir_id text, version_id integer,
	deleted boolean, resource jsonb, region text) PARTITION BY LIST (region);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN ('a');
CREATE TABLE parted_b PARTITION OF parted FOR VALUES IN ('b');
SELECT fhir_notify.watch('parted', 'wintehr');
INSERT INTO parted VALUES ('Condition', 'm1', 1, false, condition('m1', 'p1'), 'a');
UPDATE parted SET region = 'b', version_id = 2 WHERE fhir_id = 'm1';
SELECT action, resource_id, version_id, patient_ids, source_table
	FROM fhir_notify.changes ORDER BY position;

DROP VIEW log;
DROP TABLE resources, parted;
DROP FUNCTION condition(text, text, text);
DROP EXTENSION fhir_notify CASCADE;
