"""End to end: HAPI FHIR JPA and Medplum writes reach the right patient rooms.

The database has HAPI's version and resource tables and Medplum's resource
tables, written statement by statement in each server's order (see README,
"watch() and layouts"), watched with the calls an operator runs:
fhir_notify.watch('hfj_res_ver') and fhir_notify.watch_medplum('public'). The
real bridge delivers; nothing of either server is changed.
"""

import itertools
import json
import os
import subprocess
import uuid

import pytest

from bridgeproc import (AUDIENCE, ISSUER, SECRET_FILE, Bridge, assert_update,  # noqa: F401
                        bridge_logs, hs256, new_id, shared_cluster)
from bridgeproc import _extension_can_watch

HAPI_SCHEMA = """
CREATE TABLE hfj_resource (
    res_id bigint PRIMARY KEY, partition_id integer, res_type varchar(40) NOT NULL,
    fhir_id varchar(64) NOT NULL, res_ver bigint NOT NULL, res_updated timestamp(6),
    res_published timestamp(6), res_deleted_at timestamp(6), hash_sha256 varchar(64),
    has_tags boolean NOT NULL DEFAULT false, res_version varchar(7));
CREATE UNIQUE INDEX idx_res_type_fhir_id ON hfj_resource (res_type, fhir_id)
    INCLUDE (res_id, res_deleted_at);
CREATE TABLE hfj_res_ver (
    pid bigint PRIMARY KEY, res_id bigint NOT NULL REFERENCES hfj_resource (res_id),
    res_type varchar(40) NOT NULL, res_ver bigint NOT NULL, res_encoding varchar(5) NOT NULL,
    res_text_vc text, res_text oid, res_updated timestamp(6) NOT NULL,
    res_published timestamp(6), res_deleted_at timestamp(6), partition_id integer,
    has_tags boolean NOT NULL DEFAULT false, res_version varchar(7), request_id varchar(16),
    CONSTRAINT idx_resver_id_ver UNIQUE (res_id, res_ver));
"""

MEDPLUM_TABLE = """
CREATE TABLE "{0}" (id uuid NOT NULL PRIMARY KEY, content text NOT NULL,
    "lastUpdated" timestamptz NOT NULL, deleted boolean NOT NULL DEFAULT false,
    "projectId" uuid NOT NULL, __version integer NOT NULL, compartments uuid[] NOT NULL,
    subject text, patient text);
CREATE TABLE "{0}_History" ("versionId" uuid NOT NULL PRIMARY KEY, id uuid NOT NULL,
    content text NOT NULL, "lastUpdated" timestamptz NOT NULL);
CREATE TABLE "{0}_References" ("resourceId" uuid NOT NULL, "targetId" uuid NOT NULL,
    code text NOT NULL, PRIMARY KEY ("resourceId", "targetId", code));
"""

PROJECT = "11111111-1111-4111-8111-111111111111"

_ids = itertools.count(1000)


@pytest.fixture(scope="module")
def db():
    if not _extension_can_watch():
        pytest.xfail("fhir_notify.watch() is not in this build")
    cluster = shared_cluster()
    dbname = "layouts_" + uuid.uuid4().hex[:10]
    cluster.execute(f'CREATE DATABASE "{dbname}"')
    with cluster.connect(dbname) as conn:
        conn.execute(HAPI_SCHEMA)
        conn.execute(MEDPLUM_TABLE.format("Observation"))
        conn.execute("CREATE EXTENSION fhir_notify")
        conn.execute("SELECT fhir_notify.watch('hfj_res_ver')")
        conn.execute("SELECT fhir_notify.watch_medplum('public')")
    return dbname


@pytest.fixture(scope="module")
def bridge(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]) as b:
        yield b
        assert b.proc.poll() is None, f"the bridge died during the tests:\n{b.log()[-4000:]}"


@pytest.fixture(scope="module")
def conn(db):
    with shared_cluster().connect(db) as c:
        yield c


class Hapi:
    """Writes as HAPI FHIR JPA 8 does: the version row, then hfj_resource."""

    def __init__(self, conn):
        self.conn = conn

    def create(self, res_type, fhir_id, body):
        res_id = next(_ids)
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO hfj_resource (res_id, res_type, fhir_id, res_ver, res_updated,"
                " res_published, res_version) VALUES (%s, %s, %s, 1, now(), now(), 'R4')",
                (res_id, res_type, fhir_id))
            self.conn.execute(
                "INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc,"
                " res_updated, res_published, res_version)"
                " VALUES (%s, %s, %s, 1, 'JSON', %s, now(), now(), 'R4')",
                (res_id, res_id, res_type, json.dumps(body)))
        return res_id

    def new_version(self, res_id, res_type, version, body):
        """An update (body) or a delete (body None: a DEL row)."""
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO hfj_res_ver (pid, res_id, res_type, res_ver, res_encoding, res_text_vc,"
                " res_updated, res_deleted_at, res_version)"
                " VALUES (%s, %s, %s, %s, %s, %s, now(), %s, 'R4')",
                (next(_ids), res_id, res_type, version, "JSON" if body else "DEL",
                 json.dumps(body) if body else None, None if body else "now"))
            self.conn.execute(
                "UPDATE hfj_resource SET res_ver = %s, res_updated = now(),"
                " res_deleted_at = CASE WHEN %s THEN NULL ELSE now() END"
                " WHERE res_id = %s AND res_ver = %s",
                (version, body is not None, res_id, version - 1))


def medplum_write(conn, table, resource, deleted=False):
    """Medplum's upsert of the resource table and its history row, in REPEATABLE READ."""
    content = "" if deleted else json.dumps(resource)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    try:
        conn.execute(
            f'INSERT INTO "{table}" (id, content, "lastUpdated", deleted, "projectId", __version,'
            " compartments, subject) VALUES (%s, %s, now(), %s, %s, %s, %s, %s)"
            ' ON CONFLICT ("id") DO UPDATE SET content = EXCLUDED.content,'
            ' "lastUpdated" = EXCLUDED."lastUpdated", deleted = EXCLUDED.deleted,'
            ' "projectId" = EXCLUDED."projectId", __version = EXCLUDED.__version,'
            " compartments = EXCLUDED.compartments, subject = EXCLUDED.subject",
            (resource["id"], content, deleted, PROJECT, -1 if deleted else 7,
             [] if deleted else [PROJECT], None if deleted else resource["subject"]["reference"]))
        conn.execute(
            f'INSERT INTO "{table}_History" ("versionId", id, content, "lastUpdated")'
            " VALUES (%s, %s, %s, now())", (str(uuid.uuid4()), resource["id"], content))
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def test_hapi_changes_reach_the_right_patient_rooms(bridge, conn):
    patient_a, patient_b, bystander = new_id("pat"), new_id("pat"), new_id("pat")
    hapi = Hapi(conn)
    token = hs256()
    with bridge.connect(token) as client_a, bridge.connect(token) as client_b, \
            bridge.connect(token) as client_other:
        client_a.subscribe("a", [patient_a])
        client_b.subscribe("b", [patient_b])
        client_other.subscribe("other", [bystander])
        obs_id = new_id("obs")
        body = {"resourceType": "Observation", "status": "final",
                "subject": {"reference": f"Patient/{patient_a}"}}
        res_id = hapi.create("Observation", obs_id, body)

        data = assert_update(client_a.recv_update(), "created", "Observation", obs_id, patient_a)
        resource = data["resource"]
        # What a FHIR read returns: HAPI's JSON with id and meta from the columns.
        assert resource["id"] == obs_id
        assert resource["meta"]["versionId"] == "1"
        assert resource["meta"]["lastUpdated"].endswith("Z")
        assert resource["subject"] == body["subject"]
        assert data["version_id"] == "1"

        # Moved to patient b: a is told it is gone, b gets it.
        moved = dict(body, subject={"reference": f"Patient/{patient_b}"})
        hapi.new_version(res_id, "Observation", 2, moved)
        data = assert_update(client_a.recv_update(), "deleted", "Observation", obs_id, patient_a)
        assert data["version_id"] == "2"
        data = assert_update(client_b.recv_update(), "updated", "Observation", obs_id, patient_b)
        assert data["resource"]["subject"] == moved["subject"]

        # Deleted (a DEL version row): b, whose it was, is told.
        hapi.new_version(res_id, "Observation", 3, None)
        data = assert_update(client_b.recv_update(), "deleted", "Observation", obs_id, patient_b)
        assert data["version_id"] == "3"

        client_a.expect_no_message()
        client_b.expect_no_message()
        client_other.expect_no_message()


def test_medplum_changes_reach_the_right_patient_rooms(bridge, conn):
    patient_a, patient_b = str(uuid.uuid4()), str(uuid.uuid4())
    token = hs256()
    with bridge.connect(token) as client_a, bridge.connect(token) as client_b:
        client_a.subscribe("a", [patient_a])
        client_b.subscribe("b", [patient_b])
        obs_id = str(uuid.uuid4())
        version = str(uuid.uuid4())
        resource = {"resourceType": "Observation", "id": obs_id,
                    "meta": {"versionId": version, "lastUpdated": "2025-10-01T10:00:00.000Z",
                             "project": PROJECT,
                             # Medplum's own compartment list is not used for routing.
                             "compartment": [{"reference": f"Patient/{patient_b}"}]},
                    "status": "final", "subject": {"reference": f"Patient/{patient_a}"}}
        medplum_write(conn, "Observation", resource)
        data = assert_update(client_a.recv_update(), "created", "Observation", obs_id, patient_a,
                             resource)
        assert data["version_id"] == version

        # A reindex rewrites the row with the same versionId: nothing.
        conn.execute('UPDATE "Observation" SET __version = 8 WHERE id = %s', (obs_id,))
        # An update, then the delete (deleted = true, content = '').
        updated = dict(resource, status="amended",
                       meta=dict(resource["meta"], versionId=str(uuid.uuid4())))
        medplum_write(conn, "Observation", updated)
        assert_update(client_a.recv_update(), "updated", "Observation", obs_id, patient_a, updated)
        medplum_write(conn, "Observation", updated, deleted=True)
        assert_update(client_a.recv_update(), "deleted", "Observation", obs_id, patient_a)

        client_a.expect_no_message()
        client_b.expect_no_message()


def test_medplum_watch_survives_dump_and_restore(tmp_path):
    """pg_restore recreates the tables (the event trigger must not watch them
    itself: their triggers come with the dump) and the watch works after."""
    cluster = shared_cluster()
    src, dst = "mp_src_" + uuid.uuid4().hex[:8], "mp_dst_" + uuid.uuid4().hex[:8]
    cluster.execute(f'CREATE DATABASE "{src}"')
    cluster.execute(f'CREATE DATABASE "{dst}"')
    with cluster.connect(src) as c:
        c.execute(MEDPLUM_TABLE.format("Observation"))
        c.execute("CREATE EXTENSION fhir_notify")
        c.execute("SELECT fhir_notify.watch_medplum('public')")
    dump = tmp_path / "medplum.dump"
    os.chmod(tmp_path, 0o777)
    base = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
    subprocess.run([os.path.join(cluster.bindir, "pg_dump"), *base, "-Fc", "-f", str(dump), src],
                   check=True, capture_output=True, timeout=120)
    restored = subprocess.run([os.path.join(cluster.bindir, "pg_restore"), *base, "--exit-on-error",
                               "-d", dst, str(dump)], capture_output=True, text=True, timeout=120)
    assert restored.returncode == 0, restored.stderr
    patient = str(uuid.uuid4())
    with cluster.connect(dst) as c:
        assert c.execute("SELECT count(*) FROM fhir_notify.watched").fetchone()[0] == 1
        medplum_write(c, "Observation", {"resourceType": "Observation", "id": str(uuid.uuid4()),
                                         "meta": {"versionId": str(uuid.uuid4())},
                                         "subject": {"reference": f"Patient/{patient}"}})
        assert c.execute("SELECT action, patient_ids FROM fhir_notify.changes").fetchall() == \
            [("created", [patient])]
        # Tables added after the restore are still watched.
        c.execute(MEDPLUM_TABLE.format("Flag"))
        assert c.execute("SELECT count(*) FROM fhir_notify.watched").fetchone()[0] == 2


def test_bodies_read_back_by_version_and_an_expunged_version(tmp_path):
    """Watched with "body": "by_version", the log keeps the version's key and
    the bridge delivers the body read back from hfj_res_ver and
    "<Type>_History": the same update as with the copy. A version gone
    before delivery (written and expunged in one transaction here, so the
    bridge cannot read it first) still arrives, without a body and with
    "resource_gone": true."""
    cluster = shared_cluster()
    dbname = "by_version_" + uuid.uuid4().hex[:10]
    cluster.execute(f'CREATE DATABASE "{dbname}"')
    with cluster.connect(dbname) as c:
        c.execute(HAPI_SCHEMA)
        c.execute(MEDPLUM_TABLE.format("Observation"))
        c.execute("CREATE EXTENSION fhir_notify")
        c.execute("""SELECT fhir_notify.watch('hfj_res_ver', 'auto', '{"body": "by_version"}')""")
        c.execute("""SELECT fhir_notify.watch_medplum('public', '{"body": "by_version"}')""")
    with Bridge(cluster, dbname, secret_file=SECRET_FILE,
                args=["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]) as bridge, \
            cluster.connect(dbname) as conn:
        patient = str(uuid.uuid4())
        with bridge.connect(hs256()) as client:
            client.subscribe("s", [patient])
            hapi = Hapi(conn)
            obs_id = new_id("obs")
            body = {"resourceType": "Observation", "status": "final",
                    "subject": {"reference": f"Patient/{patient}"}}
            res_id = hapi.create("Observation", obs_id, body)
            data = assert_update(client.recv_update(), "created", "Observation", obs_id, patient)
            assert data["resource"]["id"] == obs_id
            assert data["resource"]["meta"]["versionId"] == "1"
            assert data["resource"]["meta"]["lastUpdated"].endswith("Z")
            assert data["resource"]["subject"] == body["subject"]
            assert "resource_gone" not in data

            # HAPI: version 2 written and expunged before the bridge reads it.
            with conn.transaction():
                hapi.new_version(res_id, "Observation", 2, dict(body, status="amended"))
                conn.execute("DELETE FROM hfj_res_ver WHERE res_id = %s AND res_ver = 2", (res_id,))
            data = assert_update(client.recv_update(), "updated", "Observation", obs_id, patient)
            assert data["resource"] is None and data["resource_gone"] is True, data
            assert data["version_id"] == "2"

            # Medplum: the _History row's versionId is meta.versionId, as Medplum writes it.
            mp_id, version = str(uuid.uuid4()), str(uuid.uuid4())
            resource = {"resourceType": "Observation", "id": mp_id,
                        "meta": {"versionId": version, "lastUpdated": "2025-10-01T10:00:00.000Z"},
                        "status": "final", "subject": {"reference": f"Patient/{patient}"}}
            with conn.transaction():
                conn.execute(
                    'INSERT INTO "Observation" (id, content, "lastUpdated", deleted, "projectId",'
                    ' __version, compartments, subject) VALUES (%s, %s, now(), false, %s, 7, %s, %s)',
                    (mp_id, json.dumps(resource), PROJECT, [PROJECT], f"Patient/{patient}"))
                conn.execute('INSERT INTO "Observation_History" ("versionId", id, content,'
                             ' "lastUpdated") VALUES (%s, %s, %s, now())',
                             (version, mp_id, json.dumps(resource)))
            data = assert_update(client.recv_update(), "created", "Observation", mp_id, patient,
                                 resource)
            assert "resource_gone" not in data
            logged = conn.execute("SELECT count(*) FILTER (WHERE resource IS NULL"
                                  " AND source_key IS NOT NULL), count(*)"
                                  " FROM fhir_notify.changes").fetchone()
            assert logged == (3, 3), logged
            client.expect_no_message()
        assert bridge.proc.poll() is None, bridge.log()[-4000:]
