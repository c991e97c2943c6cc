-- HAPI FHIR JPA 8.x's tables as its migrator builds them, in schema hapi:
-- hfj_resource, hfj_res_ver, hfj_res_link and the token, date and quantity
-- index tables with their hash indexes and foreign keys. 100 Patients
-- (client-assigned ids pat-1..pat-100, res_id 1..100) and :seeded - 100
-- Observations and Conditions (res_id 101.., server-assigned ids: fhir_id =
-- res_id), each with one version and its index rows, for the update
-- script to version.
CREATE SCHEMA hapi;
SET search_path = hapi, public;
CREATE SEQUENCE seq_resource_id INCREMENT 50;
CREATE SEQUENCE seq_resource_history_id INCREMENT 50;
CREATE SEQUENCE seq_reslink_id INCREMENT 50;
CREATE SEQUENCE seq_spidx_token INCREMENT 50;
CREATE SEQUENCE seq_spidx_date INCREMENT 50;
CREATE SEQUENCE seq_spidx_quantity INCREMENT 50;
CREATE TABLE hfj_resource (
	res_id bigint PRIMARY KEY,
	partition_id integer,
	res_type varchar(40) NOT NULL,
	fhir_id varchar(64) NOT NULL,
	res_ver bigint NOT NULL,
	res_updated timestamp(6),
	res_published timestamp(6),
	res_deleted_at timestamp(6),
	hash_sha256 varchar(64),
	sp_has_links boolean NOT NULL DEFAULT false,
	sp_coords_present boolean NOT NULL DEFAULT false,
	sp_date_present boolean NOT NULL DEFAULT false,
	sp_number_present boolean NOT NULL DEFAULT false,
	sp_quantity_present boolean NOT NULL DEFAULT false,
	sp_quantity_nrml_present boolean NOT NULL DEFAULT false,
	sp_string_present boolean NOT NULL DEFAULT false,
	sp_token_present boolean NOT NULL DEFAULT false,
	sp_uri_present boolean NOT NULL DEFAULT false,
	has_tags boolean NOT NULL DEFAULT false,
	res_version varchar(7),
	res_type_id smallint,
	partition_date date,
	search_url_present boolean,
	res_language varchar(20),
	sp_index_status smallint,
	sp_cmpstr_uniq_present boolean,
	sp_cmptoks_present boolean
);
CREATE UNIQUE INDEX idx_res_type_fhir_id ON hfj_resource (res_type, fhir_id)
	INCLUDE (res_id, res_deleted_at);
CREATE INDEX idx_res_type_del_updated ON hfj_resource (res_type, res_deleted_at, res_updated, partition_id, res_id);
CREATE TABLE hfj_res_ver (
	pid bigint PRIMARY KEY,
	res_id bigint NOT NULL REFERENCES hfj_resource (res_id),
	res_type varchar(40) NOT NULL,
	res_ver bigint NOT NULL,
	res_encoding varchar(5) NOT NULL,
	res_text_vc text,
	res_text oid,
	res_updated timestamp(6) NOT NULL,
	res_published timestamp(6),
	res_deleted_at timestamp(6),
	partition_id integer,
	partition_date date,
	has_tags boolean NOT NULL DEFAULT false,
	res_version varchar(7),
	source_uri varchar(768),
	request_id varchar(16),
	res_type_id smallint,
	CONSTRAINT idx_resver_id_ver UNIQUE (res_id, res_ver)
);
CREATE INDEX idx_resver_date ON hfj_res_ver (res_updated, res_id);
CREATE TABLE hfj_res_link (
	pid bigint PRIMARY KEY,
	partition_id integer,
	partition_date date,
	src_path varchar(500) NOT NULL,
	src_resource_id bigint NOT NULL REFERENCES hfj_resource (res_id),
	source_resource_type varchar(40) NOT NULL,
	target_resource_id bigint REFERENCES hfj_resource (res_id),
	target_resource_type varchar(40) NOT NULL,
	target_resource_url varchar(200),
	target_resource_version bigint,
	sp_updated timestamp(6)
);
CREATE INDEX idx_rl_src ON hfj_res_link (src_resource_id);
CREATE INDEX idx_rl_tgt_v2 ON hfj_res_link (target_resource_id, src_path, src_resource_id, target_resource_type, partition_id);
CREATE TABLE hfj_spidx_token (
	sp_id bigint PRIMARY KEY,
	partition_id integer,
	partition_date date,
	sp_missing boolean NOT NULL DEFAULT false,
	sp_name varchar(100) NOT NULL,
	res_id bigint NOT NULL REFERENCES hfj_resource (res_id),
	res_type varchar(100) NOT NULL,
	sp_updated timestamp(6),
	hash_identity bigint,
	hash_sys bigint,
	hash_sys_and_value bigint,
	hash_value bigint,
	sp_system varchar(200),
	sp_value varchar(200)
);
CREATE INDEX idx_sp_token_hash_v2 ON hfj_spidx_token (hash_identity, sp_system, sp_value, res_id, partition_id);
CREATE INDEX idx_sp_token_hash_s_v2 ON hfj_spidx_token (hash_sys, res_id, partition_id);
CREATE INDEX idx_sp_token_hash_sv_v2 ON hfj_spidx_token (hash_sys_and_value, res_id, partition_id);
CREATE INDEX idx_sp_token_hash_v_v2 ON hfj_spidx_token (hash_value, res_id, partition_id);
CREATE INDEX idx_sp_token_resid_v2 ON hfj_spidx_token (res_id, hash_sys_and_value, hash_value, hash_sys, hash_identity, partition_id);
CREATE TABLE hfj_spidx_date (
	sp_id bigint PRIMARY KEY,
	partition_id integer,
	partition_date date,
	sp_missing boolean NOT NULL DEFAULT false,
	sp_name varchar(100) NOT NULL,
	res_id bigint NOT NULL REFERENCES hfj_resource (res_id),
	res_type varchar(100) NOT NULL,
	sp_updated timestamp(6),
	hash_identity bigint,
	sp_value_high timestamp(6),
	sp_value_low timestamp(6),
	sp_value_high_date_ordinal integer,
	sp_value_low_date_ordinal integer
);
CREATE INDEX idx_sp_date_hash_v2 ON hfj_spidx_date (hash_identity, sp_value_low, sp_value_high, res_id, partition_id);
CREATE INDEX idx_sp_date_hash_high_v2 ON hfj_spidx_date (hash_identity, sp_value_high, res_id, partition_id);
CREATE INDEX idx_sp_date_ord_hash_v2 ON hfj_spidx_date (hash_identity, sp_value_low_date_ordinal, sp_value_high_date_ordinal, res_id, partition_id);
CREATE INDEX idx_sp_date_resid_v2 ON hfj_spidx_date (res_id, hash_identity, sp_value_low, sp_value_high, partition_id);
CREATE TABLE hfj_spidx_quantity (
	sp_id bigint PRIMARY KEY,
	partition_id integer,
	partition_date date,
	sp_missing boolean NOT NULL DEFAULT false,
	sp_name varchar(100) NOT NULL,
	res_id bigint NOT NULL REFERENCES hfj_resource (res_id),
	res_type varchar(100) NOT NULL,
	sp_updated timestamp(6),
	hash_identity bigint,
	hash_identity_and_units bigint,
	hash_identity_sys_units bigint,
	sp_system varchar(200),
	sp_units varchar(200),
	sp_value double precision
);
CREATE INDEX idx_sp_qty_hash_v2 ON hfj_spidx_quantity (hash_identity, sp_value, res_id, partition_id);
CREATE INDEX idx_sp_qty_hash_un_v2 ON hfj_spidx_quantity (hash_identity_and_units, sp_value, res_id, partition_id);
CREATE INDEX idx_sp_qty_resid_v2 ON hfj_spidx_quantity (res_id, hash_identity, hash_identity_and_units, sp_value, partition_id);

INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published,
                          sp_token_present, sp_string_present, res_version, sp_index_status)
SELECT g, 'Patient', 'pat-' || g, 1, '2026-11-26 10:00', '2026-11-26 10:00', true, true, 'R4', 1
FROM generate_series(1, 100) g;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated,
                         res_published, res_version)
SELECT g, g, 'Patient', 1, 'JSON',
       json_build_object('resourceType', 'Patient',
                         'name', json_build_array(json_build_object(
                             'family', 'Family' || g, 'given', json_build_array('Given' || g))),
                         'gender', CASE WHEN g % 2 = 0 THEN 'female' ELSE 'male' END,
                         'birthDate', '1970-01-01')::text,
       '2026-11-26 10:00', '2026-11-26 10:00', 'R4'
FROM generate_series(1, 100) g;

INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published,
                          sp_has_links, sp_date_present, sp_token_present, sp_quantity_present,
                          res_version, sp_index_status)
SELECT g, CASE WHEN g % 2 = 0 THEN 'Observation' ELSE 'Condition' END, g::text, 1,
       '2026-11-26 10:00', '2026-11-26 10:00', true, true, true, g % 2 = 0, 'R4', 1
FROM generate_series(101, :seeded) g;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated,
                         res_published, res_version, request_id)
SELECT g, g, r.res_type, 1, 'JSON',
       json_build_object('resourceType', r.res_type, 'status', 'final',
                         'code', json_build_object('coding', json_build_array(json_build_object(
                             'system', 'http://loinc.org', 'code', '8867-4', 'display', 'Heart rate'))),
                         'subject', json_build_object('reference', 'Patient/pat-' || (g % 100 + 1)),
                         'encounter', json_build_object('reference', 'Encounter/enc-' || g),
                         'valueQuantity', json_build_object('value', g % 120 + 50, 'unit', '/min'),
                         'note', json_build_array(json_build_object('text', repeat('x', 600))))::text,
       '2026-11-26 10:00', '2026-11-26 10:00', 'R4', 'seed'
FROM generate_series(101, :seeded) g JOIN hfj_resource r ON r.res_id = g;
INSERT INTO hfj_res_link (pid, src_path, src_resource_id, source_resource_type, target_resource_id,
                          target_resource_type, sp_updated)
SELECT g, r.res_type || '.subject', g, r.res_type, g % 100 + 1, 'Patient', '2026-11-26 10:00'
FROM generate_series(101, :seeded) g JOIN hfj_resource r ON r.res_id = g;
INSERT INTO hfj_spidx_token (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity, hash_sys,
                             hash_sys_and_value, hash_value, sp_system, sp_value)
SELECT g * 4 + k, CASE k WHEN 0 THEN 'code' WHEN 1 THEN 'status' WHEN 2 THEN 'category' ELSE 'combo-code' END,
       g, r.res_type, '2026-11-26 10:00', hashtext(r.res_type || k), hashtext('sys' || k),
       hashtext('sv' || k || g % 50), hashtext('v' || k || g % 50), 'http://loinc.org', '8867-4'
FROM generate_series(101, :seeded) g JOIN hfj_resource r ON r.res_id = g, generate_series(0, 3) k;
INSERT INTO hfj_spidx_date (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity, sp_value_high,
                            sp_value_low, sp_value_high_date_ordinal, sp_value_low_date_ordinal)
SELECT g, 'date', g, r.res_type, '2026-11-26 10:00', hashtext(r.res_type || 'date'),
       '2026-11-26 09:58:16', '2026-11-26 09:58:16', 20261126, 20261126
FROM generate_series(101, :seeded) g JOIN hfj_resource r ON r.res_id = g;
INSERT INTO hfj_spidx_quantity (sp_id, sp_name, res_id, res_type, sp_updated, hash_identity,
                                hash_identity_and_units, hash_identity_sys_units, sp_system,
                                sp_units, sp_value)
SELECT g, 'value-quantity', g, 'Observation', '2026-11-26 10:00', hashtext('Observation-vq'),
       hashtext('vq-/min'), hashtext('vq-ucum-/min'), 'http://unitsofmeasure.org', '/min', g % 120 + 50
FROM generate_series(101, :seeded) g WHERE g % 2 = 0;
SELECT setval('seq_resource_id', :seeded * 10), setval('seq_resource_history_id', :seeded * 10),
       setval('seq_reslink_id', :seeded * 10), setval('seq_spidx_token', :seeded * 10),
       setval('seq_spidx_date', :seeded * 10), setval('seq_spidx_quantity', :seeded * 10);
RESET search_path;
