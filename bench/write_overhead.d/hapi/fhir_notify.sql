-- fhir_notify watching HAPI's version table, as a HAPI operator does.
-- :options is the watch() options the benchmark passes: {"body": ...}.
SELECT fhir_notify.watch('hapi.hfj_res_ver', 'auto', :options);
