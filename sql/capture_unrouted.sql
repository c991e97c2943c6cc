-- Changes that belong to no patient are not recorded unless the table is
-- watched with {"record_unrouted": true}.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE TABLE resources (id serial, resource jsonb);
SELECT fhir_notify.watch('resources', 'jsonb');
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Practitioner", "id": "dr1"}'),
	('{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Group/g1"}}');
SELECT count(*) FROM fhir_notify.changes;

SELECT fhir_notify.watch('resources', 'jsonb', '{"record_unrouted": true}');
UPDATE resources SET resource = resource || '{"active": true}';
DELETE FROM resources;
SELECT action, resource_type, resource_id, patient_ids
	FROM fhir_notify.changes ORDER BY position;

DROP TABLE resources;
DROP EXTENSION fhir_notify CASCADE;
