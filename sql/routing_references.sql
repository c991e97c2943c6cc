-- Routing: every reference form, and what never counts as a Patient.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS fhir_notify;
RESET client_min_messages;

-- One Condition per subject element; the expected ids beside it.
SELECT label, fhir_notify.patient_refs(
	jsonb_build_object('resourceType', 'Condition', 'subject', subject::jsonb)) AS patients
FROM (VALUES
	('relative',              '{"reference": "Patient/123"}'),
	('absolute https',        '{"reference": "https://fhir.example.org/r4/Patient/p-1.a"}'),
	('absolute http',         '{"reference": "http://h/Patient/abc"}'),
	('versioned relative',    '{"reference": "Patient/123/_history/2"}'),
	('versioned absolute',    '{"reference": "https://h/fhir/Patient/123/_history/7"}'),
	('typed relative',        '{"reference": "Patient/123", "type": "Patient"}'),
	('urn:uuid typed',        '{"reference": "urn:uuid:5d3c4e6a-1b2c-4d5e-8f90-123456789abc", "type": "Patient"}'),
	('aidbox form',           '{"resourceType": "Patient", "id": "fb-1"}'),
	('aidbox with display',   '{"resourceType": "Patient", "id": "fb-2", "display": "Ann"}'),
	('with display',          '{"reference": "Patient/d1", "display": "Ann Smith"}'),
	('64-char id',            '{"reference": "Patient/' || repeat('a', 64) || '"}'),
	-- never a patient
	('urn:uuid untyped',      '{"reference": "urn:uuid:5d3c4e6a-1b2c-4d5e-8f90-123456789abc"}'),
	('urn:uuid typed Group',  '{"reference": "urn:uuid:5d3c4e6a", "type": "Group"}'),
	('urn:oid typed',         '{"reference": "urn:oid:1.2.3", "type": "Patient"}'),
	('Group',                 '{"reference": "Group/123"}'),
	('Practitioner',          '{"reference": "Practitioner/123"}'),
	('lower-case type',       '{"reference": "patient/123"}'),
	('type mismatch',         '{"reference": "Patient/123", "type": "Group"}'),
	('type not a string',     '{"reference": "Patient/123", "type": 7}'),
	('contained',             '{"reference": "#p1"}'),
	('contained typed',       '{"reference": "#p1", "type": "Patient"}'),
	('fragment',              '{"reference": "Bundle/1#Patient/2"}'),
	('conditional',           '{"reference": "Patient?identifier=http://x/Patient/9"}'),
	('identifier only',       '{"identifier": {"system": "urn:x", "value": "123"}}'),
	('identifier typed',      '{"identifier": {"value": "123"}, "type": "Patient"}'),
	('id with space',         '{"reference": "Patient/12 3"}'),
	('id with underscore',    '{"reference": "Patient/12_3"}'),
	('id 65 chars',           '{"reference": "Patient/' || repeat('a', 65) || '"}'),
	('empty id',              '{"reference": "Patient/"}'),
	('bare id',               '{"reference": "123"}'),
	('bare type',             '{"reference": "Patient"}'),
	('extra segment',         '{"reference": "Patient/1/2"}'),
	('history without n',     '{"reference": "Patient/1/_history"}'),
	('history only',          '{"reference": "_history/2"}'),
	('empty reference',       '{"reference": ""}'),
	('reference number',      '{"reference": 123}'),
	('reference object',      '{"reference": {"reference": "Patient/1"}}'),
	('reference array',       '{"reference": ["Patient/1"]}'),
	('reference null',        '{"reference": null}'),
	('aidbox Group',          '{"resourceType": "Group", "id": "g1"}'),
	('aidbox id number',      '{"resourceType": "Patient", "id": 5}'),
	('aidbox bad id',         '{"resourceType": "Patient", "id": "a/b"}'),
	('element string',        '"Patient/123"'),
	('element number',        '42'),
	('element array',         '[{"reference": "Patient/123"}]'),
	('element null',          'null')
) AS cases(label, subject);

-- Bad ids are never echoed back, whatever they contain.
SELECT fhir_notify.patient_refs('{"resourceType": "Condition", "subject": {"reference": "Patient/x\"); DROP TABLE t; --"}}');

-- Several references in one resource: distinct, sorted in C collation.
SELECT fhir_notify.patient_refs('{
	"resourceType": "Communication",
	"subject": {"reference": "Patient/b"},
	"sender": {"reference": "https://h/Patient/B/_history/1"},
	"recipient": [{"reference": "Patient/a"}, {"reference": "Patient/b"},
	              {"reference": "Practitioner/z"}, {"reference": "Patient/a-1"},
	              {"reference": "urn:uuid:0", "type": "Patient"}, 17, null, "Patient/q"]
}');

-- No patient at all: an empty array, not NULL.
SELECT fhir_notify.patient_refs('{"resourceType": "Condition", "subject": {"reference": "Group/1"}}') AS empty,
       fhir_notify.patient_refs('{"resourceType": "Condition"}') IS NULL AS is_null;
