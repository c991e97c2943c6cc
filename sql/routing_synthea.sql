-- Routing real data: a Synthea subset (tests/data/synthea). Every resource
-- routes to the patient its subject/patient names, Patients to themselves,
-- and the practitioners, organizations and locations to nobody.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS fhir_notify;
RESET client_min_messages;

-- NDJSON lines hold backslashes and quotes: load them as opaque CSV fields.
CREATE TABLE synthea_lines (line text);
\copy synthea_lines FROM 'tests/data/synthea/AllergyIntolerance.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Condition.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Device.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/DocumentReference.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Encounter.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Immunization.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Location.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/MedicationRequest.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Organization.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Patient.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Practitioner.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/PractitionerRole.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
\copy synthea_lines FROM 'tests/data/synthea/Procedure.ndjson' WITH (format csv, quote e'\x01', delimiter e'\x02')
CREATE TABLE synthea AS
	SELECT r->>'resourceType' AS type, r->>'id' AS id, r AS resource,
	       CASE WHEN r->>'resourceType' = 'Patient' THEN ARRAY[r->>'id']
	            WHEN r ? 'subject' THEN ARRAY[substring(r->'subject'->>'reference' FROM '^Patient/(.*)$')]
	            WHEN r ? 'patient' THEN ARRAY[substring(r->'patient'->>'reference' FROM '^Patient/(.*)$')]
	            ELSE '{}' END AS expected
	FROM (SELECT line::jsonb AS r FROM synthea_lines) lines;

-- Per type: how many resources, how many route exactly as expected.
SELECT type, count(*) AS resources,
       count(*) FILTER (WHERE fhir_notify.patient_refs(resource) = expected) AS routed_as_expected
FROM synthea GROUP BY type ORDER BY type;
-- Nothing routes elsewhere.
SELECT type, id, fhir_notify.patient_refs(resource), expected
FROM synthea WHERE fhir_notify.patient_refs(resource) IS DISTINCT FROM expected;
-- Per patient.
SELECT patient, count(*) AS resources
FROM synthea, unnest(fhir_notify.patient_refs(resource)) AS patient
GROUP BY patient ORDER BY patient;

-- The same data as fhirbase stores it (no "id", no "resourceType", the type
-- and id in columns) and as Aidbox writes references routes the same.
SELECT count(*) FILTER (WHERE fhir_notify.patient_refs(resource - 'id' - 'resourceType', type, id)
                              = expected) AS fhirbase_layout,
       count(*) FILTER (WHERE fhir_notify.patient_refs(
                              jsonb_set(resource, '{subject}', jsonb_build_object(
                                  'resourceType', 'Patient',
                                  'id', substring(resource->'subject'->>'reference' FROM '^Patient/(.*)$'))))
                              = expected) AS aidbox_references,
       count(*) AS of
FROM synthea WHERE type IN ('Patient', 'Condition', 'Encounter', 'MedicationRequest', 'Procedure')
           AND (type = 'Patient' OR resource ? 'subject');

DROP TABLE synthea, synthea_lines;
