-- Configuration errors are raised by watch(), naming the column and what
-- was expected, with a hint.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE TABLE no_json (id text, content text);
SELECT fhir_notify.watch('no_json');
SELECT fhir_notify.watch('no_json', 'jsonb', '{"resource": "content"}');
SELECT fhir_notify.watch('no_json', 'jsonb', '{"resource": "body"}');

-- A temporary table cannot be watched: a read-only transaction may write
-- it, and then could not write the change log (the write used to fail).
CREATE TEMP TABLE scratch (resource jsonb);
SELECT fhir_notify.watch('scratch', 'jsonb');
BEGIN READ ONLY;
INSERT INTO scratch VALUES ('{"resourceType": "Condition", "id": "t",
	"subject": {"reference": "Patient/p1"}}');
COMMIT;
DROP TABLE scratch;

CREATE TABLE two_json (id text, a jsonb, b jsonb);
SELECT fhir_notify.watch('two_json');
SELECT fhir_notify.watch('two_json', 'jsonb', '{"resource": "b", "id": "idx"}');
SELECT fhir_notify.watch('two_json', 'jsonb', '{"resource": "b", "deleted": "a"}');

-- wintehr names its columns; a table without them is told which is missing.
CREATE TABLE almost_wintehr (resource_type text, version_id int, deleted boolean, resource jsonb);
SELECT fhir_notify.watch('almost_wintehr', 'wintehr');
SELECT fhir_notify.watch('almost_wintehr', 'wintehr', '{"id": "fhir_identifier"}');

-- Bad options and layouts.
SELECT fhir_notify.watch('two_json', 'jsonb', '{"resource": "b", "colour": "blue"}');
SELECT fhir_notify.watch('two_json', 'jsonb', '{"resource": 7}');
SELECT fhir_notify.watch('two_json', 'jsonb', '["b"]');
SELECT fhir_notify.watch('two_json', 'jsonb', '{"resource": "b", "record_unrouted": "yes"}');
SELECT fhir_notify.watch('two_json', 'mongodb');
SELECT fhir_notify.watch('two_json', 'jsonb', '{"resource": "b", "type_name": "Bogus"}');

-- Only tables, and not the extension's own.
CREATE VIEW a_view AS SELECT * FROM two_json;
SELECT fhir_notify.watch('a_view');
SELECT fhir_notify.watch('fhir_notify.changes');
SELECT fhir_notify.watch(NULL);

-- Nothing was watched by any of these.
SELECT count(*) FROM fhir_notify.watched;
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'fhir_notify%';

-- Clean up.
DROP VIEW a_view;
DROP TABLE no_json, two_json, almost_wintehr;
DROP EXTENSION fhir_notify CASCADE;
