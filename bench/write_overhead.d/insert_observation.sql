-- A new Synthea-style vital-signs Observation (~1 KB of JSON) for one of 100
-- patients, as WintEHR creates it: the JSON carries id and meta.versionId.
\set p random(1, 100)
\set v random(50, 180)
WITH n AS (SELECT pg_catalog.gen_random_uuid()::text AS id), r AS (
INSERT INTO fhir.resources (resource_type, fhir_id, resource)
SELECT 'Observation', n.id,
  '{"resourceType": "Observation", "meta": {"versionId": "1", "lastUpdated": "2026-11-26T10:00:00Z", "profile": ["http://hl7.org/fhir/StructureDefinition/heartrate", "http://hl7.org/fhir/StructureDefinition/vitalsigns"]}, "status": "final", "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital signs"}]}], "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"}, "subject": {"reference": "Patient/pat-:p"}, "encounter": {"reference": "Encounter/f6003197-6507-1168-87be-ceccd5517094"}, "effectiveDateTime": "2026-11-26T09:58:16-05:00", "issued": "2026-11-26T09:58:16.123-05:00", "performer": [{"reference": "Practitioner/0000016f-57cb-cdaa-0000-00000000c4ee", "display": "Dr. Sample"}], "valueQuantity": {"value": :v, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}'::jsonb
  || pg_catalog.jsonb_build_object('id', n.id)
FROM n
RETURNING id, version_id, resource)
-- and its history row, in the same transaction, as WintEHR writes it
INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource)
SELECT r.id, r.version_id, 'create', r.resource FROM r;
