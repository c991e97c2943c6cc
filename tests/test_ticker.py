"""Ticker mode (fhir_notify.doorbell = ticker): writers do not NOTIFY; a
background worker, woken through shared memory at commit, sends one NOTIFY
per tick on fhir_notify.channel in fhir_notify.ticker_database.

Every test runs a real cluster with a real LISTENing connection. Waits for
what must happen are bounded and generous; nothing asserts on speed.
"""
import select
import threading
import time

import psycopg
import pytest

from pgcluster import Cluster

CHANNEL = "fhir_notify"
WORKER_TYPE = "fhir_notify ticker"
# Generous bound for something that must happen, on a loaded machine.
PATIENCE = 30.0

CONDITION = (
    '{"resourceType": "Condition", "id": "%(id)s", "meta": {"versionId": "1"}, '
    '"code": {"text": "Sepsis"}, "subject": {"reference": "Patient/pat-%(patient)s"}}'
)


def setup_database(cluster, dbname="postgres"):
    """The WintEHR table, watched by fhir_notify."""
    with cluster.connect(dbname) as conn:
        conn.execute("CREATE EXTENSION fhir_notify")
        conn.execute("""
            CREATE SCHEMA fhir;
            CREATE TABLE fhir.resources (
                id bigserial PRIMARY KEY,
                resource_type varchar NOT NULL,
                fhir_id varchar NOT NULL,
                version_id integer NOT NULL DEFAULT 1,
                last_updated timestamptz NOT NULL DEFAULT now(),
                deleted boolean DEFAULT false,
                resource jsonb NOT NULL,
                UNIQUE (resource_type, fhir_id))""")
        conn.execute("SELECT fhir_notify.watch('fhir.resources')")


def write_condition(conn, fhir_id, patient="1"):
    """Inserts one Condition in the connection's current transaction."""
    conn.execute(
        "INSERT INTO fhir.resources (resource_type, fhir_id, resource) VALUES ('Condition', %s, %s)",
        (fhir_id, CONDITION % {"id": fhir_id, "patient": patient}),
    )


def start_writers(cluster, writers, per_writer):
    """Threads that each commit per_writer Conditions w<n>-<000i>, one per
    transaction; returns them, started, and the list their errors go to."""
    errors = []

    def write(n):
        try:
            with cluster.connect() as conn:
                for i in range(per_writer):
                    write_condition(conn, f"w{n}-{i:03d}", patient=str(i % 10))
        except Exception as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    return threads, errors


class Listener:
    """A LISTENing connection that counts notifications on the doorbell channel."""

    def __init__(self, cluster, dbname="postgres"):
        self.conn = cluster.connect(dbname)
        self.conn.execute(f"LISTEN {CHANNEL}")
        self.received = []

    def poll(self, timeout):
        """Collects what arrives within timeout seconds; returns the total so far."""
        deadline = time.monotonic() + timeout
        pgconn = self.conn.pgconn
        while True:
            pgconn.consume_input()
            while (n := pgconn.notifies()) is not None:
                self.received.append((n.relname.decode(), n.extra.decode(), n.be_pid))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return len(self.received)
            select.select([pgconn.socket], [], [], min(remaining, 0.2))

    def wait_for(self, count, timeout=PATIENCE):
        """Waits until at least count notifications arrived; returns the total."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll(0.2) >= count:
                break
        return len(self.received)

    def close(self):
        self.conn.close()


def worker_pid(cluster):
    rows = cluster.execute("SELECT pid, datname FROM pg_stat_activity WHERE backend_type = %s",
                           (WORKER_TYPE,))
    return rows[0] if rows else None


def wait_for_worker(cluster, not_pid=None, timeout=PATIENCE):
    """Waits until a ticker worker (other than not_pid) runs; returns its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = worker_pid(cluster)
        if row and row[0] != not_pid:
            return row[0]
        time.sleep(0.1)
    pytest.fail("no fhir_notify ticker worker running:\n" + cluster.server_log()[-3000:])


def wait_for_log(cluster, text, timeout=PATIENCE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in cluster.server_log():
            return
        time.sleep(0.1)
    pytest.fail(f"{text!r} not in the server log:\n" + cluster.server_log()[-3000:])


@pytest.fixture
def ticker_cluster():
    with Cluster(settings={"fhir_notify.doorbell": "ticker", "log_min_messages": "log"}) as cluster:
        setup_database(cluster)
        wait_for_worker(cluster)
        yield cluster


def test_worker_runs_in_ticker_database():
    with Cluster(settings={"fhir_notify.ticker_database": "'ticks'"}) as cluster:
        cluster.execute("CREATE DATABASE ticks")
        # The worker retries until its database exists.
        wait_for_worker(cluster)
        assert worker_pid(cluster)[1] == "ticks"


def test_committed_write_rings_once_through_the_ticker(ticker_cluster):
    listener = Listener(ticker_cluster)
    try:
        with ticker_cluster.connect(autocommit=False) as writer:
            assert writer.execute("SHOW fhir_notify.doorbell").fetchone()[0] == "ticker"
            write_condition(writer, "c1")
            write_condition(writer, "c2")
            writer.commit()
        assert listener.wait_for(1) == 1
        channel, _, sender = listener.received[0]
        assert channel == CHANNEL
        # The notification came from the worker, not from the writer's commit.
        assert sender == worker_pid(ticker_cluster)[0]
        # Both changes are in the log, and one doorbell covered them.
        assert ticker_cluster.execute("SELECT count(*) FROM fhir_notify.changes")[0][0] == 2
        assert listener.poll(1.0) == 1
    finally:
        listener.close()


def test_rolled_back_write_does_not_ring(ticker_cluster):
    listener = Listener(ticker_cluster)
    try:
        with ticker_cluster.connect(autocommit=False) as writer:
            write_condition(writer, "rolled-back")
            writer.rollback()
            assert listener.poll(2.0) == 0
            # A failed transaction does not ring either.
            write_condition(writer, "dup")
            with pytest.raises(psycopg.errors.UniqueViolation):
                write_condition(writer, "dup")
            writer.rollback()
            assert listener.poll(2.0) == 0
            # The listener does hear a commit.
            write_condition(writer, "committed")
            writer.commit()
        assert listener.wait_for(1) == 1
    finally:
        listener.close()


def test_writers_do_not_notify_themselves(ticker_cluster):
    """A write in another database wakes the worker, but only the ticker
    database hears it: the writers themselves sent no NOTIFY."""
    ticker_cluster.execute("CREATE DATABASE other")
    setup_database(ticker_cluster, "other")
    other_listener = Listener(ticker_cluster, "other")
    try:
        with ticker_cluster.connect("other", autocommit=False) as writer:
            write_condition(writer, "elsewhere")
            writer.commit()
        assert other_listener.poll(2.0) == 0
    finally:
        other_listener.close()


def test_concurrent_commits_share_ticks():
    settings = {"fhir_notify.doorbell": "ticker", "fhir_notify.ticker_interval": "2s"}
    with Cluster(settings=settings) as cluster:
        setup_database(cluster)
        wait_for_worker(cluster)
        listener = Listener(cluster)
        writers, per_writer = 4, 50
        try:
            threads, errors = start_writers(cluster, writers, per_writer)
            for t in threads:
                t.join(120)
            assert not errors
            commits = writers * per_writer
            assert cluster.execute("SELECT count(*) FROM fhir_notify.changes")[0][0] == commits
            received = listener.wait_for(1)
            # Wait out the last tick (interval 2 s), then count.
            received = listener.poll(4.0)
            assert 1 <= received < commits
        finally:
            listener.close()


def test_worker_restarts_after_being_terminated(ticker_cluster):
    pid = wait_for_worker(ticker_cluster)
    assert ticker_cluster.execute("SELECT pg_terminate_backend(%s)", (pid,))[0][0]
    new_pid = wait_for_worker(ticker_cluster, not_pid=pid)
    assert new_pid != pid
    listener = Listener(ticker_cluster)
    try:
        with ticker_cluster.connect() as writer:
            write_condition(writer, "after-restart")
        assert listener.wait_for(1) >= 1
    finally:
        listener.close()


def test_commits_while_worker_is_down_are_rung_on_restart(ticker_cluster):
    """A commit that found no worker to wake is rung by the next worker."""
    listener = Listener(ticker_cluster)
    try:
        with ticker_cluster.connect() as admin:
            # Stop the worker and commit before it comes back (restart after 1 s).
            pid = wait_for_worker(ticker_cluster)
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # one query per turn: the worker may be gone between two
            while (row := worker_pid(ticker_cluster)) and row[0] == pid:
                time.sleep(0.01)
            write_condition(admin, "while-down")
        wait_for_worker(ticker_cluster, not_pid=pid)
        assert listener.wait_for(1) >= 1
    finally:
        listener.close()


def test_worker_follows_sighup(ticker_cluster):
    pid = wait_for_worker(ticker_cluster)
    ticker_cluster.execute("ALTER SYSTEM SET fhir_notify.ticker_interval = '5s'")
    ticker_cluster.execute("SELECT pg_reload_conf()")
    wait_for_log(ticker_cluster, "fhir_notify ticker interval is now 5000 ms")
    listener = Listener(ticker_cluster)
    try:
        with ticker_cluster.connect() as writer:
            write_condition(writer, "first")
            # The first commit after a quiet spell rings at once...
            assert listener.wait_for(1) == 1
            write_condition(writer, "second")
        # ...the next one waits for the interval (5 s) to pass.
        assert listener.poll(1.5) == 1
        assert listener.wait_for(2) == 2
        # SIGHUP did not restart the worker.
        assert worker_pid(ticker_cluster)[0] == pid
    finally:
        listener.close()


def test_ticker_refused_without_preload():
    with Cluster(preload=False) as cluster:
        cluster.execute("CREATE EXTENSION fhir_notify")
        with cluster.connect() as conn:
            conn.execute("LOAD 'fhir_notify'")
            with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
                conn.execute("SET fhir_notify.doorbell = ticker")
            hint = refused.value.diag.message_hint or ""
            assert "shared_preload_libraries" in hint
            with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
                conn.execute("ALTER SYSTEM SET fhir_notify.doorbell = ticker")
            assert "shared_preload_libraries" in (refused.value.diag.message_hint or "")
            # The commit doorbell stays available.
            conn.execute("SET fhir_notify.doorbell = commit")
        assert worker_pid(cluster) is None


def test_bridge_delivers_in_ticker_mode():
    """The real bridge, LISTENing in the ticker database with its safety poll
    an hour away, pushes a change written in ticker mode: the ticker's
    doorbell is what woke it."""
    from bridgeproc import (AUDIENCE, ISSUER, SECRET_FILE, Bridge, FhirStore, assert_update,
                            condition, hs256, install_fhir_schema, new_id)

    settings = {"fhir_notify.doorbell": "ticker", "fhir_notify.ticker_database": "'fhir'"}
    with Cluster(settings=settings) as cluster:
        cluster.execute("CREATE DATABASE fhir")
        install_fhir_schema(cluster, "fhir")
        wait_for_worker(cluster)
        store = FhirStore(cluster, "fhir")
        try:
            with Bridge(cluster, "fhir", secret_file=SECRET_FILE,
                        args=["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER,
                              "--poll-interval", "3600"]) as bridge:
                patient = new_id("pat")
                with bridge.connect(hs256()) as client:
                    client.subscribe("chart", [patient])
                    stored = store.create(condition(patient))
                    assert_update(client.recv_update(), "created", "Condition", stored["id"],
                                  patient, stored)
                    updated = store.update(dict(stored, code={"text": "Sepsis"}))
                    assert_update(client.recv_update(), "updated", "Condition", stored["id"],
                                  patient, updated)
        finally:
            store.close()


class Reader(Listener):
    """What the bridge does on a doorbell: on the LISTENing connection,
    tick() then read() after the last tick it read (notifications that
    arrive during its queries count too)."""

    def __init__(self, cluster, dbname="postgres"):
        super().__init__(cluster, dbname)
        self.conn.add_notify_handler(
            lambda n: self.received.append((n.channel, n.payload, n.pid)))
        self.after = self.conn.execute("SELECT fhir_notify.newest_tick()").fetchone()[0]
        self.read_ids = []

    def read_round(self):
        """One tick() and read(); returns the resource ids read, in order."""
        tick = self.conn.execute("SELECT fhir_notify.tick()").fetchone()[0]
        rows = self.conn.execute(
            "SELECT (r.change).resource_id FROM fhir_notify.read(%s, %s) r "
            "ORDER BY r.tick_id, (r.change).position", (self.after, tick - self.after)).fetchall()
        self.after = tick
        ids = [r[0] for r in rows]
        self.read_ids += ids
        return ids


def ticker_settings(answer_timeout):
    return {"fhir_notify.doorbell": "ticker", "log_min_messages": "log",
            "fhir_notify.ticker_answer_timeout": answer_timeout}


def test_unanswered_doorbell_is_held_until_a_tick_or_the_timeout():
    """After a NOTIFY that nobody answered with tick(), the next commit's
    NOTIFY waits for ticker_answer_timeout (here 3 s); a tick() answers, and
    the commit after it rings at once."""
    with Cluster(settings=ticker_settings("3s")) as cluster:
        setup_database(cluster)
        wait_for_worker(cluster)
        listener = Listener(cluster)
        try:
            with cluster.connect() as writer:
                write_condition(writer, "first")
                assert listener.wait_for(1) == 1
                write_condition(writer, "second")
                # Unanswered: held back...
                assert listener.poll(1.5) == 1
                # ...but not lost.
                assert listener.wait_for(2) == 2
                # A reader answers with tick(); the next commit rings at once.
                writer.execute("SELECT fhir_notify.tick()")
                write_condition(writer, "third")
                assert listener.wait_for(3, timeout=2.5) == 3
        finally:
            listener.close()


def test_commit_right_after_a_read_reaches_the_reader_promptly():
    """No lost wake-up: a reader that answers every doorbell with tick() and
    read() hears, promptly, a commit made right after its read, every time.
    ticker_answer_timeout is 20 s, so a NOTIFY held back for want of an
    answer would show as a wait far over the bound here."""
    with Cluster(settings=ticker_settings("20s")) as cluster:
        setup_database(cluster)
        wait_for_worker(cluster)
        reader = Reader(cluster)
        try:
            with cluster.connect() as writer:
                for i in range(20):
                    write_condition(writer, f"c{i}")
                    heard = len(reader.received)
                    assert reader.wait_for(heard + 1, timeout=8.0) > heard, f"c{i} not rung"
                    ids = reader.read_round()
                    while f"c{i}" not in ids:  # a doorbell for an earlier commit
                        assert reader.wait_for(len(reader.received) + 1, timeout=8.0)
                        ids = reader.read_round()
            assert reader.read_ids == [f"c{i}" for i in range(20)]
        finally:
            reader.close()


def test_busy_reader_reads_every_change_once_in_order():
    """Writers commit without pause while a reader reads on doorbells (fewer
    of them than commits: it is busy); when the writers stop, the last
    commits still ring (well within ticker_answer_timeout, 20 s), and the
    reader has read every change exactly once, each writer's in order."""
    with Cluster(settings=ticker_settings("20s")) as cluster:
        setup_database(cluster)
        wait_for_worker(cluster)
        reader = Reader(cluster)
        writers, per_writer = 4, 60
        try:
            threads, errors = start_writers(cluster, writers, per_writer)
            rounds = 0
            deadline = time.monotonic() + 120
            while len(reader.read_ids) < writers * per_writer and time.monotonic() < deadline:
                heard = len(reader.received)
                # Bounded well below the answer timeout once the writers are done.
                if reader.wait_for(heard + 1, timeout=8.0) == heard:
                    break
                reader.read_round()
                rounds += 1
            for t in threads:
                t.join(120)
            assert not errors
            ids = reader.read_ids
            assert len(ids) == len(set(ids)) == writers * per_writer, (len(ids), rounds)
            for n in range(writers):
                mine = [x for x in ids if x.startswith(f"w{n}-")]
                assert mine == sorted(mine)
            assert rounds < writers * per_writer
        finally:
            reader.close()
