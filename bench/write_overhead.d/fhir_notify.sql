-- fhir_notify watching the WintEHR table. The doorbell mode (commit or
-- ticker) is set per database by the benchmark.
SELECT fhir_notify.watch('fhir.resources');
