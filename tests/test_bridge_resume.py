"""End to end: nothing is lost or duplicated across disconnects, pruning and database outages.

- resume with a cursor gets exactly what was missed (shared bridge);
- a cursor older than the pruned log gets an explicit resync (own database:
  pruning is database-wide);
- a database restart and killed bridge connections lose and duplicate
  nothing (own cluster: restarting it would disturb other tests).
"""

import json
import threading
import time

import pytest

from bridgeproc import (SECRET_FILE, VALIDATION_ARGS, Bridge, FhirStore, assert_update,  # noqa: F401
                        bridge_connections, bridge_logs, condition, create_fhir_database, hs256,
                        new_id, observation, shared_cluster)
from pgcluster import Cluster
from wsclient import RawClient

ARGS = VALIDATION_ARGS



@pytest.fixture(scope="module")
def db():
    return create_fhir_database(shared_cluster())


@pytest.fixture(scope="module")
def bridge(db):
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as b:
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


def test_resume_with_cursor_gets_exactly_what_was_missed(bridge, store, token):
    patient, other = new_id("pat"), new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        first = store.create(condition(patient))
        cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]

    missed = [store.create(condition(patient)), store.create(observation(patient))]
    store.create(condition(other))
    missed.append(store.update(dict(first, code={"text": "Resolved hypertension"})))

    with bridge.connect(token) as client:
        answer = client.subscribe("chart", [patient], since=cursor)
        assert isinstance(answer["data"].get("cursor"), str), answer
        for resource, action in zip(missed, ["created", "created", "updated"]):
            last = assert_update(client.recv_update(), action, resource["resourceType"], resource["id"],
                                 patient, resource)
        client.recv_caught_up("chart", replayed=3, cursor=last["cursor"])
        live = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()


def test_resume_honours_resource_types(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient], ["Condition"])
        first = store.create(condition(patient))
        cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
    store.create(observation(patient))
    missed = store.create(condition(patient))
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient], ["Condition"], since=cursor)
        assert_update(client.recv_update(), "created", "Condition", missed["id"], patient, missed)
        client.recv_caught_up("chart", replayed=1)
        live = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()


def test_resume_from_the_welcome_cursor(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        cursor = client.welcome["data"]["cursor"]
    missed = store.create(condition(patient))
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient], since=cursor)
        assert_update(client.recv_update(), "created", "Condition", missed["id"], patient, missed)
        client.recv_caught_up("chart", replayed=1)
        live = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()


def test_resume_with_the_newest_cursor_replays_nothing(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        first = store.create(condition(patient))
        cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient], since=cursor)
        client.recv_caught_up("chart", replayed=0, cursor=cursor)
        live = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()


def test_replay_ends_with_caught_up_after_exactly_the_missed_updates(bridge, store, token):
    """caught_up marks the end of the replay: after exactly the N missed updates, with
    replayed == N and the last replayed cursor, and before any live update."""
    patient, other = new_id("pat"), new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        first = store.create(condition(patient))
        cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
    missed = [store.create(condition(patient)), store.create(observation(patient)),
              store.create(condition(patient)), store.create(observation(patient))]
    store.create(condition(other))
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient], since=cursor)
        replayed = [assert_update(client.recv_update(), "created", r["resourceType"], r["id"], patient, r)
                    for r in missed]
        caught_up = client.recv_caught_up("chart", replayed=len(missed), cursor=replayed[-1]["cursor"])
        assert caught_up["data"]["cursor"] != cursor
        live = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()
    # The caught_up cursor resumes exactly after the replay: only the live change follows.
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient], since=caught_up["data"]["cursor"])
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.recv_caught_up("chart", replayed=1)
        client.expect_no_message()


def test_resume_with_nothing_missed_gets_caught_up_at_once(bridge, store, token):
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        first = store.create(condition(patient))
        cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
    store.create(condition(new_id("pat")))  # someone else's change: not replayed
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient], since=cursor)
        client.recv_caught_up("chart", replayed=0, cursor=cursor)
        live = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()


def test_no_caught_up_without_since_or_after_a_resync(bridge, store, token):
    """Only a resume is caught up; a subscription without since starts live at once, and a
    resume that ends in resync is told so by the resync alone."""
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        live = store.create(condition(patient))
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()
        client.send_json({"type": "subscribe", "data": {"subscription_id": "future", "patient_ids": [patient],
                                                        "since": "999999999-1"}})
        assert client.recv_json()["type"] == "subscription"
        resync = client.recv_json()
        assert resync.get("type") == "resync" and resync["data"]["reason"] == "cursor_unknown", resync
        client.expect_no_message()


def test_malformed_cursor_is_a_bad_request(bridge, token):
    with bridge.connect(token) as client:
        client.send_json({"type": "subscribe", "data": {"subscription_id": "s", "patient_ids": ["p1"],
                                                        "since": "not-a-cursor"}})
        answer = client.recv_json()
        # Either refused, or subscribed with an explicit resync: never silently subscribed.
        if answer.get("type") == "error":
            assert answer["error"] == "BAD_REQUEST", answer
        else:
            assert answer.get("type") == "subscription", answer
            resync = client.recv_json()
            assert resync.get("type") == "resync" and resync["data"]["patient_id"] == "p1", resync
        client.ping()


def test_resume_across_a_bridge_restart(db, store, token):
    """Cursors live in the database, not in one bridge process: a client whose bridge was
    restarted (or who reconnects to another bridge) resumes exactly."""
    patient = new_id("pat")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as first_bridge:
        with first_bridge.connect(token) as client:
            client.subscribe("chart", [patient])
            first = store.create(condition(patient))
            cursor = assert_update(client.recv_update(), "created", "Condition", first["id"],
                                   patient)["cursor"]
            assert first_bridge.stop() == 0
    missed = [store.create(condition(patient)), store.create(observation(patient))]
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS) as second_bridge:
        with second_bridge.connect(token) as client:
            client.subscribe("chart", [patient], since=cursor)
            for resource in missed:
                assert_update(client.recv_update(), "created", resource["resourceType"], resource["id"],
                              patient, resource)
            client.recv_caught_up("chart", replayed=len(missed))
            live = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
            client.expect_no_message()


def test_cursor_older_than_resume_max_age_gets_resync(db, store, token):
    patient = new_id("pat")
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--resume-max-age", "1"]) as bridge:
        with bridge.connect(token) as client:
            client.subscribe("chart", [patient])
            first = store.create(condition(patient))
            cursor = assert_update(client.recv_update(), "created", "Condition", first["id"],
                                   patient)["cursor"]
        store.create(condition(patient))
        time.sleep(2.5)
        with bridge.connect(token) as client:
            client.subscribe("chart", [patient], since=cursor)
            message = client.recv_json()
            assert message.get("type") == "resync", message
            assert message["data"]["patient_id"] == patient and message["data"]["subscription_id"] == "chart"
            live = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
            client.expect_no_message()


def test_resume_while_changes_keep_coming_neither_loses_nor_repeats(bridge, db, token):
    """The seam between replay and live delivery: a writer never pauses while the client
    reconnects; what it saw before plus after the resume is exactly what was written."""
    patient = new_id("pat")
    total = 80
    written = []
    stop = threading.Event()

    def write():
        store = FhirStore(shared_cluster(), db)
        try:
            for i in range(total):
                if stop.is_set():
                    break
                written.append(store.create(condition(patient, text=f"change {i}"))["id"])
                time.sleep(0.01)
        finally:
            store.close()

    with bridge.connect(token) as watcher:
        watcher.subscribe("watch", [patient])
        writer = threading.Thread(target=write)
        seen = []
        try:
            with bridge.connect(token) as client:
                client.subscribe("chart", [patient])
                writer.start()
                for message in client.recv_updates(10):
                    seen.append(message["data"]["resource_id"])
                cursor = message["data"]["cursor"]
            time.sleep(0.2)  # changes keep coming while disconnected
            with bridge.connect(token) as client:
                client.subscribe("chart", [patient], since=cursor)
                writer.join(120)
                assert not writer.is_alive()
                # Exactly one caught_up, after the replayed updates and before the live ones.
                messages = []
                while sum(m["type"] == "update" for m in messages) < len(written) - len(seen):
                    messages.append(client.recv_json())
                    assert messages[-1]["type"] in ("update", "caught_up"), messages[-1]
                if not any(m["type"] == "caught_up" for m in messages):
                    messages.append(client.recv_caught_up("chart"))
                client.expect_no_message(within=1.0)
                marks = [i for i, m in enumerate(messages) if m["type"] == "caught_up"]
                assert len(marks) == 1, messages
                replayed = messages[:marks[0]]
                assert messages[marks[0]]["data"]["replayed"] == len(replayed)
                if replayed:
                    assert messages[marks[0]]["data"]["cursor"] == replayed[-1]["data"]["cursor"]
                else:
                    assert messages[marks[0]]["data"]["cursor"] == cursor
                seen += [m["data"]["resource_id"] for m in messages if m["type"] == "update"]
        finally:
            stop.set()
            writer.join(120)
        assert seen == written
        assert [m["data"]["resource_id"] for m in watcher.recv_updates(len(written))] == written


# -- pruned log: resync --------------------------------------------------------------

@pytest.fixture(scope="module")
def prune_db():
    return create_fhir_database(shared_cluster())


@pytest.fixture(scope="module")
def prune_bridge(prune_db):
    with Bridge(shared_cluster(), prune_db, secret_file=SECRET_FILE,
                args=ARGS + ["--resume-max-changes", "5"]) as b:
        yield b
        assert b.proc.poll() is None, f"the bridge died during the tests:\n{b.log()[-4000:]}"


def test_cursor_older_than_the_pruned_log_gets_resync(prune_bridge, prune_db, token):
    cluster = shared_cluster()
    store = FhirStore(cluster, prune_db)
    patient, other = new_id("pat"), new_id("pat")
    try:
        with prune_bridge.connect(token) as watcher:
            watcher.subscribe("watch", [patient])
            with prune_bridge.connect(token) as client:
                client.subscribe("chart", [patient, other])
                first = store.create(condition(patient))
                cursor = assert_update(client.recv_update(), "created", "Condition", first["id"],
                                       patient)["cursor"]
            assert_update(watcher.recv_update(), "created", "Condition", first["id"], patient)
            missed = store.create(condition(patient))
            # The bridge has read the missed change (and ticked past it) once the watcher has it.
            assert_update(watcher.recv_update(), "created", "Condition", missed["id"], patient)
            # The bridge is a registered reader: the log is kept until it has confirmed what it
            # read (with its next read, at most once a second), whoever prunes.
            deadline = time.monotonic() + 30
            while cluster.execute("SELECT bool_and(tick >= fhir_notify.newest_tick())"
                                  " FROM fhir_notify.readers", dbname=prune_db)[0][0] is not True:
                assert time.monotonic() < deadline, "the bridge never confirmed its position"
                time.sleep(0.2)
            pruned = cluster.execute("SELECT fhir_notify.prune('0 seconds')", dbname=prune_db)[0][0]
            assert pruned >= 1

            with prune_bridge.connect(token) as client:
                client.subscribe("chart", [patient, other], since=cursor)
                resyncs = [client.recv_json(), client.recv_json()]
                for message in resyncs:
                    assert message.get("type") == "resync", resyncs
                    assert message["data"]["subscription_id"] == "chart", message
                    assert message["data"]["reason"] == "cursor_too_old", message
                    assert isinstance(message["data"]["cursor"], str), message
                assert sorted(m["data"]["patient_id"] for m in resyncs) == sorted([patient, other])
                live = store.create(condition(patient))
                assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
                client.expect_no_message()
            # The client reloads the chart and continues from the resync's cursor.
            resync_cursor = resyncs[0]["data"]["cursor"]
            after_resync = [store.create(condition(patient)), store.create(condition(other))]
            with prune_bridge.connect(token) as client:
                client.subscribe("chart", [patient, other], since=resync_cursor)
                assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
                assert_update(client.recv_update(), "created", "Condition", after_resync[0]["id"], patient)
                assert_update(client.recv_update(), "created", "Condition", after_resync[1]["id"], other)
                client.recv_caught_up("chart", replayed=3)
                client.expect_no_message()
    finally:
        store.close()


def test_too_many_missed_changes_gets_resync(prune_bridge, prune_db, token):
    store = FhirStore(shared_cluster(), prune_db)
    patient = new_id("pat")
    try:
        with prune_bridge.connect(token) as client:
            client.subscribe("chart", [patient])
            first = store.create(condition(patient))
            cursor = assert_update(client.recv_update(), "created", "Condition", first["id"],
                                   patient)["cursor"]
        for i in range(12):
            store.create(condition(patient, text=f"problem {i}"))
        with prune_bridge.connect(token) as client:
            client.subscribe("chart", [patient], since=cursor)
            message = client.recv_json()
            assert message.get("type") == "resync", message
            assert message["data"]["patient_id"] == patient, message
            assert message["data"]["subscription_id"] == "chart", message
            # No partial replay: after the resync only live changes come.
            live = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
            client.expect_no_message()
    finally:
        store.close()


# -- database outages -----------------------------------------------------------------

@pytest.fixture(scope="module")
def own_cluster():
    with Cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def outage_db(own_cluster):
    return create_fhir_database(own_cluster)


@pytest.fixture(scope="module")
def outage_bridge(own_cluster, outage_db):
    with Bridge(own_cluster, outage_db, secret_file=SECRET_FILE, args=ARGS) as b:
        yield b
        assert b.proc.poll() is None, f"the bridge died during the tests:\n{b.log()[-4000:]}"


def test_database_restart_loses_and_duplicates_nothing(own_cluster, outage_db, outage_bridge, token):
    patient = new_id("pat")
    with outage_bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        store = FhirStore(own_cluster, outage_db)
        try:
            first = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", first["id"], patient)
            written = [store.create(condition(patient)), store.create(observation(patient))]
        finally:
            store.close()
        # Stop right after writing: the bridge may or may not have read those two yet.
        reconnects = outage_bridge.metrics()["fhir_notify_bridge_database_reconnects_total"]
        own_cluster.stop()
        outage_bridge.wait_health(503)
        status, _, body = outage_bridge.http_get("/healthz")
        assert status == 503 and json.loads(body)["database"] == "disconnected", (status, body)
        own_cluster.start()
        store = FhirStore(own_cluster, outage_db)
        try:
            written.append(store.create(condition(patient)))  # likely before the bridge is back
            outage_bridge.wait_health(200, timeout=60)
            written.append(store.create(observation(patient)))
            for resource in written:
                assert_update(client.recv_update(timeout=60), "created", resource["resourceType"],
                              resource["id"], patient, resource)
            client.expect_no_message(within=1.0)
            client.ping()
            assert outage_bridge.metrics()["fhir_notify_bridge_database_reconnects_total"] > reconnects
        finally:
            store.close()


def test_killed_bridge_connections_lose_and_duplicate_nothing(own_cluster, outage_db, outage_bridge, token):
    patient = new_id("pat")
    with outage_bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        store = FhirStore(own_cluster, outage_db)
        try:
            first = store.create(condition(patient))
            assert_update(client.recv_update(), "created", "Condition", first["id"], patient)
            written = [store.create(condition(patient))]
            pids = bridge_connections(own_cluster, outage_db)
            assert pids, "the bridge has no database connection"
            for pid in pids:
                own_cluster.execute("SELECT pg_terminate_backend(%s)", (pid,))
            written += [store.create(condition(patient)), store.create(observation(patient))]
            for resource in written:
                assert_update(client.recv_update(timeout=60), "created", resource["resourceType"],
                              resource["id"], patient, resource)
            client.expect_no_message(within=1.0)
            deadline = time.monotonic() + 30
            while not set(bridge_connections(own_cluster, outage_db)) - set(pids):
                assert time.monotonic() < deadline, "the bridge did not reconnect"
                time.sleep(0.2)
            outage_bridge.wait_health(200)
            # And it still listens: a new change arrives promptly through the new connection.
            store2 = FhirStore(own_cluster, outage_db)
            try:
                after = store2.create(condition(patient))
            finally:
                store2.close()
            assert_update(client.recv_update(), "created", "Condition", after["id"], patient, after)
        finally:
            store.close()


def test_clients_leaving_during_catch_up_and_authorization_do_not_hurt_the_bridge(db, store, token):
    """Clients that vanish or resubscribe while their catch-up read or policy check is still
    in the database: the answers must find nobody, and nobody else is disturbed."""
    cluster = shared_cluster()
    patient = new_id("pat")
    for _ in range(3):
        store.create(condition(patient))
    query = "SELECT pg_catalog.pg_sleep(0.05) IS NOT NULL AND $1::text IS NOT NULL AND $2::text IS NOT NULL"
    with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS + ["--authorize-sql", query]) as bridge:
        path = bridge.url(token)[len(f"ws://127.0.0.1:{bridge.port}"):]
        for i in range(40):
            raw = RawClient("127.0.0.1", bridge.port, path)
            subscribe = {"type": "subscribe", "data": {"subscription_id": "chart", "patient_ids": [patient],
                                                       "since": "1-0"}}
            raw.send_json(subscribe)
            if i % 2:
                subscribe["data"]["patient_ids"] = [new_id("pat")]
                raw.send_json(subscribe)  # replaces the first while it is in flight
                raw.send_json({"type": "unsubscribe", "data": {"subscription_id": "chart"}})
            raw.close()
        with bridge.connect(token) as client:
            answer = client.subscribe("chart", [patient], since="1-0")
            assert answer["data"]["action"] == "created"
            # Catch-up from the start of the log: the three changes (or an honest resync).
            first = client.recv_json()
            assert first.get("type") in ("update", "resync", "caught_up"), first
            live = store.create(condition(patient, text="live"))
            while True:
                message = client.recv_json()
                if message.get("type") == "update" and message["data"]["resource_id"] == live["id"]:
                    break
        assert bridge.health() == 200
        assert bridge.proc.poll() is None


def test_resume_requested_during_a_database_outage_is_served_after_it(own_cluster, outage_db, outage_bridge,
                                                                       token):
    """A failover drops both: the client reconnects to the bridge while the database is still
    down; its catch-up waits for the database, then sends exactly what was missed."""
    patient = new_id("pat")
    store = FhirStore(own_cluster, outage_db)
    try:
        with outage_bridge.connect(token) as client:
            client.subscribe("chart", [patient])
            first = store.create(condition(patient))
            cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
        missed = [store.create(condition(patient)), store.create(observation(patient))]
    finally:
        store.close()
    own_cluster.stop()
    outage_bridge.wait_health(503)
    assert outage_bridge.metrics()["fhir_notify_bridge_database_connected"] == 0
    with outage_bridge.connect(token) as client:
        client.subscribe("chart", [patient], since=cursor)
        own_cluster.start()
        for resource in missed:
            assert_update(client.recv_update(timeout=60), "created", resource["resourceType"], resource["id"],
                          patient, resource)
        client.recv_caught_up("chart", replayed=len(missed))
        outage_bridge.wait_health(200, timeout=60)
        store = FhirStore(own_cluster, outage_db)
        try:
            live = store.create(condition(patient))
        finally:
            store.close()
        assert_update(client.recv_update(), "created", "Condition", live["id"], patient, live)
        client.expect_no_message()


def test_many_catch_ups_at_once_each_get_exactly_their_changes(bridge, store, token):
    """A reconnect storm: many subscriptions made at once, with a cursor and without,
    whose catch-ups the reader answers together (a batch of oldest-only checks). Each
    resumed one gets exactly what it missed, then caught_up; every one then gets each
    live change once."""
    patient = new_id("pat")
    with bridge.connect(token) as client:
        client.subscribe("chart", [patient])
        first = store.create(condition(patient))
        cursor = assert_update(client.recv_update(), "created", "Condition", first["id"], patient)["cursor"]
    missed = [store.create(condition(patient, text=f"missed {i}"))["id"] for i in range(3)]
    clients = [bridge.connect(token) for _ in range(40)]
    try:
        for i, client in enumerate(clients):  # sent before any answer is read
            # ids of their own: no resume point of another connection applies
            data = {"subscription_id": f"chart-{i}", "patient_ids": [patient], "resource_types": []}
            if i % 2 == 0:
                data["since"] = cursor
            client.send_json({"type": "subscribe", "data": data})
        for i, client in enumerate(clients):
            answer = client.recv_json()
            assert answer.get("type") == "subscription", answer
            if i % 2 == 0:
                replayed = [m["data"]["resource_id"] for m in client.recv_updates(len(missed))]
                assert replayed == missed
                client.recv_caught_up(f"chart-{i}", replayed=len(missed))
        live = [store.create(condition(patient, text=f"live {i}"))["id"] for i in range(3)]
        for client in clients:
            assert [m["data"]["resource_id"] for m in client.recv_updates(len(live))] == live
        for client in clients:
            client.expect_no_message(within=0.1)
    finally:
        for client in clients:
            client.close()
