-- fhir_notify watching HAPI's version table, as a HAPI operator does.
SELECT fhir_notify.watch('hapi.hfj_res_ver');
