"""Throwaway PostgreSQL clusters for the tests.

A cluster is made with initdb in a fresh temporary directory, from the
private PostgreSQL installation that scripts/private-install makes (with this
build of fhir_notify in it), listens on 127.0.0.1 and a Unix socket in its own
directory, on a free port, and is removed when stopped. When we are root, the
server runs as the unprivileged "postgres" user, since initdb and postgres
refuse to run as root.
"""

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import psycopg

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNPRIVILEGED_USER = os.environ.get("FHIR_NOTIFY_TEST_USER", "postgres")

_private_install_dir = None


def pg_bindir():
    """The bin directory of the private installation, made on first use."""
    global _private_install_dir
    bindir = os.environ.get("FHIR_NOTIFY_PG_BINDIR")
    if bindir:
        return bindir
    if _private_install_dir is None:
        _private_install_dir = tempfile.mkdtemp(prefix="fhir_notify-pg-")
        os.chmod(_private_install_dir, 0o755)
        atexit.register(shutil.rmtree, _private_install_dir, True)
    out = subprocess.run(
        [os.path.join(TOP, "scripts", "private-install"), os.path.join(_private_install_dir, "install")],
        check=True, capture_output=True, text=True,
    )
    os.environ["FHIR_NOTIFY_PG_BINDIR"] = out.stdout.strip()
    return os.environ["FHIR_NOTIFY_PG_BINDIR"]


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(argv):
    if os.geteuid() == 0:
        return ["runuser", "-u", UNPRIVILEGED_USER, "--"] + argv
    return argv


class Cluster:
    """A running throwaway cluster. Use as a context manager, or call stop()."""

    def __init__(self, settings=None, preload=True, port=None):
        self.bindir = pg_bindir()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="fhir_notify-cluster-")
        self.data = os.path.join(self.dir, "data")
        self.socket_dir = self.dir
        self.log = os.path.join(self.dir, "server.log")
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres",
                   "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "max_prepared_transactions": "10",
            "log_min_messages": "warning",
        }
        if preload:
            conf["shared_preload_libraries"] = "'fhir_notify'"
        conf.update({k: str(v) for k, v in (settings or {}).items()})
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        self.start()

    def _run(self, argv, check=True):
        return subprocess.run(_as_server_user(argv), check=check, capture_output=True, text=True,
                              cwd=self.dir, timeout=120)

    def start(self):
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", self.log,
                   "-w", "-t", "60", "start"])

    def stop(self, mode="fast"):
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", mode,
                   "-w", "-t", "60", "stop"], check=False)

    def restart(self):
        self.stop()
        self.start()

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dbname="postgres", user="postgres"):
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname="postgres", user="postgres", autocommit=True):
        return psycopg.connect(self.dsn(dbname, user), autocommit=autocommit)

    def execute(self, sql, params=None, dbname="postgres"):
        """Runs one statement in its own autocommitted connection; returns its rows, if any."""
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def server_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()
