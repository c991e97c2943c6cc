"""End to end: presence, editing and conflicts (docs/protocol.md, "Presence").

Real bridges on a real cluster, real WebSocket clients: who has a chart
open (one person per user, however many tabs or bridges), who edits what,
conflict warnings from the change log, privacy (nobody is shown to, or
learns about, a patient they may not see; clients that never ask get
nothing new), several bridges on one database, a killed bridge's expiry,
and the bound on messages when many viewers join at once.
"""

import signal
import time

import psycopg
import pytest

from bridgeproc import (AUDIENCE, ISSUER, SECRET_FILE, Bridge, FhirStore, bridge_logs,  # noqa: F401
                        condition, create_fhir_database, hs256, new_id, shared_cluster)
from wsclient import Closed

ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER, "--presence-interval", "100"]


@pytest.fixture(scope="module")
def db():
    try:
        return create_fhir_database(shared_cluster())
    except psycopg.errors.UndefinedFunction as error:
        pytest.skip(f"the extension cannot watch tables yet: {error}")


@pytest.fixture(scope="module")
def store(db):
    s = FhirStore(shared_cluster(), db)
    yield s
    s.close()


@pytest.fixture(scope="module")
def bridge(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as b:
        yield b


def person(sub, name=None, role=None, **extra):
    claims = {"name": name or sub, "role": role or "nurse", **extra}
    return hs256(sub=sub, claims=claims)


def subscribe(client, sid, patients, presence=True, types=None):
    data = {"subscription_id": sid, "patient_ids": list(patients), "resource_types": list(types or [])}
    if presence:
        data["presence"] = True
    client.send_json({"type": "subscribe", "data": data})
    answer = client.recv_json()
    assert answer.get("type") == "subscription" and answer["data"]["action"] == "created", answer
    return answer


def next_of(client, kind, accept=lambda m: True, timeout=5.0):
    """The next message of type kind that accept() takes, skipping others (kept in skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {kind} within {timeout} s")
        message = client.recv_json(left)
        if message.get("type") == kind and accept(message):
            return message


def barrier(client):
    """Sends a ping and reads up to its pong: the bridge has handled everything sent before."""
    client.send_json({"type": "ping"})
    return next_of(client, "pong")


def users(message):
    return {u["user"]: u for u in message["data"]["users"]}


def wait_presence(client, patient, predicate, timeout=2.0):
    """The first presence snapshot of patient for which predicate(users) holds."""
    return next_of(client, "presence",
                   lambda m: m["data"]["patient_id"] == patient and predicate(users(m)), timeout)


def test_presence_list_join_leave_and_one_person_per_user(bridge):
    patient = new_id("pat")
    with bridge.connect(person("nurse.jones", "Nurse Jones", "nurse", fhirUser="Practitioner/nj")) as nurse:
        subscribe(nurse, "s", [patient])
        first = next_of(nurse, "presence")
        assert first["data"]["patient_id"] == patient
        assert list(users(first)) == ["nurse.jones"]
        me = users(first)["nurse.jones"]
        assert me["name"] == "Nurse Jones" and me["role"] == "nurse" and me["fhir_user"] == "Practitioner/nj"
        assert me["connections"] == 1 and me["editing"] == [] and me["since"].endswith("Z")
        assert first["data"]["count"] == 1 and first["data"]["truncated"] is False

        started = time.monotonic()
        with bridge.connect(person("dr.smith", "Dr. Smith", "physician")) as doctor:
            subscribe(doctor, "d", [patient])
            listed = next_of(doctor, "presence")
            assert set(users(listed)) == {"nurse.jones", "dr.smith"}
            joined = wait_presence(nurse, patient, lambda u: "dr.smith" in u)
            assert time.monotonic() - started < 2
            assert joined["data"]["joined"] == ["dr.smith"] and joined["data"]["left"] == []
            assert users(joined)["dr.smith"]["role"] == "physician"

            # A second tab of the nurse: still one person, with two connections.
            with bridge.connect(person("nurse.jones", "Nurse Jones", "nurse")) as tab:
                subscribe(tab, "t", [patient])
                two = wait_presence(doctor, patient, lambda u: u.get("nurse.jones", {}).get("connections") == 2)
                assert two["data"]["count"] == 2 and two["data"]["joined"] == []
            one = wait_presence(doctor, patient, lambda u: u.get("nurse.jones", {}).get("connections") == 1)
            assert one["data"]["left"] == []

            # Unsubscribing leaves.
            started = time.monotonic()
            doctor.unsubscribe("d")
        gone = wait_presence(nurse, patient, lambda u: "dr.smith" not in u)
        assert time.monotonic() - started < 2
        assert gone["data"]["left"] == ["dr.smith"]


def test_clients_that_do_not_ask_see_nothing_and_are_not_shown(bridge, store):
    patient = new_id("pat")
    with bridge.connect(person("nurse.jones")) as nurse, bridge.connect(hs256(sub="wintehr.user")) as plain:
        subscribe(plain, "w", [patient], presence=False)
        subscribe(nurse, "s", [patient])
        only_me = next_of(nurse, "presence")
        assert list(users(only_me)) == ["nurse.jones"]
        written = store.create(condition(patient))
        # The plain client gets exactly the update, no presence.
        message = plain.recv_json()
        assert message["type"] == "update" and message["data"]["resource_id"] == written["id"], message
        plain.expect_no_message(0.5)
        assert not any(m.get("type") == "presence" for m in plain.received)


def test_a_room_shows_nothing_of_another_patient_and_refuses_the_forbidden(bridge):
    mine, other = new_id("pat"), new_id("pat")
    with bridge.connect(person("nurse.jones")) as nurse, \
            bridge.connect(person("portal.user", scope="patient/*.read", patient=mine)) as portal:
        subscribe(nurse, "s", [other])
        next_of(nurse, "presence")
        # The portal user may not see `other`: refused, and never shown there.
        portal.send_json({"type": "subscribe", "data": {"subscription_id": "x", "patient_ids": [other],
                                                        "presence": True}})
        refused = portal.recv_json()
        assert refused["type"] == "error" and refused["error"] == "FORBIDDEN", refused
        subscribe(portal, "p", [mine])
        snapshot = next_of(portal, "presence")
        assert snapshot["data"]["patient_id"] == mine and list(users(snapshot)) == ["portal.user"]
        time.sleep(0.5)
        for client in (nurse, portal):
            try:
                while True:
                    client.recv_json(0.1)
            except TimeoutError:
                pass
        assert not any(m.get("type") == "presence" and m["data"]["patient_id"] == other for m in portal.received)
        assert not any(m.get("type") == "presence" and (m["data"]["patient_id"] == mine
                                                        or "portal.user" in users(m)) for m in nurse.received)


def test_bad_presence_and_editing_requests(bridge):
    patient = new_id("pat")
    with bridge.connect(person("nurse.jones")) as client:
        client.send_json({"type": "subscribe", "data": {"subscription_id": "r", "room": "pharmacy",
                                                        "presence": True}})
        assert client.recv_json()["error"] == "BAD_REQUEST"
        client.send_json({"type": "subscribe", "data": {"subscription_id": "r", "patient_ids": [patient],
                                                        "presence": "yes"}})
        assert client.recv_json()["error"] == "BAD_REQUEST"
        # Editing needs a presence subscription to that patient.
        client.send_json({"type": "editing", "data": {"patient_id": patient, "resource": "Condition/c1"}})
        assert client.recv_json()["error"] == "FORBIDDEN"
        subscribe(client, "s", [patient])
        next_of(client, "presence")
        for data in ({"patient_id": patient}, {"patient_id": patient, "resource": "Condition"},
                     {"patient_id": patient, "resource": "Condition/bad id"},
                     {"patient_id": "bad id", "resource": "Condition/c1"},
                     {"patient_id": patient, "resource": "Condition/c1", "version_id": {"x": 1}}):
            client.send_json({"type": "editing", "data": data})
            answer = client.recv_json()
            assert answer["type"] == "error" and answer["error"] == "BAD_REQUEST", (data, answer)
        for i in range(8):
            client.send_json({"type": "editing", "data": {"patient_id": patient, "resource": f"Condition/c{i}"}})
        client.send_json({"type": "editing", "data": {"patient_id": patient, "resource": "Condition/c8"}})
        answer = next_of(client, "error")
        assert answer["error"] == "LIMIT_EXCEEDED", answer
        wait_presence(client, patient, lambda u: len(u["nurse.jones"]["editing"]) == 8)
        client.send_json({"type": "stop_editing", "data": {"resource": "Condition/c0"}})
        wait_presence(client, patient, lambda u: len(u["nurse.jones"]["editing"]) == 7)
        client.send_json({"type": "stop_editing", "data": {}})
        wait_presence(client, patient, lambda u: u["nurse.jones"]["editing"] == [])


def test_editing_is_shown_and_a_change_by_someone_else_is_a_conflict(bridge, store):
    patient = new_id("pat")
    allergy = store.create(condition(patient, text="Penicillin allergy"), actor="seed")
    ref = f"Condition/{allergy['id']}"
    with bridge.connect(person("nurse.jones", "Nurse Jones", "nurse")) as nurse, \
            bridge.connect(person("dr.smith", "Dr. Smith", "physician")) as doctor:
        subscribe(nurse, "n", [patient], types=["Condition"])
        subscribe(doctor, "d", [patient], types=["Condition"])
        for client in (nurse, doctor):
            client.send_json({"type": "editing", "data": {"patient_id": patient, "resource": ref,
                                                          "version_id": "1"}})
        # Each sees the other editing.
        wait_presence(nurse, patient, lambda u: u.get("dr.smith", {}).get("editing") == [{"resource": ref}])
        both = wait_presence(doctor, patient, lambda u: u.get("nurse.jones", {}).get("editing") == [{"resource": ref}])
        assert [u["user"] for u in both["data"]["users"]][:2] and all(
            u["editing"] for u in both["data"]["users"])

        # The doctor saves first: the nurse is warned, before the update, with who and what.
        saved = store.update(dict(allergy, code={"text": "Penicillin: anaphylaxis"}), actor="dr.smith")
        conflict = next_of(nurse, "conflict")
        data = conflict["data"]
        assert data["patient_id"] == patient and data["resource"] == ref
        assert data["declared_version"] == "1" and data["version_id"] == "2" and data["action"] == "updated"
        assert data["actor"] == "dr.smith"
        assert data["changed_by"] == {"user": "dr.smith", "name": "Dr. Smith", "role": "physician"}
        assert data["content"]["code"]["text"] == "Penicillin: anaphylaxis"
        assert data["cursor"] and data["changed_at"].endswith("Z")
        update = nurse.recv_json()
        assert update["type"] == "update" and update["data"]["version_id"] == "2", update
        assert not any(m["type"] == "conflict" for m in nurse.received[nurse.received.index(update):])
        # Her own save is no conflict for her; the doctor's own change was none for him.
        assert not any(m.get("type") == "conflict" for m in doctor.received)

        # The nurse reloads and declares version 2; her own save (version 3) warns only the doctor.
        nurse.send_json({"type": "editing", "data": {"patient_id": patient, "resource": ref, "version_id": "2"}})
        barrier(nurse)
        store.update(dict(saved, code={"text": "Penicillin: rash"}), actor="nurse.jones")
        warned = next_of(doctor, "conflict")
        assert warned["data"]["version_id"] == "3" and warned["data"]["declared_version"] == "1"
        assert warned["data"]["changed_by"]["name"] == "Nurse Jones"
        next_of(nurse, "update")
        nurse.expect_no_message(0.5)
        assert not any(m.get("type") == "conflict" for m in nurse.received[nurse.received.index(conflict) + 1:])

        # A deletion is a conflict too, without content; after stop_editing, nothing.
        doctor.send_json({"type": "stop_editing", "data": {"patient_id": patient, "resource": ref}})
        barrier(doctor)
        store.delete("Condition", allergy["id"], actor="pharmacy.reconciliation")
        deleted = next_of(nurse, "conflict")
        assert deleted["data"]["action"] == "deleted" and deleted["data"]["content"] is None
        assert deleted["data"]["changed_by"] is None
        next_of(doctor, "update")
        assert sum(m.get("type") == "conflict" for m in doctor.received) == 1
    metrics = bridge.metrics()
    assert metrics["fhir_notify_bridge_conflicts_total"] >= 3
    assert metrics["fhir_notify_bridge_presence_messages_total"] >= 4


def test_editing_of_a_type_the_viewer_may_not_read_is_not_shown(bridge):
    patient = new_id("pat")
    with bridge.connect(person("nurse.jones")) as nurse, \
            bridge.connect(person("dietitian", scope="user/Observation.read")) as dietitian:
        subscribe(nurse, "n", [patient])
        subscribe(dietitian, "d", [patient])
        nurse.send_json({"type": "editing", "data": {"patient_id": patient, "resource": "Condition/c1"}})
        nurse.send_json({"type": "editing", "data": {"patient_id": patient, "resource": "Observation/o1"}})
        wait_presence(nurse, patient, lambda u: len(u["nurse.jones"]["editing"]) == 2)
        seen = wait_presence(dietitian, patient,
                             lambda u: "nurse.jones" in u and u["nurse.jones"]["editing"] != [])
        assert seen["data"]["users"][0]["editing"] == [{"resource": "Observation/o1"}]
        # And it may not declare editing a type it may not read.
        dietitian.send_json({"type": "editing", "data": {"patient_id": patient, "resource": "Condition/c1"}})
        assert next_of(dietitian, "error")["error"] == "FORBIDDEN"


def test_two_bridges_one_presence_and_a_killed_bridge_expires(db):
    patient = new_id("pat")
    cluster = shared_cluster()
    args = ARGS + ["--presence-ttl", "3"]
    with Bridge(cluster, db, secret_file=SECRET_FILE, args=args) as one, \
            Bridge(cluster, db, secret_file=SECRET_FILE, args=args) as two:
        with one.connect(person("nurse.jones", "Nurse Jones")) as nurse:
            subscribe(nurse, "n", [patient])
            next_of(nurse, "presence")
            started = time.monotonic()
            doctor = two.connect(person("dr.smith", "Dr. Smith", "physician"))
            subscribe(doctor, "d", [patient])
            wait_presence(doctor, patient, lambda u: "nurse.jones" in u, timeout=2)
            wait_presence(nurse, patient, lambda u: "dr.smith" in u, timeout=2)
            assert time.monotonic() - started < 2
            # The same user on both bridges is one person with two connections.
            with two.connect(person("nurse.jones", "Nurse Jones")) as tab:
                subscribe(tab, "t", [patient])
                wait_presence(doctor, patient, lambda u: u.get("nurse.jones", {}).get("connections") == 2)
                wait_presence(nurse, patient, lambda u: u.get("nurse.jones", {}).get("connections") == 2)
            wait_presence(nurse, patient, lambda u: u.get("nurse.jones", {}).get("connections") == 1)
            # Bridge two dies without a word: the doctor is gone within the ttl.
            two.signal(signal.SIGKILL)
            two.wait_exit()
            killed = time.monotonic()
            wait_presence(nurse, patient, lambda u: "dr.smith" not in u, timeout=3 + 3)
            assert time.monotonic() - killed < 3 + 2.5
            try:
                doctor.close()
            except Closed:
                pass
        # A clean stop takes a bridge's rows at once.
        with Bridge(cluster, db, secret_file=SECRET_FILE, args=args) as three:
            with three.connect(person("dr.who")) as visitor:
                subscribe(visitor, "v", [patient])
                next_of(visitor, "presence")
                with one.connect(person("nurse.jones")) as watcher:
                    subscribe(watcher, "w", [patient])
                    wait_presence(watcher, patient, lambda u: "dr.who" in u)
                    three.stop()
                    wait_presence(watcher, patient, lambda u: "dr.who" not in u, timeout=2)
    rows = cluster.execute("SELECT count(*) FROM fhir_notify.presence", dbname=db)
    assert rows[0][0] == 0


def test_many_viewers_joining_at_once_are_coalesced_and_the_list_is_capped(db):
    patient = new_id("pat")
    viewers = 60
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=ARGS[:-2] + ["--presence-interval", "300", "--presence-max-list", "10"]) as b:
        clients = []
        try:
            for i in range(viewers):
                c = b.connect(person(f"user{i:03d}"))
                c.send_json({"type": "subscribe", "data": {"subscription_id": "s", "patient_ids": [patient],
                                                           "presence": True}})
                clients.append(c)
            started = time.monotonic()
            last = wait_presence(clients[0], patient, lambda u: True, timeout=5)
            while last["data"]["count"] < viewers:
                try:
                    last = next_of(clients[0], "presence", timeout=5)
                except TimeoutError:
                    counts = [m["data"]["count"] for m in clients[0].received if m.get("type") == "presence"]
                    raise AssertionError(f"stuck at {counts}; log: {b.log()[-3000:]}")
            elapsed = time.monotonic() - started
            assert last["data"]["truncated"] is True and len(last["data"]["users"]) == 10
            assert last["data"]["users"][0]["user"] == "user000"  # the longest present first
            time.sleep(0.8)
            for c in clients:
                try:
                    while True:
                        c.recv_json(0.05)
                except TimeoutError:
                    pass
            per_client = [sum(m.get("type") == "presence" for m in c.received) for c in clients]
            # One snapshot on subscribe plus at most one per interval: not one per join.
            bound = 1 + (elapsed + 1.5) / 0.3 + 2
            assert max(per_client) <= bound, (max(per_client), bound)
            assert sum(per_client) < viewers * viewers / 3, sum(per_client)
        finally:
            for c in clients:
                c.close()


def test_without_grant_presence_it_works_per_bridge_and_says_why_once(db):
    cluster = shared_cluster()
    role = "bridge_" + new_id("np").replace("-", "_")
    cluster.execute(f"CREATE ROLE {role} LOGIN", dbname=db)
    cluster.execute("SELECT fhir_notify.grant_reader(%s)", (role,), dbname=db)
    patient = new_id("pat")
    with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS, db=cluster.dsn(db, role)) as b:
        with b.connect(person("nurse.jones")) as nurse, b.connect(person("dr.smith")) as doctor:
            subscribe(nurse, "n", [patient])
            subscribe(doctor, "d", [patient])
            wait_presence(nurse, patient, lambda u: "dr.smith" in u)
            b.wait_for_log("presence: writing presence failed")
            time.sleep(6)  # past the retry delay: still one warning
            assert b.log().count("presence: writing presence failed") == 1, b.log()
            assert "grant_presence" in b.log()
            # Granted: the next retry writes this bridge's rows.
            cluster.execute("SELECT fhir_notify.grant_presence(%s)", (role,), dbname=db)
            b.wait_for_log("presence: the database works again", timeout=15)
            rows = cluster.execute("SELECT user_id FROM fhir_notify.presence WHERE patient_id = %s ORDER BY 1",
                                   (patient,), dbname=db)
            assert [r[0] for r in rows] == ["dr.smith", "nurse.jones"]
    cluster.execute(f"SELECT fhir_notify.revoke_presence('{role}'), fhir_notify.revoke_reader('{role}')",
                    dbname=db)
    cluster.execute(f"DROP ROLE {role}", dbname=db)


def test_a_renewed_token_shows_the_new_name_and_role(bridge):
    patient = new_id("pat")
    with bridge.connect(person("nurse.jones", "Nurse Jones", "nurse")) as nurse, \
            bridge.connect(person("dr.smith", "Dr. Smith", "physician")) as doctor:
        subscribe(nurse, "n", [patient])
        subscribe(doctor, "d", [patient])
        wait_presence(doctor, patient, lambda u: "nurse.jones" in u)
        nurse.send_json({"type": "authenticate", "token": person("nurse.jones", "Charge Nurse Jones", "charge-nurse")})
        renewed = wait_presence(doctor, patient, lambda u: u.get("nurse.jones", {}).get("role") == "charge-nurse")
        assert users(renewed)["nurse.jones"]["name"] == "Charge Nurse Jones"
