-- An update of an existing resource as WintEHR does it: bump version_id and
-- last_updated, and write the new versionId into the JSON.
\set r random(101, :seeded)
UPDATE fhir.resources
   SET version_id = version_id + 1,
       last_updated = pg_catalog.now(),
       resource = pg_catalog.jsonb_set(resource, '{meta,versionId}',
                                       pg_catalog.to_jsonb((version_id + 1)::text))
 WHERE id = :r;
