-- watch() is idempotent and replaces; unwatch() stops capture; the view
-- lists what is watched; TRUNCATE is warned about.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE TABLE resources (id serial, resource jsonb, body jsonb);
SELECT fhir_notify.watch('resources');
SELECT fhir_notify.watch('resources');
SELECT tgname, tgnargs FROM pg_trigger WHERE tgrelid = 'resources'::regclass ORDER BY tgname;
SELECT "table", layout, options FROM fhir_notify.watched;
CREATE TEMP TABLE since AS SELECT since FROM fhir_notify.watched;

-- Watching again with the same settings keeps "since"; other settings replace.
SELECT fhir_notify.watch('resources', 'jsonb');
SELECT w.since = s.since AS same_since FROM fhir_notify.watched w, since s;
SELECT fhir_notify.watch('resources', 'jsonb', '{"resource": "body"}');
SELECT "table", layout, options FROM fhir_notify.watched;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'resources'::regclass;
INSERT INTO resources (resource, body) VALUES
	('{"resourceType": "Condition", "id": "from-resource", "subject": {"reference": "Patient/p1"}}',
	 '{"resourceType": "Condition", "id": "from-body", "subject": {"reference": "Patient/p1"}}');
SELECT resource_id FROM fhir_notify.changes;

-- A renamed column: the write still succeeds, with a warning.
ALTER TABLE resources RENAME COLUMN body TO content;
INSERT INTO resources (resource, content) VALUES ('{}', '{}');
ALTER TABLE resources RENAME COLUMN content TO body;

-- TRUNCATE is not streamed, and says so.
TRUNCATE resources;

-- unwatch() removes the triggers and the entry; writes are no longer captured.
SELECT fhir_notify.unwatch('resources');
SELECT fhir_notify.unwatch('resources');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'resources'::regclass;
SELECT count(*) AS watched FROM fhir_notify.watched;
INSERT INTO resources (body) VALUES
	('{"resourceType": "Condition", "id": "after", "subject": {"reference": "Patient/p1"}}');
SELECT count(*) FROM fhir_notify.changes WHERE resource_id = 'after';

-- A capture trigger dropped by hand leaves the view.
SELECT fhir_notify.watch('resources', 'jsonb');
DROP TRIGGER fhir_notify_capture ON resources;
SELECT count(*) AS watched FROM fhir_notify.watched;
SELECT fhir_notify.unwatch('resources');

-- A dropped table leaves the view.
SELECT fhir_notify.watch('resources');
DROP TABLE resources;
SELECT count(*) AS watched FROM fhir_notify.watched;

-- Dropping the extension removes the triggers it installed.
CREATE TABLE resources (id serial, resource jsonb);
SELECT fhir_notify.watch('resources');
DROP EXTENSION fhir_notify CASCADE;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'resources'::regclass;
INSERT INTO resources (resource) VALUES ('{"resourceType": "Patient", "id": "p1"}');
DROP TABLE resources;
