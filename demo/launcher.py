"""Starts and stops everything the demo needs; used by demo/run and the tests.

A Demo is: a database (a throwaway cluster from tests/pgcluster.py, or an
existing one given by DEMO_DB), the tables of the FHIR server DEMO_LAYOUT
names (WintEHR's fhir.resources by default, HAPI FHIR JPA's or Medplum's:
demo/stores.py) loaded with the vendored Synthea sample, the fhir_notify
extension watching them, a fhir-notify-bridge with a freshly generated HS256
secret, and the stand-in EHR backend (demo/backend.py) that serves the page
and writes resources the way that server does. Everything runs as child processes that stop with stop().
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

DEMO_DIR = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(DEMO_DIR)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.path.insert(0, DEMO_DIR)

import pgcluster  # noqa: E402
import sampledata  # noqa: E402
import stores  # noqa: E402

# FHIR_NOTIFY_BRIDGE: another build of the bridge (e.g. an installed one).
BRIDGE = os.environ.get("FHIR_NOTIFY_BRIDGE") or os.path.join(TOP, "bridge", "fhir-notify-bridge")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

def wait_for_port(port, timeout, proc=None, what="process"):
    """Waits until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Demo:
    """One running demo. start() brings it up, stop() takes it all down."""

    def __init__(self, db=None, port=None, bridge_port=None, quiet=False, bridge_args=(), layout=None):
        self.db = db
        self.store = stores.store(layout)
        self.bridge_args = list(bridge_args)
        self.port = port or pgcluster.free_port()
        self.bridge_port = bridge_port or pgcluster.free_port()
        self.quiet = quiet
        self.cluster = None
        self.bridge = None
        self.backend = None
        self.dir = tempfile.mkdtemp(prefix="fhir_notify-demo-")
        self.secret_file = os.path.join(self.dir, "jwt-secret")
        self.bridge_log = os.path.join(self.dir, "bridge.log")
        self.backend_log = os.path.join(self.dir, "backend.log")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    @property
    def origin(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.bridge_port}/api/ws"

    def say(self, text):
        if not self.quiet:
            print(f"demo: {text}", flush=True)

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        if not os.access(BRIDGE, os.X_OK):
            raise RuntimeError(f"{BRIDGE} is missing: run make first")
        if self.db is None:
            self.say("starting a throwaway PostgreSQL cluster")
            self.cluster = pgcluster.Cluster()
            self.db = self.cluster.dsn()
        import psycopg
        try:
            self.setup_database()
        except psycopg.Error as e:
            raise RuntimeError(f"database {self.db}: {str(e).strip()}") from e
        with open(self.secret_file, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(secrets.token_urlsafe(48))
        self.start_bridge()
        self.start_backend()

    def setup_database(self):
        """Creates the FHIR server's tables and the extension if missing, loads
        the sample if there are no patients, and watches the tables."""
        import psycopg
        store = self.store
        with psycopg.connect(self.db, autocommit=True) as conn:
            store.create_tables(conn)
            if store.patient_count(conn) == 0:
                self.say(f"loading the Synthea sample into {store.tables} ({store.name} layout)")
                with conn.transaction():
                    stores.load(conn, store)
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS fhir_notify")
            except psycopg.Error as e:
                raise RuntimeError(f"cannot create extension fhir_notify in {self.db}: {e}".strip()) from e
            if store.watch(conn):
                self.say(f"watching {store.watched} with fhir_notify")

    def start_bridge(self):
        argv = [BRIDGE, "--db", self.db, "--listen", f"127.0.0.1:{self.bridge_port}",
                "--jwt-secret-file", self.secret_file, "--allowed-origin", self.origin,
                "--allowed-origin", f"http://localhost:{self.port}"] + self.bridge_args
        self.say(f"starting fhir-notify-bridge on {self.ws_url}")
        log = open(self.bridge_log, "ab")
        self.bridge = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for_port(self.bridge_port, 30, self.bridge, "fhir-notify-bridge")

    def stop_bridge(self):
        stop_process(self.bridge)
        self.bridge = None

    def restart_bridge(self, pause=0.0):
        """Stops the bridge (clients see their connection drop) and starts it again."""
        self.stop_bridge()
        if pause:
            time.sleep(pause)
        self.start_bridge()

    def start_backend(self):
        env = dict(os.environ, DEMO_DB=self.db, DEMO_JWT_SECRET_FILE=self.secret_file,
                   DEMO_BRIDGE_PORT=str(self.bridge_port), DEMO_LAYOUT=self.store.name)
        argv = [PYTHON, os.path.join(DEMO_DIR, "backend.py"), "--port", str(self.port)]
        self.say(f"starting the stand-in EHR backend on port {self.port}")
        log = open(self.backend_log, "ab")
        self.backend = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
        log.close()
        wait_for_port(self.port, 30, self.backend, "the demo backend")

    def logs(self):
        out = {}
        for name, path in (("bridge", self.bridge_log), ("backend", self.backend_log)):
            try:
                with open(path, errors="replace") as f:
                    out[name] = f.read()
            except OSError:
                out[name] = ""
        return out

    def stop(self):
        stop_process(self.backend)
        self.backend = None
        self.stop_bridge()
        keep = os.environ.get("FHIR_NOTIFY_DEMO_LOG_DIR")
        if keep and self.dir:
            # For looking into a failed test run afterwards.
            os.makedirs(keep, exist_ok=True)
            for name, text in self.logs().items():
                with open(os.path.join(keep, f"{name}-{self.bridge_port}.log"), "w") as f:
                    f.write(text)
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None
        if self.dir and os.path.isdir(self.dir):
            import shutil
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def info(self):
        with open(self.secret_file) as f:
            secret = f.read()
        return {"url": self.url, "ws_url": self.ws_url, "db": self.db, "secret": secret,
                "bridge_port": self.bridge_port, "port": self.port,
                "patients": sampledata.patient_ids()}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main():
    """`launcher.py --json`: starts a demo, prints its details as one JSON line, stops on stdin EOF or a signal.

    The JavaScript client's tests use this to get a real cluster and bridge.
    """
    import argparse
    import shlex
    parser = argparse.ArgumentParser(description="start a demo for tests; stdin takes commands")
    parser.add_argument("--json", action="store_true", help="print the demo's details as one JSON line")
    parser.add_argument("--bridge-args", default="", help="extra bridge options, e.g. --bridge-args='--log-level debug'")
    args = parser.parse_args()
    demo = Demo(db=os.environ.get("FHIR_NOTIFY_TEST_DEMO_DB"), quiet=True, bridge_args=shlex.split(args.bridge_args))
    # Ctrl-C and SIGTERM both stop everything (SIGINT explicitly: a shell
    # starts background jobs with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        demo.start()
        print(json.dumps(demo.info()), flush=True)
        while True:
            line = sys.stdin.readline()
            if not line:
                break
            command = line.strip()
            if command == "restart-bridge":
                demo.restart_bridge()
                print(json.dumps({"restarted": True}), flush=True)
            elif command == "stop-bridge":
                demo.stop_bridge()
                print(json.dumps({"stopped": True}), flush=True)
            elif command == "start-bridge":
                demo.start_bridge()
                print(json.dumps({"started": True}), flush=True)
            elif command in ("pause-bridge", "resume-bridge"):
                # A stopped process keeps its sockets open but answers nothing:
                # what a hung bridge or a dead network path looks like.
                demo.bridge.send_signal(signal.SIGSTOP if command == "pause-bridge" else signal.SIGCONT)
                print(json.dumps({command: True}), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()


if __name__ == "__main__":
    main()
