-- A partitioned table is watched through its partitions, present and
-- future; the change names the watched (partitioned) table.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE TABLE resources (resource_type text, fhir_id text, version_id int, deleted boolean,
	resource jsonb) PARTITION BY LIST (resource_type);
CREATE TABLE resources_condition PARTITION OF resources FOR VALUES IN ('Condition');
SELECT fhir_notify.watch('resources');
CREATE TABLE resources_other PARTITION OF resources DEFAULT;

INSERT INTO resources VALUES
	('Condition', 'c1', 1, false, '{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}'),
	('Encounter', 'e1', 1, false, '{"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}}');
UPDATE resources SET deleted = true, version_id = 2 WHERE fhir_id = 'e1';
SELECT action, resource_type, resource_id, version_id, patient_ids, source_table
	FROM fhir_notify.changes ORDER BY position;
SELECT "table", layout FROM fhir_notify.watched;

SELECT fhir_notify.unwatch('resources');
SELECT count(*) AS triggers FROM pg_trigger
	WHERE tgrelid IN ('resources'::regclass, 'resources_condition'::regclass, 'resources_other'::regclass);

DROP TABLE resources;
DROP EXTENSION fhir_notify CASCADE;
