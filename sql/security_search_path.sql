-- A hostile search_path (its own "=" operator and functions named like
-- those the change log uses, ahead of pg_catalog) does not change what the
-- trigger does.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP SCHEMA IF EXISTS evil CASCADE;
DROP ROLE IF EXISTS regress_fhir_evil;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE ROLE regress_fhir_evil;
CREATE SCHEMA evil AUTHORIZATION regress_fhir_evil;
CREATE TABLE resources (id serial, resource jsonb);
GRANT SELECT, INSERT, UPDATE, DELETE ON resources TO regress_fhir_evil;
GRANT USAGE ON SEQUENCE resources_id_seq TO regress_fhir_evil;
SELECT fhir_notify.watch('resources', 'jsonb');

SET ROLE regress_fhir_evil;
CREATE TABLE evil.log (what text);
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE sql AS
	$$ INSERT INTO evil.log VALUES ('texteq'); SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
CREATE FUNCTION evil.jsonbeq(jsonb, jsonb) RETURNS boolean LANGUAGE sql AS
	$$ INSERT INTO evil.log VALUES ('jsonbeq'); SELECT true $$;
CREATE OPERATOR evil.= (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = evil.jsonbeq);
CREATE FUNCTION evil.pg_current_xact_id() RETURNS xid8 LANGUAGE sql AS
	$$ INSERT INTO evil.log VALUES ('pg_current_xact_id'); SELECT '1'::xid8 $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS
	$$ INSERT INTO evil.log VALUES ('clock_timestamp'); SELECT 'epoch'::timestamptz $$;
CREATE FUNCTION evil.nextval(regclass) RETURNS bigint LANGUAGE sql AS
	$$ INSERT INTO evil.log VALUES ('nextval'); SELECT 1::bigint $$;
CREATE FUNCTION evil.capture() RETURNS trigger LANGUAGE plpgsql AS
	$$ BEGIN INSERT INTO evil.log VALUES ('capture'); RETURN NULL; END $$;
CREATE TABLE evil.changes (action text, resource_type text, resource_id text,
	version_id text, patient_ids text[], resource jsonb, actor text, source_table text);
SET search_path = evil, pg_catalog, public;

INSERT INTO resources (resource) VALUES
	('{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}'),
	('{"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p1"}}');
-- The no-op check is not fooled by an "=" that says everything is equal.
UPDATE resources SET resource = resource || '{"note": [{"text": "changed"}]}'
	WHERE resource->>'id' OPERATOR(pg_catalog.=) 'c1';
DELETE FROM resources WHERE resource->>'id' OPERATOR(pg_catalog.=) 'c2';
SELECT what, count(*) FROM evil.log GROUP BY what ORDER BY what;
SELECT count(*) AS evil_changes FROM evil.changes;
RESET search_path;
RESET ROLE;

-- watch() itself, called by a superuser under that search_path, uses none
-- of it either.
CREATE FUNCTION evil.quote_literal(text) RETURNS text LANGUAGE sql AS
	$$ INSERT INTO evil.log VALUES ('quote_literal'); SELECT '''evil''' $$;
CREATE FUNCTION evil.substr(text, integer) RETURNS text LANGUAGE sql AS
	$$ INSERT INTO evil.log VALUES ('substr'); SELECT 'evil' $$;
SET search_path = evil, pg_catalog, public;
SELECT fhir_notify.watch('public.resources', 'jsonb');
RESET search_path;
SELECT "table", layout FROM fhir_notify.watched;
SELECT position('evil' in encode(tgargs, 'escape')) AS evil_at
	FROM pg_trigger WHERE tgname = 'fhir_notify_capture';
SELECT what, count(*) FROM evil.log GROUP BY what ORDER BY what;

SELECT action, resource_id, patient_ids,
	xid <> '1'::xid8 AS real_xid,
	changed_at > 'epoch' AS real_time
	FROM fhir_notify.changes ORDER BY position;

DROP TABLE resources;
DROP SCHEMA evil CASCADE;
DROP EXTENSION fhir_notify CASCADE;
DROP ROLE regress_fhir_evil;
