"""`make demo` with DEMO_LAYOUT: the same patients in each server's tables,
and their changes reaching the chart's WebSocket clients.

For each layout (wintehr, hapi, medplum) a demo is started as demo/run
starts it (demo/launcher.py: a throwaway cluster, the sample written the
way that server writes, the watch call its operator makes, the real bridge,
the stand-in backend). A client subscribed to one patient then sees the
backend's create, update and delete of a Condition and demo/simulate's
changes, with the actor of each, and the chart reads back what was written.
"""

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import pytest
import websockets

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "demo"))

import launcher  # noqa: E402
import stores  # noqa: E402

SIMULATED = 4


def call(demo, method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(demo.url.rstrip("/") + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def watch_patient(demo, token, patient, writes):
    """Subscribes to patient, runs writes(), returns the updates that arrive."""
    updates = []
    async with websockets.connect(demo.ws_url, origin=demo.origin, open_timeout=20) as ws:
        await ws.send(json.dumps({"type": "authenticate", "token": token}))
        await ws.send(json.dumps({"type": "subscribe", "data": {"subscription_id": "s", "patient_ids": [patient]}}))
        while json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] != "subscription":
            pass
        expected = await asyncio.get_running_loop().run_in_executor(None, writes)
        try:
            while len(updates) < expected:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if message["type"] == "update":
                    updates.append(message["data"])
        except asyncio.TimeoutError:
            pass
    return updates


@pytest.mark.parametrize("layout", stores.LAYOUTS)
def test_demo_layout_delivers_changes(layout):
    with launcher.Demo(quiet=True, layout=layout) as demo:
        token = call(demo, "POST", "/api/login", {"username": "nurse.jones"})["token"]
        patients = call(demo, "GET", "/api/patients", token=token)["patients"]
        assert len(patients) == 4
        patient = patients[0]["id"]
        chart = call(demo, "GET", f"/api/patients/{patient}/chart", token=token)
        assert chart["patient"]["id"] == patient
        before = len(chart["resources"])
        assert before > 0 and all(e["resource"]["id"] == e["id"] for e in chart["resources"])
        condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient}"},
                     "code": {"text": "Demo layout test"}}
        written = {}

        def writes():
            created = call(demo, "POST", "/fhir/Condition", condition, token)
            written["created"] = created
            written["chart"] = call(demo, "GET", f"/api/patients/{patient}/chart", token=token)
            written["updated"] = call(demo, "PUT", f"/fhir/Condition/{created['id']}",
                                      dict(condition, code={"text": "Demo layout test, revised"}), token)
            call(demo, "DELETE", f"/fhir/Condition/{created['id']}", None, token)
            out = subprocess.run([os.path.join(TOP, "demo", "simulate"), "--db", demo.db, "--count",
                                  str(SIMULATED), "--rate", "50", "--patient", patient, "--seed", "7",
                                  "--layout", layout, "--quiet"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return 3 + SIMULATED

        updates = asyncio.run(watch_patient(demo, token, patient, writes))
        created, updated = written["created"], written["updated"]
        assert [(u["action"], u["resource_type"], u["resource_id"], u["actor"]) for u in updates[:3]] == [
            ("created", "Condition", created["id"], "nurse.jones"),
            ("updated", "Condition", created["id"], "nurse.jones"),
            ("deleted", "Condition", created["id"], "nurse.jones")]
        # The complete resource, as a FHIR read returns it: what the backend
        # answered, with the same version.
        for update, resource in zip(updates[:2], (created, updated)):
            assert update["resource"]["id"] == resource["id"]
            assert update["resource"]["meta"]["versionId"] == resource["meta"]["versionId"]
            assert update["resource"]["code"] == resource["code"]
            assert update["patient_id"] == patient
        assert len(updates) == 3 + SIMULATED
        assert {u["actor"] for u in updates[3:]} <= {"bedside.monitor", "lab.interface", "pharmacy.reconciliation"}
        # The chart reads back the new resource while it was there.
        assert any(e["id"] == created["id"] for e in written["chart"]["resources"])
