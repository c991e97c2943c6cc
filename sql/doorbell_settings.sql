-- The doorbell settings: channel and mode are for superusers only, and
-- values that would make the doorbell fail at commit are refused up front.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS fhir_notify CASCADE;
CREATE EXTENSION fhir_notify;
RESET client_min_messages;

SHOW fhir_notify.channel;
SHOW fhir_notify.doorbell;
SET fhir_notify.channel = '';
SET fhir_notify.channel = 'a_channel_name_that_is_far_too_long_for_a_notify_channel_name_ok';
SET fhir_notify.doorbell = 'sometimes';
SET fhir_notify.doorbell = 'off';
SHOW fhir_notify.doorbell;
RESET fhir_notify.doorbell;
SET fhir_notify.warning_interval = -1;
SET fhir_notify.no_such_setting = 1;

-- A superuser may move the doorbell to another channel (the isolation
-- specs show who hears it).
SET fhir_notify.channel = 'ward_7';
SHOW fhir_notify.channel;
RESET fhir_notify.channel;
DROP EXTENSION fhir_notify CASCADE;
