-- fhir_notify watching the WintEHR table. The doorbell mode (commit or
-- ticker) is set per database by the benchmark.
CREATE EXTENSION fhir_notify;
SELECT fhir_notify.watch('fhir.resources');
