"""End to end: several bridges on one database, pruning, late joiners and
crashes never make a silent gap (issue 10).

- three bridges and a pruner: a bridge cut off from the database while the
  others deliver and prune gets everything it missed once it is back (its
  registered reader holds the log), and with a short
  fhir_notify.reader_max_lag it is dropped and its clients are told to
  resync instead;
- a subscription made during the fan-out of an 800-row transaction gets a
  cursor that is exactly what it was served up to;
- an immediate shutdown with synchronous_commit = off that loses the newest
  ticks: a client resuming from a cursor in the lost ticks is told to
  resync, never given the changes of the ticks that reuse those ids as if
  they were what it missed.

Every test here failed before registered readers, epochs and served-up-to
cursors (bridge of commit 90fb97d): the cut-off bridge got none of the five
changes and no resync; the late joiner got cursor "T-0" and 768 of the 800;
the resuming client got the reissued tick's changes and caught_up.
"""

import socket
import time
import uuid

import pytest

from bridgeproc import (SECRET_FILE, VALIDATION_ARGS, Bridge, FhirStore, assert_update,  # noqa: F401
                        bridge_logs, condition, create_fhir_database, hs256, new_id,
                        shared_cluster)
from pgcluster import Cluster

ARGS = VALIDATION_ARGS + ["--poll-interval", "1"]

@pytest.fixture
def token():
    return hs256()


def cursor_key(cursor):
    """(tick, position) of a cursor: "<epoch>-<tick>-<position>" or "<tick>-<position>"."""
    parts = [int(p) for p in cursor.split("-")]
    return tuple(parts[-2:])


class ReaderRole:
    """A login role with grant_reader() rights that a test can lock out and let back in."""

    def __init__(self, cluster, db):
        self.cluster = cluster
        self.db = db
        self.name = "reader_" + uuid.uuid4().hex[:10]
        cluster.execute(f'CREATE ROLE "{self.name}" LOGIN')
        cluster.execute("SELECT fhir_notify.grant_reader(%s)", (self.name,), dbname=db)

    def dsn(self):
        return self.cluster.dsn(self.db, user=self.name)

    def lock_out(self):
        """NOLOGIN, and every connection of the role terminated: the bridge cannot reconnect."""
        self.cluster.execute(f'ALTER ROLE "{self.name}" NOLOGIN')
        self.cluster.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE usename = %s", (self.name,))

    def let_in(self):
        self.cluster.execute(f'ALTER ROLE "{self.name}" LOGIN')

    def drop(self):
        self.cluster.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE usename = %s", (self.name,))
        self.cluster.execute(f"SELECT fhir_notify.revoke_reader('{self.name}')", dbname=self.db)
        self.cluster.execute(f'DROP OWNED BY "{self.name}"', dbname=self.db)
        self.cluster.execute(f'DROP ROLE "{self.name}"')


def cut_off_while_others_prune(token, max_lag=None):
    """Bridges A, B and C on one database, C pruning with keep 1 s. A is cut off from the
    database while five changes are written, delivered by B and pruned by C for six
    seconds, then let back in (a max_lag of 4 s drops A, not B and C, which confirm every
    second or two). Returns what A's client received after that, and the five changes."""
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    if max_lag:
        cluster.execute(f"ALTER DATABASE \"{db}\" SET fhir_notify.reader_max_lag = '{max_lag}'")
    role = ReaderRole(cluster, db)
    store = FhirStore(cluster, db)
    patient = new_id("pat")
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE, db=role.dsn(), args=ARGS) as a, \
                Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS) as b, \
                Bridge(cluster, db, secret_file=SECRET_FILE,
                       args=ARGS + ["--prune-keep", "1", "--resume-max-age", "1"]) as c:
            with a.connect(token) as on_a, b.connect(token) as on_b, c.connect(token) as on_c:
                # one id each: a user's same id to the same patient shares a resume point
                for n, client in enumerate((on_a, on_b, on_c)):
                    client.subscribe(f"chart-{n}", [patient])
                first = store.create(condition(patient))
                for client in (on_a, on_b, on_c):
                    assert_update(client.recv_update(), "created", "Condition", first["id"],
                                  patient)

                role.lock_out()
                a.wait_health(503, timeout=60)
                missed = []
                for _ in range(5):
                    missed.append(store.create(condition(patient)))
                    assert_update(on_b.recv_update(), "created", "Condition", missed[-1]["id"],
                                  patient)
                    time.sleep(0.3)
                for resource in missed:
                    assert_update(on_c.recv_update(), "created", "Condition", resource["id"],
                                  patient)
                time.sleep(4.5)  # several prunes of C, each keeping 1 s
                role.let_in()
                a.wait_healthy(timeout=60)
                received = []
                try:
                    while True:
                        received.append(on_a.recv_json(timeout=3))
                except TimeoutError:
                    pass
                # and live delivery goes on, on every bridge
                live = store.create(condition(patient))
                for client in (on_a, on_b, on_c):
                    assert_update(client.recv_update(), "created", "Condition", live["id"],
                                  patient)
                return received, missed, patient
    finally:
        store.close()
        role.drop()


def test_three_bridges_and_a_pruner_a_bridge_cut_off_misses_nothing(token):
    received, missed, patient = cut_off_while_others_prune(token)
    assert [m["type"] for m in received] == ["update"] * len(missed), received
    for message, resource in zip(received, missed):
        assert_update(message, "created", "Condition", resource["id"], patient, resource)


def test_a_bridge_lagging_past_reader_max_lag_is_dropped_and_resyncs(token):
    received, missed, patient = cut_off_while_others_prune(token, max_lag="4s")
    kinds = [m["type"] for m in received]
    assert "resync" in kinds, received
    resync = received[kinds.index("resync")]
    assert resync["data"]["reason"] == "reader_dropped", resync
    assert resync["data"]["patient_id"] == patient, resync


def test_a_late_joiner_during_a_large_fan_out_gets_the_cursor_it_was_served_up_to(token):
    """A subscription made while an 800-row transaction is being fanned out: its cursor
    covers exactly the changes it was not sent, whatever moment it joined at."""
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    store = FhirStore(cluster, db)
    partial_joins = 0
    delay = 0.02  # after the commit: searched for, so that the join lands during the fan-out
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS) as bridge:
            for attempt in range(24):
                patient = new_id("pat")
                watchers = [bridge.connect(token) for _ in range(6)]
                late = bridge.connect(token)
                try:
                    for n, w in enumerate(watchers):
                        w.subscribe(f"watch-{n}", [patient])  # one resume point each
                    with store.transaction():
                        written = [store.create(condition(patient, note=[{"text": "x" * 4000}]))
                                   for _ in range(800)]
                    time.sleep(delay)
                    joined = late.subscribe("late", [patient])["data"]["cursor"]
                    cursors = {}
                    for w in watchers:
                        while sum(1 for m in w.received if m.get("type") == "update") < 800:
                            w.recv_update(timeout=30)
                    for m in watchers[1].received:
                        if m.get("type") == "update":
                            cursors[m["data"]["resource_id"]] = m["data"]["cursor"]
                    assert len(cursors) == 800
                    got = []
                    try:
                        while True:
                            m = late.recv_json(timeout=1.5)
                            assert m["type"] == "update", m
                            got.append(m["data"]["resource_id"])
                    except TimeoutError:
                        pass
                    after = [r["id"] for r in written
                             if cursor_key(cursors[r["id"]]) > cursor_key(joined)]
                    assert got == after, (joined, len(got), len(after))
                    if 0 < len(got) < 800:
                        partial_joins += 1
                    elif got:
                        delay = delay * 1.5 + 0.005  # joined before the fan-out: later
                    else:
                        delay *= 0.6  # after it: sooner
                finally:
                    for w in watchers + [late]:
                        w.close()
                if partial_joins >= 2:
                    break
        assert partial_joins, "never joined during the fan-out: the test proved nothing"
    finally:
        store.close()


def test_a_crash_with_asynchronous_commit_then_a_resume_is_a_resync(token):
    """An immediate shutdown loses the newest (asynchronously committed) ticks; the ids are
    handed out again after the restart. A client resuming from a cursor in a lost tick
    must be told to resync, not be sent the new ticks' changes as what it missed."""
    with Cluster(settings={"synchronous_commit": "off", "wal_writer_delay": "10s",
                           "wal_writer_flush_after": "0"}) as cluster:
        db = create_fhir_database(cluster)
        patient = new_id("pat")
        store = FhirStore(cluster, db)
        try:
            with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS) as bridge:
                with bridge.connect(token) as client:
                    client.subscribe("chart", [patient])
                    kept = store.create(condition(patient))
                    assert_update(client.recv_update(), "created", "Condition", kept["id"], patient)
                    cluster.execute("CHECKPOINT")  # this much is durable
                    lost = [store.create(condition(patient)) for _ in range(3)]
                    cursor = None
                    for resource in lost:
                        cursor = assert_update(client.recv_update(), "created", "Condition",
                                               resource["id"], patient)["cursor"]
                    cluster.stop("immediate")
            store.close()
            cluster.start()
            store = FhirStore(cluster, db)
            survived = cluster.execute("SELECT count(*) FROM fhir.resources WHERE fhir_id = %s",
                                       (lost[-1]["id"],), dbname=db)[0][0]
            if survived:
                pytest.skip("the immediate shutdown lost nothing: nothing to check")
            # new changes, ticked one by one, take the lost tick ids again
            for _ in range(6):
                store.create(condition(patient))
                cluster.execute("SELECT fhir_notify.tick()", dbname=db)
            with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS) as bridge:
                with bridge.connect(token) as client:
                    client.subscribe("chart", [patient], since=cursor)
                    answer = client.recv_json(timeout=10)
                    assert answer["type"] == "resync", answer
                    assert answer["data"]["reason"] in ("log_reset", "cursor_unknown"), answer
        finally:
            store.close()


def test_a_client_resumes_on_another_bridge_with_its_cursor(token):
    """Two bridges on one database: a cursor from one resumes on the other, exactly."""
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    store = FhirStore(cluster, db)
    patient = new_id("pat")
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS) as a, \
                Bridge(cluster, db, secret_file=SECRET_FILE, args=ARGS) as b:
            with a.connect(token) as client:
                client.subscribe("chart", [patient])
                seen = store.create(condition(patient))
                cursor = assert_update(client.recv_update(), "created", "Condition", seen["id"],
                                       patient)["cursor"]
            missed = [store.create(condition(patient)) for _ in range(3)]
            with b.connect(token) as client:
                client.subscribe("chart", [patient], since=cursor)
                for resource in missed:
                    assert_update(client.recv_update(), "created", "Condition", resource["id"],
                                  patient, resource)
                client.recv_caught_up("chart", replayed=3)
                live = store.create(condition(patient))
                assert_update(client.recv_update(), "created", "Condition", live["id"], patient)
                client.expect_no_message()
            readers = cluster.execute("SELECT reader, state FROM fhir_notify.readers ORDER BY 1",
                                      dbname=db)
            assert sorted(r[0] for r in readers) == sorted(
                f"fhir-notify-bridge@{socket.gethostname()}:127.0.0.1:{p}"
                for p in (a.port, b.port)), readers
            assert {r[1] for r in readers} == {"active"}
    finally:
        store.close()


def test_writers_without_pause_every_change_once_in_order_with_doorbells_skipped(token):
    """Writers commit without pause while the bridge reads; a doorbell whose
    transaction a read had already covered (its payload, the xid, is visible in
    the snapshot taken before that read's tick) is skipped, and still every
    change reaches each subscribed client exactly once, in commit order per
    resource. The safety poll is a minute away: a stranded change would time out."""
    import threading
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    writers, versions = 4, 60
    patients = [new_id("pat"), new_id("pat")]
    with Bridge(cluster, db, secret_file=SECRET_FILE,
                args=VALIDATION_ARGS + ["--poll-interval", "60"]) as bridge:
        clients = [bridge.connect(token) for _ in range(3)]
        try:
            # ids of their own: no resume point of another connection applies
            clients[0].subscribe("a0", [patients[0]])
            clients[1].subscribe("a1", [patients[0]])
            clients[2].subscribe("both", patients)
            errors = []

            def write(n):
                store = FhirStore(cluster, db)
                try:
                    resource = store.create(condition(patients[n % 2], text=f"w{n} v1"))
                    for v in range(2, versions + 1):
                        resource = store.update(dict(resource, code={"text": f"w{n} v{v}"}))
                except Exception as e:  # noqa: BLE001 -- reported below
                    errors.append(e)
                finally:
                    store.close()

            threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errors, errors
            for i, client in enumerate(clients):
                expected = versions * (writers if i == 2 else writers // 2)
                got = {}
                for message in client.recv_updates(expected, timeout=20):
                    data = message["data"]
                    got.setdefault(data["resource_id"], []).append(data["resource"]["code"]["text"])
                client.expect_no_message(within=0.3)
                assert len(got) == expected // versions
                for texts in got.values():
                    writer = texts[0].split()[0]
                    assert texts == [f"{writer} v{v}" for v in range(1, versions + 1)]
            metrics = bridge.metrics()
            reads = metrics["fhir_notify_bridge_log_reads_total"]
            skipped = metrics["fhir_notify_bridge_doorbells_skipped_total"]
            assert reads < writers * versions, metrics
            assert skipped > 0, metrics  # 64-103 of 240 in three runs on the 2-core machine
            print(f"reads {reads:.0f}, doorbells skipped {skipped:.0f} for {writers * versions} commits")
        finally:
            for client in clients:
                client.close()


def test_a_failed_read_is_made_again_soon_not_at_the_next_poll(token):
    """A read that fails (in production: a prune committing during it, 40001; here the
    reader's grant on read_next() revoked for a moment) is made again within a fraction
    of a second: its change must not wait for another write's doorbell or the poll."""
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    role = ReaderRole(cluster, db)
    store = FhirStore(cluster, db)
    read_next = "fhir_notify.read_next(text, bigint, bigint, integer)"
    patient = new_id("pat")
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE, db=role.dsn(),
                    args=VALIDATION_ARGS + ["--poll-interval", "60"]) as bridge:
            with bridge.connect(token) as client:
                client.subscribe("chart-retry", [patient])
                first = store.create(condition(patient))
                assert_update(client.recv_update(), "created", "Condition", first["id"], patient)
                offset = bridge.log_size()
                cluster.execute(f'REVOKE EXECUTE ON FUNCTION {read_next} FROM "{role.name}"',
                                dbname=db)
                second = store.create(condition(patient))
                bridge.wait_for_log("reading the change log failed", since=offset)
                cluster.execute(f'GRANT EXECUTE ON FUNCTION {read_next} TO "{role.name}"',
                                dbname=db)
                # no other write rings, and the poll is a minute away
                assert_update(client.recv_update(timeout=10), "created", "Condition",
                              second["id"], patient)
    finally:
        store.close()
        role.drop()
