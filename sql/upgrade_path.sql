-- The upgrade chain: 0.1.0 is the only version, so updating is a no-op.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
RESET client_min_messages;
\set VERBOSITY terse

SELECT name, default_version FROM pg_available_extensions WHERE name = 'fhir_notify';
SELECT version FROM pg_available_extension_versions WHERE name = 'fhir_notify' ORDER BY version;
CREATE EXTENSION fhir_notify VERSION '0.1.0';
ALTER EXTENSION fhir_notify UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'fhir_notify';
-- Every update path from 0.1.0 ends at the default version.
SELECT source, target, path FROM pg_extension_update_paths('fhir_notify')
	WHERE path IS NOT NULL ORDER BY source, target;
DROP EXTENSION fhir_notify;
