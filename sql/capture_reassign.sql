-- An update that moves a resource to other patients tells the patients it
-- left with a separate "deleted" row, and the new ones with "updated".
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE TABLE resources (id serial, resource jsonb);
SELECT fhir_notify.watch('resources', 'jsonb');

INSERT INTO resources (resource) VALUES
	('{"resourceType": "AllergyIntolerance", "id": "a1", "meta": {"versionId": "1"},
	   "patient": {"reference": "Patient/alice"}}');
-- Filed against the wrong patient: moved from alice to bob.
UPDATE resources SET resource =
	'{"resourceType": "AllergyIntolerance", "id": "a1", "meta": {"versionId": "2"},
	  "patient": {"reference": "Patient/bob"}}';
-- Now also recorded by carol (a second patient), then bob's reference removed.
UPDATE resources SET resource =
	'{"resourceType": "AllergyIntolerance", "id": "a1", "meta": {"versionId": "3"},
	  "patient": {"reference": "Patient/bob"}, "recorder": {"reference": "Patient/carol"}}';
UPDATE resources SET resource =
	'{"resourceType": "AllergyIntolerance", "id": "a1", "meta": {"versionId": "4"},
	  "recorder": {"reference": "Patient/carol"}}';
-- Routed to nobody any more: carol is told it is gone, no updated row.
UPDATE resources SET resource =
	'{"resourceType": "AllergyIntolerance", "id": "a1", "meta": {"versionId": "5"}}';
SELECT action, resource_id, version_id, patient_ids, resource IS NULL AS no_resource
	FROM fhir_notify.changes ORDER BY position;

-- The row now holds another resource: the old one is deleted, the new created.
UPDATE resources SET resource =
	'{"resourceType": "AllergyIntolerance", "id": "a1", "meta": {"versionId": "6"},
	  "patient": {"reference": "Patient/alice"}}';
TRUNCATE fhir_notify.changes;
UPDATE resources SET resource =
	'{"resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/dave"}}';
SELECT action, resource_type, resource_id, patient_ids FROM fhir_notify.changes ORDER BY position;

DROP TABLE resources;
DROP EXTENSION fhir_notify CASCADE;
