-- An update of a seeded Observation or Condition, written the way HAPI FHIR
-- JPA writes one, in one transaction: the current version is read, then
-- INSERT hfj_res_ver (version n, the new body) before UPDATE hfj_resource
-- SET res_ver = n ... WHERE res_id = ? AND res_ver = n - 1, then the index
-- row whose value changed. The resource stays with its patient. Each writer updates its own resources (res_id
-- modulo the writer count), so no two writers race for one version.
\set r 101 + :client_id + :clients * random(0, (:seeded - 102 - :clients) / :clients)
\set v random(50, 180)
\set pp :r % 100 + 1
BEGIN;
SELECT res_ver AS ver, res_type AS rtype FROM hapi.hfj_resource WHERE res_id = :r \gset
INSERT INTO hapi.hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc,
	res_updated, res_published, has_tags, res_version, request_id)
VALUES (pg_catalog.nextval('hapi.seq_resource_history_id'), :r, ':rtype', :ver + 1, 'JSON',
	'{"resourceType":":rtype","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/pat-:pp"},"encounter":{"reference":"Encounter/enc-:r"},"valueQuantity":{"value": :v,"unit":"/min"},"note":[{"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}',
	localtimestamp, localtimestamp, false, 'R4', 'bench:r');
UPDATE hapi.hfj_resource SET res_ver = :ver + 1, res_updated = localtimestamp,
	hash_sha256 = pg_catalog.md5(:v::text)
WHERE res_id = :r AND res_ver = :ver;
UPDATE hapi.hfj_spidx_quantity SET sp_value = :v, sp_updated = localtimestamp
WHERE res_id = :r AND sp_name = 'value-quantity';
COMMIT;
