-- Routing: every type and path of the FHIR R4 Patient compartment, Patient
-- and Person links, and the extra links outside the compartment.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS fhir_notify;
RESET client_min_messages;

-- Builds a resource holding leaf at path ("a[].b" -> {"a": [{"b": leaf}]}).
-- Every array gets decoy first, so arrays are walked element by element.
CREATE FUNCTION routing_build(steps text[], leaf jsonb, decoy jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF cardinality(steps) = 0 THEN
		RETURN leaf;
	ELSIF steps[1] LIKE '%[]' THEN
		RETURN jsonb_build_object(left(steps[1], -2), jsonb_build_array(
			routing_build(steps[2:], decoy, decoy), routing_build(steps[2:], leaf, decoy)));
	END IF;
	RETURN jsonb_build_object(steps[1], routing_build(steps[2:], leaf, decoy));
END
$$;

CREATE TABLE routing_paths (n serial, type text, path text);
-- The table of reference/patient-compartment-r4.md, row by row.
INSERT INTO routing_paths (type, path) VALUES
	('Account', 'subject[]'),
	('AdverseEvent', 'subject'),
	('AllergyIntolerance', 'patient'),
	('AllergyIntolerance', 'recorder'),
	('AllergyIntolerance', 'asserter'),
	('Appointment', 'participant[].actor'),
	('AppointmentResponse', 'actor'),
	('AuditEvent', 'agent[].who'),
	('AuditEvent', 'entity[].what'),
	('Basic', 'subject'),
	('Basic', 'author'),
	('BodyStructure', 'patient'),
	('CarePlan', 'subject'),
	('CarePlan', 'activity[].detail.performer[]'),
	('CareTeam', 'subject'),
	('CareTeam', 'participant[].member'),
	('ChargeItem', 'subject'),
	('Claim', 'patient'),
	('Claim', 'payee.party'),
	('ClaimResponse', 'patient'),
	('ClinicalImpression', 'subject'),
	('Communication', 'subject'),
	('Communication', 'sender'),
	('Communication', 'recipient[]'),
	('CommunicationRequest', 'subject'),
	('CommunicationRequest', 'sender'),
	('CommunicationRequest', 'recipient[]'),
	('CommunicationRequest', 'requester'),
	('Composition', 'subject'),
	('Composition', 'author[]'),
	('Composition', 'attester[].party'),
	('Condition', 'subject'),
	('Condition', 'asserter'),
	('Consent', 'patient'),
	('Coverage', 'policyHolder'),
	('Coverage', 'subscriber'),
	('Coverage', 'beneficiary'),
	('Coverage', 'payor[]'),
	('CoverageEligibilityRequest', 'patient'),
	('CoverageEligibilityResponse', 'patient'),
	('DetectedIssue', 'patient'),
	('DeviceRequest', 'subject'),
	('DeviceRequest', 'performer'),
	('DeviceUseStatement', 'subject'),
	('DiagnosticReport', 'subject'),
	('DocumentManifest', 'subject'),
	('DocumentManifest', 'author[]'),
	('DocumentManifest', 'recipient[]'),
	('DocumentReference', 'subject'),
	('DocumentReference', 'author[]'),
	('Encounter', 'subject'),
	('EnrollmentRequest', 'candidate'),
	('EpisodeOfCare', 'patient'),
	('ExplanationOfBenefit', 'patient'),
	('ExplanationOfBenefit', 'payee.party'),
	('FamilyMemberHistory', 'patient'),
	('Flag', 'subject'),
	('Goal', 'subject'),
	('Group', 'member[].entity'),
	('ImagingStudy', 'subject'),
	('Immunization', 'patient'),
	('ImmunizationEvaluation', 'patient'),
	('ImmunizationRecommendation', 'patient'),
	('Invoice', 'subject'),
	('Invoice', 'recipient'),
	('List', 'subject'),
	('List', 'source'),
	('MeasureReport', 'subject'),
	('Media', 'subject'),
	('MedicationAdministration', 'subject'),
	('MedicationAdministration', 'performer[].actor'),
	('MedicationDispense', 'subject'),
	('MedicationDispense', 'receiver[]'),
	('MedicationRequest', 'subject'),
	('MedicationStatement', 'subject'),
	('MolecularSequence', 'patient'),
	('NutritionOrder', 'patient'),
	('Observation', 'subject'),
	('Observation', 'performer[]'),
	('Patient', 'link[].other'),
	('Person', 'link[].target'),
	('Procedure', 'subject'),
	('Procedure', 'performer[].actor'),
	('Provenance', 'target[]'),
	('QuestionnaireResponse', 'subject'),
	('QuestionnaireResponse', 'author'),
	('RelatedPerson', 'patient'),
	('RequestGroup', 'subject'),
	('RequestGroup', 'action[].participant[]'),
	('ResearchSubject', 'individual'),
	('RiskAssessment', 'subject'),
	('Schedule', 'actor[]'),
	('ServiceRequest', 'subject'),
	('ServiceRequest', 'performer[]'),
	('Specimen', 'subject'),
	('SupplyDelivery', 'patient'),
	('SupplyRequest', 'deliverTo'),
	('VisionPrescription', 'patient');

-- Each path alone routes to its patient; a Practitioner decoy in every array
-- routes nowhere. (Patient also belongs to itself: its resources have no id here.)
SELECT r.type, r.path, fhir_notify.patient_refs(
	jsonb_build_object('resourceType', r.type) ||
	routing_build(string_to_array(r.path, '.'),
		jsonb_build_object('reference', 'Patient/' || lower(r.type) || '-' || r.n),
		'{"reference": "Practitioner/decoy"}')) AS patients
FROM routing_paths r ORDER BY r.n;

-- The same with a second patient as the decoy: array paths hold both.
SELECT r.type, r.path, fhir_notify.patient_refs(
	jsonb_build_object('resourceType', r.type) ||
	routing_build(string_to_array(r.path, '.'), '{"reference": "Patient/b"}',
		'{"reference": "Patient/a"}')) AS patients
FROM routing_paths r WHERE r.path LIKE '%[]%' ORDER BY r.n;

-- All paths of a type at once (no two share a first member): one patient
-- per path, distinct, sorted.
SELECT r.type, fhir_notify.patient_refs(
	jsonb_build_object('resourceType', r.type) || jsonb_object_agg_paths) AS patients
FROM (
	SELECT type, min(n) AS n
	FROM routing_paths GROUP BY type HAVING count(*) > 1
) r,
LATERAL (
	SELECT jsonb_object_agg(key, value) AS jsonb_object_agg_paths
	FROM routing_paths p,
	     jsonb_each(routing_build(string_to_array(p.path, '.'),
	                jsonb_build_object('reference', 'Patient/' || p.n), '{}'))
	WHERE p.type = r.type
) built
ORDER BY r.type;

-- Paths are exact: a member that is not where the compartment says, or not
-- an array where it says "[]", or an array where it does not, routes nowhere.
SELECT label, fhir_notify.patient_refs(resource::jsonb) AS patients FROM (VALUES
	('Condition.patient',        '{"resourceType": "Condition", "patient": {"reference": "Patient/1"}}'),
	('Encounter.participant',    '{"resourceType": "Encounter", "participant": [{"individual": {"reference": "Patient/1"}}]}'),
	('Organization.subject',     '{"resourceType": "Organization", "subject": {"reference": "Patient/1"}}'),
	('unknown type',             '{"resourceType": "Unknown", "subject": {"reference": "Patient/1"}}'),
	('lower-case type',          '{"resourceType": "condition", "subject": {"reference": "Patient/1"}}'),
	('no resourceType',          '{"subject": {"reference": "Patient/1"}}'),
	('resourceType a number',    '{"resourceType": 7, "subject": {"reference": "Patient/1"}}'),
	('Account.subject object',   '{"resourceType": "Account", "subject": {"reference": "Patient/1"}}'),
	('Condition.subject array',  '{"resourceType": "Condition", "subject": [{"reference": "Patient/1"}]}'),
	('Appointment.participant object', '{"resourceType": "Appointment", "participant": {"actor": {"reference": "Patient/1"}}}'),
	('CarePlan.activity odd',    '{"resourceType": "CarePlan", "activity": [1, "x", null, [], {"detail": 5}, {"detail": {"performer": {"reference": "Patient/1"}}}]}'),
	('empty arrays',             '{"resourceType": "Provenance", "target": []}'),
	('top-level array',          '[{"resourceType": "Condition", "subject": {"reference": "Patient/1"}}]'),
	('top-level string',         '"Patient/1"'),
	('top-level number',         '1'),
	('top-level null',           'null')
) AS cases(label, resource);

-- A Patient belongs to itself and to the patients it links to.
SELECT fhir_notify.patient_refs('{"resourceType": "Patient", "id": "p1", "link": [
	{"other": {"reference": "Patient/p3"}, "type": "replaced-by"},
	{"other": {"reference": "RelatedPerson/r1"}, "type": "seealso"},
	{"other": {"reference": "Patient/p2"}, "type": "seealso"},
	{"other": {"reference": "Patient/p1"}, "type": "seealso"}]}') AS self_and_links,
       fhir_notify.patient_refs('{"resourceType": "Patient", "id": "bad id"}') AS bad_self,
       fhir_notify.patient_refs('{"resourceType": "Patient"}') AS no_id,
       fhir_notify.patient_refs('{"resourceType": "Person", "id": "x", "link": [
	{"target": {"reference": "Patient/q"}}, {"target": {"reference": "Practitioner/z"}}]}') AS person;

-- The type and id may come from outside the JSON (fhirbase stores no "id");
-- NULL reads them from the JSON.
SELECT fhir_notify.patient_refs('{"name": [{"family": "Doe"}]}', 'Patient', 'fb-7') AS given_id,
       fhir_notify.patient_refs('{"resourceType": "Patient", "id": "json-id"}', 'Patient', 'row-id') AS id_wins,
       fhir_notify.patient_refs('{"resourceType": "Patient", "id": "json-id"}', NULL, NULL) AS from_json,
       fhir_notify.patient_refs('{"subject": {"reference": "Patient/s"}}', 'Condition') AS given_type,
       fhir_notify.patient_refs('{"resourceType": "Condition", "subject": {"reference": "Patient/s"}}', 'Group') AS type_wins,
       fhir_notify.patient_refs(NULL, 'Patient', 'x') IS NULL AS null_resource;

-- Extra links outside the R4 compartment: Device.patient and Task.for by default.
SHOW fhir_notify.extra_links;
CREATE TABLE routing_extra (label text, resource jsonb);
INSERT INTO routing_extra VALUES
	('Device', '{"resourceType": "Device", "patient": {"reference": "Patient/d"}}'),
	('Task', '{"resourceType": "Task", "for": {"reference": "Patient/t"}, "owner": {"reference": "Patient/o"}}'),
	('Observation', '{"resourceType": "Observation", "subject": {"reference": "Patient/s"}, "focus": [{"reference": "Patient/f"}]}');
SELECT label, fhir_notify.patient_refs(resource) FROM routing_extra;
-- Off: the R4 compartment alone.
SET fhir_notify.extra_links = '';
SELECT label, fhir_notify.patient_refs(resource) FROM routing_extra;
-- Other links, with arrays.
SET fhir_notify.extra_links = 'Task.owner,  Observation.focus[] , Device.patient';
SHOW fhir_notify.extra_links;
SELECT label, fhir_notify.patient_refs(resource) FROM routing_extra;
RESET fhir_notify.extra_links;
SELECT label, fhir_notify.patient_refs(resource) FROM routing_extra;
-- Bad values are refused with the reason; the setting stays as it was.
\set VERBOSITY default
SET fhir_notify.extra_links = 'Device';
SET fhir_notify.extra_links = 'Device.patient,';
SET fhir_notify.extra_links = 'device.patient';
SET fhir_notify.extra_links = 'Device.Patient';
SET fhir_notify.extra_links = 'Device.patient[';
SET fhir_notify.extra_links = 'Observation.a.b.c.d.e';
SET fhir_notify.extra_links = 'Device.patient; DROP TABLE x';
\set VERBOSITY terse
SHOW fhir_notify.extra_links;
-- Only a superuser may change routing, not an application role.
CREATE ROLE regress_routing_app;
SET ROLE regress_routing_app;
SET fhir_notify.extra_links = '';
RESET ROLE;
DROP ROLE regress_routing_app;

DROP TABLE routing_extra, routing_paths;
DROP FUNCTION routing_build(text[], jsonb, jsonb);
