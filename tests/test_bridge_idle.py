"""End to end: what idle connections cost the bridge (behaviour, not speed: the numbers are in bench/)."""

import contextlib
import os
import time

import pytest

from bridgeproc import (Bridge, bridge_logs, create_fhir_database, hs256, shared_cluster,  # noqa: F401
                        VALIDATION_ARGS, SECRET_FILE)
from wsclient import RawClient

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_CLIENTS = 50
IDLE_SECONDS = 2.0
# A busy loop uses about IDLE_SECONDS of CPU; an idle bridge next to nothing.
MAX_IDLE_CPU_SECONDS = 0.3


@pytest.fixture(scope="module")
def db():
    return create_fhir_database(shared_cluster())


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def idle_cpu(bridge, token):
    """The bridge's CPU time over IDLE_SECONDS with IDLE_CLIENTS open, silent connections."""
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(bridge.connect(token)) for _ in range(IDLE_CLIENTS)]
        clients[-1].ping()  # every connection is set up
        time.sleep(0.5)
        before = cpu_seconds(bridge.proc.pid)
        time.sleep(IDLE_SECONDS)
        used = cpu_seconds(bridge.proc.pid) - before
        assert bridge.proc.poll() is None
        return used


@pytest.mark.parametrize("auth", ["insecure-no-auth", "token-without-exp", "token-with-exp"])
def test_idle_connections_leave_the_bridge_idle(db, auth):
    """Connections with no deadline pending (no token expiry, nothing queued) must not
    keep a timer firing: that once kept the bridge at a full core with --insecure-no-auth."""
    if auth == "insecure-no-auth":
        args, token = ["--insecure-no-auth"], None
    else:
        args = ["--jwt-secret-file", SECRET_FILE, *VALIDATION_ARGS]
        token = hs256(exp_in=None) if auth == "token-without-exp" else hs256(exp_in=600)
    with Bridge(shared_cluster(), db, args=args) as bridge:
        used = idle_cpu(bridge, token)
    print(f"{auth}: {used:.2f} s of CPU in {IDLE_SECONDS} s")
    assert used < MAX_IDLE_CPU_SECONDS, \
        f"{IDLE_CLIENTS} idle connections used {used:.2f} s of CPU in {IDLE_SECONDS} s"


def test_connection_without_a_token_is_closed_after_the_authentication_timeout(db):
    """The 10-second authentication deadline is checked by the bridge's once-a-second
    sweep, not a timer per connection: it still closes with AUTH_REQUIRED, then 4001."""
    args = ["--jwt-secret-file", SECRET_FILE, *VALIDATION_ARGS]
    with Bridge(shared_cluster(), db, args=args) as bridge:
        with bridge.connect(None, welcome=False) as silent, bridge.connect(hs256()) as authed:
            started = time.monotonic()
            code, _, messages = silent.wait_closed(timeout=30)
            waited = time.monotonic() - started
            assert [m.get("type") for m in messages] == ["error"], messages
            assert messages[0]["error"] == "AUTH_REQUIRED", messages
            assert code == 4001
            assert waited >= 8, f"closed after {waited:.1f} s, before the 10-second timeout"
            assert authed.ping()["type"] == "pong"  # a client with a token stays


def test_silent_connection_gets_a_ping_whose_pong_lws_reports(db):
    """After 30 s of silence the bridge pings, and a connection that stays silent
    (no pong either) is dropped at 75 s. lws 4.1 never reports an empty pong to the
    bridge, so an empty ping would get every live client dropped at 75 s: the ping
    must carry a payload. (Waits 30 s: the idle times are not settings.)"""
    with Bridge(shared_cluster(), db, args=["--insecure-no-auth"]) as bridge:
        raw = RawClient("127.0.0.1", bridge.port, "/api/ws")
        try:
            frames = raw.read_frames(timeout=45, idle=45, max_messages=2)
        finally:
            raw.close()
    assert [opcode for opcode, _ in frames] == [1, 9], frames  # the welcome, then a ping
    assert len(frames[1][1]) > 0, "the ping is empty: lws would not report its pong"
