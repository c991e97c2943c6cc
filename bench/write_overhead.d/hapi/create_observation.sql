-- A new vital-signs Observation (~1 KB of JSON) for one of 100 patients,
-- written the way HAPI FHIR JPA writes a create, in one transaction:
-- INSERT hfj_resource (version 1, server-assigned id), INSERT hfj_res_ver
-- (the body, without id and meta.versionId/lastUpdated, as HAPI stores it),
-- then the index rows: links (subject, encounter, performer), tokens (code,
-- category, status, combo-code), the date and the quantity. HAPI pools ids
-- from its sequences (by 50); here each row takes nextval.
\set p random(1, 100)
\set v random(50, 180)
\set h random(1, 1000000)
BEGIN;
INSERT INTO hapi.hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published,
	hash_sha256, sp_has_links, sp_date_present, sp_token_present, sp_quantity_present,
	sp_quantity_nrml_present, res_version, sp_index_status, sp_cmpstr_uniq_present,
	sp_cmptoks_present)
SELECT n.id, 'Observation', n.id::text, 1, localtimestamp, localtimestamp,
	pg_catalog.md5(n.id::text), true, true, true, true, false, 'R4', 1, false, false
FROM (SELECT pg_catalog.nextval('hapi.seq_resource_id') AS id) n
RETURNING res_id AS rid \gset
INSERT INTO hapi.hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc,
	res_updated, res_published, has_tags, res_version, request_id)
VALUES (pg_catalog.nextval('hapi.seq_resource_history_id'), :rid, 'Observation', 1, 'JSON',
	'{"resourceType":"Observation","meta":{"profile":["http://hl7.org/fhir/StructureDefinition/heartrate","http://hl7.org/fhir/StructureDefinition/vitalsigns"]},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"subject":{"reference":"Patient/pat-:p"},"encounter":{"reference":"Encounter/f6003197-6507-1168-87be-ceccd5517094"},"effectiveDateTime":"2026-11-26T09:58:16-05:00","issued":"2026-11-26T09:58:16.123-05:00","performer":[{"reference":"Practitioner/0000016f-57cb-cdaa-0000-00000000c4ee","display":"Dr. Sample"}],"valueQuantity":{"value": :v,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}',
	localtimestamp, localtimestamp, false, 'R4', 'bench:h');
INSERT INTO hapi.hfj_res_link (pid, src_path, src_resource_id, source_resource_type,
	target_resource_id, target_resource_type, sp_updated)
VALUES (pg_catalog.nextval('hapi.seq_reslink_id'), 'Observation.subject', :rid, 'Observation', :p,
	'Patient', localtimestamp);
INSERT INTO hapi.hfj_res_link (pid, src_path, src_resource_id, source_resource_type,
	target_resource_id, target_resource_type, target_resource_url, sp_updated)
VALUES (pg_catalog.nextval('hapi.seq_reslink_id'), 'Observation.encounter', :rid, 'Observation',
	NULL, 'Encounter', 'Encounter/f6003197-6507-1168-87be-ceccd5517094', localtimestamp);
INSERT INTO hapi.hfj_res_link (pid, src_path, src_resource_id, source_resource_type,
	target_resource_id, target_resource_type, target_resource_url, sp_updated)
VALUES (pg_catalog.nextval('hapi.seq_reslink_id'), 'Observation.performer', :rid, 'Observation',
	NULL, 'Practitioner', 'Practitioner/0000016f-57cb-cdaa-0000-00000000c4ee', localtimestamp);
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'code', :rid, 'Observation', localtimestamp,
	-1001, -2001, -3001 - :h, -4001 - :h, 'http://loinc.org', '8867-4');
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'category', :rid, 'Observation', localtimestamp,
	-1002, -2002, -3002, -4002, 'http://terminology.hl7.org/CodeSystem/observation-category', 'vital-signs');
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'status', :rid, 'Observation', localtimestamp,
	-1003, NULL, NULL, -4003, NULL, 'final');
INSERT INTO hapi.hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_sys, hash_sys_and_value, hash_value, sp_system, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_token'), 'combo-code', :rid, 'Observation', localtimestamp,
	-1004, -2001, -3004 - :h, -4004 - :h, 'http://loinc.org', '8867-4');
INSERT INTO hapi.hfj_spidx_date (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	sp_value_high, sp_value_low, sp_value_high_date_ordinal, sp_value_low_date_ordinal)
VALUES (pg_catalog.nextval('hapi.seq_spidx_date'), 'date', :rid, 'Observation', localtimestamp,
	-1005, '2026-11-26 14:58:16', '2026-11-26 14:58:16', 20261126, 20261126);
INSERT INTO hapi.hfj_spidx_quantity (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
	hash_identity_and_units, hash_identity_sys_units, sp_system, sp_units, sp_value)
VALUES (pg_catalog.nextval('hapi.seq_spidx_quantity'), 'value-quantity', :rid, 'Observation',
	localtimestamp, -1006, -2006, -3006, 'http://unitsofmeasure.org', '/min', :v);
COMMIT;
