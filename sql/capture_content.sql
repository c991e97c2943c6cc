-- Odd content never fails a clinical write: it is recorded as far as it
-- can be, and warned about without flooding the log.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE TABLE resources (id serial, resource jsonb);
SELECT fhir_notify.watch('resources', 'jsonb');

-- Every warning shown here.
SET fhir_notify.warning_interval = 0;
INSERT INTO resources (resource) VALUES ('[1, 2, 3]');
INSERT INTO resources (resource) VALUES ('"just a string"');
INSERT INTO resources (resource) VALUES ('null');
INSERT INTO resources (resource) VALUES (NULL);
INSERT INTO resources (resource) VALUES ('{"id": "x1", "subject": {"reference": "Patient/p1"}}');
INSERT INTO resources (resource) VALUES ('{"resourceType": "Condition", "subject": {"reference": "Patient/p1"}}');
INSERT INTO resources (resource) VALUES ('{"resourceType": 12, "id": "x2"}');
INSERT INTO resources (resource) VALUES ('{"resourceType": "Condition", "id": 42}');
-- Numbers, arrays and nulls where references go: no patient, no error.
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c1", "subject": 7}'),
	('{"resourceType": "Condition", "id": "c2", "subject": {"reference": 7}}'),
	('{"resourceType": "Condition", "id": "c4", "subject": null, "meta": "v1"}'),
	('{"resourceType": "Condition", "id": "c5", "subject": {"reference": "Patient/p1"}, "meta": {"versionId": 3}}');
-- Every write went in.
SELECT count(*) AS rows_written FROM resources;
SELECT action, resource_type, resource_id, version_id, patient_ids
	FROM fhir_notify.changes ORDER BY position;
-- Updates and deletes of odd rows do not fail either.
UPDATE resources SET resource = '{"resourceType": "Condition", "id": "c0", "subject": {"reference": "Patient/p2"}}'
	WHERE resource = '[1, 2, 3]';
UPDATE resources SET resource = '5' WHERE resource->>'id' = 'c0';
DELETE FROM resources WHERE resource IS NULL OR jsonb_typeof(resource) <> 'object';
SELECT action, resource_id, patient_ids FROM fhir_notify.changes ORDER BY position;
SELECT count(*) AS rows_left FROM resources;

-- Rate limit: one warning a minute per backend, then a count.
SET fhir_notify.warning_interval = 60;
INSERT INTO resources (resource) VALUES ('[]');
INSERT INTO resources (resource) VALUES ('[]');
INSERT INTO resources (resource) VALUES ('[]');
-- The next warning that is let through counts those left out.
SET fhir_notify.warning_interval = 0;
\set VERBOSITY default
INSERT INTO resources (resource) VALUES ('[]');
\set VERBOSITY terse

-- A 300 KB Provenance is recorded whole; the doorbell never carries it.
-- (Recorded whether or not it routes: this is about size.)
SELECT fhir_notify.watch('resources', 'jsonb', '{"record_unrouted": true}');
TRUNCATE fhir_notify.changes;
INSERT INTO resources (resource)
SELECT jsonb_build_object('resourceType', 'Provenance', 'id', 'prov1',
	'target', jsonb_agg(jsonb_build_object('reference', 'Observation/obs-' || i)) ||
	          '[{"reference": "Patient/p1"}]'::jsonb)
FROM generate_series(1, 12000) i;
SELECT action, resource_type, resource_id, octet_length(resource::text) > 300000 AS over_300k,
	jsonb_array_length(resource->'target') AS targets
	FROM fhir_notify.changes;

DROP TABLE resources;
DROP EXTENSION fhir_notify CASCADE;
