-- The change log is written without the executor while the table is as
-- installed, and through a prepared INSERT otherwise; both write the same.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE TABLE resources (id serial, resource jsonb);
SELECT fhir_notify.watch('resources', 'jsonb');
CREATE FUNCTION add(id text) RETURNS void LANGUAGE sql AS $$
	INSERT INTO resources (resource) VALUES (jsonb_build_object('resourceType', 'Condition',
		'id', id, 'subject', jsonb_build_object('reference', 'Patient/p1')))
$$;

-- Both ways fill position, xid and changed_at as the defaults would.
BEGIN;
SELECT add('direct');
SET LOCAL fhir_notify.direct_insert = off;
SELECT add('spi');
SELECT resource_id, position, xid = pg_current_xact_id() AS this_xid,
	changed_at BETWEEN now() AND clock_timestamp() AS now
	FROM fhir_notify.changes ORDER BY position;
COMMIT;
-- The indexes have the direct rows.
SET enable_seqscan = off;
SELECT resource_id FROM fhir_notify.changes WHERE position = 1;
SELECT count(*) FROM fhir_notify.changes c1
	WHERE c1.xid = (SELECT xid FROM fhir_notify.changes WHERE position = 2);
RESET enable_seqscan;

-- A trigger someone put on the change log fires: the SPI way is taken.
CREATE TABLE seen (resource_id text);
CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql AS
	$$ BEGIN INSERT INTO public.seen VALUES (NEW.resource_id); RETURN NEW; END $$;
CREATE TRIGGER seen AFTER INSERT ON fhir_notify.changes FOR EACH ROW EXECUTE FUNCTION seen();
SELECT add('with-trigger');
SELECT * FROM seen;
DROP TRIGGER seen ON fhir_notify.changes;

-- So is an expression index, which is kept up to date.
CREATE INDEX changes_upper_idx ON fhir_notify.changes (upper(resource_id));
SELECT add('with-index');
SET enable_seqscan = off;
SELECT resource_id FROM fhir_notify.changes WHERE upper(resource_id) = 'WITH-INDEX';
RESET enable_seqscan;
DROP INDEX fhir_notify.changes_upper_idx;

-- And back to the direct way.
SELECT add('direct-again');
SELECT resource_id, position FROM fhir_notify.changes ORDER BY position;

-- A column dropped and added again leaves a dropped column in the row: the
-- direct way writes rows as wide as the table (it used to write past the
-- end of its arrays).
ALTER TABLE fhir_notify.changes DROP COLUMN actor;
ALTER TABLE fhir_notify.changes ADD COLUMN actor text;
SET fhir_notify.actor = 'after-readd';
SELECT add('dropped-column');
RESET fhir_notify.actor;
SELECT resource_id, actor, source_table FROM fhir_notify.changes
	WHERE resource_id = 'dropped-column';

-- Constraints added to the log are honoured: the executor checks them.
ALTER TABLE fhir_notify.changes ADD CONSTRAINT no_x CHECK (resource_id <> 'x');
SELECT add('x');
ALTER TABLE fhir_notify.changes DROP CONSTRAINT no_x;
-- A deletion logs no resource.
ALTER TABLE fhir_notify.changes ALTER COLUMN resource SET NOT NULL;
DELETE FROM resources WHERE resource->>'id' = 'direct';
ALTER TABLE fhir_notify.changes ALTER COLUMN resource DROP NOT NULL;
SELECT add('after-constraints');
SELECT count(*) AS rows, count(*) FILTER (WHERE resource_id = 'x' OR action = 'deleted') AS refused
	FROM fhir_notify.changes;

DROP TABLE resources, seen;
DROP FUNCTION add(text);
DROP FUNCTION seen();
DROP EXTENSION fhir_notify CASCADE;
