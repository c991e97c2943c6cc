-- The jsonb layout: any table with a jsonb resource column; options name
-- the columns that hold what the JSON lacks.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE VIEW log AS
	SELECT action, resource_type, resource_id, version_id, patient_ids,
	       resource IS NULL AS no_resource, source_table
	FROM fhir_notify.changes ORDER BY position;

-- Everything from the JSON: resourceType, id, meta.versionId.
CREATE TABLE documents (pk serial PRIMARY KEY, body jsonb NOT NULL);
SELECT fhir_notify.watch('documents');
SELECT "table", layout, options FROM fhir_notify.watched;
INSERT INTO documents (body) VALUES
	('{"resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"}, "subject": {"reference": "Patient/p1"}}');
UPDATE documents SET body = jsonb_set(body, '{meta,versionId}', '"2"');
DELETE FROM documents;
SELECT * FROM log;
TRUNCATE fhir_notify.changes;

-- Columns named by options win over the JSON.
CREATE TABLE medplum_like (
	id text PRIMARY KEY,
	kind text NOT NULL,
	rev integer NOT NULL,
	gone boolean NOT NULL DEFAULT false,
	content jsonb,
	other jsonb
);
SELECT fhir_notify.watch('medplum_like', 'jsonb',
	'{"resource": "content", "type": "kind", "id": "id", "version": "rev", "deleted": "gone"}');
SELECT "table", layout, options FROM fhir_notify.watched ORDER BY "table"::text;
INSERT INTO medplum_like VALUES
	('e1', 'Encounter', 1, false, '{"subject": {"reference": "Patient/p2"}}');
UPDATE medplum_like SET rev = 2, content = '{"subject": {"reference": "Patient/p2"}, "status": "finished"}';
UPDATE medplum_like SET rev = 3, gone = true;
SELECT * FROM log;
-- Type and id were added to the logged resource, which lacked them.
SELECT resource FROM fhir_notify.changes WHERE action = 'updated';
TRUNCATE fhir_notify.changes;

-- A text column with a status value marks deletion.
CREATE TABLE with_status (pk serial, state text, resource jsonb);
SELECT fhir_notify.watch('with_status', 'jsonb',
	'{"deleted": "state", "deleted_value": "removed"}');
INSERT INTO with_status (state, resource) VALUES
	('active', '{"resourceType": "Flag", "id": "f1", "subject": {"reference": "Patient/p3"}}');
UPDATE with_status SET state = 'removed';
UPDATE with_status SET state = 'active';
SELECT * FROM log;

-- Clean up.
DROP VIEW log;
DROP TABLE documents, medplum_like, with_status;
DROP EXTENSION fhir_notify CASCADE;
