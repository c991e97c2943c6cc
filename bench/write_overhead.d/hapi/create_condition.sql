-- A new Condition (~1 KB of JSON) for one of 100 patients, written the way
-- HAPI FHIR JPA writes a create, in one transaction: INSERT hfj_resource
-- (version 1, server-assigned id), INSERT hfj_res_ver (the body without id
-- and meta.versionId/lastUpdated), then the index rows: links (subject,
-- encounter), tokens (code, clinical-status, verification-status,
-- category), dates (onset-date, recorded-date).
\set p random(1, 100)
\set h random(1, 1000000)
BEGIN;
INSERT INTO hapi.hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published,
	hash_sha256, sp_has_links, sp_date_present, sp_token_present, res_version, sp_index_status,
	sp_cmpstr_uniq_present, sp_cmptoks_present)
SELECT n.id, 'Condition', n.id::text, 1, localtimestamp, localtimestamp,
	pg_catalog.md5(n.id::text), true, true, true, 'R4', 1, false, false
FROM (SELECT pg_catalog.nextval('hapi.seq_resource_id') AS id) n
RETURNING res_id AS rid \gset
INSERT INTO hapi.hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc,
	res_updated, res_published, has_tags, res_version, request_id)
VALUES (pg_catalog.nextval('hapi.seq_resource_history_id'), :rid, 'Condition', 1, 'JSON',
	'{"resourceType":"Condition","meta":{"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition-encounter-diagnosis"]},"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},"verificationStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}]},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"encounter-diagnosis","display":"Encounter Diagnosis"}]}],"code":{"coding":[{"system":"http://snomed.info/sct","code":"91302008","display":"Sepsis (disorder)"}],"text":"Sepsis (disorder)"},"subject":{"reference":"Patient/pat-:p"},"encounter":{"reference":"Encounter/f6003197-6507-1168-87be-ceccd5517094"},"onsetDateTime":"2026-11-26T09:58:16-05:00","recordedDate":"2026-11-26T09:58:16-05:00"}',
	localtimestamp, localtimestamp, false, 'R4', 'bench:h');
INSERT INTO hapi.hfj_res_link (pid, src_path, src_resource_id, source_resource_type,
	target_resource_id, target_resource_type, sp_updated)
VALUES (pg_catalog.nextval('hapi.seq_reslink_id'), 'Condition.subject', :rid, 'Condition', :p,
	'Patient', localtimestamp);
INSERT INTO hapi.hfj_res_link (pid, src_path, src_resource_id, source_resource_type,
	target_resource_id, target_resource_type, target_resource_url, sp_updated)
VALUES (pg_catalog.nextval('hapi.seq_reslink_id'), 'Condition.encounter', :rid, 'Condition',
	NULL, 'Encounter', 'Encounter/f6003197-6507-1168-87be-ceccd5517094', localtimestamp);
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'code', :rid, 'Condition', localtimestamp,
	-1101, -2101, -3101 - :h, -4101 - :h, 'http://snomed.info/sct', '91302008');
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'clinical-status', :rid, 'Condition', localtimestamp,
	-1102, -2102, -3102, -4102, 'http://terminology.hl7.org/CodeSystem/condition-clinical', 'active');
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'verification-status', :rid, 'Condition', localtimestamp,
	-1103, -2103, -3103, -4103, 'http://terminology.hl7.org/CodeSystem/condition-ver-status', 'confirmed');
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'category', :rid, 'Condition', localtimestamp,
	-1104, -2104, -3104, -4104, 'http://terminology.hl7.org/CodeSystem/condition-category', 'encounter-diagnosis');
INSERT INTO hapi.hfj_spidx_date (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	sp_value_high, sp_value_low, sp_value_high_date_ordinal, sp_value_low_date_ordinal)
VALUES (pg_catalog.nextval('hapi.seq_spidx_date'), 'onset-date', :rid, 'Condition', localtimestamp,
	-1105, '2026-11-26 14:58:16', '2026-11-26 14:58:16', 20261126, 20261126);
INSERT INTO hapi.hfj_spidx_date (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	sp_value_high, sp_value_low, sp_value_high_date_ordinal, sp_value_low_date_ordinal)
VALUES (pg_catalog.nextval('hapi.seq_spidx_date'), 'recorded-date', :rid, 'Condition', localtimestamp,
	-1106, '2026-11-26 14:58:16', '2026-11-26 14:58:16', 20261126, 20261126);
COMMIT;
