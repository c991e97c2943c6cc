-- The change log and its snapshot ticks.
CREATE EXTENSION fhir_notify;
SELECT fhir_notify.newest_tick() = fhir_notify.oldest_tick() AS one_tick;
-- No change since the last tick: no new tick.
SELECT fhir_notify.tick() = fhir_notify.newest_tick() AS unchanged;
