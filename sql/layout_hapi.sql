-- The hapi layout: HAPI FHIR JPA 8.x's tables, written statement by
-- statement the way HAPI writes them (Hibernate flushes INSERTs, then
-- UPDATEs, then DELETEs, in one transaction per FHIR write). The stored JSON
-- has no id and no meta.versionId/lastUpdated; the id is hfj_resource.fhir_id.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse
SET fhir_notify.warning_interval = 0;

CREATE VIEW log AS
	SELECT action, resource_type, resource_id, version_id, patient_ids,
	       resource IS NULL AS no_resource
	FROM fhir_notify.changes ORDER BY position;

-- The schema HAPI's migrator builds (the columns that matter and their types).
CREATE SEQUENCE seq_resource_id INCREMENT 50;
CREATE SEQUENCE seq_resource_history_id INCREMENT 50;
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
CREATE TABLE hfj_res_link (
	pid bigserial PRIMARY KEY,
	partition_id integer,
	src_path varchar(500) NOT NULL,
	src_resource_id bigint NOT NULL REFERENCES hfj_resource (res_id),
	source_resource_type varchar(40) NOT NULL,
	target_resource_id bigint,
	target_resource_type varchar(40) NOT NULL,
	target_resource_url varchar(200),
	sp_updated timestamp(6)
);

-- The resource table is not the one to watch; the version table is.
\set VERBOSITY default
SELECT fhir_notify.watch('hfj_resource');
SELECT fhir_notify.watch('hfj_res_ver');
\set VERBOSITY terse
SELECT fhir_notify.watch('hfj_res_ver', 'hapi');
SELECT "table", layout FROM fhir_notify.watched;

-- Patients p1 and p2 (server-assigned ids would be res_id as text).
BEGIN;
INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published, has_tags, res_version)
	VALUES (1, 'Patient', 'p1', 1, '2025-10-01 09:00:00', '2025-10-01 09:00:00', false, 'R4'),
	       (51, 'Patient', 'p2', 1, '2025-10-01 09:00:00', '2025-10-01 09:00:00', false, 'R4');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, res_published, res_version)
	VALUES (1, 1, 'Patient', 1, 'JSON', '{"resourceType":"Patient","name":[{"family":"One"}]}', '2025-10-01 09:00:00', '2025-10-01 09:00:00', 'R4'),
	       (51, 51, 'Patient', 1, 'JSON', '{"resourceType":"Patient","name":[{"family":"Two"}]}', '2025-10-01 09:00:00', '2025-10-01 09:00:00', 'R4');
COMMIT;

-- create: PUT Observation/obs1, subject p1.
BEGIN;
INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published, has_tags, res_version, hash_sha256)
	VALUES (101, 'Observation', 'obs1', 1, '2025-10-01 10:00:00.123', '2025-10-01 10:00:00.123', true, 'R4', 'h1');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, res_published, has_tags, res_version, request_id)
	VALUES (101, 101, 'Observation', 1, 'JSON',
	        '{"resourceType":"Observation","meta":{"tag":[{"code":"t1"}]},"status":"final","subject":{"reference":"Patient/p1"}}',
	        '2025-10-01 10:00:00.123', '2025-10-01 10:00:00.123', true, 'R4', 'req1');
INSERT INTO hfj_res_link (src_path, src_resource_id, source_resource_type, target_resource_id, target_resource_type)
	VALUES ('Observation.subject', 101, 'Observation', 1, 'Patient');
COMMIT;

-- update (version 2): the version row first, then hfj_resource, which still
-- shows version 1 while the version row is inserted.
BEGIN;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, res_published, res_version)
	VALUES (102, 101, 'Observation', 2, 'JSON',
	        '{"resourceType":"Observation","status":"amended","subject":{"reference":"Patient/p1"}}',
	        '2025-10-01 10:05:00', '2025-10-01 10:00:00.123', 'R4');
UPDATE hfj_resource SET res_ver = 2, res_updated = '2025-10-01 10:05:00', hash_sha256 = 'h2', has_tags = false
	WHERE res_id = 101 AND res_ver = 1;
COMMIT;

-- moved to another patient (version 3): p1 is told it is gone, p2 gets it.
BEGIN;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, res_published, res_version)
	VALUES (103, 101, 'Observation', 3, 'JSON',
	        '{"resourceType":"Observation","status":"amended","subject":{"reference":"Patient/p2"}}',
	        '2025-10-01 10:10:00', '2025-10-01 10:00:00.123', 'R4');
INSERT INTO hfj_res_link (src_path, src_resource_id, source_resource_type, target_resource_id, target_resource_type)
	VALUES ('Observation.subject', 101, 'Observation', 51, 'Patient');
UPDATE hfj_resource SET res_ver = 3, res_updated = '2025-10-01 10:10:00', hash_sha256 = 'h3'
	WHERE res_id = 101 AND res_ver = 2;
DELETE FROM hfj_res_link WHERE src_resource_id = 101 AND target_resource_id = 1;
COMMIT;

-- no-op update: HAPI writes nothing at all, so there is nothing to see.
-- delete (version 4, DEL): the patients come from version 3.
BEGIN;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_text, res_updated, res_published, res_deleted_at, res_version)
	VALUES (104, 101, 'Observation', 4, 'DEL', NULL, NULL,
	        '2025-10-01 10:15:00', '2025-10-01 10:00:00.123', '2025-10-01 10:15:00', 'R4');
UPDATE hfj_resource SET res_deleted_at = '2025-10-01 10:15:00', res_ver = 4, res_updated = '2025-10-01 10:15:00', hash_sha256 = NULL
	WHERE res_id = 101 AND res_ver = 3;
DELETE FROM hfj_res_link WHERE src_resource_id = 101;
COMMIT;

-- re-created after the delete (version 5): created again.
BEGIN;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, res_published, res_version)
	VALUES (105, 101, 'Observation', 5, 'JSON',
	        '{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/p2"}}',
	        '2025-10-01 10:20:00', '2025-10-01 10:00:00.123', 'R4');
UPDATE hfj_resource SET res_deleted_at = NULL, res_ver = 5, res_updated = '2025-10-01 10:20:00', hash_sha256 = 'h5'
	WHERE res_id = 101 AND res_ver = 4;
COMMIT;
SELECT * FROM log;

-- What a client receives is the resource as a FHIR read returns it: id,
-- meta.versionId and meta.lastUpdated (UTC instant) added, other meta kept.
SELECT version_id, resource FROM fhir_notify.changes
	WHERE resource_id = 'obs1' AND resource IS NOT NULL ORDER BY position;

-- An in-place rewrite of a version row with the same content is no change;
-- with other content (X-Rewrite-History) it is an update of that version.
TRUNCATE fhir_notify.changes;
UPDATE hfj_res_ver SET source_uri = 'urn:x' WHERE pid = 105;
UPDATE hfj_res_ver SET res_text_vc = '{"subject":{"reference":"Patient/p2"},"status":"final","resourceType":"Observation"}'
	WHERE pid = 105;
UPDATE hfj_res_ver SET res_text_vc = '{"resourceType":"Observation","status":"cancelled","subject":{"reference":"Patient/p1"}}'
	WHERE pid = 105;
SELECT * FROM log;
-- $expunge deletes version rows: not a change of the resource.
DELETE FROM hfj_res_ver WHERE pid IN (101, 102);
SELECT count(*) FROM fhir_notify.changes;

-- A transaction Bundle of 40 resources: one database transaction.
TRUNCATE fhir_notify.changes;
BEGIN;
INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published, res_version)
	SELECT 1000 + i, 'Encounter', (1000 + i)::text, 1, '2025-10-02 08:00:00', '2025-10-02 08:00:00', 'R4'
	FROM generate_series(1, 40) i;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, res_published, res_version)
	SELECT 1000 + i, 1000 + i, 'Encounter', 1, 'JSON',
	       format('{"resourceType":"Encounter","status":"finished","subject":{"reference":"Patient/%s"}}',
	              CASE WHEN i % 2 = 0 THEN 'p1' ELSE 'p2' END),
	       '2025-10-02 08:00:00', '2025-10-02 08:00:00', 'R4'
	FROM generate_series(1, 40) i;
INSERT INTO hfj_res_link (src_path, src_resource_id, source_resource_type, target_resource_id, target_resource_type)
	SELECT 'Encounter.subject', 1000 + i, 'Encounter', CASE WHEN i % 2 = 0 THEN 1 ELSE 51 END, 'Patient'
	FROM generate_series(1, 40) i;
COMMIT;
SELECT action, patient_ids, count(*), count(DISTINCT xid) AS transactions,
       min(resource_id::int), max(resource_id::int)
	FROM fhir_notify.changes GROUP BY 1, 2 ORDER BY 2;

-- A JSONC body (gzip JSON in a large object, as HAPI before 7.0 wrote
-- them) is read and inflated; its later delete finds the patient in it.
TRUNCATE fhir_notify.changes;
CREATE TABLE lobs (name text, oid oid);
INSERT INTO lobs VALUES
	('c9', lo_from_bytea(0, '\x1f8b08000000000002ff15ca410a80201005d0bbfcb5d0ba76d1055a7401d31f1934868e508877afdefa5524e65892e3f25cc480298a0f1aa2c02097f5a0530cf55b1b13c5fd65b61a28da5d3d9a818b9eff50dedfc498753f2d5a7b0141700e4f5a000000')),
	('c10', lo_from_bytea(0, '\x1f8b08000000000002ff15ca410a80201005d0bbfcb5d0ba76d1055a7401d31f1934868e508877afdefa5524e65892e3f25cc480298a0f1aa2c02097f5a0530cf55b1b13c5fd65b61a28da5d3d9a818b9eff50dedfc498753f2d5a7b0141700e4f5a000000'));
BEGIN;
INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published, res_version)
	VALUES (201, 'Condition', 'c9', 1, '2023-01-01 00:00:00', '2023-01-01 00:00:00', 'R4'),
	       (202, 'Condition', 'c10', 1, '2023-01-01 00:00:00', '2023-01-01 00:00:00', 'R4');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_text, res_updated, res_published, res_version)
	SELECT 200 + n, 200 + n, 'Condition', 1, 'JSONC', NULL, (SELECT oid FROM lobs WHERE name = f),
	       '2023-01-01 00:00:00', '2023-01-01 00:00:00', 'R4'
	FROM (VALUES (1, 'c9'), (2, 'c10')) v(n, f);
COMMIT;
-- Deleted years later by HAPI 8: the previous version is the JSONC one.
BEGIN;
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_updated, res_published, res_deleted_at, res_version)
	VALUES (203, 201, 'Condition', 2, 'DEL', '2025-10-03 00:00:00', '2023-01-01 00:00:00', '2025-10-03 00:00:00', 'R4');
UPDATE hfj_resource SET res_deleted_at = '2025-10-03 00:00:00', res_ver = 2, res_updated = '2025-10-03 00:00:00', hash_sha256 = NULL
	WHERE res_id = 201 AND res_ver = 1;
COMMIT;
-- $reindex with storage optimisation moves c10's body out of the large
-- object into res_text_vc: the same content, no change.
UPDATE hfj_res_ver SET res_encoding = 'JSON', res_text = NULL,
	res_text_vc = '{"resourceType":"Condition","subject":{"reference":"Patient/p9"},"code":{"text":"Asthma"}}'
	WHERE pid = 202;
SELECT * FROM log;
SELECT resource FROM fhir_notify.changes WHERE action = 'created';

-- Bodies that cannot be read never fail HAPI's write: a large object that
-- is gone, gzip that is not, JSON that is not, an external body (ESR).
TRUNCATE fhir_notify.changes;
INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_version)
	VALUES (301, 'Condition', 'bad1', 1, '2025-10-04 00:00:00', 'R4'),
	       (302, 'Condition', 'bad2', 1, '2025-10-04 00:00:00', 'R4'),
	       (303, 'Condition', 'bad3', 1, '2025-10-04 00:00:00', 'R4'),
	       (304, 'Condition', 'bad4', 1, '2025-10-04 00:00:00', 'R4');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_text, res_updated)
	VALUES (301, 301, 'Condition', 1, 'JSONC', NULL, 4242424, '2025-10-04 00:00:00');
INSERT INTO lobs VALUES ('bad2', lo_from_bytea(0, 'not gzip'));
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_text, res_updated)
	VALUES (302, 302, 'Condition', 1, 'JSONC', NULL, (SELECT oid FROM lobs WHERE name = 'bad2'), '2025-10-04 00:00:00');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated)
	VALUES (303, 303, 'Condition', 1, 'JSON', '{"resourceType":"Condition", "subject": ', '2025-10-04 00:00:00');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated)
	VALUES (304, 304, 'Condition', 1, 'ESR', 'blobstore:abc123', '2025-10-04 00:00:00');
SELECT count(*) AS versions FROM hfj_res_ver WHERE pid BETWEEN 301 AND 304;
SELECT count(*) AS changes FROM fhir_notify.changes;

-- Types that belong to no patient are not read at all unless the table
-- records unrouted changes.
INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_version)
	VALUES (401, 'Practitioner', 'dr1', 1, '2025-10-04 00:00:00', 'R4');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated)
	VALUES (401, 401, 'Practitioner', 1, 'JSON', 'not even json', '2025-10-04 00:00:00');
SELECT fhir_notify.watch('hfj_res_ver', 'hapi', '{"record_unrouted": true}');
INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated)
	VALUES (402, 401, 'Practitioner', 2, 'JSON', '{"resourceType":"Practitioner"}', '2025-10-04 00:01:00');
SELECT * FROM log;

-- Partition mode: partition_id joins the keys; the same changes.
CREATE SCHEMA hapi_part;
CREATE TABLE hapi_part.hfj_resource (
	res_id bigint NOT NULL, partition_id integer NOT NULL, res_type varchar(40) NOT NULL,
	fhir_id varchar(64) NOT NULL, res_ver bigint NOT NULL, res_updated timestamp(6),
	res_deleted_at timestamp(6), has_tags boolean NOT NULL DEFAULT false,
	PRIMARY KEY (partition_id, res_id));
CREATE TABLE hapi_part.hfj_res_ver (
	pid bigint NOT NULL, partition_id integer NOT NULL, res_id bigint NOT NULL,
	res_type varchar(40) NOT NULL, res_ver bigint NOT NULL, res_encoding varchar(5) NOT NULL,
	res_text_vc text, res_text oid, res_updated timestamp(6) NOT NULL, res_deleted_at timestamp(6),
	has_tags boolean NOT NULL DEFAULT false,
	PRIMARY KEY (partition_id, pid),
	UNIQUE (partition_id, res_id, res_ver),
	FOREIGN KEY (partition_id, res_id) REFERENCES hapi_part.hfj_resource (partition_id, res_id));
SELECT fhir_notify.watch('hapi_part.hfj_res_ver');
TRUNCATE fhir_notify.changes;
-- The same res_id in two partitions: each lookup stays in its partition.
BEGIN;
INSERT INTO hapi_part.hfj_resource VALUES (7, 1, 'Observation', 'o-part1', 1, '2025-10-05 00:00:00', NULL, false),
                                          (7, 2, 'Observation', 'o-part2', 1, '2025-10-05 00:00:00', NULL, false);
INSERT INTO hapi_part.hfj_res_ver VALUES
	(7, 1, 7, 'Observation', 1, 'JSON', '{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}', NULL, '2025-10-05 00:00:00', NULL, false),
	(7, 2, 7, 'Observation', 1, 'JSON', '{"resourceType":"Observation","subject":{"reference":"Patient/p3"}}', NULL, '2025-10-05 00:00:00', NULL, false);
COMMIT;
BEGIN;
INSERT INTO hapi_part.hfj_res_ver VALUES
	(8, 1, 7, 'Observation', 2, 'JSON', '{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}', NULL, '2025-10-05 00:01:00', NULL, false);
UPDATE hapi_part.hfj_resource SET res_ver = 2, res_updated = '2025-10-05 00:01:00' WHERE partition_id = 1 AND res_id = 7 AND res_ver = 1;
COMMIT;
BEGIN;
INSERT INTO hapi_part.hfj_res_ver VALUES
	(9, 2, 7, 'Observation', 2, 'DEL', NULL, NULL, '2025-10-05 00:02:00', '2025-10-05 00:02:00', false);
UPDATE hapi_part.hfj_resource SET res_ver = 2, res_deleted_at = '2025-10-05 00:02:00' WHERE partition_id = 2 AND res_id = 7 AND res_ver = 1;
COMMIT;
SELECT * FROM log;


-- Without the unique index on (res_id, res_ver) the lookups are a saved
-- plan instead of index scans: the same changes.
CREATE SCHEMA hapi_plain;
CREATE TABLE hapi_plain.hfj_resource (res_id bigint PRIMARY KEY, partition_id integer,
	res_type varchar(40) NOT NULL, fhir_id varchar(64) NOT NULL, res_ver bigint NOT NULL);
CREATE TABLE hapi_plain.hfj_res_ver (pid bigint PRIMARY KEY, partition_id integer,
	res_id bigint NOT NULL REFERENCES hapi_plain.hfj_resource, res_type varchar(40) NOT NULL,
	res_ver bigint NOT NULL, res_encoding varchar(5) NOT NULL, res_text_vc text, res_text oid,
	res_updated timestamp(6) NOT NULL);
SELECT fhir_notify.watch('hapi_plain.hfj_res_ver', 'hapi');
TRUNCATE fhir_notify.changes;
INSERT INTO hapi_plain.hfj_resource VALUES (1, NULL, 'Encounter', 'enc1', 1);
INSERT INTO hapi_plain.hfj_res_ver VALUES
	(1, NULL, 1, 'Encounter', 1, 'JSON', '{"resourceType":"Encounter","subject":{"reference":"Patient/p1"}}', NULL, '2025-10-06 00:00:00');
INSERT INTO hapi_plain.hfj_res_ver VALUES
	(2, NULL, 1, 'Encounter', 2, 'JSON', '{"resourceType":"Encounter","subject":{"reference":"Patient/p2"}}', NULL, '2025-10-06 00:01:00');
UPDATE hapi_plain.hfj_resource SET res_ver = 2 WHERE res_id = 1 AND res_ver = 1;
INSERT INTO hapi_plain.hfj_res_ver VALUES (3, NULL, 1, 'Encounter', 3, 'DEL', NULL, NULL, '2025-10-06 00:02:00');
UPDATE hapi_plain.hfj_resource SET res_ver = 3 WHERE res_id = 1 AND res_ver = 2;
SELECT * FROM log;
-- hfj_resource dropped after watch(): HAPI's writes go on, with a warning.
DROP TABLE hapi_plain.hfj_resource CASCADE;
INSERT INTO hapi_plain.hfj_res_ver VALUES (4, NULL, 1, 'Encounter', 4, 'JSON', '{}', NULL, '2025-10-06 00:03:00');

-- Clean up.
SELECT count(lo_unlink(oid)) FROM lobs;
DROP VIEW log;
DROP TABLE lobs, hfj_res_link, hfj_res_ver, hfj_resource;
DROP SCHEMA hapi_part, hapi_plain CASCADE;
DROP SEQUENCE seq_resource_id, seq_resource_history_id;
DROP EXTENSION fhir_notify CASCADE;
