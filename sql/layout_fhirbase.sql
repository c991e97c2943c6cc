-- The fhirbase layout: one table per resource type, the JSON without id,
-- the id and version (txid) in columns, delete as DELETE or status.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE VIEW log AS
	SELECT action, resource_type, resource_id, version_id, patient_ids,
	       resource IS NULL AS no_resource, source_table
	FROM fhir_notify.changes ORDER BY position;

CREATE TABLE patient (
	id text PRIMARY KEY,
	txid bigint NOT NULL,
	ts timestamptz DEFAULT now(),
	resource_type text DEFAULT 'Patient',
	status text NOT NULL,
	resource jsonb NOT NULL
);
-- No resource_type column: the type comes from the table's name.
CREATE TABLE medicationrequest (
	id text PRIMARY KEY,
	txid bigint NOT NULL,
	ts timestamptz DEFAULT now(),
	status text NOT NULL,
	resource jsonb NOT NULL
);
SELECT fhir_notify.watch('patient');
SELECT fhir_notify.watch('medicationrequest');
SELECT "table", layout FROM fhir_notify.watched ORDER BY "table"::text;

INSERT INTO patient VALUES ('pt1', 10, now(), 'Patient', 'created', '{"name": [{"family": "Doe"}]}');
INSERT INTO medicationrequest VALUES
	('mr1', 11, now(), 'created', '{"subject": {"reference": "Patient/pt1"}, "status": "active"}');
UPDATE medicationrequest SET txid = 12, status = 'updated',
	resource = '{"subject": {"reference": "Patient/pt1"}, "status": "stopped"}';
-- Soft delete by status, then recreated, then a row DELETE.
UPDATE medicationrequest SET txid = 13, status = 'deleted';
UPDATE medicationrequest SET txid = 14, status = 'recreated';
DELETE FROM medicationrequest;
SELECT * FROM log;

-- The logged resource is complete: type and id added.
SELECT resource FROM fhir_notify.changes WHERE resource_id = 'pt1';
SELECT resource->>'resourceType' AS type, resource->>'id' AS id
	FROM fhir_notify.changes WHERE action = 'updated';

-- A table whose name is no resource type needs type_name.
CREATE TABLE meds (id text, txid bigint, resource jsonb);
SELECT fhir_notify.watch('meds', 'fhirbase');
SELECT fhir_notify.watch('meds', 'fhirbase', '{"type_name": "Medication"}');
SELECT fhir_notify.watch('meds', 'fhirbase', '{"type_name": "medication"}');
SELECT "table", layout, options FROM fhir_notify.watched WHERE "table" = 'meds'::regclass;

-- Clean up.
DROP VIEW log;
DROP TABLE patient, medicationrequest, meds;
DROP EXTENSION fhir_notify CASCADE;
