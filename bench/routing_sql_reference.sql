-- A pure SQL/jsonpath implementation of fhir_notify's routing rules, for the
-- routing benchmark (bench/routing.py): what patient_refs() would cost
-- without C. Same compartment table, same reference forms, same id rule,
-- the default extra links (Device.patient, Task.for).
--
-- One known difference: jsonpath lax mode unwraps arrays where the
-- compartment expects a single element (and wraps single elements where it
-- expects an array), while the C code refuses such malformed nesting. On
-- well-formed FHIR both agree; the benchmark checks that on every resource.

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
		WHEN 'Account' THEN ARRAY['lax $."subject"[*]']::jsonpath[]
		WHEN 'AdverseEvent' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'AllergyIntolerance' THEN ARRAY['lax $."patient"', 'lax $."recorder"', 'lax $."asserter"']::jsonpath[]
		WHEN 'Appointment' THEN ARRAY['lax $."participant"[*]."actor"']::jsonpath[]
		WHEN 'AppointmentResponse' THEN ARRAY['lax $."actor"']::jsonpath[]
		WHEN 'AuditEvent' THEN ARRAY['lax $."agent"[*]."who"', 'lax $."entity"[*]."what"']::jsonpath[]
		WHEN 'Basic' THEN ARRAY['lax $."subject"', 'lax $."author"']::jsonpath[]
		WHEN 'BodyStructure' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'CarePlan' THEN ARRAY['lax $."subject"', 'lax $."activity"[*]."detail"."performer"[*]']::jsonpath[]
		WHEN 'CareTeam' THEN ARRAY['lax $."subject"', 'lax $."participant"[*]."member"']::jsonpath[]
		WHEN 'ChargeItem' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'Claim' THEN ARRAY['lax $."patient"', 'lax $."payee"."party"']::jsonpath[]
		WHEN 'ClaimResponse' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'ClinicalImpression' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'Communication' THEN ARRAY['lax $."subject"', 'lax $."sender"', 'lax $."recipient"[*]']::jsonpath[]
		WHEN 'CommunicationRequest' THEN ARRAY['lax $."subject"', 'lax $."sender"', 'lax $."recipient"[*]', 'lax $."requester"']::jsonpath[]
		WHEN 'Composition' THEN ARRAY['lax $."subject"', 'lax $."author"[*]', 'lax $."attester"[*]."party"']::jsonpath[]
		WHEN 'Condition' THEN ARRAY['lax $."subject"', 'lax $."asserter"']::jsonpath[]
		WHEN 'Consent' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'Coverage' THEN ARRAY['lax $."policyHolder"', 'lax $."subscriber"', 'lax $."beneficiary"', 'lax $."payor"[*]']::jsonpath[]
		WHEN 'CoverageEligibilityRequest' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'CoverageEligibilityResponse' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'DetectedIssue' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'DeviceRequest' THEN ARRAY['lax $."subject"', 'lax $."performer"']::jsonpath[]
		WHEN 'DeviceUseStatement' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'DiagnosticReport' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'DocumentManifest' THEN ARRAY['lax $."subject"', 'lax $."author"[*]', 'lax $."recipient"[*]']::jsonpath[]
		WHEN 'DocumentReference' THEN ARRAY['lax $."subject"', 'lax $."author"[*]']::jsonpath[]
		WHEN 'Encounter' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'EnrollmentRequest' THEN ARRAY['lax $."candidate"']::jsonpath[]
		WHEN 'EpisodeOfCare' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'ExplanationOfBenefit' THEN ARRAY['lax $."patient"', 'lax $."payee"."party"']::jsonpath[]
		WHEN 'FamilyMemberHistory' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'Flag' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'Goal' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'Group' THEN ARRAY['lax $."member"[*]."entity"']::jsonpath[]
		WHEN 'ImagingStudy' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'Immunization' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'ImmunizationEvaluation' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'ImmunizationRecommendation' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'Invoice' THEN ARRAY['lax $."subject"', 'lax $."recipient"']::jsonpath[]
		WHEN 'List' THEN ARRAY['lax $."subject"', 'lax $."source"']::jsonpath[]
		WHEN 'MeasureReport' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'Media' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'MedicationAdministration' THEN ARRAY['lax $."subject"', 'lax $."performer"[*]."actor"']::jsonpath[]
		WHEN 'MedicationDispense' THEN ARRAY['lax $."subject"', 'lax $."receiver"[*]']::jsonpath[]
		WHEN 'MedicationRequest' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'MedicationStatement' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'MolecularSequence' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'NutritionOrder' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'Observation' THEN ARRAY['lax $."subject"', 'lax $."performer"[*]']::jsonpath[]
		WHEN 'Patient' THEN ARRAY['lax $."link"[*]."other"']::jsonpath[]
		WHEN 'Person' THEN ARRAY['lax $."link"[*]."target"']::jsonpath[]
		WHEN 'Procedure' THEN ARRAY['lax $."subject"', 'lax $."performer"[*]."actor"']::jsonpath[]
		WHEN 'Provenance' THEN ARRAY['lax $."target"[*]']::jsonpath[]
		WHEN 'QuestionnaireResponse' THEN ARRAY['lax $."subject"', 'lax $."author"']::jsonpath[]
		WHEN 'RelatedPerson' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'RequestGroup' THEN ARRAY['lax $."subject"', 'lax $."action"[*]."participant"[*]']::jsonpath[]
		WHEN 'ResearchSubject' THEN ARRAY['lax $."individual"']::jsonpath[]
		WHEN 'RiskAssessment' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'Schedule' THEN ARRAY['lax $."actor"[*]']::jsonpath[]
		WHEN 'ServiceRequest' THEN ARRAY['lax $."subject"', 'lax $."performer"[*]']::jsonpath[]
		WHEN 'Specimen' THEN ARRAY['lax $."subject"']::jsonpath[]
		WHEN 'SupplyDelivery' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'SupplyRequest' THEN ARRAY['lax $."deliverTo"']::jsonpath[]
		WHEN 'VisionPrescription' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'Device' THEN ARRAY['lax $."patient"']::jsonpath[]
		WHEN 'Task' THEN ARRAY['lax $."for"']::jsonpath[]
		END) AS path,
	     jsonb_path_query(resource, path, '{}', true) AS element
	WHERE jsonb_typeof(resource) = 'object'
	UNION ALL
	SELECT substring(resource->>'id' FROM '^([A-Za-z0-9.-]{1,64})$')
	WHERE jsonb_typeof(resource) = 'object' AND resource->>'resourceType' = 'Patient'
)
SELECT coalesce(array_agg(DISTINCT id COLLATE "C" ORDER BY id COLLATE "C"), '{}')
FROM found WHERE id IS NOT NULL
$$;
