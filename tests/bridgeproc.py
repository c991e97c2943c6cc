"""The real bridge process for the end-to-end tests, and the database it serves.

- shared_cluster(): one throwaway cluster for the whole test session (tests
  that restart or break the server make their own Cluster).
- create_fhir_database(cluster): a fresh database with WintEHR's
  fhir.resources table, the fhir_notify extension, and the table watched.
- FhirStore: writes FHIR resources the way WintEHR does (insert with a
  history row, update with a version bump, soft delete).
- Bridge: starts bridge/fhir-notify-bridge on a free port, waits for
  /healthz, captures its log to a file, stops it with SIGTERM (then SIGKILL).
- bridge_logs: an autouse-able fixture that shows the log lines every bridge
  wrote during a test, in the report of a failing test, and fails the test
  when a sanitizer reported something.

Environment: FHIR_NOTIFY_BRIDGE runs another binary, e.g. a build made with
`make -C bridge SANITIZE=1` copied elsewhere, or a script that execs the
bridge under `valgrind -q --log-file=...`; FHIR_NOTIFY_TEST_LOG_LEVEL sets
--log-level (default debug).
"""

import atexit
import copy
import datetime
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

import tokens
from pgcluster import TOP, Cluster, free_port, pg_bindir
from wsclient import DEFAULT_TIMEOUT, WSClient

BRIDGE_BINARY = os.environ.get("FHIR_NOTIFY_BRIDGE",
                               os.path.join(TOP, "bridge", "fhir-notify-bridge"))
LOG_LEVEL = os.environ.get("FHIR_NOTIFY_TEST_LOG_LEVEL", "debug")
TEST_APPLICATION_NAME = "fhir_notify_tests"  # our own connections, told apart from the bridge's

# -- tokens ------------------------------------------------------------------------
# The test bridges check aud and iss; tokens carry both unless a test says otherwise.

AUDIENCE = "fhir-notify-tests"
ISSUER = "https://issuer.fhir-notify.test"
KEY_DIR = tempfile.mkdtemp(prefix="fhir_notify-keys-")
atexit.register(shutil.rmtree, KEY_DIR, True)
SECRET_FILE = tokens.make_hs256_secret(KEY_DIR)
VALIDATION_ARGS = ["--jwt-audience", AUDIENCE, "--jwt-issuer", ISSUER]


def hs256(secret=None, **options):
    """An HS256 token for the test bridges (key: SECRET_FILE); options as tokens.claims_for."""
    options.setdefault("aud", AUDIENCE)
    options.setdefault("iss", ISSUER)
    options.setdefault("sub", "dr.smith")
    options.setdefault("scope", "user/*.read")
    return tokens.token(secret or SECRET_FILE, "HS256", **options)


def rs256(private_key_file, kid=None, **options):
    """An RS256 token for the test bridges; options as tokens.claims_for."""
    options.setdefault("aud", AUDIENCE)
    options.setdefault("iss", ISSUER)
    return tokens.token(private_key_file, "RS256", kid=kid, **options)


# -- the database ------------------------------------------------------------

_shared_cluster = None


def shared_cluster():
    """The session's shared cluster, started on first use and destroyed at exit."""
    global _shared_cluster
    if _shared_cluster is None:
        _shared_cluster = Cluster()
        atexit.register(_shared_cluster.destroy)
    return _shared_cluster


WINTEHR_SCHEMA = """
CREATE SCHEMA fhir;
CREATE TABLE fhir.resources (
    id bigserial PRIMARY KEY,
    resource_type varchar NOT NULL,
    fhir_id varchar NOT NULL,
    version_id int NOT NULL DEFAULT 1,
    last_updated timestamptz NOT NULL DEFAULT now(),
    deleted boolean DEFAULT false,
    resource jsonb NOT NULL,
    UNIQUE (resource_type, fhir_id)
);
CREATE TABLE fhir.resource_history (
    id bigserial PRIMARY KEY,
    resource_id bigint REFERENCES fhir.resources (id),
    version_id int,
    operation varchar,
    resource jsonb,
    created_at timestamp DEFAULT now()
);
"""


def _extension_can_watch():
    """Whether the installed fhir_notify (in the private installation) has watch()."""
    sharedir = subprocess.run([os.path.join(pg_bindir(), "pg_config"), "--sharedir"], check=True,
                              capture_output=True, text=True).stdout.strip()
    with open(os.path.join(sharedir, "extension", "fhir_notify--0.2.0.sql")) as f:
        return "FUNCTION fhir_notify.watch(" in f.read()


def create_fhir_database(cluster, dbname=None):
    """A new database on cluster with WintEHR's tables, watched by fhir_notify.

    Until the capture trigger is merged into this branch (fhir_notify.watch()
    from branch ext-capture), tests that need it are reported as xfail."""
    dbname = dbname or "fhir_" + uuid.uuid4().hex[:10]
    cluster.execute(f'CREATE DATABASE "{dbname}"')
    install_fhir_schema(cluster, dbname)
    return dbname


def install_fhir_schema(cluster, dbname):
    """WintEHR's tables in dbname, watched by fhir_notify."""
    if not _extension_can_watch():
        pytest.xfail("fhir_notify.watch() is not in this build yet (branch ext-capture)")
    with cluster.connect(dbname) as conn:
        conn.execute(WINTEHR_SCHEMA)
        conn.execute("CREATE EXTENSION fhir_notify")
        conn.execute("SELECT fhir_notify.watch('fhir.resources')")


def new_id(prefix):
    """A unique FHIR id, so tests sharing a bridge never see each other's patients."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def condition(patient_id, resource_id=None, text="Hypertension", **extra):
    resource = {"resourceType": "Condition", "id": resource_id or new_id("cond"),
                "subject": {"reference": f"Patient/{patient_id}"},
                "code": {"text": text}, "clinicalStatus": {"text": "active"}}
    resource.update(extra)
    return resource


def observation(patient_id, resource_id=None, value=120, **extra):
    resource = {"resourceType": "Observation", "id": resource_id or new_id("obs"),
                "status": "final", "subject": {"reference": f"Patient/{patient_id}"},
                "code": {"text": "Systolic blood pressure"},
                "valueQuantity": {"value": value, "unit": "mm[Hg]"}}
    resource.update(extra)
    return resource


class FhirStore:
    """Writes FHIR resources into fhir.resources as WintEHR's storage engine does.

    Each call is its own transaction unless it runs inside `with store.transaction():`.
    actor, when given, is recorded as who made the change (the fhir_notify.actor setting).
    """

    def __init__(self, cluster, dbname, user="postgres"):
        self.conn = psycopg.connect(cluster.dsn(dbname, user) + f" application_name={TEST_APPLICATION_NAME}",
                                    autocommit=True)

    def transaction(self):
        """A transaction around several writes; raise psycopg.Rollback() inside to roll back."""
        return self.conn.transaction()

    def _set_actor(self, actor):
        if actor is not None:
            self.conn.execute("SELECT pg_catalog.set_config('fhir_notify.actor', %s, true)", (actor,))

    def create(self, resource, actor=None):
        """Inserts version 1 of resource (a dict with resourceType and id); returns what was stored."""
        stored = copy.deepcopy(resource)
        stored.setdefault("meta", {})
        stored["meta"]["versionId"] = "1"
        stored["meta"]["lastUpdated"] = _now_iso()
        with self.conn.transaction():
            self._set_actor(actor)
            row_id = self.conn.execute(
                "INSERT INTO fhir.resources (resource_type, fhir_id, version_id, resource)"
                " VALUES (%s, %s, 1, %s) RETURNING id",
                (stored["resourceType"], stored["id"], Jsonb(stored))).fetchone()[0]
            self.conn.execute(
                "INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource)"
                " VALUES (%s, 1, 'create', %s)", (row_id, Jsonb(stored)))
        return stored

    def update(self, resource, actor=None):
        """Stores resource as the next version of the same type and id; returns what was stored."""
        stored = copy.deepcopy(resource)
        with self.conn.transaction():
            self._set_actor(actor)
            row_id, version = self.conn.execute(
                "SELECT id, version_id FROM fhir.resources"
                " WHERE resource_type = %s AND fhir_id = %s FOR UPDATE",
                (stored["resourceType"], stored["id"])).fetchone()
            version += 1
            stored.setdefault("meta", {})
            stored["meta"]["versionId"] = str(version)
            stored["meta"]["lastUpdated"] = _now_iso()
            self.conn.execute(
                "UPDATE fhir.resources SET version_id = %s, last_updated = now(), resource = %s"
                " WHERE id = %s", (version, Jsonb(stored), row_id))
            self.conn.execute(
                "INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource)"
                " VALUES (%s, %s, 'update', %s)", (row_id, version, Jsonb(stored)))
        return stored

    def delete(self, resource_type, resource_id, actor=None):
        """Soft-deletes as WintEHR does: deleted = true and a version bump, JSON unchanged."""
        with self.conn.transaction():
            self._set_actor(actor)
            row_id, version, resource = self.conn.execute(
                "UPDATE fhir.resources SET deleted = true, version_id = version_id + 1,"
                " last_updated = now() WHERE resource_type = %s AND fhir_id = %s"
                " RETURNING id, version_id, resource", (resource_type, resource_id)).fetchone()
            self.conn.execute(
                "INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource)"
                " VALUES (%s, %s, 'delete', %s)", (row_id, version, Jsonb(resource)))
        return version

    def close(self):
        self.conn.close()


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- the bridge ----------------------------------------------------------------

# A bridge built with `make -C bridge SANITIZE=1` (FHIR_NOTIFY_BRIDGE=...) reports here.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

_live_bridges = []  # every Bridge not yet stopped, for bridge_logs
_started_bridges = []  # every Bridge ever started, for bridge_logs


class BridgeDidNotStart(Exception):
    pass


class Bridge:
    """A running fhir-notify-bridge. Use as a context manager, or call stop().

    args are extra command-line arguments; secret_file is passed as
    --jwt-secret-file unless it is None. env adds environment variables.
    With wait=False the caller checks readiness itself. ssl_context (trusting
    the bridge's --tls-cert) makes the harness speak https and wss.
    """

    def __init__(self, cluster, dbname="postgres", args=(), secret_file=None, env=None, wait=True,
                 db=None, listen=True, log_level=LOG_LEVEL, start_timeout=30, ssl_context=None):
        self.cluster = cluster
        self.dbname = dbname
        self.ssl_context = ssl_context
        self.dir = tempfile.mkdtemp(prefix="fhir_notify-bridge-")
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "bridge.log")
        self.argv = [BRIDGE_BINARY]
        if db is not False:
            self.argv += ["--db", db or cluster.dsn(dbname)]
        if listen:
            self.argv += ["--listen", f"127.0.0.1:{self.port}"]
        if log_level:
            self.argv += ["--log-level", log_level]
        if secret_file is not None:
            self.argv += ["--jwt-secret-file", secret_file]
        self.argv += list(args)
        self._env = dict(os.environ)
        self._env.update(env or {})
        self._saved_log = None
        self.exit_code = None
        _started_bridges.append(self)
        for attempt in range(3):
            self._launch()
            if not wait:
                return
            try:
                self.wait_healthy(start_timeout)
                return
            except BridgeDidNotStart:
                # Another process may have taken the free port in the meantime: try another.
                if not listen or attempt == 2 or "could not listen" not in self.log():
                    self.stop()
                    raise
                self.stop()
                self.port = free_port()
                self.argv[self.argv.index("--listen") + 1] = f"127.0.0.1:{self.port}"
            except BaseException:
                self.stop()
                raise

    def _launch(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env,
                                         start_new_session=True)
        _live_bridges.append(self)

    def write_file(self, name, content):
        """Writes content into a file in the bridge's directory and returns its path."""
        path = os.path.join(self.dir, name)
        with open(path, "w" if isinstance(content, str) else "wb") as f:
            f.write(content)
        return path

    # -- observing ---------------------------------------------------------------

    def log(self):
        if self._saved_log is not None:
            return self._saved_log
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_size(self):
        if self._saved_log is not None:
            return len(self._saved_log.encode())
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset):
        if self._saved_log is not None:
            return self._saved_log.encode()[offset:].decode(errors="replace")
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def wait_for_log(self, text, timeout=DEFAULT_TIMEOUT, since=0):
        """Waits until the log (from offset since) contains text; returns the log from there."""
        deadline = time.monotonic() + timeout
        while True:
            content = self.log_since(since)
            if text in content:
                return content
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge log never said {text!r}:\n{content[-4000:]}")
            time.sleep(0.1)

    def http_get(self, path, headers=None, timeout=10):
        """(status, headers dict, body text) of a plain HTTP GET (HTTPS with ssl_context)."""
        if self.ssl_context:
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read().decode(errors="replace"))
        finally:
            conn.close()

    def health(self):
        """The /healthz status code, or None when nothing answers."""
        try:
            return self.http_get("/healthz", timeout=5)[0]
        except (OSError, http.client.HTTPException):
            return None

    def wait_health(self, status, timeout=DEFAULT_TIMEOUT):
        """Waits until /healthz answers status."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BridgeDidNotStart(f"bridge exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            seen = self.health()
            if seen == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"/healthz never answered {status} (last: {seen}):\n{self.log()[-4000:]}")

    def wait_healthy(self, timeout=30):
        self.wait_health(200, timeout)

    def metrics(self):
        """The /metrics samples as {name{labels}: value}."""
        status, headers, body = self.http_get("/metrics")
        assert status == 200, (status, body)
        samples = {}
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            samples[name.strip()] = float(value)
        return samples

    # -- clients -----------------------------------------------------------------

    def url(self, token=None, path="/api/ws"):
        scheme = "wss" if self.ssl_context else "ws"
        if token is None:
            return f"{scheme}://127.0.0.1:{self.port}{path}"
        return f"{scheme}://127.0.0.1:{self.port}{path}?token={urllib.parse.quote(token, safe='')}"

    def connect(self, token=None, path="/api/ws", headers=None, origin=None, welcome=True):
        """A WSClient; with welcome (the default) its welcome message is read and checked
        and kept in client.welcome."""
        client = WSClient(self.url(token, path), headers=headers, origin=origin,
                          ssl_context=self.ssl_context)
        client.welcome = None
        if welcome:
            try:
                message = client.recv_json()
                assert message.get("type") == "welcome", message
                client.welcome = message
            except BaseException:
                client.close()
                raise
        return client

    # -- stopping ----------------------------------------------------------------

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait_exit(self, timeout=DEFAULT_TIMEOUT):
        """The exit code (negative: killed by that signal); raises if still running after timeout."""
        self.exit_code = self.proc.wait(timeout)
        return self.exit_code

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.exit_code = self.proc.returncode
        if self in _live_bridges:
            _live_bridges.remove(self)
        return self.exit_code

    def cleanup(self):
        self.stop()
        self._saved_log = self.log()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.cleanup()
        # A bridge that serves a whole module exits after the last test's
        # bridge_logs check: what a sanitizer reports at exit (leaks) fails here.
        if exc_type is None and any(marker in self._saved_log for marker in SANITIZER_MARKERS):
            raise AssertionError(f"sanitizer reports in the log of the bridge on port {self.port}:\n"
                                 f"{self._saved_log[-8000:]}")


@pytest.fixture(autouse=True)
def bridge_logs():
    """Shows, in a failing test's report, what every bridge logged during the test."""
    offsets = {id(b): b.log_size() for b in _live_bridges}
    seen = list(_live_bridges)
    first_new = len(_started_bridges)
    yield
    sanitizer_reports = []
    for b in seen + _started_bridges[first_new:]:
        text = b.log_since(offsets.get(id(b), 0))
        print(f"--- bridge on port {b.port} ({' '.join(b.argv[1:])}):\n{text[-20000:]}")
        if any(marker in text for marker in SANITIZER_MARKERS):
            sanitizer_reports.append(b.port)
    if sanitizer_reports:
        pytest.fail(f"sanitizer reports in the log of the bridge(s) on port(s) {sanitizer_reports}")


def bridge_connections(cluster, dbname):
    """The pids of the bridge's connections to dbname (everything but ours)."""
    rows = cluster.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend' AND application_name <> %s",
        (dbname, TEST_APPLICATION_NAME))
    return [row[0] for row in rows]


def assert_update(message, action, resource_type, resource_id, patient_id, resource=None):
    """Asserts that message is the WintEHR update of one change, with the extras."""
    assert message.get("type") == "update", message
    data = message["data"]
    assert data["action"] == action, message
    assert data["resource_type"] == resource_type, message
    assert data["resource_id"] == resource_id, message
    assert data["patient_id"] == patient_id, message
    if action == "deleted":
        assert data["resource"] is None, message
    elif resource is not None:
        assert data["resource"] == resource, message
    assert isinstance(data.get("cursor"), str) and data["cursor"], message
    assert isinstance(message.get("timestamp"), str) and message["timestamp"].endswith("Z"), message
    datetime.datetime.fromisoformat(message["timestamp"][:-1])
    return data
