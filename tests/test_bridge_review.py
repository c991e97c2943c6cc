"""End to end: the bridge facing hostile or careless clients (a security review's findings).

Each test here failed before its fix: log lines forged through token claims or
subscription ids, a client that sends requests without ever reading the
replies, an Origin header too long to compare.
"""

import socket
import subprocess

import psycopg
import pytest

from bridgeproc import (AUDIENCE, ISSUER, SECRET_FILE, Bridge, bridge_logs,  # noqa: F401
                        create_fhir_database, hs256, new_id, shared_cluster)
from pgcluster import free_port
from wsclient import HandshakeRejected, RawClient

ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]
FORGED = "2020-01-01T00:00:00.000Z error: forged"


@pytest.fixture(scope="module")
def db():
    try:
        return create_fhir_database(shared_cluster())
    except psycopg.errors.UndefinedFunction as error:  # watch() comes with the capture trigger
        pytest.skip(f"the extension cannot watch tables yet: {error}")


def test_log_lines_cannot_be_forged_by_clients(db):
    """A sub claim or a subscription id with line breaks must not start a log line of its own."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        with bridge.connect(hs256(sub="mallory\n" + FORGED + " by sub\x1b[2J")) as client:
            client.subscribe("s\r\n" + FORGED + " by subscription id", [new_id("pat")])
            client.unsubscribe("s\r\n" + FORGED + " by subscription id")
        bridge.wait_for_log("authenticated as mallory")
        lines = bridge.log().splitlines()
        assert not [line for line in lines if line.startswith(FORGED)], lines
        assert not [line for line in lines if "\x1b" in line or "\r" in line]
        assert any("mallory\\n" + FORGED in line for line in lines)


def test_unread_replies_are_bounded(db):
    """A client that sends pings and never reads the pongs is no longer read from
    (its sends block) rather than have its queue of replies grow without bound;
    once it reads, every pong arrives and the connection goes on."""
    count = 2_000_000  # 44 MB of pings: more than the kernel buffers hold
    payload = b'{"type":"ping"}'
    mask = b"\x01\x02\x03\x04"
    frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        raw = RawClient("127.0.0.1", bridge.port, "/api/ws?token=" + hs256(), receive_buffer=4096, timeout=5)
        try:
            welcome = raw.read_messages(1)
            assert welcome and welcome[0]["type"] == "welcome"
            data = memoryview(frame * count)
            sent = 0
            with pytest.raises(socket.timeout):
                while sent < len(data):
                    sent += raw.sock.send(data[sent:sent + (1 << 20)])
            assert sent < len(data)
            # reading again: the pongs come, and the bridge reads the rest of the pings
            raw.sock.settimeout(30)
            pongs = 0
            while pongs < 5000:
                frames = raw.read_frames(timeout=30, idle=5)
                assert frames and all(opcode == 1 for opcode, _ in frames), frames[-1:]
                pongs += sum(1 for _, text in frames if b'"pong"' in text)
        finally:
            raw.close()
        assert "pausing reads" in bridge.log()


def test_an_overlong_origin_is_refused(db):
    """An Origin too long to copy must not skip the --allowed-origin check."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--allowed-origin", "https://ehr.example"]) as bridge:
        with pytest.raises(HandshakeRejected) as rejected:
            bridge.connect(hs256(), origin="https://" + "a" * 600 + ".evil.example")
        assert rejected.value.status == 403
        with bridge.connect(hs256(), origin="https://ehr.example") as client:
            client.ping()


def test_a_live_connection_cannot_change_its_user(db):
    """--authorize-sql decided a subscription for the user who made it: a token for
    another user on the same connection would inherit those answers, so it is refused
    (4001) and nothing more is delivered; a fresh token for the same user is fine."""
    cluster = shared_cluster()
    mine = new_id("pat")
    cluster.execute("CREATE TABLE IF NOT EXISTS public.review_access (username text, patient text)", dbname=db)
    cluster.execute("INSERT INTO public.review_access VALUES ('dr.a', %s)", (mine,), dbname=db)
    sql = "SELECT EXISTS (SELECT 1 FROM public.review_access WHERE username = $1 AND patient = $2)"
    with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS + ["--authorize-sql", sql]) as bridge:
        with bridge.connect(hs256(sub="dr.a")) as client:
            client.subscribe("chart", [mine])
            client.send_json({"type": "authenticate", "token": hs256(sub="dr.a", exp_in=600)})
            assert client.recv_json()["type"] == "auth_success"
            client.send_json({"type": "authenticate", "token": hs256(sub="dr.b")})
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer["error"] == "AUTH_FAILED", answer
            code, _, _ = client.wait_closed()
            assert code == 4001


def test_an_overlong_config_line_is_an_error(db, tmp_path):
    """A config line longer than the reader's buffer must not wrap into a second line
    whose tail is taken as a setting of its own."""
    from bridgeproc import BRIDGE_BINARY
    head = "jwt-audience = "
    line = head + "a" * (4095 - len(head)) + "insecure-no-auth = true\n"
    config = tmp_path / "bridge.conf"
    config.write_text(f"db = {shared_cluster().dsn(db)}\nlisten = 127.0.0.1:{free_port()}\n" + line)
    process = subprocess.Popen([BRIDGE_BINARY, "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        _, err = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail("the bridge started with a wrapped config line: " + err[-500:])
    assert process.returncode != 0
    assert "bridge.conf:3: line too long" in err, err


def test_static_files_stay_inside_the_static_directory(db, tmp_path):
    """--static serves its own tree: a symlink out of it is not found, whatever it points at."""
    static, outside = tmp_path / "static", tmp_path / "outside"
    static.mkdir()
    outside.mkdir()
    (static / "index.html").write_text("<p>inside</p>")
    (outside / "secret.txt").write_text("patient data")
    (static / "leak.txt").symlink_to(outside / "secret.txt")
    (static / "linked").symlink_to(outside)
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--static", str(static)]) as bridge:
        status, _, body = bridge.http_get("/index.html")
        assert status == 200 and "inside" in body
        for path in ["/leak.txt", "/linked/secret.txt", "/../outside/secret.txt",
                     "/%2e%2e/outside/secret.txt"]:
            status, _, body = bridge.http_get(path)
            assert status in (403, 404) and "patient data" not in body, (path, status)


def test_a_far_future_exp_does_not_expire_the_token_at_once(db):
    """exp far in the future (the claim is clamped at 2^52 seconds) must not overflow
    the expiry in microseconds into the past (and a sanitizer build must not report)."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        for exp in (2**44, 10**13, 2**60):
            with bridge.connect(hs256(claims={"exp": exp})) as client:
                client.expect_no_message(within=1.5)  # the sweep runs every half second
                client.ping()
