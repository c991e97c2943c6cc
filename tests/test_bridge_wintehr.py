"""End to end: what WintEHR's real client and tokens need from the bridge.

- A token in the query that fails is refused at the upgrade (HTTP 401, no
  WebSocket), so a browser's normal backoff applies; past
  --auth-failure-limit failures in 10 s from one address, 429; the log says
  it once per address per interval, with a count.
- Tokens without SMART scopes get --default-scopes or --scopes-by-claim.
- Deletes of Condition and AllergyIntolerance carry the event_type
  WintEHR's chart-review hook removes items on, and a resource with
  resourceType and id.

The WintEHR-like browser client itself is exercised by
clients/js/test/wintehr.test.mjs.
"""

import base64
import json
import os
import re
import socket
import time

import psycopg
import pytest

from bridgeproc import (AUDIENCE, ISSUER, SECRET_FILE, Bridge, FhirStore, bridge_logs,  # noqa: F401
                        condition, create_fhir_database, hs256, new_id, shared_cluster)

ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER, "--log-level", "info"]


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


def upgrade(bridge, token=None, source="127.0.0.1", timeout=10, forwarded_for=None):
    """(status, lower-cased headers) of one WebSocket upgrade request from address source
    (through a proxy that says it forwards forwarded_for, when given)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    try:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", bridge.port))
        key = base64.b64encode(os.urandom(16)).decode()
        path = "/api/ws" + (f"?token={token}" if token else "")
        request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{bridge.port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   + (f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else "") + "\r\n")
        sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                break
            response += chunk
    finally:
        sock.close()
    head = response.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


# -- bad tokens: refused at the upgrade, limited per address, summarised ------------

def test_failed_tokens_are_limited_per_address_and_summarised(db):
    limit = 5
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--auth-failure-limit", str(limit)]) as bridge:
        offset = bridge.log_size()
        bad = hs256(secret=b"not-the-secret-of-this-bridge-0123456789")
        statuses = [upgrade(bridge, bad)[0] for _ in range(limit)]
        assert statuses == [401] * limit
        status, headers = upgrade(bridge, bad)
        assert status == 429, (status, headers)
        assert 1 <= int(headers["retry-after"]) <= 10, headers
        for _ in range(20):
            assert upgrade(bridge, bad)[0] == 429
        # Only failures are limited: a good token from the same address still gets in
        # (behind a proxy or NAT every user shares one address).
        with bridge.connect(hs256()) as client:
            client.ping()
        # Another address has its own count.
        assert upgrade(bridge, bad, source="127.0.0.2")[0] == 401
        # An authenticate message past the limit: closed with 4029, no AUTH_FAILED (which
        # WintEHR's client answers by reconnecting at once).
        with bridge.connect(None, welcome=False) as client:
            client.send_json({"type": "authenticate", "token": bad})
            code, _, messages = client.wait_closed()
        assert code == 4029 and messages == [], (code, messages)

        log = bridge.wait_for_log("more failed authentications from 127.0.0.1", timeout=20,
                                  since=offset)
        # One full line per address per interval, one warning, one summary with the count.
        assert log.count("auth: refused a token from 127.0.0.1 (upgrade)") == 1, log
        assert log.count("auth: more than 5 failed authentications from 127.0.0.1") == 1, log
        summary = re.search(r"auth: (\d+) more failed authentications from 127\.0\.0\.1 in 10 s "
                            r"\(last: (\w+): ([^)]*)\)", log)
        assert summary and int(summary.group(1)) == limit + 21 + 1 - 1, log
        assert "token signature does not verify" in summary.group(3), log
        assert log.count("auth: refused a token from 127.0.0.2 (upgrade)") == 1, log
        metrics = bridge.metrics()
        assert metrics["fhir_notify_bridge_auth_rate_limited_total"] == 22, metrics
        assert metrics["fhir_notify_bridge_auth_failures_total"] == limit + 21 + 1 + 1, metrics

        # After the interval the address starts over with 401.
        deadline = time.monotonic() + 15
        while upgrade(bridge, bad)[0] == 429:
            assert time.monotonic() < deadline
            time.sleep(0.5)


def test_behind_a_trusted_proxy_failures_count_per_forwarded_address(db):
    """Behind WintEHR's reverse proxy every connection comes from the proxy: with
    --trusted-proxy, one tab's stale token limits its own address, not the ward's."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--auth-failure-limit", "2", "--trusted-proxy", "127.0.0.1, ::1"]) as bridge:
        offset = bridge.log_size()
        bad = hs256(secret=b"not-the-secret-of-this-bridge-0123456789")
        storm = [upgrade(bridge, bad, forwarded_for="203.0.113.7")[0] for _ in range(4)]
        assert storm == [401, 401, 429, 429], storm
        # another user behind the same proxy still gets a plain 401
        assert upgrade(bridge, bad, forwarded_for="198.51.100.9")[0] == 401
        # a forged entry left of the proxy's own is not believed
        assert upgrade(bridge, bad, forwarded_for="198.51.100.10, 203.0.113.7")[0] == 429
        log = bridge.wait_for_log("auth: refused a token from 198.51.100.9 (upgrade)", since=offset)
        assert "auth: refused a token from 203.0.113.7 (upgrade)" in log, log
        assert "from 127.0.0.1" not in log, log
        with bridge.connect(hs256(), headers={"X-Forwarded-For": "192.0.2.44"}) as client:
            client.ping()
        bridge.wait_for_log("connected from 192.0.2.44", since=offset)
    # without --trusted-proxy the header is the client's own claim: ignored
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--auth-failure-limit", "2"]) as bridge:
        statuses = [upgrade(bridge, bad, forwarded_for=f"203.0.113.{i}")[0] for i in range(3)]
        assert statuses == [401, 401, 429], statuses


def test_a_bad_trusted_proxy_stops_the_bridge_with_a_message(db):
    bridge = Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                    args=ARGS + ["--trusted-proxy", "127.0.0.1,nginx"], wait=False)
    with bridge:
        assert bridge.wait_exit(20) == 2
        assert 'trusted-proxy: "nginx" is not an address or network' in bridge.log(), bridge.log()


def test_expired_token_of_a_live_connection_then_refused_at_the_upgrade(db):
    """A live connection whose token expires gets TOKEN_EXPIRED and 4001; its reconnect with
    the same token is refused at the upgrade (401), which a browser backs off from."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--jwt-leeway", "0"]) as bridge:
        token = hs256(exp_in=2)
        with bridge.connect(token) as client:
            code, _, messages = client.wait_closed(timeout=20)
        assert code == 4001 and [m.get("error") for m in messages] == ["TOKEN_EXPIRED"], messages
        bridge.refused_token(token, expired=True)


# -- tokens without SMART scopes ------------------------------------------------------

def wintehr_token(sub, role, **options):
    """A token as WintEHR's backend issues them: {sub, role, exp}, HS256, nothing else."""
    return hs256(sub=sub, scope=None, aud=None, iss=None, claims={"role": role, "iat": None},
                 **options)


def test_tokens_without_scopes_get_scopes_by_claim_or_the_default(db, store):
    args = ["--log-level", "info", "--scopes-by-claim", "role=physician:user/*.read",
            "--scopes-by-claim", "role=nurse:user/Observation.read user/Condition.read",
            "--default-scopes", "user/Observation.read"]
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=args) as bridge:
        patient = new_id("pat")
        with bridge.connect(wintehr_token("dr.house", "physician")) as physician, \
                bridge.connect(wintehr_token("front.desk", "clerk")) as clerk:
            assert physician.welcome["data"]["user"] == {
                "sub": "dr.house", "role": "physician", "exp": physician.welcome["data"]["user"]["exp"]}
            physician.subscribe("chart", [patient])
            clerk.subscribe("chart", [patient])
            created = store.create(condition(patient))
            update = physician.recv_update()
            assert update["data"]["resource_id"] == created["id"], update
            clerk.expect_no_message(within=1.0)  # the default allows Observation only
        with bridge.connect(wintehr_token("n.joy", "nurse")) as nurse:
            nurse.subscribe("chart", [patient])
            created = store.create(condition(patient))
            assert nurse.recv_update()["data"]["resource_id"] == created["id"]


def test_without_defaults_a_token_without_scopes_is_refused_and_the_log_says_why(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=["--log-level", "info"]) as bridge:
        with bridge.connect(wintehr_token("dr.house", "physician")) as client:
            client.send_json({"type": "subscribe", "data": {"subscription_id": "chart",
                                                            "patient_ids": [new_id("pat")]}})
            answer = client.recv_json()
            assert answer.get("error") == "FORBIDDEN", answer


@pytest.mark.parametrize("entry, message", [
    ("physician:user/*.read", "expected CLAIM=VALUE:SCOPES"),
    ("role=physician:user/*.raed", 'scope "user/*.raed" grants no read right'),
])
def test_a_bad_scopes_by_claim_stops_the_bridge_with_a_message(db, entry, message):
    bridge = Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                    args=["--scopes-by-claim", entry], wait=False)
    with bridge:
        assert bridge.wait_exit(20) != 0
        assert message in bridge.log(), bridge.log()


def test_a_short_secret_is_refused_with_how_to_make_one(db, tmp_path):
    short = tmp_path / "wintehr-dev-secret"
    short.write_text("dev-secret-key\n")  # 14 bytes, like WintEHR's development default
    bridge = Bridge(shared_cluster(), db, secret_file=str(short), wait=False)
    with bridge:
        assert bridge.wait_exit(20) != 0
        log = bridge.log()
    assert "is 14 bytes, shorter than the 32 bytes required" in log, log
    assert f"openssl rand -base64 48 > {short}" in log, log


# -- deletes WintEHR's chart applies ------------------------------------------------

def allergy(patient_id, text="Peanuts"):
    return {"resourceType": "AllergyIntolerance", "id": new_id("alg"),
            "patient": {"reference": f"Patient/{patient_id}"}, "code": {"text": text}}


def medication_request(patient_id):
    return {"resourceType": "MedicationRequest", "id": new_id("med"), "status": "active",
            "subject": {"reference": f"Patient/{patient_id}"},
            "medicationCodeableConcept": {"text": "Aspirin"}}


def test_deletes_carry_the_event_and_resource_the_chart_removes_items_on(db, store):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        patient = new_id("pat")
        with bridge.connect(hs256()) as client:
            start = client.subscribe("chart", [patient])["data"]["cursor"]
            created = store.create(allergy(patient))
            assert client.recv_update()["data"]["action"] == "created"
            edited = store.update({**created, "code": {"text": "Peanuts (severe)"}})
            assert client.recv_update()["data"]["action"] == "updated"
            store.delete("AllergyIntolerance", created["id"])  # WintEHR's soft delete
            data = client.recv_update()["data"]
            assert data["action"] == "deleted" and data["event_type"] == "allergy.deleted", data
            assert data["resource"] == edited, data  # the last body read

            # A hard DELETE of a Condition the bridge never saw: a stub with type and id.
            cond = condition(patient)
            shared_cluster().execute(
                "INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES "
                "('Condition', %s, %s::jsonb)", (cond["id"], json.dumps(cond)),
                dbname=db)
            assert client.recv_update()["data"]["action"] == "created"
            shared_cluster().execute("DELETE FROM fhir.resources WHERE fhir_id = %s", (cond["id"],),
                                     dbname=db)
            data = client.recv_update()["data"]
            assert data["event_type"] == "condition.deleted", data
            assert data["resource"]["resourceType"] == "Condition" and data["resource"]["id"] == cond["id"]

            # Other types: resource null, no event_type (the hook ignores it rather than
            # inserting the deleted item again).
            med = store.create(medication_request(patient))
            client.recv_update()
            store.delete("MedicationRequest", med["id"])
            data = client.recv_update()["data"]
            assert data["action"] == "deleted" and data["resource"] is None, data
            assert "event_type" not in data, data

        # A client resuming from before the delete gets the same event from the database.
        with bridge.connect(hs256()) as late:
            late.subscribe("chart", [patient], since=start)
            replayed = []
            while True:
                message = late.recv_json()
                if message["type"] == "caught_up":
                    break
                if message["type"] == "update":
                    replayed.append(message["data"])
        deletes = [d for d in replayed if d["action"] == "deleted" and d["resource_type"] == "AllergyIntolerance"]
        assert deletes and deletes[0]["event_type"] == "allergy.deleted", replayed
        assert deletes[0]["resource"]["id"] == created["id"], deletes


# -- client events, rooms, repeated subscription ids ------------------------------------

def event(patient_id, user_id="someone.else", **extra):
    return {"type": "order.placed",
            "payload": {"orderId": "o1", "patientId": patient_id, "userId": user_id, **extra},
            "timestamp": "2026-12-01T16:00:00Z"}


def test_client_events_are_relayed_only_to_the_patients_other_followers(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--relay-client-events"]) as bridge:
        mine, other = new_id("pat"), new_id("pat")
        with bridge.connect(hs256(sub="dr.sender")) as sender, \
                bridge.connect(hs256(sub="dr.peer")) as peer, \
                bridge.connect(hs256(sub="dr.elsewhere")) as elsewhere, \
                bridge.connect(hs256(sub="dr.nosy", scope="patient/*.read", patient=other)) as nosy:
            sender.subscribe("chart", [mine])
            peer.subscribe("chart", [mine], ["Condition"])
            elsewhere.subscribe("chart", [other])
            nosy.subscribe("chart", [other])
            sender.send_json(event(mine))
            relayed = peer.recv_json()
            assert relayed["type"] == "order.placed", relayed
            # stamped with the sender's authenticated user, never the payload's
            assert relayed["payload"]["userId"] == "dr.sender", relayed
            assert relayed["sender"] == {"user": "dr.sender"}, relayed
            assert relayed["payload"]["patientId"] == mine and relayed["payload"]["orderId"] == "o1"
            assert relayed["timestamp"] == "2026-12-01T16:00:00Z"
            # never echoed, and nothing for another patient's followers
            sender.ping()
            elsewhere.expect_no_message(within=0.5)
            nosy.expect_no_message(within=0.1)

            # no patientId, or a patient the sender does not follow: an error, nothing relayed
            sender.send_json({"type": "order.placed", "payload": {"orderId": "o2"}})
            assert sender.recv_json()["error"] == "BAD_REQUEST"
            sender.send_json(event(other))
            assert sender.recv_json()["error"] == "FORBIDDEN"
            sender.send_json(event("Patient/x"))
            assert sender.recv_json()["error"] == "BAD_REQUEST"
            # too large
            sender.send_json(event(mine, note="x" * 9000))
            assert sender.recv_json()["error"] == "TOO_LARGE"
            peer.expect_no_message(within=0.3)
            elsewhere.expect_no_message(within=0.1)

            # rate: a burst of 20, then 5 a second (the refusals above took some of it)
            for _ in range(30):
                sender.send_json(event(mine))
            refused = 0
            while True:
                sender.send_json({"type": "ping"})
                answer = sender.recv_json()
                while answer.get("type") != "pong":
                    assert answer.get("error") == "RATE_LIMITED", answer
                    refused += 1
                    answer = sender.recv_json()
                break
            assert 5 <= refused <= 15, refused
            for _ in range(30 - refused):
                assert peer.recv_json()["type"] == "order.placed"
            peer.expect_no_message(within=0.3)
        metrics = bridge.metrics()
        assert metrics["fhir_notify_bridge_client_events_relayed_total"] == 1 + 30 - refused


def test_without_relay_client_events_they_go_nowhere(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        patient = new_id("pat")
        with bridge.connect(hs256()) as sender, bridge.connect(hs256()) as peer:
            sender.subscribe("chart-1", [patient])  # two tabs: two ids (and resume points)
            peer.subscribe("chart-2", [patient])
            sender.send_json(event(patient))
            sender.ping()
            peer.expect_no_message(within=0.5)


def test_a_repeated_subscription_id_within_a_second_merges_the_types(db, store):
    """WintEHR's chart header and body subscribe in the same millisecond with the same id
    (patient-<pid>-<Date.now()>): both halves' types are served."""
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        patient = new_id("pat")
        sid = f"patient-{patient}-{int(time.time() * 1000)}"
        with bridge.connect(hs256()) as client:
            client.subscribe(sid, [patient], ["Condition"])
            second = client.subscribe(sid, [patient], ["Observation"])
            assert sorted(second["data"]["resource_types"]) == ["Condition", "Observation"], second
            cond = store.create(condition(patient))
            assert client.recv_update()["data"]["resource_id"] == cond["id"]
            obs = store.create({"resourceType": "Observation", "id": new_id("obs"), "status": "final",
                                "subject": {"reference": f"Patient/{patient}"}, "code": {"text": "HR"}})
            assert client.recv_update()["data"]["resource_id"] == obs["id"]
            # later than the moment: a repeated id replaces, as before
            time.sleep(1.1)
            third = client.subscribe(sid, [patient], ["Observation"])
            assert third["data"]["resource_types"] == ["Observation"], third
            store.create(condition(patient))
            obs = store.create({"resourceType": "Observation", "id": new_id("obs"), "status": "final",
                                "subject": {"reference": f"Patient/{patient}"}, "code": {"text": "HR"}})
            assert client.recv_update()["data"]["resource_id"] == obs["id"]


# -- resume for clients that send no cursor ----------------------------------------------

def wintehr_subscribe(client, sid, patient):
    """WintEHR's re-subscribe: the same id, no since; returns the confirmation."""
    return client.subscribe(sid, [patient], ["Condition", "AllergyIntolerance"])


def replayed_until_caught_up(client, sid, timeout=15):
    """The update data replayed for sid up to its caught_up (which it checks)."""
    updates = []
    deadline = time.monotonic() + timeout
    while True:
        message = client.recv_json(timeout=max(0.1, deadline - time.monotonic()))
        if message["type"] == "update":
            updates.append(message["data"])
        elif message["type"] == "caught_up":
            assert message["data"]["subscription_id"] == sid, message
            assert message["data"]["replayed"] == len(updates), (message, updates)
            return updates
        else:
            raise AssertionError(f"unexpected {message}")


def test_a_reconnect_without_cursor_is_replayed_what_it_missed(db, store):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as bridge:
        patient = new_id("pat")
        sid = f"patient-{patient}-{int(time.time() * 1000)}"
        token = hs256(sub="dr.resume")
        with bridge.connect(token) as client:
            wintehr_subscribe(client, sid, patient)
            first = store.create(condition(patient))
            assert client.recv_update()["data"]["resource_id"] == first["id"]
        bridge.wait_for_log("disconnected")
        missed = [store.create(condition(patient, text=f"missed {i}")) for i in range(3)]
        time.sleep(1.5)  # the disconnect's point is saved within a second
        with bridge.connect(token) as client:
            wintehr_subscribe(client, sid, patient)
            replayed = replayed_until_caught_up(client, sid)
            assert [u["resource_id"] for u in replayed] == [m["id"] for m in missed], replayed
            live = store.create(condition(patient, text="live"))
            assert client.recv_update()["data"]["resource_id"] == live["id"]
        # another user, or another subscription id (a reloaded page), gets no replay
        with bridge.connect(hs256(sub="dr.other")) as other, bridge.connect(token) as fresh:
            wintehr_subscribe(other, sid, patient)
            wintehr_subscribe(fresh, f"patient-{patient}-1", patient)
            other.expect_no_message(within=1.0)
            fresh.expect_no_message(within=0.1)


def test_resume_without_cursor_survives_a_restart_and_a_switch_of_bridge(db, store):
    patient = new_id("pat")
    sid = f"patient-{patient}-{int(time.time() * 1000)}"
    token = hs256(sub="dr.restart")
    first_bridge = Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS)
    with first_bridge:
        with first_bridge.connect(token) as client:
            wintehr_subscribe(client, sid, patient)
            seen = store.create(condition(patient))
            assert client.recv_update()["data"]["resource_id"] == seen["id"]
            first_bridge.stop()  # SIGTERM while the client is connected: saved at shutdown
            client.wait_closed()
        assert "resume points: saved" in first_bridge.log(), first_bridge.log()[-3000:]
    during = store.create(condition(patient, text="while no bridge ran"))
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as second_bridge:
        with second_bridge.connect(token) as client:
            wintehr_subscribe(client, sid, patient)
            replayed = replayed_until_caught_up(client, sid)
            assert [u["resource_id"] for u in replayed] == [during["id"]], replayed


def test_a_crashed_bridge_costs_duplicates_not_gaps(db, store):
    """Even a crash right after the subscription went live: its starting point
    was saved before it did (the periodic and disconnect saves come later)."""
    patient = new_id("pat")
    sid = f"patient-{patient}-{int(time.time() * 1000)}"
    token = hs256(sub="dr.crash")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as crashing, \
            Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as other:
        client = crashing.connect(token)
        wintehr_subscribe(client, sid, patient)
        seen = [store.create(condition(patient, text=f"seen {i}")) for i in range(2)]
        for s in seen:
            assert client.recv_update()["data"]["resource_id"] == s["id"]
        crashing.proc.kill()  # no shutdown, no disconnect save
        client.wait_closed()
        client.close()
        after = store.create(condition(patient, text="after the crash"))
        with other.connect(token) as moved:
            wintehr_subscribe(moved, sid, patient)
            replayed = [u["resource_id"] for u in replayed_until_caught_up(moved, sid)]
        # the seen ones may come again (duplicates); the one after the crash must
        assert replayed[-1] == after["id"], replayed
        assert set(replayed) <= {s["id"] for s in seen} | {after["id"]}, replayed


def test_resume_without_cursor_can_be_turned_off(db, store):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS + ["--resume-without-cursor=false"]) as bridge:
        patient = new_id("pat")
        sid = f"patient-{patient}-1"
        token = hs256(sub="dr.off")
        with bridge.connect(token) as client:
            wintehr_subscribe(client, sid, patient)
        store.create(condition(patient))
        time.sleep(1.2)
        with bridge.connect(token) as client:
            wintehr_subscribe(client, sid, patient)
            client.expect_no_message(within=1.0)
