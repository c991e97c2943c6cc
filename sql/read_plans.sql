-- The read functions keep their generic plans for the session: a plan made
-- while the log is empty must still use the log's indexes once it has grown
-- (the planner would otherwise pick a sequential scan of the whole log for
-- the in-progress xids of changes_between(), on every doorbell).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
RESET client_min_messages;
CREATE EXTENSION fhir_notify;
CREATE TABLE rp (id serial, resource jsonb);
SELECT fhir_notify.watch('rp', 'jsonb');
-- the plans are made now, on an empty log
SELECT fhir_notify.tick() > 0 AS ticked;
SELECT count(*) FROM fhir_notify.read_next('rp-reader', 0, 0) r;
SELECT count(*) FROM fhir_notify.read(0);
SELECT count(*) FROM fhir_notify.batch(1);
INSERT INTO rp (resource)
SELECT jsonb_build_object('resourceType', 'Condition', 'id', 'c' || g,
	'subject', jsonb_build_object('reference', 'Patient/p' || g % 7))
FROM generate_series(1, 3000) g;
SELECT tick_id AS t, epoch AS e FROM fhir_notify.ticks ORDER BY tick_id DESC LIMIT 1 \gset
-- one transaction, so that its scans are counted together
BEGIN;
SELECT fhir_notify.tick() = :t + 1 AS ticked;
SELECT count(*) FROM fhir_notify.read_next('rp-reader', :e, :t) r WHERE r.status IS NULL;
SELECT count(*) FROM fhir_notify.read(:t);
SELECT count(*) FROM fhir_notify.batch(:t + 1);
SELECT seq_tup_read AS log_rows_read_by_sequential_scans, idx_scan > 0 AS index_used
FROM pg_stat_xact_user_tables WHERE relid = 'fhir_notify.changes'::regclass;
COMMIT;
SELECT fhir_notify.unwatch('rp');
DROP TABLE rp;
