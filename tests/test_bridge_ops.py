"""End to end: running the bridge (settings, signals, health, metrics, origins, limits)."""

import json
import os
import signal
import ssl
import subprocess
import time
import uuid

import psycopg
import pytest
import websockets.exceptions

import tokens
from bridgeproc import (AUDIENCE, BRIDGE_BINARY, SECRET_FILE, VALIDATION_ARGS, Bridge,  # noqa: F401
                        FhirStore, assert_update, bridge_logs, condition, create_fhir_database, hs256,
                        install_fhir_schema, new_id, shared_cluster)
from pgcluster import TOP, Cluster, free_port
from wsclient import Closed, HandshakeRejected, RawClient

ARGS = VALIDATION_ARGS
SETTINGS = ["db", "listen", "jwt-secret-file", "jwt-public-key-file", "jwks-file", "jwt-audience",
            "jwt-issuer", "jwt-leeway", "insecure-no-auth", "allowed-origin", "max-connections",
            "max-subscriptions", "max-frame-size", "send-queue-limit", "channel", "poll-interval",
            "resume-max-age", "resume-max-changes", "prune-keep", "static", "log-level", "config", "help",
            "version", "tls-cert", "tls-key", "authorize-sql", "authorize-cache-seconds"]


@pytest.fixture(scope="module")
def db():
    return create_fhir_database(shared_cluster())


@pytest.fixture(scope="module")
def store(db):
    s = FhirStore(shared_cluster(), db)
    yield s
    s.close()


@pytest.fixture(scope="module")
def bridge(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as b:
        yield b
        assert b.proc.poll() is None, f"the bridge died during the tests:\n{b.log()[-4000:]}"


def run_bridge(*args, timeout=20, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([BRIDGE_BINARY, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=full_env)


def test_help_lists_every_setting():
    result = run_bridge("--help")
    assert result.returncode == 0, result
    text = result.stdout + result.stderr
    missing = [name for name in SETTINGS if f"--{name}" not in text]
    assert not missing, f"--help does not mention {missing}:\n{text}"
    assert "FHIR_NOTIFY_" in text, text


def test_version_is_the_project_version(bridge):
    with open(os.path.join(TOP, "META.json")) as f:
        version = json.load(f)["version"]
    result = run_bridge("--version")
    assert result.returncode == 0, result
    assert result.stdout.strip() == f"fhir-notify-bridge {version}", result.stdout
    with bridge.connect(hs256()) as client:
        assert client.welcome["data"]["server"] == f"fhir-notify-bridge/{version}", client.welcome


def test_unknown_option_is_refused():
    result = run_bridge("--no-such-option")
    assert result.returncode != 0
    assert "no-such-option" in result.stderr, result.stderr


def test_refuses_to_start_without_keys(db):
    port = free_port()
    result = run_bridge("--db", shared_cluster().dsn(db), "--listen", f"127.0.0.1:{port}")
    assert result.returncode != 0, result
    assert "insecure-no-auth" in result.stderr, result.stderr


def test_refuses_to_start_with_an_unreadable_key_file(db):
    port = free_port()
    result = run_bridge("--db", shared_cluster().dsn(db), "--listen", f"127.0.0.1:{port}",
                        "--jwt-secret-file", "/nonexistent/secret")
    assert result.returncode != 0, result
    assert "/nonexistent/secret" in result.stderr, result.stderr


def test_insecure_no_auth_runs_and_says_so(db, store, tmp_path):
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<h1>chart review</h1>")
    (tmp_path / "secret.txt").write_text("do not serve")
    with Bridge(shared_cluster(), db, args=["--insecure-no-auth", "--static", str(static)]) as bridge:
        assert "insecure" in bridge.log().lower()
        patient = new_id("pat")
        with bridge.connect(None) as client:
            client.subscribe("chart", [patient])
            created = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)
        status, _, body = bridge.http_get("/index.html")
        assert status == 200 and "chart review" in body, (status, body)
        for path in ["/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"]:
            status, _, body = bridge.http_get(path)
            assert "do not serve" not in body, (path, status)


def test_healthz_and_metrics_counters_move(bridge, store):
    status, _, body = bridge.http_get("/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok" and health["database"] == "connected", health
    status, headers, body = bridge.http_get("/metrics")
    assert status == 200
    assert headers.get("content-type", "").startswith("text/plain"), headers
    assert "# TYPE fhir_notify_bridge_updates_sent_total counter" in body, body
    before = bridge.metrics()
    assert before["fhir_notify_bridge_database_connected"] == 1

    patient = new_id("pat")
    with bridge.connect(hs256()) as client:
        client.subscribe("chart", [patient])
        for _ in range(3):
            created = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
        during = bridge.metrics()
    bridge.refused_token(hs256(secret=b"wrong"))  # at the upgrade: no connection
    deadline = time.monotonic() + 10
    while True:
        after = bridge.metrics()
        if after["fhir_notify_bridge_connections"] == before["fhir_notify_bridge_connections"]:
            break
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.1)

    def grew(name, by, a=before, b=after):
        return b[name] - a[name] >= by

    assert during["fhir_notify_bridge_connections"] == before["fhir_notify_bridge_connections"] + 1
    assert during["fhir_notify_bridge_subscriptions"] >= before["fhir_notify_bridge_subscriptions"] + 1
    assert during["fhir_notify_bridge_rooms"] >= before["fhir_notify_bridge_rooms"] + 1
    assert grew("fhir_notify_bridge_connections_total", 1), (before, after)
    assert grew("fhir_notify_bridge_changes_read_total", 3), (before, after)
    assert grew("fhir_notify_bridge_updates_sent_total", 3), (before, after)
    assert grew("fhir_notify_bridge_messages_sent_total", 5), (before, after)  # welcome, subscription, 3 updates
    assert grew("fhir_notify_bridge_commit_to_send_seconds_count", 3), (before, after)
    assert grew("fhir_notify_bridge_auth_failures_total", 1), (before, after)
    assert after["fhir_notify_bridge_last_tick"] > before["fhir_notify_bridge_last_tick"]


def test_sigterm_closes_clients_with_1001_and_exits_0(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        clients = [bridge.connect(hs256()) for _ in range(3)]
        clients[0].subscribe("chart", [new_id("pat")])
        bridge.signal(signal.SIGTERM)
        for client in clients:
            code, _, _ = client.wait_closed()
            assert code == 1001
        assert bridge.wait_exit(20) == 0


def test_sighup_reloads_keys(db, store, tmp_path):
    secret_file = tokens.make_hs256_secret(tmp_path)
    with Bridge(shared_cluster(), db, secret_file=secret_file, args=ARGS) as bridge:
        old_token = hs256(secret=secret_file)
        with bridge.connect(old_token) as client:
            client.ping()
        new_secret = b"a-completely-new-secret-0123456789"
        with open(secret_file, "wb") as f:
            f.write(new_secret + b"\n")
        bridge.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            try:
                client = bridge.connect(hs256(secret=new_secret), welcome=False)
            except HandshakeRejected as rejected:
                first = {"refused": rejected.status}  # not reloaded yet: refused at the upgrade
            else:
                with client:
                    first = client.recv_json()
                if first.get("type") == "welcome":
                    break
            assert time.monotonic() < deadline, f"the new key was never accepted: {first}"
            time.sleep(0.2)
        bridge.refused_token(old_token)
        assert bridge.proc.poll() is None


def test_sighup_with_a_broken_key_file_keeps_the_old_keys(db, tmp_path):
    secret_file = tokens.make_hs256_secret(tmp_path)
    with open(secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    with Bridge(shared_cluster(), db, secret_file=secret_file, args=ARGS) as bridge:
        os.unlink(secret_file)
        offset = bridge.log_size()
        bridge.signal(signal.SIGHUP)
        bridge.wait_for_log(os.path.basename(secret_file), since=offset)
        with bridge.connect(hs256(secret=secret)) as client:
            client.ping()
        assert bridge.proc.poll() is None


def test_settings_from_environment_variables(db, store):
    port = free_port()
    env = {"FHIR_NOTIFY_DB": shared_cluster().dsn(db), "FHIR_NOTIFY_LISTEN": f"127.0.0.1:{port}",
           "FHIR_NOTIFY_JWT_SECRET_FILE": SECRET_FILE, "FHIR_NOTIFY_JWT_AUDIENCE": AUDIENCE}
    with Bridge(shared_cluster(), db, db=False, listen=False, env=env, wait=False) as bridge:
        bridge.port = port
        bridge.wait_healthy()
        patient = new_id("pat")
        with bridge.connect(hs256(iss=None)) as client:
            client.subscribe("chart", [patient])
            created = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
        bridge.refused_token(hs256(aud="other"))


def test_allowed_origin_rejects_a_foreign_origin(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--allowed-origin", "https://ehr.example", "--allowed-origin",
                             "http://localhost:3000"]) as bridge:
        for origin in ["https://evil.example", "https://ehr.example.evil.example", "null"]:
            with pytest.raises(HandshakeRejected) as rejected:
                bridge.connect(hs256(), origin=origin)
            assert rejected.value.status == 403, origin
        for origin in ["https://ehr.example", "http://localhost:3000"]:
            with bridge.connect(hs256(), origin=origin) as client:
                client.ping()


def test_subscription_limit(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--max-subscriptions", "2"]) as bridge:
        with bridge.connect(hs256()) as client:
            client.subscribe("one", [new_id("pat")])
            client.subscribe("two", [new_id("pat")])
            client.send_json({"type": "subscribe", "data": {"subscription_id": "three",
                                                            "patient_ids": [new_id("pat")]}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "LIMIT_EXCEEDED", answer
            client.subscribe("two", [new_id("pat")])  # replacing is not adding
            client.unsubscribe("one")
            client.subscribe("three", [new_id("pat")])


def test_connection_limit(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--max-connections", "2"]) as bridge:
        first, second = bridge.connect(hs256()), bridge.connect(hs256())
        try:
            try:
                third = bridge.connect(hs256(), welcome=False)
            except HandshakeRejected:
                pass
            else:
                with third:
                    with pytest.raises(Closed):
                        while True:
                            message = third.recv_json()
                            assert message.get("type") != "welcome", message
            first.ping()
            second.ping()
        finally:
            first.close()
            second.close()
        # A freed slot can be used again.
        deadline = time.monotonic() + 10
        while True:
            try:
                with bridge.connect(hs256()) as client:
                    client.ping()
                break
            except (HandshakeRejected, Closed, AssertionError):
                assert time.monotonic() < deadline
                time.sleep(0.2)


def test_bridge_started_before_the_database_is_unhealthy_then_recovers():
    port = free_port()
    dsn = f"host=127.0.0.1 port={port} dbname=postgres user=postgres connect_timeout=2"
    with Bridge(shared_cluster(), db=dsn, secret_file=SECRET_FILE, args=ARGS, wait=False) as bridge:
        bridge.wait_health(503, timeout=30)
        with Cluster(port=port) as cluster:
            install_fhir_schema(cluster, "postgres")
            bridge.wait_health(200, timeout=60)
            store = FhirStore(cluster, "postgres")
            try:
                patient = new_id("pat")
                with bridge.connect(hs256()) as client:
                    client.subscribe("chart", [patient])
                    created = store.create(condition(patient))
                    assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
            finally:
                store.close()


def test_settings_from_a_config_file(db, store, tmp_path):
    secret_file = SECRET_FILE
    port = free_port()
    config = tmp_path / "bridge.conf"
    config.write_text(f"# the test bridge\n"
                      f"db = {shared_cluster().dsn(db)}\n"
                      f"listen = 127.0.0.1:{port}\n"
                      f"jwt-secret-file = {secret_file}\n"
                      f"jwt-audience = {AUDIENCE}\n"
                      f"max-subscriptions = 1\n")
    with Bridge(shared_cluster(), db, db=False, listen=False, wait=False,
                args=["--config", str(config)]) as bridge:
        bridge.port = port
        bridge.wait_healthy()
        patient = new_id("pat")
        with bridge.connect(hs256(iss=None)) as client:
            client.subscribe("chart", [patient])
            client.send_json({"type": "subscribe", "data": {"subscription_id": "more",
                                                            "patient_ids": [patient]}})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "LIMIT_EXCEEDED", answer
            created = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
        bridge.refused_token(hs256(aud="other"))


def test_safety_poll_delivers_when_no_doorbell_rings(db, store):
    """Listening on a channel nobody rings, only the safety poll can find the change."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--channel", "nobody_rings_here", "--poll-interval", "1"]) as bridge:
        patient = new_id("pat")
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            created = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)
            client.expect_no_message()


def test_custom_doorbell_channel(store):
    """The database rings on fhir_notify.channel, the bridge listens on --channel; with the
    safety poll an hour away, only that doorbell can deliver."""
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    cluster.execute(f'ALTER DATABASE "{db}" SET fhir_notify.channel = \'chart_bell\'')
    writer = FhirStore(cluster, db)
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE,
                    args=ARGS + ["--channel", "chart_bell", "--poll-interval", "3600"]) as bridge:
            patient = new_id("pat")
            with bridge.connect(hs256()) as client:
                client.subscribe("chart", [patient])
                for _ in range(3):
                    created = writer.create(condition(patient))
                    assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
    finally:
        writer.close()


def self_signed_certificate(directory):
    """(certificate PEM path, key PEM path) for 127.0.0.1, made now."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([
                       x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                       critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_serves_wss_and_https(db, store, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=cert)
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, ssl_context=context,
                args=ARGS + ["--tls-cert", cert, "--tls-key", key]) as bridge:
        patient = new_id("pat")
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            created = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)
        # Plain ws on the TLS port gets no welcome.
        bridge.ssl_context = None
        with pytest.raises((websockets.exceptions.InvalidMessage, OSError)):
            bridge.connect(hs256())
        bridge.ssl_context = context
        assert bridge.health() == 200


def test_bridge_started_before_the_extension_exists_recovers_once_it_does():
    """A database without fhir_notify yet (being restored, extension not created): the bridge
    is not healthy while it cannot read the change log, and delivers once the extension is there."""
    cluster = shared_cluster()
    db = "fhir_" + uuid.uuid4().hex[:10]
    cluster.execute(f'CREATE DATABASE "{db}"')
    with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS + ["--poll-interval", "1"],
                wait=False) as bridge:
        bridge.wait_for_log("fhir_notify")
        assert bridge.proc.poll() is None
        assert bridge.health() == 503
        install_fhir_schema(cluster, db)
        bridge.wait_health(200)
        store = FhirStore(cluster, db)
        try:
            patient = new_id("pat")
            with bridge.connect(hs256()) as client:
                client.subscribe("chart", [patient])
                created = store.create(condition(patient))
                assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
        finally:
            store.close()


def _doorbell_database(cluster, mode):
    """A new watched database whose writers use fhir_notify.doorbell = mode; xfail when this
    build of the extension does not offer mode."""
    db = create_fhir_database(cluster)
    try:
        cluster.execute(f'ALTER DATABASE "{db}" SET fhir_notify.doorbell = \'{mode}\'')
    except psycopg.errors.Error as error:
        pytest.xfail(f"fhir_notify.doorbell = {mode} is not available in this build: {error}")
    return db


def _every_change_once(cluster, db, bridge, writers=3, per_writer=10):
    patient = new_id("pat")
    stores = [FhirStore(cluster, db) for _ in range(writers)]
    try:
        with bridge.connect(hs256()) as client:
            client.subscribe("chart", [patient])
            written = []
            for i in range(per_writer):
                for w, store in enumerate(stores):
                    written.append(store.create(condition(patient, text=f"w{w} {i}"))["id"])
            received = [m["data"]["resource_id"] for m in client.recv_updates(len(written))]
            client.expect_no_message()
        assert received == written
    finally:
        for store in stores:
            store.close()


def test_doorbell_off_is_served_by_the_safety_poll():
    cluster = shared_cluster()
    db = _doorbell_database(cluster, "off")
    with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS + ["--poll-interval", "1"]) as bridge:
        _every_change_once(cluster, db, bridge)


def test_ticker_doorbell_delivers_without_the_safety_poll():
    # Ticker mode serves one database, fhir_notify.ticker_database (NOTIFY is per
    # database), so this test has a cluster of its own with the ticker in its database.
    with Cluster(settings={"fhir_notify.ticker_database": "'fhir_ticker'"}) as cluster:
        db = create_fhir_database(cluster, "fhir_ticker")
        cluster.execute(f'ALTER DATABASE "{db}" SET fhir_notify.doorbell = \'ticker\'')
        with Bridge(cluster, db, secret_file=SECRET_FILE,
                    args=ARGS + ["--poll-interval", "3600"]) as bridge:
            _every_change_once(cluster, db, bridge)


def test_default_leeway_allows_small_clock_skew(bridge):
    """--jwt-leeway defaults to 30 s: a token a few seconds early or late is accepted, one a
    minute late is expired."""
    for options in [{"claims": {"nbf": int(time.time()) + 10}}, {"exp_in": -10}]:
        with bridge.connect(hs256(**options)) as client:
            client.ping()
    bridge.refused_token(hs256(exp_in=-90), expired=True)


def test_sighup_reloads_the_config_file(db, tmp_path):
    port = free_port()
    config = tmp_path / "bridge.conf"

    def write_config(max_subscriptions, origin):
        config.write_text(f"db = {shared_cluster().dsn(db)}\n"
                          f"listen = 127.0.0.1:{port}\n"
                          f"jwt-secret-file = {SECRET_FILE}\n"
                          f"jwt-audience = {AUDIENCE}\n"
                          f"max-subscriptions = {max_subscriptions}\n"
                          f"allowed-origin = {origin}\n")

    write_config(1, "https://old.example")
    with Bridge(shared_cluster(), db, db=False, listen=False, wait=False,
                args=["--config", str(config)]) as bridge:
        bridge.port = port
        bridge.wait_healthy()
        with bridge.connect(hs256(iss=None), origin="https://old.example") as client:
            client.subscribe("one", [new_id("pat")])
            client.send_json({"type": "subscribe", "data": {"subscription_id": "two",
                                                            "patient_ids": [new_id("pat")]}})
            assert client.recv_json()["error"] == "LIMIT_EXCEEDED"
        write_config(3, "https://new.example")
        offset = bridge.log_size()
        bridge.signal(signal.SIGHUP)
        bridge.wait_for_log("reload", since=offset)
        deadline = time.monotonic() + 10
        while True:
            try:
                client = bridge.connect(hs256(iss=None), origin="https://new.example")
                break
            except HandshakeRejected:
                assert time.monotonic() < deadline, "the new allowed origin never applied"
                time.sleep(0.2)
        with client:
            for sub in ["one", "two", "three"]:
                client.subscribe(sub, [new_id("pat")])
        with pytest.raises(HandshakeRejected):
            bridge.connect(hs256(iss=None), origin="https://old.example")
        assert bridge.proc.poll() is None


def test_sigterm_with_a_stuck_client_still_exits_promptly(db, store):
    """A client that never reads cannot hold the shutdown hostage."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        patient = new_id("pat")
        token = hs256()
        stuck = RawClient("127.0.0.1", bridge.port, bridge.url(token)[len(f"ws://127.0.0.1:{bridge.port}"):],
                          receive_buffer=4096)
        try:
            stuck.send_json({"type": "subscribe", "data": {"subscription_id": "s", "patient_ids": [patient]}})
            with bridge.connect(token) as client:
                client.subscribe("chart", [patient])
                for _ in range(20):
                    store.create(condition(patient, note=[{"text": "w" * 200_000}]))
                client.recv_updates(20)
                bridge.signal(signal.SIGTERM)
                code, _, _ = client.wait_closed()
                assert code == 1001
            assert bridge.wait_exit(30) == 0
        finally:
            stuck.close()


def test_a_storm_of_sighups_changes_nothing(bridge, store):
    patient = new_id("pat")
    with bridge.connect(hs256()) as client:
        client.subscribe("chart", [patient])
        for _ in range(20):
            bridge.signal(signal.SIGHUP)
        created = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)
        client.ping()
    with bridge.connect(hs256()) as client:
        client.ping()
    assert bridge.health() == 200
