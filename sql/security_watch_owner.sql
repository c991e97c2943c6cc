-- A role granted EXECUTE on watch() and unwatch() (and USAGE on the schema)
-- may watch and unwatch the tables it owns (or its roles own), and no other;
-- it needs no right on the trigger function or fhir_notify's tables.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
DROP SCHEMA IF EXISTS regress_app CASCADE;
DROP ROLE IF EXISTS regress_fhir_app_owner;
DROP ROLE IF EXISTS regress_fhir_app_member;
DROP ROLE IF EXISTS regress_fhir_no_table;
DROP ROLE IF EXISTS regress_fhir_no_grant;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;
\set VERBOSITY terse

CREATE ROLE regress_fhir_app_owner;
CREATE ROLE regress_fhir_app_member IN ROLE regress_fhir_app_owner;
CREATE ROLE regress_fhir_no_table;
CREATE ROLE regress_fhir_no_grant;
GRANT USAGE ON SCHEMA fhir_notify
	TO regress_fhir_app_owner, regress_fhir_app_member, regress_fhir_no_table;
GRANT EXECUTE ON FUNCTION fhir_notify.watch(regclass, text, jsonb), fhir_notify.unwatch(regclass)
	TO regress_fhir_app_owner, regress_fhir_app_member, regress_fhir_no_table;

CREATE SCHEMA regress_app AUTHORIZATION regress_fhir_app_owner;
CREATE TABLE regress_app.owned (id serial PRIMARY KEY, resource jsonb NOT NULL);
ALTER TABLE regress_app.owned OWNER TO regress_fhir_app_owner;
CREATE TABLE regress_app.not_owned (id serial PRIMARY KEY, resource jsonb NOT NULL);
GRANT USAGE ON SCHEMA regress_app TO regress_fhir_no_table, regress_fhir_no_grant;
GRANT ALL ON regress_app.owned, regress_app.not_owned
	TO regress_fhir_no_table, regress_fhir_no_grant;

-- The owner watches its table; its writes are captured.
SET ROLE regress_fhir_app_owner;
SELECT fhir_notify.watch('regress_app.owned');
SELECT current_user;
INSERT INTO regress_app.owned (resource) VALUES
	('{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}');
-- Not a table it owns, even with every privilege on it but ownership.
SELECT fhir_notify.watch('regress_app.not_owned');
SELECT fhir_notify.unwatch('regress_app.not_owned');
-- Still no right on what watch() uses.
SELECT count(*) FROM fhir_notify.watched_tables;
SELECT fhir_notify.resolve_layout('regress_app.owned', 'auto', '{}');
SELECT fhir_notify.check_table_owner('regress_app.owned');
CREATE TRIGGER forged AFTER INSERT ON regress_app.owned
	FOR EACH ROW EXECUTE FUNCTION fhir_notify.capture('layout=jsonb', 'resource=resource');
RESET ROLE;

-- A member of the owning role may too, as for ALTER TABLE.
SET ROLE regress_fhir_app_member;
SELECT fhir_notify.watch('regress_app.owned', 'jsonb', '{"record_unrouted": true}');
RESET ROLE;

-- A role that owns no table is refused, for watch() and unwatch(); one
-- without EXECUTE cannot call either.
SET ROLE regress_fhir_no_table;
SELECT fhir_notify.watch('regress_app.owned');
SELECT fhir_notify.watch('regress_app.not_owned');
SELECT fhir_notify.unwatch('regress_app.owned');
RESET ROLE;
SET ROLE regress_fhir_no_grant;
SELECT fhir_notify.watch('regress_app.owned');
RESET ROLE;
-- A SECURITY DEFINER function of another role does not lend its rights:
-- the check is for the session's role.
CREATE FUNCTION regress_app.watch_for_anybody(tbl regclass) RETURNS void
LANGUAGE sql SECURITY DEFINER AS $$ SELECT fhir_notify.watch(tbl) $$;
ALTER FUNCTION regress_app.watch_for_anybody(regclass) OWNER TO regress_fhir_app_owner;
GRANT EXECUTE ON FUNCTION regress_app.watch_for_anybody(regclass) TO regress_fhir_no_table;
SET ROLE regress_fhir_no_table;
SELECT regress_app.watch_for_anybody('regress_app.owned');
RESET ROLE;

SELECT "table", layout, options FROM fhir_notify.watched ORDER BY 1;
SELECT action, resource_id, patient_ids, source_table FROM fhir_notify.changes ORDER BY position;

-- The owner unwatches; superusers watch any table, as before.
SET ROLE regress_fhir_app_owner;
SELECT fhir_notify.unwatch('regress_app.owned');
RESET ROLE;
SELECT fhir_notify.watch('regress_app.not_owned');
SELECT "table", layout FROM fhir_notify.watched ORDER BY 1;

-- The event trigger of watch_medplum() calls watch() for a table created
-- later; the check passes for the role that creates it (its owner, here the
-- owner of the registered schema, as Medplum's migrations run).
SET client_min_messages = warning;
SELECT fhir_notify.watch_medplum('regress_app');
RESET client_min_messages;
SET ROLE regress_fhir_app_owner;
CREATE TABLE regress_app."Observation" (id uuid PRIMARY KEY, content text NOT NULL,
	"lastUpdated" timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false,
	"projectId" uuid NOT NULL, __version integer NOT NULL, compartments uuid[] NOT NULL);
RESET ROLE;
SELECT "table", layout FROM fhir_notify.watched ORDER BY 1::text;
SELECT fhir_notify.unwatch_medplum('regress_app');

DROP SCHEMA regress_app CASCADE;
-- (DROP EXTENSION leaves the schema it created, and grants on it.)
REVOKE USAGE ON SCHEMA fhir_notify
	FROM regress_fhir_app_owner, regress_fhir_app_member, regress_fhir_no_table;
DROP EXTENSION fhir_notify CASCADE;
DROP ROLE regress_fhir_app_member;
DROP ROLE regress_fhir_app_owner;
DROP ROLE regress_fhir_no_table;
DROP ROLE regress_fhir_no_grant;
