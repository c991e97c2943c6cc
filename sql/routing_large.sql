-- Routing large and odd resources: a Provenance with thousands of targets,
-- very long and deeply nested values. Nothing throws, results stay distinct
-- and sorted.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS fhir_notify;
RESET client_min_messages;

-- 6000 targets, 1500 distinct patients in a scrambled order, each twice, among
-- Practitioners, Encounters, placeholders and contained references.
CREATE TABLE routing_provenance AS
SELECT jsonb_build_object('resourceType', 'Provenance', 'id', 'big',
	'recorded', '2024-01-01T00:00:00Z',
	'target', jsonb_agg(target ORDER BY i)) AS resource
FROM (
	SELECT i, CASE i % 4
		WHEN 0 THEN jsonb_build_object('reference', 'Patient/p-' || (i / 4 * 7919) % 1500)
		WHEN 1 THEN jsonb_build_object('reference',
			'https://fhir.example.org/Patient/p-' || (i / 4 * 7919 + 750) % 1500 || '/_history/' || i)
		WHEN 2 THEN jsonb_build_object('reference', 'Encounter/e-' || i, 'display', repeat('x', 40))
		ELSE jsonb_build_object('reference', CASE WHEN i % 8 = 3 THEN 'urn:uuid:u-' || i ELSE '#c' || i END)
		END AS target
	FROM generate_series(1, 6000) AS i
) targets;

SELECT octet_length(resource::text) > 300000 AS over_300kb,
       jsonb_array_length(resource->'target') AS targets
FROM routing_provenance;
SELECT cardinality(refs) AS patients,
       refs = (SELECT array_agg(('p-' || n) COLLATE "C" ORDER BY ('p-' || n) COLLATE "C")
               FROM generate_series(0, 1499) AS n) AS all_distinct_sorted,
       refs[1:3] AS first, refs[1498:1500] AS last
FROM (SELECT fhir_notify.patient_refs(resource) AS refs FROM routing_provenance) r;

-- The same patient thousands of times: one id.
SELECT fhir_notify.patient_refs(jsonb_build_object('resourceType', 'Provenance',
	'target', (SELECT jsonb_agg(jsonb_build_object('reference', 'Patient/same'))
	           FROM generate_series(1, 10000)))) AS same;

-- A megabyte-long reference, a megabyte-long id, and an id just too long.
SELECT fhir_notify.patient_refs(jsonb_build_object('resourceType', 'Condition',
	'subject', jsonb_build_object('reference', 'Patient/' || repeat('a', 1000000)))) AS long_id,
       fhir_notify.patient_refs(jsonb_build_object('resourceType', 'Condition',
	'subject', jsonb_build_object('reference', repeat('Patient/', 100000) || 'ok'))) AS long_path,
       fhir_notify.patient_refs(jsonb_build_object('resourceType', 'Patient',
	'id', repeat('b', 65))) AS long_self;

-- Deep nesting where a reference is expected, and targets of every JSON kind.
SELECT fhir_notify.patient_refs(jsonb_build_object('resourceType', 'Provenance',
	'target', jsonb_build_array(
		(SELECT string_agg('[', '') || '1' || string_agg(']', '') FROM generate_series(1, 1000))::jsonb,
		(SELECT repeat('{"reference": ', 500) || '"Patient/deep"' || repeat('}', 500))::jsonb,
		1, 2.5, true, false, 'null'::jsonb, 'Patient/string', '{}'::jsonb, '[]'::jsonb,
		'{"reference": "Patient/kept"}'::jsonb))) AS odd_targets;

DROP TABLE routing_provenance;
