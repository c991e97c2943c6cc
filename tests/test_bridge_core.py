"""End to end, the bridge's own extras: --authorize-sql, TLS, catch-up read from the
database (after a bridge restart the ring buffer is empty), --resume-max-age, static files.

The protocol, auth, resume and operations suites are test_bridge_{delivery,auth,resume,ops}.py.
"""

import asyncio
import datetime
import http.client
import ssl
import time

import psycopg
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridgeproc import (AUDIENCE, ISSUER, SECRET_FILE, Bridge, FhirStore, assert_update,  # noqa: F401
                        bridge_logs, condition, create_fhir_database, hs256, new_id, observation,
                        shared_cluster)

ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]


@pytest.fixture(scope="module")
def db():
    try:
        return create_fhir_database(shared_cluster())
    except psycopg.errors.UndefinedFunction as error:  # watch() comes with the capture trigger
        pytest.skip(f"the extension cannot watch tables yet: {error}")


@pytest.fixture(scope="module")
def store(db):
    s = FhirStore(shared_cluster(), db)
    yield s
    s.close()


# -- --authorize-sql -------------------------------------------------------------------

AUTHORIZE_SQL = "SELECT EXISTS (SELECT 1 FROM public.chart_access WHERE username = $1 AND patient = $2)"


def test_authorize_sql_decides_per_user_and_patient(db, store):
    cluster = shared_cluster()
    mine, theirs = new_id("pat"), new_id("pat")
    cluster.execute("CREATE TABLE IF NOT EXISTS public.chart_access (username text, patient text)", dbname=db)
    cluster.execute("INSERT INTO public.chart_access VALUES ('dr.a', %s), ('dr.b', %s)", (mine, theirs),
                    dbname=db)
    with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS + ["--authorize-sql", AUTHORIZE_SQL]) as bridge:
        with bridge.connect(hs256(sub="dr.a")) as client:
            client.send_json({"type": "subscribe", "data": {"subscription_id": "both",
                                                            "patient_ids": [mine, theirs]}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer
            assert answer["subscription_id"] == "both", answer
            client.subscribe("mine", [mine])
            store.create(condition(theirs))  # subscribed by nobody: must not arrive
            written = store.create(condition(mine))
            assert_update(client.recv_update(), "created", "Condition", written["id"], mine, written)
            client.expect_no_message()
            # The answer is cached: a second subscription is accepted without asking again.
            client.subscribe("again", [mine])
        with bridge.connect(hs256(sub="dr.b")) as client:
            client.subscribe("theirs", [theirs])
            client.send_json({"type": "subscribe", "data": {"subscription_id": "x", "patient_ids": [mine]}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer


def test_authorize_sql_that_fails_refuses(db):
    """A broken policy query fails closed: FORBIDDEN, never a subscription."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--authorize-sql", "SELECT $1::text = $2::text FROM no_such_table"]) as bridge:
        with bridge.connect(hs256()) as client:
            client.send_json({"type": "subscribe", "data": {"subscription_id": "s",
                                                            "patient_ids": [new_id("pat")]}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "FORBIDDEN", answer
            client.ping()
        assert "authorize-sql failed" in bridge.log()


# -- TLS ---------------------------------------------------------------------------------

def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_serves_wss_and_https(db, store, tmp_path):
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    patient = new_id("pat")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--tls-cert", cert, "--tls-key", key],
                wait=False) as bridge:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", bridge.port, context=context, timeout=5)
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, bridge.log()
            time.sleep(0.2)

        async def session():
            async with websockets.connect(f"wss://127.0.0.1:{bridge.port}/api/ws?token={hs256()}",
                                          ssl=context) as ws:
                import json
                assert json.loads(await ws.recv())["type"] == "welcome"
                await ws.send(json.dumps({"type": "subscribe", "data": {"subscription_id": "s",
                                                                        "patient_ids": [patient]}}))
                assert json.loads(await ws.recv())["type"] == "subscription"
                written = store.create(condition(patient))
                update = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert_update(update, "created", "Condition", written["id"], patient, written)

        asyncio.run(session())


# -- catch-up from the database ---------------------------------------------------------

def test_resume_on_a_restarted_bridge_reads_the_database(db, store):
    """A new bridge process has an empty ring buffer: a cursor from the old one is served by
    fhir_notify.read(), exactly, with the subscription's types; past the limit, resync."""
    patient = new_id("pat")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--resume-max-changes", "3"]) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            first = store.create(condition(patient))
            cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
    missed = [store.create(condition(patient)) for _ in range(3)]
    store.create(observation(patient))
    store.create(condition(new_id("pat")))
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--resume-max-changes", "3"]) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient], resource_types=["Condition"], since=cursor)
            for resource in missed:
                assert_update(client.recv_update(), "created", "Condition", resource["id"], patient, resource)
            live = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
            client.expect_no_message()
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient], since=cursor)  # 5 missed of every type: over 3
            resync = client.recv_json()
            assert resync.get("type") == "resync", resync
            assert resync["data"]["reason"] == "too_many_changes", resync
            assert resync["data"]["patient_id"] == patient, resync
            client.expect_no_message()


def test_resume_older_than_resume_max_age_gets_resync(db, store):
    patient = new_id("pat")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--resume-max-age", "1"]) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            first = store.create(condition(patient))
            cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
        store.create(condition(patient))
        time.sleep(2.5)
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient], since=cursor)
            resync = client.recv_json()
            assert resync.get("type") == "resync" and resync["data"]["reason"] == "cursor_too_old", resync
            live = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)


def test_cursor_from_the_future_gets_resync(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", ["p1"], since="999999999-1")
            resync = client.recv_json()
            assert resync.get("type") == "resync" and resync["data"]["reason"] == "cursor_unknown", resync


# -- static files --------------------------------------------------------------------------

def test_static_files_stay_inside_their_directory(db, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<h1>chart</h1>")
    (static / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not for you")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--static", str(static)]) as bridge:
        status, headers, body = bridge.http_get("/")
        assert status == 200 and "chart" in body and headers["content-type"].startswith("text/html")
        status, headers, body = bridge.http_get("/app.js")
        assert status == 200 and headers["content-type"] == "text/javascript"
        assert bridge.http_get("/missing.html")[0] == 404
        status, _, body = bridge.http_get("/../secret.txt")
        assert status in (403, 404) and "not for you" not in body
        status, _, body = bridge.http_get("/%2e%2e/secret.txt")
        assert status in (400, 403, 404) and "not for you" not in body
        assert bridge.http_get("/healthz")[0] == 200


# -- health follows the change log -------------------------------------------------------

INSERT_CHANGE = ("INSERT INTO fhir_notify.changes (action, resource_type, resource_id, version_id,"
                 " patient_ids, resource, source_table) VALUES ('created', 'Condition', %s, '1', %s,"
                 " '{\"resourceType\": \"Condition\"}', 'test')")


def test_healthz_is_503_until_the_change_log_can_be_read():
    cluster = shared_cluster()
    dbname = "bare_" + new_id("db").replace("-", "_")
    cluster.execute(f'CREATE DATABASE "{dbname}"')
    with Bridge(cluster, dbname, secret_file=SECRET_FILE, args=["--poll-interval", "1"], wait=False) as bridge:
        bridge.wait_for_log("reading the change log failed")
        bridge.wait_health(503)
        cluster.execute("CREATE EXTENSION fhir_notify", dbname=dbname)
        bridge.wait_health(200)


def test_a_recreated_change_log_resyncs_every_subscription():
    cluster = shared_cluster()
    dbname = "reset_" + new_id("db").replace("-", "_")
    cluster.execute(f'CREATE DATABASE "{dbname}"')
    cluster.execute("CREATE EXTENSION fhir_notify", dbname=dbname)
    patient = new_id("pat")
    with Bridge(cluster, dbname, secret_file=SECRET_FILE, args=ARGS + ["--poll-interval", "1"]) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            for i in range(3):
                cluster.execute(INSERT_CHANGE, (f"c{i}", [patient]), dbname=dbname)
                cluster.execute("SELECT fhir_notify.tick()", dbname=dbname)
                assert client.recv_update()["data"]["resource_id"] == f"c{i}"
            cluster.execute("DROP EXTENSION fhir_notify", dbname=dbname)
            cluster.execute("CREATE EXTENSION fhir_notify", dbname=dbname)
            resync = client.recv_json(timeout=15)
            assert resync.get("type") == "resync", resync
            assert resync["data"]["reason"] == "log_reset" and resync["data"]["patient_id"] == patient, resync
            cluster.execute(INSERT_CHANGE, ("after", [patient]), dbname=dbname)
            assert client.recv_update(timeout=15)["data"]["resource_id"] == "after"


def test_overlapping_resumed_subscriptions_give_one_copy(db, store):
    """A client re-sending all its subscriptions with `since` (as WintEHR's client re-sends
    them on reconnect) gets each missed change once per patient, however they overlap."""
    patient, other = new_id("pat"), new_id("pat")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            first = store.create(condition(patient))
            cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
        missed = [store.create(condition(patient)), store.create(observation(patient)),
                  store.create(condition(other))]
        with bridge.connect(hs256()) as client:
            for sid, patients, types in [("everything", [patient, other], []),
                                         ("conditions", [patient], ["Condition"]),
                                         ("again", [patient], [])]:
                client.send_json({"type": "subscribe", "data": {"subscription_id": sid, "patient_ids": patients,
                                                                "resource_types": types, "since": cursor}})
            messages = [client.recv_json() for _ in range(6)]
            assert [m["type"] for m in messages].count("subscription") == 3, messages
            got = [(m["data"]["resource_id"], m["data"]["patient_id"]) for m in messages if m["type"] == "update"]
            assert sorted(got) == sorted([(missed[0]["id"], patient), (missed[1]["id"], patient),
                                          (missed[2]["id"], other)]), got
            client.expect_no_message()
            live = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
            client.expect_no_message()


# -- a client that stops reading -------------------------------------------------------------

def test_stalled_client_is_dropped_to_resync_then_closed_1013_while_others_get_everything(db, store):
    from wsclient import RawClient

    patient = new_id("pat")
    big = "y" * 100000
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--send-queue-limit", "5"]) as bridge:
        path = bridge.url(hs256())[len(f"ws://127.0.0.1:{bridge.port}"):]
        stalled = RawClient("127.0.0.1", bridge.port, path, receive_buffer=4096)
        try:
            stalled.send_json({"type": "subscribe", "data": {"subscription_id": "stalled",
                                                             "patient_ids": [patient]}})
            with bridge.connect(hs256()) as fast:
                fast.subscribe("fast", [patient])
                written = []
                for burst in range(3):
                    written += [store.create(condition(patient, note=[{"text": f"{burst} {i} {big}"}]))
                                for i in range(30)]
                    time.sleep(1.5)  # the stalled client has written nothing for a while now
                for resource in written:
                    assert_update(fast.recv_update(), "created", "Condition", resource["id"], patient)
                fast.ping()
            bridge.wait_for_log("not reading its updates, closing with 1013", timeout=30)
        finally:
            stalled.close()
        metrics = bridge.metrics()
        assert metrics["fhir_notify_bridge_queue_drops_total"] >= 1, metrics
        assert metrics["fhir_notify_bridge_resyncs_total"] >= 1, metrics
        assert metrics["fhir_notify_bridge_slow_client_closes_total"] >= 1, metrics
        assert bridge.health() == 200


def test_a_database_that_stops_answering_is_reported_and_left():
    """A server that hangs (no RST, no answer): /healthz turns 503, the stuck query is given
    up after 30 s, the bridge reconnects and delivers what was committed meanwhile."""
    import os
    import signal

    cluster = shared_cluster()
    dbname = "hang_" + new_id("db").replace("-", "_")
    cluster.execute(f'CREATE DATABASE "{dbname}"')
    cluster.execute("CREATE EXTENSION fhir_notify", dbname=dbname)
    patient = new_id("pat")
    with Bridge(cluster, dbname, secret_file=SECRET_FILE, args=ARGS + ["--poll-interval", "1"]) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            pids = [row[0] for row in cluster.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'fhir-notify-bridge'",
                (dbname,))]
            assert pids
            offset = bridge.log_size()
            try:
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                bridge.wait_health(503, timeout=40)
                cluster.execute(INSERT_CHANGE, ("during", [patient]), dbname=dbname)
                bridge.wait_for_log("did not answer a query in time", timeout=60, since=offset)
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            bridge.wait_health(200, timeout=40)
            assert client.recv_update(timeout=20)["data"]["resource_id"] == "during"
            client.expect_no_message()
