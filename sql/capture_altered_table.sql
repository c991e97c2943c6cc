-- A watched table altered after watch(): a column whose type no longer fits
-- the layout is never read as the wrong type (a json resource column read
-- as jsonb crashed the server); the write goes on, with a warning, and
-- watch() again picks the new shape up. Text-like status columns of any
-- type (name, char(n)) mark deletions.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse
SET fhir_notify.warning_interval = 0;

CREATE FUNCTION condition(id text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('resourceType', 'Condition', 'id', id,
		'subject', jsonb_build_object('reference', 'Patient/p1')) $$;

CREATE TABLE res (resource jsonb);
SELECT fhir_notify.watch('res', 'jsonb');
INSERT INTO res VALUES (condition('before'));
ALTER TABLE res ALTER COLUMN resource TYPE json;
INSERT INTO res VALUES (condition('as-json'));
ALTER TABLE res ALTER COLUMN resource TYPE text;
INSERT INTO res VALUES (condition('as-text'));
ALTER TABLE res ALTER COLUMN resource TYPE jsonb USING resource::jsonb;
INSERT INTO res VALUES (condition('jsonb-again'));

-- The WintEHR layout's deleted flag turned into text.
CREATE TABLE wintehr (resource_type text, fhir_id text, version_id integer,
	deleted boolean DEFAULT false, resource jsonb);
SELECT fhir_notify.watch('wintehr', 'wintehr');
INSERT INTO wintehr VALUES ('Condition', 'w1', 1, false, condition('w1'));
ALTER TABLE wintehr ALTER COLUMN deleted TYPE text;
UPDATE wintehr SET version_id = 2, deleted = 'false';
SELECT fhir_notify.watch('wintehr', 'wintehr', '{"deleted": "deleted", "deleted_value": "true"}');
UPDATE wintehr SET version_id = 3, deleted = 'true';

-- Status columns of type name and char(n).
CREATE TABLE by_name (id text, txid bigint, status name, resource jsonb);
SELECT fhir_notify.watch('by_name', 'fhirbase', '{"type_name": "Condition"}');
INSERT INTO by_name VALUES ('n1', 1, 'created', condition('n1'));
UPDATE by_name SET txid = 2, status = 'deleted';
CREATE TABLE by_char (id text, txid bigint, status char(10), resource jsonb);
SELECT fhir_notify.watch('by_char', 'fhirbase', '{"type_name": "Condition"}');
INSERT INTO by_char VALUES ('b1', 1, 'created', condition('b1'));
UPDATE by_char SET txid = 2, status = 'deleted';

SELECT action, resource_id, version_id, patient_ids, source_table
	FROM fhir_notify.changes ORDER BY position;

DROP TABLE res, wintehr, by_name, by_char;
DROP FUNCTION condition(text);
DROP EXTENSION fhir_notify CASCADE;
