"""The bridge's event loops (--event-loop epoll and poll) and its write path:
frames built once per message and written several to a write, including
frames of every header size (under 126 bytes, up to 64 KiB, over it) and
one larger than a write batch, arrive whole and in order."""

import subprocess

import psycopg
import pytest

from bridgeproc import (AUDIENCE, BRIDGE_BINARY, ISSUER, SECRET_FILE, Bridge, FhirStore,  # noqa: F401
                        condition, create_fhir_database, hs256, new_id, shared_cluster)

ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]


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


@pytest.mark.parametrize("loop", ["epoll", "poll"])
def test_queued_frames_arrive_whole_and_in_order(db, store, loop):
    patient = new_id("pat")
    # payload sizes around the header forms (2, 4 and 10 bytes) and the 64 KiB write batch
    notes = [0, 10, 200, 5000, 64000, 70000, 0, 300, 140000, 20]
    with Bridge(shared_cluster(), db, secret_file=SECRET_FILE, args=ARGS + ["--event-loop", loop]) as bridge:
        assert f"(event loop: {loop})" in bridge.log(), bridge.log()
        with bridge.connect(hs256()) as client:
            client.send_json({"type": "subscribe", "data": {"subscription_id": "s",
                                                            "patient_ids": [patient]}})
            assert client.recv_json()["type"] == "subscription"
            written = []
            # one transaction: the updates are read and queued together, so
            # several go out in one write
            with store.transaction():
                for i, size in enumerate(notes):
                    extra = {"note": [{"text": "x" * size}]} if size else {}
                    written.append(store.create(condition(patient, text=f"c{i}", **extra)))
            for i, resource in enumerate(written):
                update = client.recv_json(timeout=30)
                assert update["type"] == "update", update
                assert update["data"]["resource_id"] == resource["id"], (i, update["data"])
                assert update["data"]["resource"]["note" if notes[i] else "code"] == \
                    (resource["note"] if notes[i] else resource["code"])
            client.send_json({"type": "ping"})
            assert client.recv_json()["type"] == "pong"


def test_an_unknown_event_loop_is_refused():
    out = subprocess.run([BRIDGE_BINARY, "--db", "dbname=unused", "--insecure-no-auth",
                          "--event-loop", "select"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert "invalid --event-loop \"select\": expected auto, epoll or poll" in out.stderr
