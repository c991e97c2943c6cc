#!/usr/bin/python3
"""Makes the vendored Synthea subset in this directory from a Synthea bulk
export (default: /work/shared/fhir-samples/synthea-10p): two patients and a
few of their resources of each type, plus some resources that belong to no
patient. Kept for provenance; the tests only read the .ndjson files here.

Usage: tests/data/synthea/subset.py [EXPORT_DIR]
"""
import glob
import json
import os
import sys

SOURCE = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/fhir-samples/synthea-10p"
HERE = os.path.dirname(os.path.abspath(__file__))
PATIENTS = ["a5cb8ce9-cec6-6b23-0990-cbaf753578a4", "cbc86e51-9eca-3855-76ec-c058f72c5761"]
# resources per patient and type; unrouted types are taken from the top
PER_PATIENT = {"Patient": 1, "Condition": 4, "AllergyIntolerance": 3, "MedicationRequest": 4,
               "Encounter": 3, "Immunization": 3, "Procedure": 4, "Device": 2,
               "DocumentReference": 2}
UNROUTED = {"PractitionerRole": 2, "Organization": 2, "Practitioner": 1, "Location": 1}

for path in sorted(glob.glob(os.path.join(SOURCE, "*.ndjson"))):
    rtype = os.path.basename(path).split(".")[0]
    if rtype not in PER_PATIENT and rtype not in UNROUTED:
        continue
    taken = []
    counts = dict.fromkeys(PATIENTS, 0)
    with open(path) as f:
        for line in f:
            resource = json.loads(line)
            if rtype in UNROUTED:
                if len(taken) < UNROUTED[rtype]:
                    taken.append(line)
                continue
            for p in PATIENTS:
                mine = resource.get("id") == p if rtype == "Patient" else f'"Patient/{p}"' in line
                if mine and counts[p] < PER_PATIENT[rtype]:
                    counts[p] += 1
                    taken.append(line)
    with open(os.path.join(HERE, rtype + ".ndjson"), "w") as out:
        out.writelines(taken)
