-- The wintehr layout: fhir.resources with a soft-delete flag.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP SCHEMA IF EXISTS fhir CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE SCHEMA fhir;
CREATE TABLE fhir.resources (
	id bigserial PRIMARY KEY,
	resource_type varchar(64) NOT NULL,
	fhir_id varchar(64) NOT NULL,
	version_id integer NOT NULL DEFAULT 1,
	last_updated timestamptz NOT NULL DEFAULT now(),
	deleted boolean DEFAULT false,
	resource jsonb NOT NULL,
	UNIQUE (resource_type, fhir_id)
);

-- auto recognises the layout and says so.
SELECT fhir_notify.watch('fhir.resources');
SELECT "table", layout, options FROM fhir_notify.watched;

CREATE VIEW log AS
	SELECT action, resource_type, resource_id, version_id, patient_ids,
	       resource IS NULL AS no_resource, source_table
	FROM fhir_notify.changes ORDER BY position;

-- Create, update, soft delete, undelete, hard delete.
INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES
	('Patient', 'p1', '{"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}'),
	('Condition', 'c1', '{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}');
UPDATE fhir.resources SET version_id = 2,
	resource = '{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}, "clinicalStatus": {"text": "resolved"}}'
	WHERE fhir_id = 'c1';
UPDATE fhir.resources SET deleted = true, version_id = version_id + 1 WHERE fhir_id = 'c1';
UPDATE fhir.resources SET deleted = false, version_id = version_id + 1 WHERE fhir_id = 'c1';
DELETE FROM fhir.resources WHERE fhir_id = 'c1';
SELECT * FROM log;

-- The logged resource is the row's JSON; a delete carries none.
SELECT resource->>'clinicalStatus' IS NOT NULL AS has_status
	FROM fhir_notify.changes WHERE action = 'updated';

-- A deleted row that is updated or deleted again tells nothing new.
INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES
	('Condition', 'c2', '{"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"}}');
UPDATE fhir.resources SET deleted = true, version_id = 2 WHERE fhir_id = 'c2';
UPDATE fhir.resources SET version_id = 3 WHERE fhir_id = 'c2';
DELETE FROM fhir.resources WHERE fhir_id = 'c2';
SELECT action, resource_id, version_id FROM fhir_notify.changes
	WHERE resource_id = 'c2' ORDER BY position;

-- A row inserted already deleted is not announced.
INSERT INTO fhir.resources (resource_type, fhir_id, deleted, resource) VALUES
	('Condition', 'c3', true, '{"resourceType": "Condition", "id": "c3", "subject": {"reference": "Patient/p1"}}');
SELECT count(*) FROM fhir_notify.changes WHERE resource_id = 'c3';

-- Explicit layout name works the same, without the notice.
SELECT fhir_notify.watch('fhir.resources', 'wintehr');
SELECT "table", layout FROM fhir_notify.watched;

-- Clean up.
DROP VIEW log;
DROP SCHEMA fhir CASCADE;
DROP EXTENSION fhir_notify CASCADE;
