-- The application's role needs no grant on fhir_notify and cannot read or
-- write the change log itself; its writes are captured all the same.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP SCHEMA IF EXISTS fhir CASCADE;
DROP ROLE IF EXISTS regress_fhir_writer;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE SCHEMA fhir;
CREATE TABLE fhir.resources (
	id bigserial PRIMARY KEY, resource_type varchar NOT NULL, fhir_id varchar NOT NULL,
	version_id integer NOT NULL DEFAULT 1, last_updated timestamptz NOT NULL DEFAULT now(),
	deleted boolean DEFAULT false, resource jsonb NOT NULL);
SELECT fhir_notify.watch('fhir.resources', 'wintehr');

CREATE ROLE regress_fhir_writer;
GRANT USAGE ON SCHEMA fhir TO regress_fhir_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON fhir.resources TO regress_fhir_writer;
GRANT USAGE ON SEQUENCE fhir.resources_id_seq TO regress_fhir_writer;

SET ROLE regress_fhir_writer;
INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES
	('Condition', 'c1', '{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}');
UPDATE fhir.resources SET version_id = 2, resource = resource || '{"note": [{"text": "x"}]}';
UPDATE fhir.resources SET deleted = true, version_id = 3;
DELETE FROM fhir.resources;
-- The log is out of reach.
SELECT count(*) FROM fhir_notify.changes;
INSERT INTO fhir_notify.changes (action, resource_type, resource_id, patient_ids, source_table)
	VALUES ('created', 'Condition', 'forged', '{p1}', 'fhir.resources');
UPDATE fhir_notify.changes SET patient_ids = '{p2}';
DELETE FROM fhir_notify.changes;
SELECT * FROM fhir_notify.read(0);
SELECT fhir_notify.watch('fhir.resources', 'jsonb');
SELECT fhir_notify.unwatch('fhir.resources');
-- Nor can it silence the doorbell.
SET fhir_notify.channel = 'elsewhere';
SET fhir_notify.doorbell = 'off';
-- Calling the trigger function directly is refused.
SELECT fhir_notify.capture();
RESET ROLE;

-- The log is written as its owner; an error while writing it (here a
-- constraint someone added) leaves the writer as it was, once caught.
ALTER TABLE fhir_notify.changes ADD CONSTRAINT no_bad CHECK (resource_id <> 'bad');
SET ROLE regress_fhir_writer;
DO $$
BEGIN
	INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES
		('Condition', 'bad', '{"resourceType": "Condition", "id": "bad",
		  "subject": {"reference": "Patient/p1"}}');
EXCEPTION WHEN check_violation THEN
	RAISE NOTICE 'after the error: current_user %, usage on fhir_notify: %', current_user,
		has_schema_privilege('fhir_notify', 'USAGE');
END
$$;
SELECT current_user;
RESET ROLE;
ALTER TABLE fhir_notify.changes DROP CONSTRAINT no_bad;

SELECT action, resource_id, version_id, patient_ids,
	replace(actor, session_user, '<session user>') AS actor
	FROM fhir_notify.changes ORDER BY position;

DROP SCHEMA fhir CASCADE;
DROP EXTENSION fhir_notify CASCADE;
DROP ROLE regress_fhir_writer;
