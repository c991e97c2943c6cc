-- An update that changes neither the version nor the JSON records nothing.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP SCHEMA IF EXISTS fhir CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE SCHEMA fhir;
CREATE TABLE fhir.resources (
	id bigserial PRIMARY KEY, resource_type varchar NOT NULL, fhir_id varchar NOT NULL,
	version_id integer NOT NULL DEFAULT 1, last_updated timestamptz NOT NULL DEFAULT now(),
	deleted boolean DEFAULT false, resource jsonb NOT NULL);
SELECT fhir_notify.watch('fhir.resources', 'wintehr');
INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES
	('Observation', 'o1', '{"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": 1.0},
	  "subject": {"reference": "Patient/p1"}}');
TRUNCATE fhir_notify.changes;

-- Touching other columns, rewriting the same JSON with other key order and
-- number formatting: nothing to tell.
UPDATE fhir.resources SET last_updated = now() + interval '1 minute';
UPDATE fhir.resources SET resource =
	'{"subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 1.00},
	  "id": "o1", "resourceType": "Observation"}';
UPDATE fhir.resources SET resource = resource;
SELECT count(*) AS changes FROM fhir_notify.changes;

-- A new version with the same JSON is a change (a re-save).
UPDATE fhir.resources SET version_id = 2;
-- Same version, different JSON is a change too.
UPDATE fhir.resources SET resource = jsonb_set(resource, '{valueQuantity,value}', '2');
SELECT action, version_id, resource->'valueQuantity' AS value
	FROM fhir_notify.changes ORDER BY position;

DROP SCHEMA fhir CASCADE;
DROP EXTENSION fhir_notify CASCADE;
