-- Ticker mode is accepted where fhir_notify is preloaded (tests/regress.conf
-- preloads it); tests/test_ticker.py covers its refusal without the preload,
-- and the notifications themselves.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;

SET fhir_notify.doorbell = 'ticker';
SHOW fhir_notify.doorbell;
RESET fhir_notify.doorbell;
SHOW fhir_notify.ticker_database;
SHOW fhir_notify.ticker_interval;
SHOW fhir_notify.ticker_answer_timeout;
-- Only a reload changes the interval, only a restart the database.
SET fhir_notify.ticker_interval = '5ms';
SET fhir_notify.ticker_answer_timeout = '5ms';
SET fhir_notify.ticker_database = 'other';
DROP EXTENSION fhir_notify CASCADE;
