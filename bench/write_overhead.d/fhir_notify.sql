-- fhir_notify watching the WintEHR table. The doorbell mode (commit or
-- ticker) is set per database by the benchmark.
-- :options is the watch() options the benchmark passes: {"body": ...}.
SELECT fhir_notify.watch('fhir.resources', 'auto', :options);
