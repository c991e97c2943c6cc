#!/usr/bin/python3
"""The reference relay: what users would otherwise deploy.

A per-row trigger sends every changed resource through pg_notify as JSON (the
way the WintEHR seed's backend does it), and an asyncio + websockets server
LISTENs and relays each notification to the WebSocket clients in the
patient's room. It speaks the subset of docs/protocol.md that the benchmark
needs (token in the query, welcome, subscribe, unsubscribe, ping, update), so
bench/loadgen can drive it and the bridge at the same load.

It is the baseline of the end-to-end benchmarks, deliberately written the
charitable way (one JSON parse and one serialisation per notification,
websockets.broadcast to the room), and has the baseline's known faults:
payloads over 8000 bytes abort the writing transaction, nothing is replayed
after a reconnect (`since` is ignored), and a slow client grows its buffer.

Usage: relay_reference.py --db CONNINFO --listen 127.0.0.1:PORT
                          [--jwt-secret-file FILE] [--install-trigger]
"""

import argparse
import asyncio
import datetime
import json
import signal
import sys
import urllib.parse
import uuid

import psycopg
import websockets

CHANNEL = "fhir_changes"

# The seed's style: the whole resource in the payload of a per-row NOTIFY.
TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION fhir.relay_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	r fhir.resources;
	patient text;
BEGIN
	IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
	IF r.resource_type = 'Patient' THEN
		patient := r.fhir_id;
	ELSE
		patient := substring(coalesce(r.resource->'subject'->>'reference',
		                              r.resource->'patient'->>'reference')
		                     FROM '^Patient/(.+)$');
	END IF;
	PERFORM pg_notify('fhir_changes', json_build_object(
		'action', CASE TG_OP WHEN 'INSERT' THEN 'created'
		                     WHEN 'UPDATE' THEN 'updated' ELSE 'deleted' END,
		'resource_type', r.resource_type,
		'resource_id', r.fhir_id,
		'patient_id', patient,
		'resource', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE r.resource END)::text);
	RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS relay_notify_change ON fhir.resources;
CREATE TRIGGER relay_notify_change
	AFTER INSERT OR UPDATE OR DELETE ON fhir.resources
	FOR EACH ROW EXECUTE FUNCTION fhir.relay_notify_change();
"""


def utc_now():
    """An ISO 8601 UTC timestamp with milliseconds, as the protocol writes them."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Relay:
    """Rooms of WebSocket clients keyed by patient id, fed by LISTEN."""

    def __init__(self, secret):
        self.secret = secret
        self.rooms = {}  # patient id -> set of websockets
        self.relayed = 0

    def verify(self, token):
        """The token's claims, or None when it is missing or does not verify."""
        if not token:
            return None if self.secret else {}
        if not self.secret:
            return {}
        import jwt

        try:
            return jwt.decode(token, self.secret, algorithms=["HS256"],
                              options={"verify_aud": False})
        except jwt.PyJWTError:
            return None

    async def handle(self, websocket, path=None):
        """One client connection: authenticate, welcome, then serve its messages."""
        query = urllib.parse.parse_qs(urllib.parse.urlparse(websocket.path).query)
        claims = self.verify((query.get("token") or [None])[0])
        if claims is None:
            await websocket.send(json.dumps({"type": "error", "error": "AUTH_FAILED",
                                             "message": "invalid token"}))
            await websocket.close(4001, "Unauthorized")
            return
        await websocket.send(json.dumps({"type": "welcome", "data": {
            "client_id": str(uuid.uuid4()), "user": claims, "server": "relay-reference"}}))
        subscriptions = {}  # subscription id -> patient ids
        try:
            async for text in websocket:
                await self.on_message(websocket, subscriptions, text)
        except websockets.ConnectionClosed:
            pass
        finally:
            for patients in subscriptions.values():
                self.leave(websocket, patients)

    def leave(self, websocket, patients):
        """Takes a client out of the rooms of patients."""
        for patient in patients:
            room = self.rooms.get(patient)
            if room is not None:
                room.discard(websocket)
                if not room:
                    del self.rooms[patient]

    async def on_message(self, websocket, subscriptions, text):
        """Answers one client message."""
        try:
            message = json.loads(text)
            kind = message.get("type")
            data = message.get("data") or {}
            if not isinstance(data, dict):
                raise ValueError("data is not an object")
            patients = data.get("patient_ids") or []
            if not isinstance(patients, list):
                raise ValueError("patient_ids is not a list")
        except (ValueError, AttributeError):
            await websocket.send(json.dumps({"type": "error", "error": "BAD_REQUEST",
                                             "message": "malformed message"}))
            return
        if kind == "subscribe":
            sid = data.get("subscription_id")
            patients = [str(p) for p in patients]
            if sid in subscriptions:
                self.leave(websocket, subscriptions[sid])
            subscriptions[sid] = patients
            for patient in patients:
                self.rooms.setdefault(patient, set()).add(websocket)
            await websocket.send(json.dumps({"type": "subscription", "data": {
                "action": "created", "subscription_id": sid, "patient_ids": patients,
                "resource_types": data.get("resource_types") or []}}))
        elif kind == "unsubscribe":
            sid = data.get("subscription_id")
            self.leave(websocket, subscriptions.pop(sid, []))
            await websocket.send(json.dumps({"type": "subscription", "data": {
                "action": "removed", "subscription_id": sid}}))
        elif kind == "ping":
            await websocket.send(json.dumps({"type": "pong", "timestamp": utc_now()}))
        else:
            await websocket.send(json.dumps({"type": "error", "error": "UNKNOWN_TYPE",
                                             "message": f"unknown message type {kind!r}"}))

    def relay(self, payload):
        """Sends one notification to everybody in its patient's room."""
        try:
            data = json.loads(payload)
            room = self.rooms.get(data.get("patient_id"))
        except (ValueError, AttributeError, TypeError):
            return  # anybody may NOTIFY on the channel: not ours

        if not room:
            return
        text = json.dumps({"type": "update", "data": data, "timestamp": utc_now()})
        websockets.broadcast(room, text)
        self.relayed += len(room)

    async def listen(self, conninfo):
        """LISTENs for the trigger's notifications, for ever."""
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            async for notify in conn.notifies():
                self.relay(notify.payload)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="libpq connection string")
    parser.add_argument("--listen", default="127.0.0.1:8766", help="HOST:PORT")
    parser.add_argument("--jwt-secret-file", help="verify HS256 tokens with this secret")
    parser.add_argument("--install-trigger", action="store_true",
                        help="create the NOTIFY trigger on fhir.resources first")
    args = parser.parse_args()

    secret = None
    if args.jwt_secret_file:
        with open(args.jwt_secret_file, "rb") as f:
            secret = f.read().rstrip(b"\r\n")
    if args.install_trigger:
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(TRIGGER_SQL)

    relay = Relay(secret)
    host, port = args.listen.rsplit(":", 1)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with websockets.serve(relay.handle, host, int(port), compression=None,
                                ping_interval=None, max_size=1 << 20, backlog=4096):
        listener = asyncio.create_task(relay.listen(args.db))
        print(f"relay: listening on {host}:{port}", file=sys.stderr, flush=True)
        done, _ = await asyncio.wait([stop, listener], return_when=asyncio.FIRST_COMPLETED)
        if listener in done:
            listener.result()  # raises what ended it
        listener.cancel()
    print(f"relay: stopped after {relay.relayed} messages", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
