-- The actor: fhir_notify.actor when the application sets it, else the
-- session user and application_name.
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

SET application_name = 'wintehr-backend';
SELECT add('c1');
BEGIN;
SET LOCAL fhir_notify.actor = 'nurse.jones';
SELECT add('c2');
COMMIT;
SELECT add('c3');
SET application_name = '';
SELECT add('c4');
SET fhir_notify.actor = 'dr.who';
SELECT add('c5');
RESET fhir_notify.actor;

SELECT resource_id,
	replace(actor, session_user, '<session user>') AS actor
	FROM fhir_notify.changes ORDER BY position;

DROP TABLE resources;
DROP FUNCTION add(text);
DROP EXTENSION fhir_notify CASCADE;
