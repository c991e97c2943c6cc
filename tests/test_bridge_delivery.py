"""End to end: FHIR writes in PostgreSQL reach the right WebSocket clients, once, whole.

One database and one bridge for the module; every test uses its own patient
ids, so tests cannot see each other's changes.
"""

import datetime
import socket
import threading
import time
import json
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from bridgeproc import (AUDIENCE, ISSUER, SECRET_FILE, Bridge, FhirStore, assert_update,  # noqa: F401
                        bridge_logs, condition, create_fhir_database, hs256, new_id, observation,
                        shared_cluster)
from wsclient import HandshakeRejected, RawClient

MAX_FRAME_SIZE = 65536



@pytest.fixture(scope="module")
def db():
    return create_fhir_database(shared_cluster())


@pytest.fixture(scope="module")
def bridge(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE,
                args=["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER,
                      "--max-frame-size", str(MAX_FRAME_SIZE)]) as b:
        yield b
        assert b.proc.poll() is None, f"the bridge died during the tests:\n{b.log()[-4000:]}"


@pytest.fixture(scope="module")
def store(db):
    s = FhirStore(shared_cluster(), db)
    yield s
    s.close()


@pytest.fixture
def token():
    return hs256()


def test_welcome_message(bridge, token):
    with bridge.connect(token) as client:
        data = client.welcome["data"]
        uuid.UUID(data["client_id"])
        assert data["user"]["sub"] == "dr.smith"
        assert isinstance(data["cursor"], str) and data["cursor"]
        assert data["server"].startswith("fhir-notify-bridge/")
        assert client.ping()["timestamp"].endswith("Z")


def test_subscription_answer_echoes_the_subscription(bridge, token):
    patient, other = new_id("pat"), new_id("pat")
    with bridge.connect(token) as client:
        answer = client.subscribe("chart", [patient, other], ["Condition", "Observation"])
        data = answer["data"]
        assert sorted(data["patient_ids"]) == sorted([patient, other]), answer
        assert sorted(data["resource_types"]) == ["Condition", "Observation"], answer
        assert isinstance(data["cursor"], str) and data["cursor"], answer


def test_two_clients_on_one_patient_both_get_each_change(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as first, bridge.connect(token) as second:
        first.subscribe("patient-a", [patient])
        second.subscribe("patient-a-conditions", [patient], ["Condition"])
        before = datetime.datetime.now(datetime.timezone.utc)
        created = store.create(condition(patient), actor="nurse.jones")
        updated = store.update(dict(created, code={"text": "Essential hypertension"}), actor="dr.house")
        for client in (first, second):
            message = client.recv_update()
            data = assert_update(message, "created", "Condition", created["id"], patient, created)
            assert data["version_id"] == "1"
            assert data["actor"] == "nurse.jones"
            changed_at = datetime.datetime.fromisoformat(data["changed_at"].replace("Z", "+00:00"))
            assert abs((changed_at - before).total_seconds()) < 60
            message = client.recv_update()
            data2 = assert_update(message, "updated", "Condition", created["id"], patient, updated)
            assert data2["version_id"] == "2"
            assert data2["actor"] == "dr.house"
            assert data2["cursor"] != data["cursor"]


def test_client_of_one_patient_never_gets_another_patients_changes(bridge, store, token):
    patient_a, patient_b = new_id("pat"), new_id("pat")
    with bridge.connect(token) as client_a, bridge.connect(token) as client_b:
        client_a.subscribe("a", [patient_a])
        client_b.subscribe("b", [patient_b])
        first_b = store.create(condition(patient_b))
        only_a = store.create(condition(patient_a))
        second_b = store.create(observation(patient_b))
        assert_update(client_a.recv_update(), "created", "Condition", only_a["id"], patient_a, only_a)
        assert_update(client_b.recv_update(), "created", "Condition", first_b["id"], patient_b, first_b)
        assert_update(client_b.recv_update(), "created", "Observation", second_b["id"], patient_b,
                      second_b)
        client_a.expect_no_message()
        client_b.expect_no_message()


def test_resource_type_filter(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("conditions", [patient], ["Condition"])
        store.create(observation(patient))
        wanted = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", wanted["id"], patient, wanted)
        client.expect_no_message()


def test_unsubscribe_stops_delivery(bridge, store, token):
    patient, other = new_id("pat"), new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("main", [patient])
        client.subscribe("barrier", [other])
        first = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", first["id"], patient)
        client.unsubscribe("main")
        store.create(condition(patient))
        barrier = store.create(condition(other))
        assert_update(client.recv_update(), "created", "Condition", barrier["id"], other)
        client.expect_no_message()


def test_overlapping_subscriptions_give_one_copy(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("conditions", [patient], ["Condition"])
        client.subscribe("everything", [patient])
        client.subscribe("everything-again", [patient], ["Condition", "Observation"])
        cond = store.create(condition(patient))
        obs = store.create(observation(patient))
        assert_update(client.recv_update(), "created", "Condition", cond["id"], patient)
        assert_update(client.recv_update(), "created", "Observation", obs["id"], patient)
        client.expect_no_message()


def test_resubscribing_with_the_same_id_replaces_the_subscription(bridge, store, token):
    patient, other = new_id("pat"), new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        client.subscribe("chart", [other])
        store.create(condition(patient))
        barrier = store.create(condition(other))
        assert_update(client.recv_update(), "created", "Condition", barrier["id"], other)
        client.expect_no_message()


def test_delete_arrives_as_deleted_with_the_last_body_and_patient_id(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        created = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
        version = store.delete("Condition", created["id"])
        data = assert_update(client.recv_update(), "deleted", "Condition", created["id"], patient)
        # WintEHR's chart removes a Condition on condition.deleted with its resource
        assert data["event_type"] == "condition.deleted" and data["resource"] == created, data
        assert data["version_id"] == str(version)


def test_patient_reassignment_deletes_from_old_patient_and_creates_for_new(bridge, store, token):
    old, new = new_id("pat"), new_id("pat")
    with bridge.connect(token) as old_chart, bridge.connect(token) as new_chart:
        old_chart.subscribe("old", [old])
        new_chart.subscribe("new", [new])
        created = store.create(condition(old))
        assert_update(old_chart.recv_update(), "created", "Condition", created["id"], old, created)
        moved = store.update(dict(created, subject={"reference": f"Patient/{new}"}))
        data = assert_update(old_chart.recv_update(), "deleted", "Condition", created["id"], old)
        # the old patient's last version or a stub, never the new patient's version
        assert data["resource"] in (created, {"resourceType": "Condition", "id": created["id"]}), data
        message = new_chart.recv_update()
        assert message["data"]["action"] in ("created", "updated"), message
        assert_update(message, message["data"]["action"], "Condition", created["id"], new, moved)
        barrier = store.create(condition(old))
        assert_update(old_chart.recv_update(), "created", "Condition", barrier["id"], old)
        old_chart.expect_no_message()
        new_chart.expect_no_message()


def test_rolled_back_write_gives_nothing(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        with store.transaction():
            store.create(condition(patient, text="entered in error"))
            store.create(observation(patient))
            raise psycopg.Rollback()
        barrier = store.create(condition(patient, text="kept"))
        assert_update(client.recv_update(), "created", "Condition", barrier["id"], patient, barrier)
        client.expect_no_message()


def test_changes_of_one_transaction_arrive_in_order(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        with store.transaction():
            written = [store.create(condition(patient, text=f"problem {i}")) for i in range(5)]
        for resource in written:
            assert_update(client.recv_update(), "created", "Condition", resource["id"], patient, resource)
        client.expect_no_message()


def test_a_300kb_resource_arrives_whole(bridge, store, token):
    patient = new_id("pat")
    note = "".join(f"line {i:06d} of a long discharge summary. " for i in range(7500))
    assert len(note) > 300_000
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        created = store.create(condition(patient, note=[{"text": note}]))
        data = assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)
        assert data["resource"]["note"][0]["text"] == note


def test_forged_notify_by_another_user_delivers_nothing(bridge, store, db, token):
    cluster = shared_cluster()
    patient = new_id("pat")
    intruder = "intruder_" + uuid.uuid4().hex[:8]
    cluster.execute(f"CREATE ROLE {intruder} LOGIN")
    forged_update = {"type": "update", "data": {
        "action": "created", "resource_type": "Condition", "resource_id": "forged",
        "patient_id": patient, "resource": {"resourceType": "Condition", "id": "forged"}}}
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        with psycopg.connect(cluster.dsn(db, intruder), autocommit=True) as conn:
            for payload in [json.dumps(forged_update), json.dumps(forged_update["data"]), "1",
                            "999999999", "0-0", "", "x" * 7000]:
                conn.execute("SELECT pg_notify('fhir_notify', %s)", (payload,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO fhir_notify.changes (action, resource_type, resource_id,"
                             " patient_ids, resource, source_table) VALUES ('created', 'Condition',"
                             " 'forged', %s, '{}', 'fhir.resources')", ([patient],))
        real = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", real["id"], patient, real)
        client.expect_no_message()
        client.ping()
    assert bridge.proc.poll() is None


def test_malformed_json_gets_bad_request_and_the_connection_stays_usable(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        for bad in ["{not json", "[]", '"subscribe"', '{"type": 5}',
                    json.dumps({"type": "subscribe", "data": {"patient_ids": [patient]}}),
                    json.dumps({"type": "subscribe", "data": {"subscription_id": "s",
                                                              "patient_ids": "nope"}}),
                    json.dumps({"type": "subscribe", "data": {"subscription_id": "s",
                                                              "patient_ids": [f"Patient/{patient}"]}}),
                    json.dumps({"type": "subscribe", "data": {"subscription_id": "s",
                                                              "patient_ids": ["x" * 65]}})]:
            client.send_raw(bad)
            answer = client.recv_json()
            assert answer.get("type") == "error" and answer.get("error") == "BAD_REQUEST", (bad, answer)
            assert answer.get("message"), answer
        client.ping()
        client.subscribe("chart", [patient])
        created = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", created["id"], patient)


def test_unknown_type_gets_an_error(bridge, token):
    with bridge.connect(token) as client:
        client.send_json({"type": "no_such_thing", "data": {}})
        answer = client.recv_json()
        assert answer.get("type") == "error" and answer.get("error") == "UNKNOWN_TYPE", answer
        client.ping()


def test_client_events_are_relayed_to_nobody_without_relay_client_events(bridge, token):
    with bridge.connect(token) as sender, bridge.connect(token) as other:
        sender.send_json({"type": "order.placed", "payload": {"order": "1"},
                          "timestamp": "2026-11-26T18:00:00Z"})
        sender.ping()
        other.ping()


def test_oversized_frame_closes_with_1009(bridge, token):
    with bridge.connect(token) as client:
        client.send_json({"type": "ping", "padding": "x" * (MAX_FRAME_SIZE * 2)})
        code, _, messages = client.wait_closed()
        assert code == 1009, (code, messages)
        assert not any(m.get("type") == "pong" for m in messages), messages
    with bridge.connect(token) as client:
        client.ping()


def test_binary_frame_closes_with_1003(bridge, token):
    with bridge.connect(token) as client:
        client.send_raw(b'{"type": "ping"}')
        code, _, messages = client.wait_closed()
        assert code == 1003, (code, messages)


def test_slow_client_does_not_stall_a_fast_one(db, store, token):
    """A client that never reads: the fast client still gets everything; the stuck one is
    told (every update, a resync or a close 1013), never silently left stale."""
    patient = new_id("pat")
    count = 40
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER,
                                                             "--send-queue-limit", "20"]) as bridge:
        path = bridge.url(token)[len(f"ws://127.0.0.1:{bridge.port}"):]
        slow = RawClient("127.0.0.1", bridge.port, path, receive_buffer=4096)
        try:
            slow.send_json({"type": "subscribe", "data": {"subscription_id": "slow",
                                                          "patient_ids": [patient]}})
            with bridge.connect(token) as fast:
                fast.subscribe("fast", [patient])
                written = []
                for i in range(count):
                    written.append(store.create(condition(patient, note=[{"text": f"{i} " + "y" * 200000}])))
                for resource in written:
                    assert_update(fast.recv_update(), "created", "Condition", resource["id"], patient)
                fast.ping()
            frames = slow.read_frames(timeout=30)
        finally:
            slow.close()
        messages = [json.loads(payload) for opcode, payload in frames if opcode == 1]
        closes = [payload for opcode, payload in frames if opcode == 8]
        ids = [m["data"]["resource_id"] for m in messages if m.get("type") == "update"]
        resyncs = [m for m in messages if m.get("type") == "resync"]
        closed_1013 = any(payload[:2] == (1013).to_bytes(2, "big") for payload in closes)
        summary = (len(ids), [m.get("type") for m in messages], closes)
        order = [r["id"] for r in written]
        print(f"stuck client: {len(ids)} updates, {len(resyncs)} resyncs, close frames {closes}; "
              f"got {[order.index(i) if i in order else i for i in ids]} "
              f"types {[m.get('type') for m in messages]}")
        if resyncs:
            for resync in resyncs:
                assert resync["data"]["patient_id"] == patient, resyncs
                assert resync["data"]["subscription_id"] == "slow", resyncs
            # Between resyncs, runs of consecutive updates; before the first resync, from the
            # start; after the last one, to the end: the gaps are exactly where it was told.
            runs, run = [], []
            for m in messages:
                if m.get("type") == "resync":
                    runs.append(run)
                    run = []
                elif m.get("type") == "update":
                    run.append(order.index(m["data"]["resource_id"]))
            runs.append(run)
            for run in runs:
                assert run == list(range(run[0], run[0] + len(run))) if run else True, summary
            assert not runs[0] or runs[0][0] == 0, summary
            if not closed_1013:
                assert not runs[-1] or runs[-1][-1] == count - 1, summary
        elif not closed_1013:
            assert ids == [r["id"] for r in written], summary
        assert bridge.health() == 200
        metrics = bridge.metrics()
        if resyncs:
            assert metrics["fhir_notify_bridge_queue_drops_total"] >= 1, metrics


def test_a_long_open_transaction_holds_back_only_its_own_changes(bridge, store, db, token):
    """Transactions commit out of position order: the earlier writer, committing last, is
    neither lost nor holding back the later one."""
    patient = new_id("pat")
    slow_writer = FhirStore(shared_cluster(), db)
    try:
        with bridge.connect(token) as client:
            client.subscribe("chart", [patient])
            with slow_writer.transaction():
                held = slow_writer.create(condition(patient, text="written first, committed last"))
                quick = store.create(condition(patient, text="written second, committed first"))
                assert_update(client.recv_update(), "created", "Condition", quick["id"], patient, quick)
                client.expect_no_message()
            assert_update(client.recv_update(), "created", "Condition", held["id"], patient, held)
            barrier = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", barrier["id"], patient)
            client.expect_no_message()
    finally:
        slow_writer.close()


def test_a_resource_of_two_patients_reaches_both_rooms(bridge, store, token):
    first, second = new_id("pat"), new_id("pat")
    with bridge.connect(token) as client_1, bridge.connect(token) as client_2, \
            bridge.connect(token) as both:
        client_1.subscribe("one", [first])
        client_2.subscribe("two", [second])
        both.subscribe("both", [first, second])
        # Observation's compartment params are subject and performer.
        shared = store.create(observation(first, performer=[{"reference": f"Patient/{second}"}]))
        assert_update(client_1.recv_update(), "created", "Observation", shared["id"], first, shared)
        assert_update(client_2.recv_update(), "created", "Observation", shared["id"], second, shared)
        messages = both.recv_updates(2)
        assert sorted(m["data"]["patient_id"] for m in messages) == sorted([first, second]), messages
        barrier = store.create(condition(first))
        assert_update(both.recv_update(), "created", "Condition", barrier["id"], first)
        both.expect_no_message()


def test_many_clients_on_one_patient_all_get_the_change(bridge, store, token):
    patient = new_id("pat")
    clients = []
    try:
        for i in range(30):
            clients.append(bridge.connect(token))
            clients[-1].subscribe(f"chart-{i}", [patient])
        created = store.create(condition(patient))
        for client in clients:
            assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)
    finally:
        for client in clients:
            client.close()


def test_named_room_subscription_is_refused_and_carries_no_patient_data(bridge, store, token):
    """Nothing would ever flow in a named room: the subscribe is refused (NOT_SUPPORTED), not
    acknowledged as if it worked."""
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.send_json({"type": "subscribe", "data": {"subscription_id": "room-pharmacy",
                                                        "room": "pharmacy:queue"}})
        answer = client.recv_json()
        assert answer.get("type") == "error" and answer["error"] == "NOT_SUPPORTED", answer
        assert answer["subscription_id"] == "room-pharmacy", answer
        client.subscribe("chart", [patient], ["Observation"])
        store.create(condition(patient))
        barrier = store.create(observation(patient))
        assert_update(client.recv_update(), "created", "Observation", barrier["id"], patient)
        client.expect_no_message()


def test_the_ws_path_alias_works_and_other_paths_do_not(bridge, token):
    with bridge.connect(token, path="/ws") as client:
        client.ping()
    with pytest.raises(HandshakeRejected) as rejected:
        bridge.connect(token, path="/api/nothing-here")
    assert rejected.value.status == 404


def raw_client(bridge, token, **kwargs):
    """A RawClient past the welcome."""
    path = bridge.url(token)[len(f"ws://127.0.0.1:{bridge.port}"):]
    client = RawClient("127.0.0.1", bridge.port, path, **kwargs)
    welcome = client.read_messages(1)
    assert welcome and welcome[0].get("type") == "welcome", welcome
    return client


def test_a_fragmented_message_is_reassembled(bridge, store, token):
    patient = new_id("pat")
    client = raw_client(bridge, token)
    try:
        text = json.dumps({"type": "subscribe", "data": {"subscription_id": "chart",
                                                         "patient_ids": [patient]}})
        client.send_frame(text[:10], opcode=1, fin=False)
        client.send_frame(text[10:30], opcode=0, fin=False)
        client.send_frame(text[30:], opcode=0, fin=True)
        answer = client.read_messages(1)
        assert answer and answer[0].get("type") == "subscription", answer
        created = store.create(condition(patient))
        update = client.read_messages(1)
        assert update, "no update"
        assert_update(update[0], "created", "Condition", created["id"], patient, created)
    finally:
        client.close()


def test_a_large_message_under_the_limit_is_read_whole(bridge, token):
    client = raw_client(bridge, token)
    try:
        client.send_json({"type": "ping", "padding": "p" * (MAX_FRAME_SIZE - 1000)})
        answer = client.read_messages(1)
        assert answer and answer[0].get("type") == "pong", answer
    finally:
        client.close()


def test_fragments_adding_up_over_the_limit_close_with_1009(bridge, token):
    client = raw_client(bridge, token)
    try:
        piece = "q" * (MAX_FRAME_SIZE // 4)
        client.send_frame('{"type": "ping", "padding": "' + piece, opcode=1, fin=False)
        for _ in range(6):
            client.send_frame(piece, opcode=0, fin=False)
        client.send_frame('"}', opcode=0, fin=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the bridge may close before every fragment is out
    try:
        frames = client.read_frames(timeout=20)
        closes = [payload for opcode, payload in frames if opcode == 8]
        assert closes and closes[0][:2] == (1009).to_bytes(2, "big"), frames[-3:]
        assert not any(opcode == 1 and b"pong" in payload for opcode, payload in frames), frames
    finally:
        client.close()
    assert bridge.health() == 200


def test_clients_vanishing_mid_send_do_not_hurt_others(bridge, store, token):
    patient = new_id("pat")
    note = "z" * 300_000
    vanishing = []
    for i in range(10):
        client = raw_client(bridge, token, receive_buffer=4096)
        client.send_json({"type": "subscribe", "data": {"subscription_id": f"v{i}", "patient_ids": [patient]}})
        vanishing.append(client)
    with bridge.connect(token) as survivor:
        survivor.subscribe("chart", [patient])
        for client in vanishing:
            assert client.read_messages(1)[0].get("type") == "subscription"
        big = store.create(condition(patient, note=[{"text": note}]))
        time.sleep(0.2)
        for client in vanishing:
            client.close()  # with the 300 KB update half-written
        assert_update(survivor.recv_update(), "created", "Condition", big["id"], patient, big)
        after = store.create(condition(patient))
        assert_update(survivor.recv_update(), "created", "Condition", after["id"], patient, after)
    assert bridge.health() == 200


def test_half_open_and_junk_connections_do_not_hurt_the_bridge(bridge, store, token):
    junk = [b"", b"GET /api/ws HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n",
            b"GET /api/ws?token=" + b"A" * 20_000 + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"]
    sockets = []
    for data in junk:
        s = socket.create_connection(("127.0.0.1", bridge.port), timeout=10)
        try:
            s.sendall(data)
        except OSError:
            pass
        sockets.append(s)
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        created = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
    for s in sockets:
        s.close()
    assert bridge.health() == 200


def test_concurrent_writers_every_change_exactly_once(bridge, db, token):
    patient = new_id("pat")
    writers, per_writer = 4, 25
    written = {w: [] for w in range(writers)}
    errors = []

    def write(w):
        store = FhirStore(shared_cluster(), db)
        try:
            for i in range(per_writer):
                if i % 5 == 4:
                    with store.transaction():  # some transactions of two changes
                        written[w].append(store.create(condition(patient, text=f"w{w} {i}a"))["id"])
                        written[w].append(store.create(observation(patient, value=i))["id"])
                else:
                    written[w].append(store.create(condition(patient, text=f"w{w} {i}"))["id"])
        except Exception as e:  # reported below
            errors.append(e)
        finally:
            store.close()

    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        expected = [rid for w in range(writers) for rid in written[w]]
        received = [m["data"]["resource_id"] for m in client.recv_updates(len(expected))]
        client.expect_no_message(within=1.0)
    assert sorted(received) == sorted(expected)
    assert len(set(received)) == len(received)
    for w in range(writers):  # each writer's commits arrive in its commit order
        mine = [rid for rid in received if rid in set(written[w])]
        assert mine == written[w], w


def test_unicode_and_odd_ids_arrive_intact(bridge, store, token):
    patient = "Odd.Patient-" + uuid.uuid4().hex[:8]
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        created = store.create(condition(patient, text="Diabète sucré 糖尿病 \U0001F489 \"quoted\" \\ back",
                                         note=[{"text": "line1\nline2\ttab \u2028 sep"}]))
        assert_update(client.recv_update(), "created", "Condition", created["id"], patient, created)


def test_hard_delete_arrives_as_deleted(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        created = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
        with store.transaction():
            store.conn.execute("DELETE FROM fhir.resource_history WHERE resource_id IN (SELECT id FROM"
                               " fhir.resources WHERE fhir_id = %s)", (created["id"],))
            store.conn.execute("DELETE FROM fhir.resources WHERE fhir_id = %s", (created["id"],))
        data = assert_update(client.recv_update(), "deleted", "Condition", created["id"], patient)
        assert data["resource"] == created, data


def test_a_burst_of_many_changes_and_many_ticks_arrives_complete_and_in_order(bridge, store, db, token):
    """One transaction of 1500 changes, then 300 small transactions (far more ticks than one
    read takes): a client that keeps reading gets every change once, in commit order."""
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        big = [observation(patient, value=i) for i in range(1500)]
        with store.transaction():
            with store.conn.cursor() as cur:
                cur.executemany("INSERT INTO fhir.resources (resource_type, fhir_id, resource)"
                                " VALUES ('Observation', %s, %s)",
                                [(r["id"], Jsonb(r)) for r in big])
        expected = [r["id"] for r in big]
        for i in range(300):
            expected.append(store.create(condition(patient, text=f"small {i}"))["id"])
        received = [m["data"]["resource_id"] for m in client.recv_updates(len(expected), timeout=60)]
        client.expect_no_message()
    assert received == expected
