-- An update of an existing resource as WintEHR does it: bump version_id and
-- last_updated, and write the new versionId into the JSON; and the
-- version's history row, in the same transaction.
\set r random(101, :seeded)
WITH u AS (
UPDATE fhir.resources
   SET version_id = version_id + 1,
       last_updated = pg_catalog.now(),
       resource = pg_catalog.jsonb_set(resource, '{meta,versionId}',
                                       pg_catalog.to_jsonb((version_id + 1)::text))
 WHERE id = :r
RETURNING id, version_id, resource)
INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource)
SELECT u.id, u.version_id, 'update', u.resource FROM u;
