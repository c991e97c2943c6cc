-- Who can put rows into the change log. The capture trigger writes as the
-- extension's owner, so whoever could attach it to a table of their own
-- could forge changes for any patient: EXECUTE on fhir_notify.capture()
-- (needed by CREATE TRIGGER) and watch() are revoked from PUBLIC, and the
-- schema itself is not usable. A reader made by grant_reader() can read the
-- log through tick/read/batch and nothing else.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP SCHEMA IF EXISTS forger CASCADE;
DROP ROLE IF EXISTS regress_fhir_forger;
DROP ROLE IF EXISTS regress_fhir_reader;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE ROLE regress_fhir_forger;
CREATE SCHEMA forger AUTHORIZATION regress_fhir_forger;
CREATE ROLE regress_fhir_reader;

-- A table owner with no grant cannot attach the capture trigger.
SET ROLE regress_fhir_forger;
CREATE TABLE forger.mine (resource jsonb);
CREATE TRIGGER forge AFTER INSERT ON forger.mine FOR EACH ROW
	EXECUTE FUNCTION fhir_notify.capture('layout=jsonb', 'resource=resource');
SELECT fhir_notify.watch('forger.mine', 'jsonb');
RESET ROLE;

-- Nor with USAGE on the schema (as grant_reader gives).
SELECT fhir_notify.grant_reader('regress_fhir_forger');
SET ROLE regress_fhir_forger;
CREATE TRIGGER forge AFTER INSERT ON forger.mine FOR EACH ROW
	EXECUTE FUNCTION fhir_notify.capture('layout=jsonb', 'resource=resource');
CREATE TRIGGER forge AFTER TRUNCATE ON forger.mine FOR EACH STATEMENT
	EXECUTE FUNCTION fhir_notify.capture_truncate();
SELECT fhir_notify.watch('forger.mine', 'jsonb');
SELECT fhir_notify.resolve_layout('forger.mine', 'jsonb', '{}');
SELECT fhir_notify.drop_triggers('forger.mine');
SELECT fhir_notify.grant_reader('regress_fhir_forger');
INSERT INTO forger.mine VALUES ('{"resourceType": "Condition", "id": "forged",
	"subject": {"reference": "Patient/victim"}}');
RESET ROLE;
SELECT count(*) AS forged FROM fhir_notify.changes;
SELECT fhir_notify.revoke_reader('regress_fhir_forger');

-- A reader reads through the functions, and can do nothing else.
CREATE TABLE resources (resource jsonb);
SELECT fhir_notify.watch('resources', 'jsonb');
INSERT INTO resources VALUES ('{"resourceType": "Condition", "id": "c1",
	"subject": {"reference": "Patient/p1"}}');
SELECT fhir_notify.grant_reader('regress_fhir_reader');
SET ROLE regress_fhir_reader;
SELECT fhir_notify.tick() AS tick;
SELECT fhir_notify.oldest_tick() AS oldest, fhir_notify.newest_tick() AS newest;
SELECT tick_id, (change).action, (change).resource_id, (change).patient_ids
	FROM fhir_notify.read(0);
SELECT resource_id FROM fhir_notify.batch(2);
SELECT count(*) FROM fhir_notify.changes;
SELECT count(*) FROM fhir_notify.ticks;
SELECT count(*) FROM fhir_notify.watched;
INSERT INTO fhir_notify.changes (action, resource_type, resource_id, patient_ids, source_table)
	VALUES ('created', 'Condition', 'forged', '{victim}', 'x');
INSERT INTO fhir_notify.ticks VALUES (100, pg_current_snapshot());
SELECT fhir_notify.prune('0 seconds');
SELECT fhir_notify.unwatch('resources');
SELECT fhir_notify.patient_refs('{}'::jsonb);
RESET ROLE;
SELECT fhir_notify.revoke_reader('regress_fhir_reader');
SET ROLE regress_fhir_reader;
SELECT fhir_notify.newest_tick();
RESET ROLE;
SELECT fhir_notify.grant_reader(NULL);

-- fhir_notify.actor is whatever the writing session says: informational,
-- not authenticated.
SET fhir_notify.actor = 'somebody else';
INSERT INTO resources VALUES ('{"resourceType": "Condition", "id": "c2",
	"subject": {"reference": "Patient/p1"}}');
RESET fhir_notify.actor;
SELECT resource_id, replace(actor, session_user, '<session user>') AS actor
	FROM fhir_notify.changes ORDER BY position;

DROP TABLE resources;
DROP SCHEMA forger CASCADE;
DROP EXTENSION fhir_notify CASCADE;
DROP ROLE regress_fhir_forger;
DROP ROLE regress_fhir_reader;
