"""End to end: log retention by the bridge (--prune-keep).

- with --prune-keep 1 the bridge prunes the change log every second: the
  log shrinks, the metric counts it, a cursor older than the pruned log gets
  an explicit resync, and live delivery goes on;
- prune-keep is reloaded on SIGHUP: off, then on, then off again;
- a bridge whose role only has grant_reader() rights (no EXECUTE on prune)
  warns once with what to do and keeps delivering and healthy.

Each test has its own database: pruning is database-wide.
"""

import signal
import time
import uuid

import pytest

from bridgeproc import (SECRET_FILE, VALIDATION_ARGS, Bridge, FhirStore, assert_update,  # noqa: F401
                        bridge_logs, condition, create_fhir_database, hs256, new_id,
                        shared_cluster)

ARGS = VALIDATION_ARGS
GRANT_HINT = "grant EXECUTE on fhir_notify.prune(interval) to the bridge's role"


@pytest.fixture
def token():
    return hs256()


def wait_until(predicate, what, timeout=30):
    """Polls predicate (frugally) until it is true; fails with what otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.2)


def count_changes(cluster, db):
    return cluster.execute("SELECT count(*) FROM fhir_notify.changes", dbname=db)[0][0]


def test_prune_keep_shrinks_the_log_and_old_cursors_get_resync(token):
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    store = FhirStore(cluster, db)
    patient = new_id("pat")
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE,
                    args=ARGS + ["--prune-keep", "1", "--poll-interval", "1"]) as bridge:
            # prune-keep below the default resume-max-age (3600 s) is allowed, with a warning.
            bridge.wait_for_log("prune-keep (1 s) is shorter than resume-max-age (3600 s)")
            with bridge.connect(token) as watcher:
                watcher.subscribe("watch", [patient])
                first = store.create(condition(patient))
                old_cursor = assert_update(watcher.recv_update(), "created", "Condition",
                                           first["id"], patient)["cursor"]
                second = store.create(condition(patient))
                assert_update(watcher.recv_update(), "created", "Condition", second["id"], patient)
                assert count_changes(cluster, db) >= 2

                # Both changes are older than a second once the next prune runs.
                wait_until(lambda: count_changes(cluster, db) == 0, "the change log emptied")
                wait_until(lambda: bridge.metrics()["fhir_notify_bridge_pruned_changes_total"] >= 2,
                           "the pruned changes counted")
                assert "prune: deleted" in bridge.log()
                assert bridge.health() == 200

                # A client resuming from before the pruned log is told to resync, not left stale.
                with bridge.connect(token) as client:
                    client.subscribe("chart", [patient], since=old_cursor)
                    resync = client.recv_json()
                    assert resync.get("type") == "resync", resync
                    assert resync["data"]["reason"] == "cursor_too_old", resync
                    assert resync["data"]["patient_id"] == patient, resync
                    # Live delivery goes on while the bridge keeps pruning.
                    live = store.create(condition(patient))
                    assert_update(client.recv_update(), "created", "Condition", live["id"], patient,
                                  live)
                    client.expect_no_message()
                assert_update(watcher.recv_update(), "created", "Condition", live["id"], patient)
    finally:
        store.close()


def test_prune_without_execute_warns_once_and_keeps_delivering(token):
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    role = "reader_" + uuid.uuid4().hex[:10]
    cluster.execute(f'CREATE ROLE "{role}" LOGIN')
    cluster.execute("SELECT fhir_notify.grant_reader(%s)", (role,), dbname=db)
    store = FhirStore(cluster, db)
    patient = new_id("pat")
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE, db=cluster.dsn(db, user=role),
                    args=ARGS + ["--prune-keep", "1", "--resume-max-age", "1"]) as bridge:
            bridge.wait_for_log(GRANT_HINT)
            with bridge.connect(token) as client:
                client.subscribe("chart", [patient])
                for _ in range(3):
                    created = store.create(condition(patient))
                    assert_update(client.recv_update(), "created", "Condition", created["id"],
                                  patient)
                    time.sleep(1)  # a few prune periods go by
            assert bridge.health() == 200
            assert bridge.log().count(GRANT_HINT) == 1
            assert "42501" in bridge.log()
            assert "shorter than resume-max-age" not in bridge.log()
            assert bridge.metrics()["fhir_notify_bridge_pruned_changes_total"] == 0
            assert count_changes(cluster, db) >= 3
    finally:
        store.close()
        cluster.execute(f"SELECT fhir_notify.revoke_reader('{role}')", dbname=db)
        cluster.execute(f'DROP OWNED BY "{role}"', dbname=db)
        cluster.execute(f'DROP ROLE "{role}"')


def test_prune_keep_follows_sighup(tmp_path, token):
    cluster = shared_cluster()
    db = create_fhir_database(cluster)
    store = FhirStore(cluster, db)
    patient = new_id("pat")
    config = tmp_path / "bridge.conf"
    config.write_text("prune-keep = 0\n")
    try:
        with Bridge(cluster, db, secret_file=SECRET_FILE,
                    args=ARGS + ["--config", str(config), "--poll-interval", "1"]) as bridge:
            with bridge.connect(token) as client:
                client.subscribe("chart", [patient])
                for _ in range(2):
                    created = store.create(condition(patient))
                    assert_update(client.recv_update(), "created", "Condition", created["id"],
                                  patient)
                time.sleep(2.5)  # older than a 1 s keep, but nothing prunes yet
                assert count_changes(cluster, db) >= 2
                assert bridge.metrics()["fhir_notify_bridge_pruned_changes_total"] == 0

                config.write_text("prune-keep = 1\nresume-max-age = 1\n")
                bridge.signal(signal.SIGHUP)
                wait_until(lambda: count_changes(cluster, db) == 0, "pruned after the reload")
                pruned = bridge.metrics()["fhir_notify_bridge_pruned_changes_total"]
                assert pruned >= 2

                config.write_text("prune-keep = 0\n")
                bridge.signal(signal.SIGHUP)
                bridge.wait_for_log("prune: off")
                created = store.create(condition(patient))
                assert_update(client.recv_update(), "created", "Condition", created["id"], patient)
                time.sleep(2.5)
                assert count_changes(cluster, db) >= 1
                assert bridge.metrics()["fhir_notify_bridge_pruned_changes_total"] == pruned
    finally:
        store.close()
