-- An update of a seeded Observation (same patient, new value and
-- meta.versionId), written the way Medplum writes one: BEGIN
-- ISOLATION LEVEL REPEATABLE READ; the upsert of the resource table
-- (INSERT ... ON CONFLICT (id) DO UPDATE SET every column = EXCLUDED);
-- INSERT "Observation_History"; DELETE and INSERT ... ON CONFLICT DO NOTHING of
-- "Observation_References"; COMMIT. Medplum makes the uuids in the client; here
-- they are spelt from pgbench's random numbers.
-- Each writer updates its own resources, so no two race for one row.
\set g 102 + 2 * (:client_id + :clients * random(0, (:seeded - 104 - 2 * :clients) / (2 * :clients)))
\set r 100000000000 + :g
\set pp 100000000000 + :g % 100 + 1
\set e 100000000000 + :g
\set c 1000 + :client_id
\set b random(100000000000, 999999999999)
\set v random(50, 180)
BEGIN ISOLATION LEVEL REPEATABLE READ;
INSERT INTO medplum."Observation" (id, content, "lastUpdated", deleted, "projectId", __version, compartments, "_profile", subject, patient, encounter, performer, code, category, status, date, "valueQuantity")
VALUES ('30000000-0000-4000-8000-:r', '{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"subject":{"reference":"Patient/00000000-0000-4000-8000-:pp"},"encounter":{"reference":"Encounter/50000000-0000-4000-8000-:e"},"effectiveDateTime":"2026-11-26T09:58:16-05:00","issued":"2026-11-26T09:58:16.123-05:00","performer":[{"reference":"Practitioner/bbbbbbbb-0000-4000-8000-000000000001","display":"Dr. Sample"}],"valueQuantity":{"value": :v,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"},"id":"30000000-0000-4000-8000-:r","meta":{"project":"aaaaaaaa-0000-4000-8000-000000000001","versionId":"2000:c-0000-4000-8000-:b","lastUpdated":"2026-11-26T10:00:00.000Z","author":{"reference":"Practitioner/bbbbbbbb-0000-4000-8000-000000000001"},"compartment":[{"reference":"Project/aaaaaaaa-0000-4000-8000-000000000001"},{"reference":"Patient/00000000-0000-4000-8000-:pp"}]}}', pg_catalog.now(), false, 'aaaaaaaa-0000-4000-8000-000000000001', 7, ARRAY['aaaaaaaa-0000-4000-8000-000000000001', '00000000-0000-4000-8000-:pp']::uuid[], NULL, 'Patient/00000000-0000-4000-8000-:pp', 'Patient/00000000-0000-4000-8000-:pp', 'Encounter/50000000-0000-4000-8000-:e', ARRAY['Practitioner/bbbbbbbb-0000-4000-8000-000000000001'], ARRAY['http://loinc.org|8867-4', '|8867-4'], ARRAY['http://terminology.hl7.org/CodeSystem/observation-category|vital-signs', '|vital-signs'], 'final', '2026-11-26T14:58:16Z', :v)
ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, "lastUpdated" = EXCLUDED."lastUpdated", deleted = EXCLUDED.deleted, "projectId" = EXCLUDED."projectId", __version = EXCLUDED.__version, compartments = EXCLUDED.compartments, "_profile" = EXCLUDED."_profile", subject = EXCLUDED.subject, patient = EXCLUDED.patient, encounter = EXCLUDED.encounter, performer = EXCLUDED.performer, code = EXCLUDED.code, category = EXCLUDED.category, status = EXCLUDED.status, date = EXCLUDED.date, "valueQuantity" = EXCLUDED."valueQuantity";
INSERT INTO medplum."Observation_History" ("versionId", id, content, "lastUpdated")
VALUES ('2000:c-0000-4000-8000-:b', '30000000-0000-4000-8000-:r', '{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"subject":{"reference":"Patient/00000000-0000-4000-8000-:pp"},"encounter":{"reference":"Encounter/50000000-0000-4000-8000-:e"},"effectiveDateTime":"2026-11-26T09:58:16-05:00","issued":"2026-11-26T09:58:16.123-05:00","performer":[{"reference":"Practitioner/bbbbbbbb-0000-4000-8000-000000000001","display":"Dr. Sample"}],"valueQuantity":{"value": :v,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"},"id":"30000000-0000-4000-8000-:r","meta":{"project":"aaaaaaaa-0000-4000-8000-000000000001","versionId":"2000:c-0000-4000-8000-:b","lastUpdated":"2026-11-26T10:00:00.000Z","author":{"reference":"Practitioner/bbbbbbbb-0000-4000-8000-000000000001"},"compartment":[{"reference":"Project/aaaaaaaa-0000-4000-8000-000000000001"},{"reference":"Patient/00000000-0000-4000-8000-:pp"}]}}', pg_catalog.now());
DELETE FROM medplum."Observation_References" WHERE "resourceId" = '30000000-0000-4000-8000-:r';
INSERT INTO medplum."Observation_References" ("resourceId", "targetId", code)
VALUES ('30000000-0000-4000-8000-:r', '00000000-0000-4000-8000-:pp', 'subject'), ('30000000-0000-4000-8000-:r', '00000000-0000-4000-8000-:pp', 'patient'), ('30000000-0000-4000-8000-:r', '50000000-0000-4000-8000-:e', 'encounter'), ('30000000-0000-4000-8000-:r', 'bbbbbbbb-0000-4000-8000-000000000001', 'performer')
ON CONFLICT DO NOTHING;
COMMIT;
