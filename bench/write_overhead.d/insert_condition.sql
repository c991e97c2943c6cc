-- A new Synthea-style Condition (~1 KB of JSON) for one of 100 patients, as
-- WintEHR creates it: the JSON carries id and meta.versionId.
\set p random(1, 100)
WITH n AS (SELECT pg_catalog.gen_random_uuid()::text AS id), r AS (
INSERT INTO fhir.resources (resource_type, fhir_id, resource)
SELECT 'Condition', n.id,
  '{"resourceType": "Condition", "meta": {"versionId": "1", "lastUpdated": "2026-11-26T10:00:00Z", "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-encounter-diagnosis"]}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}, "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]}, "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}], "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91302008", "display": "Sepsis (disorder)"}], "text": "Sepsis (disorder)"}, "subject": {"reference": "Patient/pat-:p"}, "encounter": {"reference": "Encounter/f6003197-6507-1168-87be-ceccd5517094"}, "onsetDateTime": "2026-11-26T09:58:16-05:00", "recordedDate": "2026-11-26T09:58:16-05:00"}'::jsonb
  || pg_catalog.jsonb_build_object('id', n.id)
FROM n
RETURNING id, version_id, resource)
-- and its history row, in the same transaction, as WintEHR writes it
INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource)
SELECT r.id, r.version_id, 'create', r.resource FROM r;
