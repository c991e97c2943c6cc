-- A pure SQL/jsonpath implementation of fhir_notify's routing rules, for the
-- routing benchmark (bench/routing.py): what patient_refs() would cost
-- without C. Same compartment table, same reference forms, same id rule,
-- the default extra links (Device.patient, Task.for).
--
-- The paths are in jsonpath strict mode, with filters, so that malformed
-- nesting routes exactly as the C code routes it: lax mode would unwrap an
-- array where the compartment expects a single element (and wrap a single
-- element where it expects an array), which the C code refuses. Strict mode
-- stops at the first structural error in a path, so every step is guarded:
-- `? (exists(@."k"))` before a member (objects that have it) and
-- `? (@.type() == "array")` before `[*]`. tests/test_routing_differential.py
-- checks that both agree on 100,000 generated resources, odd JSON included;
-- the benchmark checks it on every resource of its sample.

-- The Patient id a Reference element points to, or NULL.
CREATE FUNCTION reference_patient_id_sql(element jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
	WHEN jsonb_typeof(element) <> 'object' THEN NULL
	WHEN element ? 'type' AND element->'type' <> '"Patient"' THEN NULL
	WHEN element ? 'reference' THEN CASE
		WHEN jsonb_typeof(element->'reference') <> 'string' THEN NULL
		WHEN element->>'reference' LIKE 'urn:uuid:_%' THEN CASE
			WHEN element->'type' = '"Patient"'
			THEN substring(element->>'reference' FROM '^urn:uuid:([A-Za-z0-9.-]{1,64})$') END
		WHEN element->>'reference' ~ '[?#]' THEN NULL
		ELSE substring(element->>'reference'
		               FROM '(?:^|/)Patient/([A-Za-z0-9.-]{1,64})(?:/_history/[^/]*)?$')
		END
	WHEN element->'resourceType' = '"Patient"' AND jsonb_typeof(element->'id') = 'string'
	THEN substring(element->>'id' FROM '^([A-Za-z0-9.-]{1,64})$')
END
$$;

-- The ids of the patients a resource belongs to, distinct, sorted in C
-- collation; '{}' for none. The paths of each type (reference/patient-compartment-r4.md)
-- as jsonpath, chosen by a CASE on the type.
CREATE FUNCTION patient_refs_sql(resource jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
WITH found(id) AS (
	SELECT reference_patient_id_sql(element)
	FROM unnest(CASE resource->>'resourceType'
		WHEN 'Account' THEN ARRAY['strict $."subject" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'AdverseEvent' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'AllergyIntolerance' THEN ARRAY['strict $."patient"', 'strict $."recorder"', 'strict $."asserter"']::jsonpath[]
		WHEN 'Appointment' THEN ARRAY['strict $."participant" ? (@.type() == "array")[*] ? (exists(@."actor"))."actor"']::jsonpath[]
		WHEN 'AppointmentResponse' THEN ARRAY['strict $."actor"']::jsonpath[]
		WHEN 'AuditEvent' THEN ARRAY['strict $."agent" ? (@.type() == "array")[*] ? (exists(@."who"))."who"', 'strict $."entity" ? (@.type() == "array")[*] ? (exists(@."what"))."what"']::jsonpath[]
		WHEN 'Basic' THEN ARRAY['strict $."subject"', 'strict $."author"']::jsonpath[]
		WHEN 'BodyStructure' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'CarePlan' THEN ARRAY['strict $."subject"', 'strict $."activity" ? (@.type() == "array")[*] ? (exists(@."detail"))."detail" ? (exists(@."performer"))."performer" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'CareTeam' THEN ARRAY['strict $."subject"', 'strict $."participant" ? (@.type() == "array")[*] ? (exists(@."member"))."member"']::jsonpath[]
		WHEN 'ChargeItem' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'Claim' THEN ARRAY['strict $."patient"', 'strict $."payee" ? (exists(@."party"))."party"']::jsonpath[]
		WHEN 'ClaimResponse' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'ClinicalImpression' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'Communication' THEN ARRAY['strict $."subject"', 'strict $."sender"', 'strict $."recipient" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'CommunicationRequest' THEN ARRAY['strict $."subject"', 'strict $."sender"', 'strict $."recipient" ? (@.type() == "array")[*]', 'strict $."requester"']::jsonpath[]
		WHEN 'Composition' THEN ARRAY['strict $."subject"', 'strict $."author" ? (@.type() == "array")[*]', 'strict $."attester" ? (@.type() == "array")[*] ? (exists(@."party"))."party"']::jsonpath[]
		WHEN 'Condition' THEN ARRAY['strict $."subject"', 'strict $."asserter"']::jsonpath[]
		WHEN 'Consent' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'Coverage' THEN ARRAY['strict $."policyHolder"', 'strict $."subscriber"', 'strict $."beneficiary"', 'strict $."payor" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'CoverageEligibilityRequest' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'CoverageEligibilityResponse' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'DetectedIssue' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'DeviceRequest' THEN ARRAY['strict $."subject"', 'strict $."performer"']::jsonpath[]
		WHEN 'DeviceUseStatement' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'DiagnosticReport' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'DocumentManifest' THEN ARRAY['strict $."subject"', 'strict $."author" ? (@.type() == "array")[*]', 'strict $."recipient" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'DocumentReference' THEN ARRAY['strict $."subject"', 'strict $."author" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'Encounter' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'EnrollmentRequest' THEN ARRAY['strict $."candidate"']::jsonpath[]
		WHEN 'EpisodeOfCare' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'ExplanationOfBenefit' THEN ARRAY['strict $."patient"', 'strict $."payee" ? (exists(@."party"))."party"']::jsonpath[]
		WHEN 'FamilyMemberHistory' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'Flag' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'Goal' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'Group' THEN ARRAY['strict $."member" ? (@.type() == "array")[*] ? (exists(@."entity"))."entity"']::jsonpath[]
		WHEN 'ImagingStudy' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'Immunization' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'ImmunizationEvaluation' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'ImmunizationRecommendation' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'Invoice' THEN ARRAY['strict $."subject"', 'strict $."recipient"']::jsonpath[]
		WHEN 'List' THEN ARRAY['strict $."subject"', 'strict $."source"']::jsonpath[]
		WHEN 'MeasureReport' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'Media' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'MedicationAdministration' THEN ARRAY['strict $."subject"', 'strict $."performer" ? (@.type() == "array")[*] ? (exists(@."actor"))."actor"']::jsonpath[]
		WHEN 'MedicationDispense' THEN ARRAY['strict $."subject"', 'strict $."receiver" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'MedicationRequest' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'MedicationStatement' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'MolecularSequence' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'NutritionOrder' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'Observation' THEN ARRAY['strict $."subject"', 'strict $."performer" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'Patient' THEN ARRAY['strict $."link" ? (@.type() == "array")[*] ? (exists(@."other"))."other"']::jsonpath[]
		WHEN 'Person' THEN ARRAY['strict $."link" ? (@.type() == "array")[*] ? (exists(@."target"))."target"']::jsonpath[]
		WHEN 'Procedure' THEN ARRAY['strict $."subject"', 'strict $."performer" ? (@.type() == "array")[*] ? (exists(@."actor"))."actor"']::jsonpath[]
		WHEN 'Provenance' THEN ARRAY['strict $."target" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'QuestionnaireResponse' THEN ARRAY['strict $."subject"', 'strict $."author"']::jsonpath[]
		WHEN 'RelatedPerson' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'RequestGroup' THEN ARRAY['strict $."subject"', 'strict $."action" ? (@.type() == "array")[*] ? (exists(@."participant"))."participant" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'ResearchSubject' THEN ARRAY['strict $."individual"']::jsonpath[]
		WHEN 'RiskAssessment' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'Schedule' THEN ARRAY['strict $."actor" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'ServiceRequest' THEN ARRAY['strict $."subject"', 'strict $."performer" ? (@.type() == "array")[*]']::jsonpath[]
		WHEN 'Specimen' THEN ARRAY['strict $."subject"']::jsonpath[]
		WHEN 'SupplyDelivery' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'SupplyRequest' THEN ARRAY['strict $."deliverTo"']::jsonpath[]
		WHEN 'VisionPrescription' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'Device' THEN ARRAY['strict $."patient"']::jsonpath[]
		WHEN 'Task' THEN ARRAY['strict $."for"']::jsonpath[]
		END) AS path,
	     jsonb_path_query(resource, path, '{}', true) AS element
	WHERE jsonb_typeof(resource) = 'object'
	UNION ALL
	SELECT substring(resource->>'id' FROM '^([A-Za-z0-9.-]{1,64})$')
	WHERE jsonb_typeof(resource) = 'object' AND resource->>'resourceType' = 'Patient'
	  AND jsonb_typeof(resource->'id') = 'string'
)
SELECT coalesce(array_agg(DISTINCT id COLLATE "C" ORDER BY id COLLATE "C"), '{}')
FROM found WHERE id IS NOT NULL
$$;
