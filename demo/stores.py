"""Where the demo's FHIR server keeps its resources, and how it writes them.

DEMO_LAYOUT picks one (default wintehr):

  wintehr   WintEHR's fhir.resources (jsonb, a version row, a history row,
            soft delete), as WintEHR wrote before it moved to HAPI;
  hapi      HAPI FHIR JPA 8.x's hfj_resource and hfj_res_ver (the JSON as
            text without id and meta, a version row per write, links in
            hfj_res_link), as today's WintEHR writes through HAPI;
  medplum   Medplum 5.x's tables, one per resource type (the JSON as
            content text, an upsert in a REPEATABLE READ transaction, a
            "<Type>_History" row and "<Type>_References" lookups).

Each store creates its tables (if missing), loads the sample, makes the
one fhir_notify.watch call an operator of that server makes, and reads and
writes resources statement by statement the way that server does. They are
for the demo: one writer's view, no FHIR search, no validation.

A store's write methods run inside the caller's transaction (psycopg,
autocommit off); call begin() first in each one, as the server would open
it.
"""

import datetime
import json
import uuid

import sampledata

LAYOUTS = ("wintehr", "hapi", "medplum")


def store(layout):
    """The store for a DEMO_LAYOUT value."""
    layout = layout or "wintehr"
    if layout not in STORES:
        raise ValueError(f"DEMO_LAYOUT must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    return STORES[layout]()


def patient_of(resource):
    """The bare id of the Patient a resource's subject or patient names, or None."""
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return ref[8:] if ref.startswith("Patient/") else None


class WintehrStore:
    name = "wintehr"
    tables = "fhir.resources"
    watched = "fhir.resources"
    SCHEMA = """
CREATE SCHEMA IF NOT EXISTS fhir;
CREATE TABLE IF NOT EXISTS fhir.resources (
    id bigserial PRIMARY KEY,
    resource_type varchar NOT NULL,
    fhir_id varchar NOT NULL,
    version_id int NOT NULL DEFAULT 1,
    last_updated timestamptz NOT NULL DEFAULT now(),
    deleted boolean DEFAULT false,
    resource jsonb NOT NULL,
    UNIQUE (resource_type, fhir_id)
);
CREATE TABLE IF NOT EXISTS fhir.resource_history (
    id bigserial PRIMARY KEY,
    resource_id bigint REFERENCES fhir.resources(id),
    version_id int,
    operation varchar,
    resource jsonb,
    created_at timestamp DEFAULT now()
);
"""

    def create_tables(self, conn):
        conn.execute(self.SCHEMA)

    def patient_count(self, conn):
        return conn.execute("SELECT count(*) FROM fhir.resources WHERE resource_type = 'Patient'").fetchone()[0]

    def watch(self, conn):
        """Watches the table unless it already is; returns whether it had to."""
        watched = conn.execute(
            "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE t.tgrelid = 'fhir.resources'::regclass AND n.nspname = 'fhir_notify'").fetchone()[0]
        if watched:
            return False
        conn.execute("SELECT fhir_notify.watch('fhir.resources')")
        return True

    def begin(self, conn):
        pass

    def patients(self, conn):
        return [r[0] for r in conn.execute(
            "SELECT resource FROM fhir.resources WHERE resource_type = 'Patient' AND NOT coalesce(deleted, false) "
            "ORDER BY resource->'name'->0->>'family'").fetchall()]

    def patient(self, conn, patient_id):
        row = conn.execute(
            "SELECT resource FROM fhir.resources WHERE resource_type = 'Patient' AND fhir_id = %s "
            "AND NOT coalesce(deleted, false)", (patient_id,)).fetchone()
        return row[0] if row else None

    def chart(self, conn, patient_id, types):
        """(type, id, version, last_updated, resource) of the patient's live resources, newest first."""
        return conn.execute(
            "SELECT r.resource_type, r.fhir_id, r.version_id::text, r.last_updated, r.resource "
            "FROM fhir.resources r WHERE r.resource_type = ANY(%(types)s) AND NOT coalesce(r.deleted, false) "
            "AND (r.resource->'subject'->>'reference' = %(ref)s OR r.resource->'patient'->>'reference' = %(ref)s) "
            "ORDER BY r.last_updated DESC", {"types": list(types), "ref": f"Patient/{patient_id}"}).fetchall()

    def exists(self, conn, resource_type, fhir_id):
        return conn.execute("SELECT 1 FROM fhir.resources WHERE resource_type = %s AND fhir_id = %s",
                            (resource_type, fhir_id)).fetchone() is not None

    def create(self, conn, resource):
        """Inserts resource as WintEHR did: version 1 in fhir.resources plus a history row."""
        return sampledata.insert_resource(conn, resource)

    def update(self, conn, resource_type, fhir_id, resource):
        """A new version of a live resource, or None when there is none."""
        row = conn.execute(
            "SELECT id, version_id FROM fhir.resources WHERE resource_type = %s AND fhir_id = %s "
            "AND NOT coalesce(deleted, false) FOR UPDATE", (resource_type, fhir_id)).fetchone()
        if row is None:
            return None
        version = row[1] + 1
        resource = dict(resource, id=fhir_id)
        resource["meta"] = dict(resource.get("meta") or {}, versionId=str(version), lastUpdated=sampledata.now_iso())
        conn.execute("UPDATE fhir.resources SET version_id = %s, last_updated = now(), resource = %s WHERE id = %s",
                     (version, json.dumps(resource), row[0]))
        conn.execute("INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource) "
                     "VALUES (%s, %s, 'update', %s)", (row[0], version, json.dumps(resource)))
        return resource

    def delete(self, conn, resource_type, fhir_id):
        """Soft-deletes a live resource; returns whether there was one."""
        row = conn.execute(
            "UPDATE fhir.resources SET deleted = true, version_id = version_id + 1, last_updated = now() "
            "WHERE resource_type = %s AND fhir_id = %s AND NOT coalesce(deleted, false) "
            "RETURNING id, version_id, resource", (resource_type, fhir_id)).fetchone()
        if row is None:
            return False
        conn.execute("INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource) "
                     "VALUES (%s, %s, 'delete', %s)", (row[0], row[1], json.dumps(row[2])))
        return True


class HapiStore:
    """HAPI FHIR JPA: hfj_resource (one row per resource, the current
    version), hfj_res_ver (one row per version, the JSON as text without id
    and meta.versionId/lastUpdated), hfj_res_link (the references, which is
    how HAPI finds a patient's resources). Timestamps are UTC without zone."""

    name = "hapi"
    tables = "hfj_resource, hfj_res_ver, hfj_res_link"
    watched = "hfj_res_ver"
    SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS seq_resource_id INCREMENT 50;
CREATE SEQUENCE IF NOT EXISTS seq_resource_history_id INCREMENT 50;
CREATE SEQUENCE IF NOT EXISTS seq_reslink_id INCREMENT 50;
CREATE TABLE IF NOT EXISTS hfj_resource (
    res_id bigint PRIMARY KEY,
    partition_id integer,
    res_type varchar(40) NOT NULL,
    fhir_id varchar(64) NOT NULL,
    res_ver bigint NOT NULL,
    res_updated timestamp(6),
    res_published timestamp(6),
    res_deleted_at timestamp(6),
    hash_sha256 varchar(64),
    sp_has_links boolean NOT NULL DEFAULT false,
    has_tags boolean NOT NULL DEFAULT false,
    res_version varchar(7),
    sp_index_status smallint
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_res_type_fhir_id ON hfj_resource (res_type, fhir_id)
    INCLUDE (res_id, res_deleted_at);
CREATE TABLE IF NOT EXISTS hfj_res_ver (
    pid bigint PRIMARY KEY,
    res_id bigint NOT NULL REFERENCES hfj_resource (res_id),
    res_type varchar(40) NOT NULL,
    res_ver bigint NOT NULL,
    res_encoding varchar(5) NOT NULL,
    res_text_vc text,
    res_text oid,
    res_updated timestamp(6) NOT NULL,
    res_published timestamp(6),
    res_deleted_at timestamp(6),
    partition_id integer,
    has_tags boolean NOT NULL DEFAULT false,
    res_version varchar(7),
    source_uri varchar(768),
    request_id varchar(16),
    CONSTRAINT idx_resver_id_ver UNIQUE (res_id, res_ver)
);
CREATE TABLE IF NOT EXISTS hfj_res_link (
    pid bigint PRIMARY KEY,
    partition_id integer,
    src_path varchar(500) NOT NULL,
    src_resource_id bigint NOT NULL REFERENCES hfj_resource (res_id),
    source_resource_type varchar(40) NOT NULL,
    target_resource_id bigint REFERENCES hfj_resource (res_id),
    target_resource_type varchar(40) NOT NULL,
    target_resource_url varchar(200),
    sp_updated timestamp(6)
);
CREATE INDEX IF NOT EXISTS idx_rl_src ON hfj_res_link (src_resource_id);
CREATE INDEX IF NOT EXISTS idx_rl_tgt_v2 ON hfj_res_link (target_resource_id, src_path, src_resource_id);
"""
    NOW = "(pg_catalog.now() AT TIME ZONE 'UTC')"

    def create_tables(self, conn):
        conn.execute(self.SCHEMA)

    def patient_count(self, conn):
        return conn.execute("SELECT count(*) FROM hfj_resource WHERE res_type = 'Patient'").fetchone()[0]

    def watch(self, conn):
        if conn.execute("SELECT 1 FROM fhir_notify.watched WHERE \"table\" = 'hfj_res_ver'::regclass").fetchone():
            return False
        conn.execute("SELECT fhir_notify.watch('hfj_res_ver')")
        return True

    def begin(self, conn):
        pass

    @staticmethod
    def body(resource):
        """The JSON as HAPI stores it: no id, no meta.versionId/lastUpdated."""
        body = {k: v for k, v in resource.items() if k != "id"}
        meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        body.pop("meta", None)
        if meta:
            body["meta"] = meta
        return json.dumps(body)

    @staticmethod
    def read(fhir_id, version, updated, text):
        """A resource as HAPI's FHIR read returns it."""
        resource = json.loads(text)
        resource["id"] = fhir_id
        resource["meta"] = dict(resource.get("meta") or {}, versionId=str(version),
                                lastUpdated=updated.isoformat(timespec="milliseconds") + "Z")
        return resource

    CURRENT = ("SELECT r.res_type, r.fhir_id, r.res_ver, v.res_updated, v.res_text_vc FROM hfj_resource r "
               "JOIN hfj_res_ver v ON v.res_id = r.res_id AND v.res_ver = r.res_ver "
               "WHERE r.res_deleted_at IS NULL AND v.res_encoding = 'JSON' ")

    def patients(self, conn):
        rows = conn.execute(self.CURRENT + "AND r.res_type = 'Patient'").fetchall()
        out = [self.read(fhir_id, ver, updated, text) for _, fhir_id, ver, updated, text in rows]
        return sorted(out, key=lambda p: ((p.get("name") or [{}])[0].get("family") or ""))

    def patient(self, conn, patient_id):
        row = conn.execute(self.CURRENT + "AND r.res_type = 'Patient' AND r.fhir_id = %s", (patient_id,)).fetchone()
        return self.read(row[1], row[2], row[3], row[4]) if row else None

    def chart(self, conn, patient_id, types):
        rows = conn.execute(
            self.CURRENT + "AND r.res_type = ANY(%s) AND r.res_id IN ("
            "SELECT l.src_resource_id FROM hfj_res_link l JOIN hfj_resource p ON p.res_id = l.target_resource_id "
            "WHERE p.res_type = 'Patient' AND p.fhir_id = %s) ORDER BY v.res_updated DESC",
            (list(types), patient_id)).fetchall()
        return [(t, fhir_id, str(ver), updated.replace(tzinfo=datetime.timezone.utc),
                 self.read(fhir_id, ver, updated, text)) for t, fhir_id, ver, updated, text in rows]

    def exists(self, conn, resource_type, fhir_id):
        return conn.execute("SELECT 1 FROM hfj_resource WHERE res_type = %s AND fhir_id = %s",
                            (resource_type, fhir_id)).fetchone() is not None

    def _links(self, conn, res_id, resource):
        """The index rows: a link for the subject or patient reference."""
        patient = patient_of(resource)
        if patient is None:
            return
        path = "subject" if "subject" in resource else "patient"
        conn.execute(
            "INSERT INTO hfj_res_link (pid, src_path, src_resource_id, source_resource_type, target_resource_id, "
            "target_resource_type, sp_updated) SELECT pg_catalog.nextval('seq_reslink_id'), %s, %s, %s, p.res_id, "
            "'Patient', " + self.NOW + " FROM hfj_resource p WHERE p.res_type = 'Patient' AND p.fhir_id = %s",
            (f"{resource['resourceType']}.{path}", res_id, resource["resourceType"], patient))

    def create(self, conn, resource):
        """A create: INSERT hfj_resource (version 1), INSERT hfj_res_ver, then the index rows."""
        resource_type = resource["resourceType"]
        res_id, updated = conn.execute(
            "INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated, res_published, "
            "sp_has_links, res_version, sp_index_status) "
            "VALUES (pg_catalog.nextval('seq_resource_id'), %s, %s, 1, " + self.NOW + ", " + self.NOW +
            ", %s, 'R4', 1) RETURNING res_id, res_updated",
            (resource_type, resource["id"], patient_of(resource) is not None)).fetchone()
        conn.execute(
            "INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, "
            "res_published, res_version) VALUES (pg_catalog.nextval('seq_resource_history_id'), %s, %s, 1, 'JSON', "
            "%s, %s, %s, 'R4')", (res_id, resource_type, self.body(resource), updated, updated))
        self._links(conn, res_id, resource)
        return self.read(resource["id"], 1, updated, self.body(resource))

    def update(self, conn, resource_type, fhir_id, resource):
        """An update: INSERT hfj_res_ver (version n) before UPDATE hfj_resource
        ... WHERE res_ver = n - 1, then the index rows that changed."""
        row = conn.execute("SELECT res_id, res_ver FROM hfj_resource WHERE res_type = %s AND fhir_id = %s "
                           "AND res_deleted_at IS NULL FOR UPDATE", (resource_type, fhir_id)).fetchone()
        if row is None:
            return None
        res_id, version = row[0], row[1] + 1
        resource = dict(resource, id=fhir_id)
        updated = conn.execute(
            "INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc, res_updated, "
            "res_published, res_version) VALUES (pg_catalog.nextval('seq_resource_history_id'), %s, %s, %s, 'JSON', "
            "%s, " + self.NOW + ", " + self.NOW + ", 'R4') RETURNING res_updated",
            (res_id, resource_type, version, self.body(resource))).fetchone()[0]
        conn.execute("UPDATE hfj_resource SET res_ver = %s, res_updated = %s WHERE res_id = %s AND res_ver = %s",
                     (version, updated, res_id, version - 1))
        conn.execute("DELETE FROM hfj_res_link WHERE src_resource_id = %s", (res_id,))
        self._links(conn, res_id, resource)
        return self.read(fhir_id, version, updated, self.body(resource))

    def delete(self, conn, resource_type, fhir_id):
        """A delete: the index rows go, a DEL version row, hfj_resource marked deleted."""
        row = conn.execute("SELECT res_id, res_ver FROM hfj_resource WHERE res_type = %s AND fhir_id = %s "
                           "AND res_deleted_at IS NULL FOR UPDATE", (resource_type, fhir_id)).fetchone()
        if row is None:
            return False
        res_id, version = row[0], row[1] + 1
        conn.execute("DELETE FROM hfj_res_link WHERE src_resource_id = %s", (res_id,))
        updated = conn.execute(
            "INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_updated, res_published, "
            "res_deleted_at, res_version) VALUES (pg_catalog.nextval('seq_resource_history_id'), %s, %s, %s, 'DEL', "
            + self.NOW + ", " + self.NOW + ", " + self.NOW + ", 'R4') RETURNING res_updated",
            (res_id, resource_type, version)).fetchone()[0]
        conn.execute("UPDATE hfj_resource SET res_deleted_at = %s, res_ver = %s, res_updated = %s, hash_sha256 = NULL "
                     "WHERE res_id = %s", (updated, version, updated, res_id))
        return True


class MedplumStore:
    """Medplum: one table per resource type in schema public, the JSON as
    content text with id and meta (versionId a new UUID on every write),
    written by an upsert in a REPEATABLE READ transaction, with a history row
    and reference lookups. Resource ids are UUIDs."""

    name = "medplum"
    tables = "one table per resource type (\"Patient\", \"Condition\", ...)"
    watched = "every Medplum resource table of schema public (watch_medplum)"
    TYPES = ("Patient", "AllergyIntolerance", "Condition", "Encounter", "MedicationRequest", "Observation")
    PROJECT = "d3a0f6c2-1b7e-4c55-9a41-6f0d2c8e5b11"

    def create_tables(self, conn):
        for t in self.TYPES:
            conn.execute(f'''
CREATE TABLE IF NOT EXISTS "{t}" (
    id uuid NOT NULL PRIMARY KEY, content text NOT NULL, "lastUpdated" timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false, "projectId" uuid NOT NULL, __version integer NOT NULL,
    compartments uuid[] NOT NULL, subject text, patient text, "_source" text, "_profile" text[]);
CREATE INDEX IF NOT EXISTS "{t}_compartments_idx" ON "{t}" USING gin (compartments);
CREATE INDEX IF NOT EXISTS "{t}_subject_idx" ON "{t}" (subject);
CREATE INDEX IF NOT EXISTS "{t}_patient_idx" ON "{t}" (patient);
CREATE TABLE IF NOT EXISTS "{t}_History" ("versionId" uuid NOT NULL PRIMARY KEY, id uuid NOT NULL,
    content text NOT NULL, "lastUpdated" timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS "{t}_History_id_idx" ON "{t}_History" (id);
CREATE TABLE IF NOT EXISTS "{t}_References" ("resourceId" uuid NOT NULL, "targetId" uuid NOT NULL,
    code text NOT NULL, PRIMARY KEY ("resourceId", "targetId", code));
''')

    def patient_count(self, conn):
        return conn.execute('SELECT count(*) FROM "Patient"').fetchone()[0]

    def watch(self, conn):
        """watch_medplum() is safe to run again: it watches what is not watched yet."""
        known = conn.execute("SELECT 1 FROM fhir_notify.watched_schemas "
                             "WHERE schema_name = 'public'::regnamespace").fetchone()
        conn.execute("SET client_min_messages = warning")
        conn.execute("SELECT fhir_notify.watch_medplum('public')")
        conn.execute("RESET client_min_messages")
        return known is None

    def begin(self, conn):
        """Every Medplum write: BEGIN ISOLATION LEVEL REPEATABLE READ."""
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def patients(self, conn):
        rows = conn.execute('SELECT content FROM "Patient" WHERE NOT deleted').fetchall()
        out = [json.loads(r[0]) for r in rows]
        return sorted(out, key=lambda p: ((p.get("name") or [{}])[0].get("family") or ""))

    def patient(self, conn, patient_id):
        try:
            uuid.UUID(patient_id)
        except ValueError:
            return None
        row = conn.execute('SELECT content FROM "Patient" WHERE id = %s AND NOT deleted', (patient_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def chart(self, conn, patient_id, types):
        out = []
        ref = f"Patient/{patient_id}"
        for t in types:
            for content, updated in conn.execute(
                    f'SELECT content, "lastUpdated" FROM "{t}" WHERE NOT deleted AND (subject = %s OR patient = %s)',
                    (ref, ref)).fetchall():
                resource = json.loads(content)
                out.append((t, resource["id"], resource["meta"]["versionId"], updated, resource))
        return sorted(out, key=lambda r: r[3], reverse=True)

    def exists(self, conn, resource_type, fhir_id):
        try:
            uuid.UUID(fhir_id)
        except ValueError:
            return False
        return conn.execute(f'SELECT 1 FROM "{resource_type}" WHERE id = %s', (fhir_id,)).fetchone() is not None

    def _write(self, conn, resource, deleted=False, old=None):
        """The upsert, the history row and the reference lookups of one write."""
        t = resource["resourceType"]
        patient = patient_of(old if deleted else resource)
        ref = f"Patient/{patient}" if patient else None
        if deleted:
            content, compartments, version = "", [], -1
        else:
            compartments = [self.PROJECT] + ([patient] if patient else [])
            resource["meta"] = dict(resource.get("meta") or {}, project=self.PROJECT,
                                    versionId=str(uuid.uuid4()), lastUpdated=sampledata.now_iso(),
                                    compartment=[{"reference": f"Project/{self.PROJECT}"}]
                                    + ([{"reference": ref}] if ref else []))
            content, version = json.dumps(resource), 7
        subject = ref if not deleted and "subject" in resource else None
        patient_column = ref if not deleted else None
        conn.execute(
            f'INSERT INTO "{t}" (id, content, "lastUpdated", deleted, "projectId", __version, compartments, '
            f'subject, patient) VALUES (%s, %s, pg_catalog.now(), %s, %s, %s, %s::uuid[], %s, %s) '
            f'ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, "lastUpdated" = EXCLUDED."lastUpdated", '
            f'deleted = EXCLUDED.deleted, "projectId" = EXCLUDED."projectId", __version = EXCLUDED.__version, '
            f'compartments = EXCLUDED.compartments, subject = EXCLUDED.subject, patient = EXCLUDED.patient',
            (resource["id"], content, deleted, self.PROJECT, version, compartments, subject, patient_column))
        conn.execute(f'INSERT INTO "{t}_History" ("versionId", id, content, "lastUpdated") '
                     f'VALUES (%s, %s, %s, pg_catalog.now())',
                     (str(uuid.uuid4()) if deleted else resource["meta"]["versionId"], resource["id"], content))
        conn.execute(f'DELETE FROM "{t}_References" WHERE "resourceId" = %s', (resource["id"],))
        if patient and not deleted:
            conn.execute(f'INSERT INTO "{t}_References" ("resourceId", "targetId", code) VALUES (%s, %s, %s) '
                         f'ON CONFLICT DO NOTHING', (resource["id"], patient, "subject" if subject else "patient"))
        return resource

    def create(self, conn, resource):
        resource = dict(resource)
        resource.setdefault("id", str(uuid.uuid4()))
        return self._write(conn, resource)

    def _current(self, conn, resource_type, fhir_id):
        """The live resource's JSON, or None."""
        if not self.exists(conn, resource_type, fhir_id):
            return None
        row = conn.execute(f'SELECT content FROM "{resource_type}" WHERE id = %s AND NOT deleted',
                           (fhir_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def update(self, conn, resource_type, fhir_id, resource):
        if self._current(conn, resource_type, fhir_id) is None:
            return None
        return self._write(conn, dict(resource, id=fhir_id))

    def delete(self, conn, resource_type, fhir_id):
        """Medplum's delete: the same upsert with deleted = true, content ''."""
        old = self._current(conn, resource_type, fhir_id)
        if old is None:
            return False
        self._write(conn, {"resourceType": resource_type, "id": fhir_id}, deleted=True, old=old)
        return True


STORES = {"wintehr": WintehrStore, "hapi": HapiStore, "medplum": MedplumStore}


def load(conn, store_):
    """Loads the vendored sample and the generated vital signs, one write per resource."""
    sample = sampledata.resources()
    for resource in sample:
        store_.create(conn, resource)
    for resource in sample:
        if resource["resourceType"] == "Patient":
            for obs in sampledata.generated_vitals(resource["id"]):
                store_.create(conn, obs)
