"""The open-files limit: the bridge sizes its soft limit to --max-connections,
says how many connections it can hold, and refuses connections past the
limit cleanly (closed at accept) instead of spinning on a failing accept()."""

import re
import resource
import socket
import subprocess
import time

import pytest

import bridgeproc
from bridgeproc import (Bridge, bridge_logs, create_fhir_database, hs256, shared_cluster,  # noqa: F401
                        VALIDATION_ARGS, SECRET_FILE)
from test_bridge_idle import cpu_seconds

# The hard (and soft) open-files limit the bridge is started under.
FD_LIMIT = 256
# What bridge/client.c reserves: connections + connections/64 + 64 <= the limit.
ROOM = max(n for n in range(FD_LIMIT) if n + n // 64 + 64 <= FD_LIMIT)
# Plain TCP connections opened at once: more than the limit can hold.
FLOOD = FD_LIMIT + 100


class LimitedBridge(Bridge):
    """A bridge started with RLIMIT_NOFILE = FD_LIMIT (soft and hard)."""

    def _launch(self):
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env,
                                         start_new_session=True, preexec_fn=limit)
        bridgeproc._live_bridges.append(self)


@pytest.fixture(scope="module")
def db():
    return create_fhir_database(shared_cluster())


def test_the_bridge_says_how_many_connections_its_limit_holds(db):
    """--max-connections beyond what the hard limit allows is lowered, with a
    warning naming the limit; the soft limit is raised only as far as needed."""
    args = ["--jwt-secret-file", SECRET_FILE, *VALIDATION_ARGS]
    with LimitedBridge(shared_cluster(), db, args=args) as bridge:
        log = bridge.log()
        assert f"hard limit is {FD_LIMIT}" in log, log[-3000:]
        assert f"holding at most {ROOM} connections" in log, log[-3000:]
        assert re.search(rf"open files: limit {FD_LIMIT} .*room for {ROOM} connections", log), \
            log[-3000:]
    with LimitedBridge(shared_cluster(), db, args=args + ["--max-connections", "20"]) as bridge:
        # 20 + 0 + 64: lowered from FD_LIMIT, which the lws tables would be sized by
        assert "open files: limit 84 (was 256, hard 256): room for 20 connections" in bridge.log()
        assert "holding at most" not in bridge.log()


def test_connections_past_the_fd_limit_are_closed_at_once_and_the_bridge_stays_up(db):
    """Without a guard, accept() would fail with EMFILE and lws 4.1 would retry
    it at once, for ever: a busy loop. The bridge closes sockets that arrive
    this close to the limit, and serves the rest normally."""
    args = ["--jwt-secret-file", SECRET_FILE, *VALIDATION_ARGS]
    with LimitedBridge(shared_cluster(), db, args=args) as bridge:
        with bridge.connect(hs256()) as early:
            flood = []
            try:
                for _ in range(FLOOD):
                    s = socket.create_connection(("127.0.0.1", bridge.port), timeout=5)
                    flood.append(s)
                time.sleep(1.0)  # the bridge has accepted what it can
                before = cpu_seconds(bridge.proc.pid)
                time.sleep(1.5)
                used = cpu_seconds(bridge.proc.pid) - before
                assert bridge.proc.poll() is None, bridge.log()[-3000:]
                assert used < 0.5, f"{used:.2f} s of CPU in 1.5 s with the limit reached: spinning?"
                closed = 0
                for s in flood:
                    s.settimeout(0.05)
                    try:
                        closed += s.recv(1) == b""
                    except ConnectionResetError:
                        closed += 1
                    except socket.timeout:
                        pass
                assert closed >= FLOOD - FD_LIMIT, f"only {closed} of {FLOOD} were closed"
                assert "refused a connection: descriptor" in bridge.log()
                # one warning per 10 s, not one per refusal
                assert bridge.log().count("refused a connection: descriptor") == 1
                assert early.ping()["type"] == "pong"  # a connection made before still works
            finally:
                for s in flood:
                    s.close()
        time.sleep(0.5)
        status, _, body = bridge.http_get("/metrics")
        assert status == 200
        refused = re.search(r"^fhir_notify_bridge_connections_refused_fd_limit_total (\d+)$", body,
                            re.M)
        assert refused and int(refused.group(1)) >= FLOOD - FD_LIMIT, body[:2000]
        with bridge.connect(hs256()) as late:  # and new ones are served again
            assert late.ping()["type"] == "pong"
