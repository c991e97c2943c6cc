-- fhir_notify watching every Medplum resource table of the schema (and those
-- its migrations add later), as a Medplum operator does.
-- :options is the watch() options the benchmark passes: {"body": ...}.
SELECT fhir_notify.watch_medplum('medplum', :options);
