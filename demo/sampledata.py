"""The demo's data: the vendored Synthea sample and generated vital signs.

demo/data/synthea-sample.ndjson holds four Synthea patients with their
Conditions, AllergyIntolerances, latest MedicationRequests and Encounters
(Apache-2.0, see demo/data/LICENSE). The sample has no Observations, so a few
vital signs per patient are generated here, deterministically, dated in the
last days so that they show as recent.
"""

import datetime
import json
import os
import random
import uuid

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "synthea-sample.ndjson")

# LOINC code, display, unit, low, high, decimals
VITALS = {
    "heart-rate": ("8867-4", "Heart rate", "/min", 58, 96, 0),
    "respiratory-rate": ("9279-1", "Respiratory rate", "/min", 12, 20, 0),
    "body-temperature": ("8310-5", "Body temperature", "Cel", 36.4, 37.6, 1),
    "oxygen-saturation": ("2708-6", "Oxygen saturation in Arterial blood", "%", 94, 99, 0),
    "blood-pressure": ("85354-9", "Blood pressure panel with all children optional", "mm[Hg]", 0, 0, 0),
}


def resources():
    """The vendored sample resources, in file order (patients first)."""
    with open(DATA) as f:
        return [json.loads(line) for line in f if line.strip()]


def patient_ids():
    return [r["id"] for r in resources() if r["resourceType"] == "Patient"]


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def vital_sign(patient_id, kind, value=None, systolic=None, diastolic=None, when=None, rng=random):
    """A FHIR R4 vital-signs Observation of the given kind for patient_id."""
    code, display, unit, low, high, decimals = VITALS[kind]
    obs = {
        "resourceType": "Observation",
        "id": str(uuid.uuid4()),
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when or now_iso(),
    }
    if kind == "blood-pressure":
        systolic = systolic if systolic is not None else rng.randint(105, 150)
        diastolic = diastolic if diastolic is not None else rng.randint(62, 95)
        obs["component"] = [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
             "valueQuantity": {"value": systolic, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
             "valueQuantity": {"value": diastolic, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        ]
    else:
        if value is None:
            value = round(rng.uniform(low, high), decimals)
            if decimals == 0:
                value = int(value)
        obs["valueQuantity"] = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return obs


def generated_vitals(patient_id):
    """Three sets of vital signs over the last two days, the same every run for a patient."""
    rng = random.Random(patient_id)
    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    out = []
    for hours_ago in (44, 20, 2):
        when = (now - datetime.timedelta(hours=hours_ago)).isoformat().replace("+00:00", "Z")
        for kind in VITALS:
            obs = vital_sign(patient_id, kind, when=when, rng=rng)
            obs["id"] = str(uuid.UUID(int=rng.getrandbits(128)))
            out.append(obs)
    return out


def insert_resource(conn, resource, operation="create"):
    """Inserts resource as WintEHR did: version 1 in fhir.resources plus a history row."""
    resource.setdefault("meta", {})
    resource["meta"]["versionId"] = "1"
    resource["meta"]["lastUpdated"] = now_iso()
    row = conn.execute(
        "INSERT INTO fhir.resources (resource_type, fhir_id, version_id, last_updated, resource) "
        "VALUES (%s, %s, 1, now(), %s) RETURNING id",
        (resource["resourceType"], resource["id"], json.dumps(resource)),
    ).fetchone()
    conn.execute(
        "INSERT INTO fhir.resource_history (resource_id, version_id, operation, resource) VALUES (%s, 1, %s, %s)",
        (row[0], operation, json.dumps(resource)),
    )
    return resource
