-- Ticker mode is refused, with a hint, while the ticker is not available
-- in this build or server.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;

SET fhir_notify.doorbell = 'ticker';
SHOW fhir_notify.doorbell;
DROP EXTENSION fhir_notify CASCADE;
