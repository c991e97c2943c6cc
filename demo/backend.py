#!/usr/bin/python3
"""A STAND-IN for the EHR backend, for the demo only.

It plays the part of the EHR's FHIR backend: it serves the chart-review page,
issues the demo users' JSON Web Tokens (HS256, SMART scope user/*.read) and
writes FHIR resources the way the FHIR server of DEMO_LAYOUT does
(demo/stores.py): WintEHR's fhir.resources (a version row, a history row,
soft delete; the default), HAPI FHIR JPA's hfj_resource/hfj_res_ver, or
Medplum's per-type tables, naming the user in each transaction with
SET LOCAL fhir_notify.actor. It knows nothing about fhir_notify otherwise:
the real backend needs no change, the extension's trigger sees its writes.

Not for production: no passwords, no FHIR search, no validation beyond what
keeps the demo's data sane.

Environment: DEMO_DB (libpq conninfo), DEMO_JWT_SECRET_FILE, DEMO_BRIDGE_PORT,
DEMO_LAYOUT (wintehr, hapi or medplum).
"""

import argparse
import json
import mimetypes
import os
import re
import sys
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import jwt
import psycopg

DEMO_DIR = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(DEMO_DIR)
WEB_DIR = os.path.join(DEMO_DIR, "web")
CLIENT_FILE = os.path.join(TOP, "clients", "js", "fhir-notify-client.mjs")
sys.path.insert(0, DEMO_DIR)
import stores  # noqa: E402

USERS = {
    "nurse.jones": {"name": "Nurse Jones", "role": "nurse", "title": "Registered nurse"},
    "dr.smith": {"name": "Dr. Smith", "role": "physician", "title": "Attending physician"},
    "pharmacist.lee": {"name": "Pharmacist Lee", "role": "pharmacist", "title": "Clinical pharmacist"},
}
TOKEN_LIFETIME = 8 * 3600
WRITABLE_TYPES = ("AllergyIntolerance", "Condition", "Observation")
CHART_TYPES = ("AllergyIntolerance", "Condition", "MedicationRequest", "Observation")
ID_PATTERN = re.compile(r"^[A-Za-z0-9.-]{1,64}$")


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def issue_token(secret, username):
    user = USERS[username]
    now = int(time.time())
    claims = {"sub": username, "name": user["name"], "role": user["role"],
              "fhirUser": f"Practitioner/{username.replace('.', '-')}", "scope": "user/*.read openid",
              "iss": "fhir_notify-demo", "iat": now, "exp": now + TOKEN_LIFETIME}
    return jwt.encode(claims, secret, algorithm="HS256")


def row_entry(row):
    resource_type, fhir_id, version_id, last_updated, resource = row
    return {"resource_type": resource_type, "id": fhir_id, "version_id": str(version_id),
            "last_updated": last_updated.isoformat(), "resource": resource}


class Backend:
    """The database side: reads a chart, writes resources the way the FHIR
    server of DEMO_LAYOUT does (demo/stores.py)."""

    def __init__(self, conninfo, layout=None):
        self.conninfo = conninfo
        self.store = stores.store(layout)

    def connect(self):
        return psycopg.connect(self.conninfo, autocommit=False, connect_timeout=10)

    def patients(self):
        with self.connect() as conn:
            return self.store.patients(conn)

    def chart(self, patient_id):
        with self.connect() as conn:
            patient = self.store.patient(conn, patient_id)
            if patient is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no patient {patient_id}")
            rows = self.store.chart(conn, patient_id, CHART_TYPES)
        return {"patient": patient, "resources": [row_entry(r) for r in rows]}

    def _transaction(self, conn, actor):
        # The server's own start of a write transaction (Medplum's REPEATABLE
        # READ), then who made the change, for the change log: fhir_notify
        # reads this setting in its trigger. Transaction-local, like SET LOCAL.
        self.store.begin(conn)
        conn.execute("SELECT pg_catalog.set_config('fhir_notify.actor', %s, true)", (actor,))

    def _check_patient(self, conn, resource):
        patient = stores.patient_of(resource)
        if patient is None:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the resource needs a subject or patient reference Patient/<id>")
        if self.store.patient(conn, patient) is None:
            raise HttpError(HTTPStatus.UNPROCESSABLE_ENTITY, f"no patient {patient}")

    def create(self, resource_type, resource, actor):
        resource = dict(resource)
        resource["id"] = resource.get("id") or str(uuid.uuid4())
        if not ID_PATTERN.match(resource["id"]):
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad resource id")
        with self.connect() as conn:
            self._transaction(conn, actor)
            self._check_patient(conn, resource)
            if self.store.exists(conn, resource_type, resource["id"]):
                raise HttpError(HTTPStatus.CONFLICT, f"{resource_type}/{resource['id']} exists")
            return self.store.create(conn, resource)

    def update(self, resource_type, fhir_id, resource, actor):
        with self.connect() as conn:
            self._transaction(conn, actor)
            self._check_patient(conn, resource)
            resource = self.store.update(conn, resource_type, fhir_id, resource)
            if resource is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no {resource_type}/{fhir_id}")
            return resource

    def delete(self, resource_type, fhir_id, actor):
        with self.connect() as conn:
            self._transaction(conn, actor)
            if not self.store.delete(conn, resource_type, fhir_id):
                raise HttpError(HTTPStatus.NOT_FOUND, f"no {resource_type}/{fhir_id}")


class Handler(BaseHTTPRequestHandler):
    server_version = "fhir_notify-demo-standin-backend"
    backend = None
    secret = None
    bridge_port = None

    def log_message(self, fmt, *args):
        if getattr(self, "_status", 200) >= 400:
            sys.stderr.write("backend: %s %s\n" % (self.address_string(), fmt % args))

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def send_file(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            raise HttpError(HTTPStatus.NOT_FOUND, "not found")
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if path.endswith((".mjs", ".js")):
            ctype = "text/javascript"
        self.send_response(200)
        self.send_header("Content-Type", ctype + ("; charset=utf-8" if ctype.startswith("text/") else ""))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(data)

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > 1_000_000:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "the body is not JSON")
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def user(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise HttpError(HTTPStatus.UNAUTHORIZED, "log in first")
        try:
            claims = jwt.decode(auth[7:], self.secret, algorithms=["HS256"])
        except jwt.PyJWTError as e:
            raise HttpError(HTTPStatus.UNAUTHORIZED, f"bad token: {e}")
        if claims.get("sub") not in USERS:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "unknown user")
        return claims["sub"]

    def handle_any(self, method):
        self._status = 200
        try:
            self.route(method, urlsplit(self.path).path)
        except HttpError as e:
            self.send_json(e.status, {"error": e.message})
        except psycopg.Error as e:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"database: {str(e).strip()}"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def route(self, method, path):
        parts = [p for p in path.split("/") if p]
        if method == "GET" and (not parts or parts[0] in ("index.html",)):
            return self.send_file(os.path.join(WEB_DIR, "index.html"))
        if method == "GET" and len(parts) == 1 and re.match(r"^[a-z-]+\.(js|mjs|css|svg)$", parts[0]):
            return self.send_file(os.path.join(WEB_DIR, parts[0]))
        if method == "GET" and parts == ["client", "fhir-notify-client.mjs"]:
            return self.send_file(CLIENT_FILE)
        if parts[:1] == ["api"]:
            return self.route_api(method, parts[1:])
        if parts[:1] == ["fhir"]:
            return self.route_fhir(method, parts[1:])
        raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def route_api(self, method, parts):
        if method == "GET" and parts == ["config"]:
            users = [dict(username=k, **v) for k, v in USERS.items()]
            return self.send_json(200, {"bridge_port": self.bridge_port, "ws_path": "/api/ws", "users": users,
                                        "backend": "stand-in EHR backend (demo/backend.py)"})
        if method == "POST" and parts == ["login"]:
            username = self.read_json().get("username")
            if username not in USERS:
                raise HttpError(HTTPStatus.UNAUTHORIZED, "unknown demo user")
            return self.send_json(200, {"token": issue_token(self.secret, username),
                                        "user": dict(username=username, **USERS[username])})
        if method == "POST" and parts == ["token"]:
            username = self.user()
            return self.send_json(200, {"token": issue_token(self.secret, username)})
        if method == "GET" and parts == ["patients"]:
            self.user()
            return self.send_json(200, {"patients": self.backend.patients()})
        if method == "GET" and len(parts) == 3 and parts[0] == "patients" and parts[2] == "chart":
            self.user()
            if not ID_PATTERN.match(parts[1]):
                raise HttpError(HTTPStatus.BAD_REQUEST, "bad patient id")
            return self.send_json(200, self.backend.chart(parts[1]))
        raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def route_fhir(self, method, parts):
        actor = self.user()
        if not parts or parts[0] not in WRITABLE_TYPES or len(parts) > 2:
            raise HttpError(HTTPStatus.NOT_FOUND, "the stand-in backend writes only " + ", ".join(WRITABLE_TYPES))
        resource_type = parts[0]
        if len(parts) == 2 and not ID_PATTERN.match(parts[1]):
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad resource id")
        if method in ("POST", "PUT"):
            resource = self.read_json()
            if resource.get("resourceType") != resource_type:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"resourceType must be {resource_type}")
        if method == "POST" and len(parts) == 1:
            return self.send_json(201, self.backend.create(resource_type, resource, actor))
        if method == "PUT" and len(parts) == 2:
            return self.send_json(200, self.backend.update(resource_type, parts[1], resource, actor))
        if method == "DELETE" and len(parts) == 2:
            self.backend.delete(resource_type, parts[1], actor)
            return self.send_json(200, {"deleted": f"{resource_type}/{parts[1]}"})
        raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")


def main():
    parser = argparse.ArgumentParser(description="stand-in EHR backend for the fhir_notify demo")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    with open(os.environ["DEMO_JWT_SECRET_FILE"]) as f:
        Handler.secret = f.read().rstrip("\n")
    Handler.backend = Backend(os.environ["DEMO_DB"], os.environ.get("DEMO_LAYOUT"))
    Handler.bridge_port = int(os.environ["DEMO_BRIDGE_PORT"])
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    main()
