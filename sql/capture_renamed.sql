-- source_table follows renames in the same session: of the watched table,
-- of a watched partitioned table (whose partitions' triggers name it), and
-- of the schema. The last two used to keep the old name.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP SCHEMA IF EXISTS s1 CASCADE;
DROP SCHEMA IF EXISTS s2 CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;

CREATE FUNCTION condition(id text) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_object('resourceType', 'Condition', 'id', id,
		'subject', jsonb_build_object('reference', 'Patient/p1')) $$;
CREATE SCHEMA s1;
CREATE TABLE s1.res (resource jsonb);
CREATE TABLE s1.parted (resource jsonb, k int) PARTITION BY LIST (k);
CREATE TABLE s1.parted_1 PARTITION OF s1.parted FOR VALUES IN (1);
SELECT fhir_notify.watch('s1.res', 'jsonb');
SELECT fhir_notify.watch('s1.parted', 'jsonb');

INSERT INTO s1.res VALUES (condition('a'));
INSERT INTO s1.parted VALUES (condition('b'), 1);
ALTER TABLE s1.res RENAME TO res_renamed;
ALTER TABLE s1.parted RENAME TO parted_renamed;
INSERT INTO s1.res_renamed VALUES (condition('c'));
INSERT INTO s1.parted_renamed VALUES (condition('d'), 1);
ALTER SCHEMA s1 RENAME TO s2;
INSERT INTO s2.res_renamed VALUES (condition('e'));
INSERT INTO s2.parted_renamed VALUES (condition('f'), 1);
SELECT resource_id, source_table FROM fhir_notify.changes ORDER BY position;

DROP SCHEMA s2 CASCADE;
DROP FUNCTION condition(text);
DROP EXTENSION fhir_notify CASCADE;
