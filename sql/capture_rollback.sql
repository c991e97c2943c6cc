-- Rolled-back work leaves no change row; a rolled-back savepoint drops
-- only its own changes.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE TABLE resources (id serial, resource jsonb);
SELECT fhir_notify.watch('resources');

BEGIN;
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}');
SELECT count(*) AS inside FROM fhir_notify.changes;
ROLLBACK;
SELECT count(*) AS after_rollback FROM fhir_notify.changes;

BEGIN;
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"}}');
SAVEPOINT s;
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c3", "subject": {"reference": "Patient/p1"}}');
ROLLBACK TO SAVEPOINT s;
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c4", "subject": {"reference": "Patient/p1"}}');
COMMIT;
SELECT action, resource_id FROM fhir_notify.changes ORDER BY position;

-- A failing statement after a captured change rolls both back.
CREATE UNIQUE INDEX ON resources ((resource->>'id'));
BEGIN;
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c5", "subject": {"reference": "Patient/p1"}}');
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c5", "subject": {"reference": "Patient/p1"}}');
COMMIT;
SELECT count(*) FROM fhir_notify.changes WHERE resource_id = 'c5';

-- Two-phase commit: the write is not refused (the doorbell is skipped).
BEGIN;
INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c6", "subject": {"reference": "Patient/p1"}}');
PREPARE TRANSACTION 'fhir_notify_capture_rollback';
COMMIT PREPARED 'fhir_notify_capture_rollback';
SELECT count(*) FROM fhir_notify.changes WHERE resource_id = 'c6';

DROP TABLE resources;
DROP EXTENSION fhir_notify CASCADE;
