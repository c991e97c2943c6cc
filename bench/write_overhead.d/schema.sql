-- The WintEHR layout (see docs/benchmarks.md), 100 Patients, and :seeded - 100
-- Observations and Conditions for the update script to bump.
CREATE SCHEMA fhir;
CREATE TABLE fhir.resources (
	id bigserial PRIMARY KEY,
	resource_type varchar NOT NULL,
	fhir_id varchar NOT NULL,
	version_id integer NOT NULL DEFAULT 1,
	last_updated timestamptz NOT NULL DEFAULT now(),
	deleted boolean DEFAULT false,
	resource jsonb NOT NULL,
	UNIQUE (resource_type, fhir_id)
);
-- Every version, as WintEHR keeps it, with the index that reading a body
-- back by version ("body": "by_version") needs.
CREATE TABLE fhir.resource_history (
	id bigserial PRIMARY KEY,
	resource_id bigint REFERENCES fhir.resources (id),
	version_id integer,
	operation varchar,
	resource jsonb,
	created_at timestamp DEFAULT now()
);
CREATE INDEX resource_history_version_idx ON fhir.resource_history (resource_id, version_id);

INSERT INTO fhir.resources (resource_type, fhir_id, resource)
SELECT 'Patient', 'pat-' || g,
       jsonb_build_object('resourceType', 'Patient', 'id', 'pat-' || g,
                          'meta', jsonb_build_object('versionId', '1'),
                          'name', jsonb_build_array(jsonb_build_object(
                              'family', 'Family' || g, 'given', jsonb_build_array('Given' || g))),
                          'gender', CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END,
                          'birthDate', '1970-01-01')
FROM generate_series(1, 100) g
ORDER BY g;

INSERT INTO fhir.resources (resource_type, fhir_id, resource)
SELECT t, 'seed-' || g,
       jsonb_build_object('resourceType', t, 'id', 'seed-' || g,
                          'meta', jsonb_build_object('versionId', '1', 'lastUpdated', '2026-11-26T10:00:00Z'),
                          'status', 'final',
                          'code', jsonb_build_object('coding', jsonb_build_array(jsonb_build_object(
                              'system', 'http://loinc.org', 'code', '8867-4', 'display', 'Heart rate'))),
                          'subject', jsonb_build_object('reference', 'Patient/pat-' || (g % 100 + 1)),
                          'encounter', jsonb_build_object('reference', 'Encounter/enc-' || g),
                          'valueQuantity', jsonb_build_object('value', g % 120 + 50, 'unit', '/min'),
                          'note', jsonb_build_array(jsonb_build_object('text', repeat('x', 600))))
FROM generate_series(101, :seeded) g,
     LATERAL (SELECT CASE WHEN g % 2 = 0 THEN 'Observation' ELSE 'Condition' END AS t) k
ORDER BY g;

INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource)
SELECT id, version_id, 'create', resource FROM fhir.resources ORDER BY id;
