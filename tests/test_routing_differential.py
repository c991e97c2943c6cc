"""Differential property test of routing: fhir_notify.patient_refs() (the C
extension, via SQL) and bench/routing_sql_reference.sql (the same rules in
SQL and jsonpath) must give the same patients for every one of 100,000
generated resources.

The generator (fixed seed: the same resources every run) covers every type
of the Patient compartment plus the default extra links (Device.patient,
Task.for) and some types outside it; every reference form (relative,
absolute URL, urn:uuid typed and untyped, contained, conditional,
versioned _history, identifier-only, the Aidbox/fhirbase inline form,
other resource types, bad ids); and odd JSON (nulls, numbers, strings and
arrays where objects are expected, objects where arrays are expected,
nested arrays, deep nesting, duplicate keys, unicode, huge strings, a
non-object resource). A failure prints the first resources on which the
two disagree.

Environment: FHIR_NOTIFY_ROUTING_RESOURCES (default 100000) and
FHIR_NOTIFY_ROUTING_SEED (default 20261201) to explore further.
"""
import json
import os
import random
import re
import time

import pytest

from pgcluster import TOP, Cluster

COUNT = int(os.environ.get("FHIR_NOTIFY_ROUTING_RESOURCES", "100000"))
SEED = int(os.environ.get("FHIR_NOTIFY_ROUTING_SEED", "20261201"))
REFERENCE_SQL = os.path.join(TOP, "bench", "routing_sql_reference.sql")
COMPARTMENT_C = os.path.join(TOP, "extension", "compartment.c")


def compartment_paths():
    """{type: [path, ...]} from the compartment table in extension/compartment.c, plus the
    default extra links; a path is [(member, is_array), ...]."""
    with open(COMPARTMENT_C) as f:
        source = f.read()
    table = source[source.index("compartment_source[] = {"):]
    table = table[:table.index("};")]
    types = {}
    for type_name, paths in re.findall(r'\{"([A-Za-z]+)", "([^"]+)"\}', table):
        types[type_name] = [parse_path(p.strip()) for p in paths.split(",")]
    extra = re.search(r'#define DEFAULT_EXTRA_LINK\s+"([^"]*)"', source).group(1)
    for link in extra.split(","):
        type_name, _, path = link.strip().partition(".")
        types.setdefault(type_name, []).append(parse_path(path))
    assert len(types) >= 68, sorted(types)
    return types


def parse_path(text):
    return [(step[:-2], True) if step.endswith("[]") else (step, False) for step in text.split(".")]


class Generator:
    """Random FHIR-like resources, with a tally of the forms it produced."""

    IDS = ["123", "p-1", "p.2", "a", "Z9", "x" * 64, "0", "-", ".", "A-b.C-d", "pat-42",
           "f001", "example", "7e2f6a1c-b2ad-4e0f-9a0e-5c1c3f1b6d11"]
    BAD_IDS = ["", "x" * 65, "p 1", "p_1", "pä", "p/1", "😀", "p\n", "\u0661", "p+1", "p:1",
               "p%201", "p\t1", "p\\1"]
    HOSTS = ["https://fhir.example.org/fhir/", "http://localhost:8080/", "https://h/a/b/c/",
             "urn:x:", "Patient/1/", "/", ""]
    OTHER_TYPES = ["Practitioner", "Group", "RelatedPerson", "Device", "Organization",
                   "patient", "PATIENT", "Patients", "xPatient", "_history"]

    def __init__(self, seed, types):
        self.random = random.Random(seed)
        self.types = types
        self.type_names = sorted(types)
        self.forms = {}

    def tally(self, form):
        self.forms[form] = self.forms.get(form, 0) + 1

    def choice(self, items):
        return self.random.choice(items)

    def patient_id(self):
        if self.random.random() < 0.85:
            return self.choice(self.IDS)
        self.tally("bad id")
        return self.choice(self.BAD_IDS)

    def reference_string(self):
        r = self.random.random()
        pid = self.patient_id()
        version = self.choice(["1", "2", "", "x y", "_history", "3/4"])
        forms = [
            ("relative", lambda: f"Patient/{pid}"),
            ("absolute", lambda: f"{self.choice(self.HOSTS)}Patient/{pid}"),
            ("versioned", lambda: f"Patient/{pid}/_history/{version}"),
            ("absolute versioned", lambda: f"{self.choice(self.HOSTS)}Patient/{pid}/_history/{version}"),
            ("urn:uuid", lambda: f"urn:uuid:{pid}"),
            ("contained", lambda: "#" + self.choice(["p1", pid, "Patient/1"])),
            ("conditional", lambda: f"Patient?identifier=http://x|{pid}"),
            ("fragment", lambda: f"Patient/{pid}#frag"),
            ("other type", lambda: f"{self.choice(self.OTHER_TYPES)}/{pid}"),
            ("other type versioned", lambda: f"Practitioner/{pid}/_history/1"),
            ("odd path", lambda: self.choice([
                "Patient", "Patient/", "/Patient", "Patient//1", "/Patient/1", "Patient/1/",
                "Patient/_history/1", "Patient/1/_history", "Patient/1/_history/1/2",
                "_history/1", "Patient/1/_history/2/_history/3", "urn:uuid:", "urn:uuid:Patient/1",
                "Patient/1\n", "\nPatient/1", " Patient/1", "Patient/1 ", "Patient/%31",
                "patient/1", "http://h/Patient/1?", "Patient\\/1", "Patient/1/_history//",
                "Encounter/1/Patient/2", "Patient/1/Encounter/2", ""])),
            ("huge", lambda: self.choice([
                "x" * self.random.randint(1000, 200000) + f"/Patient/{pid}",
                f"Patient/{'a' * self.random.randint(65, 100000)}",
                f"Patient/{pid}/_history/{'9' * self.random.randint(1000, 50000)}",
                "urn:uuid:" + "b" * self.random.randint(60, 70)])),
        ]
        weights = [30, 12, 8, 4, 8, 4, 3, 2, 8, 2, 10, 1]
        form, make = self.random.choices(forms, weights)[0]
        if form == "huge" and r < 0.9:  # keep the data set small: few huge strings
            form, make = forms[0]
        self.tally(form)
        return make()

    def reference(self):
        """A Reference element, well-formed or not."""
        r = self.random.random()
        if r < 0.80:
            element = {"reference": self.reference_string()}
            t = self.random.random()
            if t < 0.25:
                element["type"] = "Patient"
                self.tally("type Patient")
            elif t < 0.32:
                element["type"] = self.choice(["Practitioner", "patient", "Group", ""])
                self.tally("type other")
            elif t < 0.35:
                element["type"] = self.choice([None, 1, ["Patient"], {"a": "Patient"}, True])
                self.tally("type not a string")
            if self.random.random() < 0.3:
                element["display"] = self.choice(["Jane Doe", "Ωμέγα 😀", "", "x" * 300])
            if self.random.random() < 0.1:
                element["identifier"] = {"system": "urn:mrn", "value": self.patient_id()}
            return self.shuffle(element)
        if r < 0.85:
            self.tally("identifier only")
            element = {"identifier": {"system": "http://hospital/mrn", "value": self.patient_id()}}
            if self.random.random() < 0.5:
                element["type"] = "Patient"
            return element
        if r < 0.90:
            self.tally("inline resource")
            element = {"resourceType": self.choice(["Patient", "Patient", "Practitioner", None, 7]),
                       "id": self.choice([self.patient_id(), self.patient_id(), 123, None, ["1"]])}
            if self.random.random() < 0.2:
                element["type"] = self.choice(["Patient", "Group"])
            return element
        if r < 0.95:
            self.tally("reference not a string")
            return {"reference": self.choice([None, 1, 1.5, True, [f"Patient/{self.patient_id()}"],
                                              {"reference": "Patient/1"}, []])}
        self.tally("display only")
        return {"display": "Patient/123"}

    def shuffle(self, element):
        items = list(element.items())
        self.random.shuffle(items)
        return dict(items)

    def odd_value(self):
        self.tally("odd value")
        return self.choice([None, 0, -1.5e300, True, "", "Patient/123", [], {}, [None], [[]],
                            "ü" * 50, {"reference": None}, [1, "Patient/1"]])

    def deep(self, depth):
        self.tally("deep nesting")
        value = {"reference": f"Patient/{self.choice(self.IDS)}"}
        for _ in range(depth):
            value = self.choice([[value], {"extension": value}, {"valueReference": [value, 1]}])
        return value

    def at_path(self, steps):
        """A value for the members of steps; mostly well-formed, sometimes not."""
        key, is_array = steps[0]
        rest = steps[1:]

        def inner():
            if not rest:
                return self.reference() if self.random.random() < 0.93 else self.odd_value()
            return self.at_path(rest)

        r = self.random.random()
        if is_array:
            if r < 0.80:
                return self.members(key, [inner() for _ in range(self.random.choice([0, 1, 1, 2, 3, 5]))])
            if r < 0.88:
                self.tally("object where array expected")
                return self.members(key, inner())
            if r < 0.93:
                self.tally("nested array")
                return self.members(key, [[inner()], inner()])
            return self.members(key, self.odd_value())
        if r < 0.85:
            return self.members(key, inner())
        if r < 0.93:
            self.tally("array where object expected")
            return self.members(key, [inner() for _ in range(self.random.choice([1, 1, 2]))])
        return self.members(key, self.odd_value())

    def members(self, key, value):
        return {key: value}

    def merge(self, target, addition):
        """Adds a path's members to target, merging into objects and arrays already there."""
        for key, value in addition.items():
            old = target.get(key)
            if isinstance(old, dict) and isinstance(value, dict):
                self.merge(old, value)
            elif isinstance(old, list) and isinstance(value, list):
                old.extend(value)
            else:
                target[key] = value

    def resource(self):
        r = self.random.random()
        if r < 0.94:
            type_name = self.choice(self.type_names)
        elif r < 0.98:
            type_name = self.choice(["Practitioner", "Organization", "Bundle", "patient", "Foo",
                                     "", "Patient ", "observation"])
            self.tally("type outside the compartment")
        else:
            type_name = None
        resource = {}
        if type_name is not None:
            resource["resourceType"] = type_name
        elif self.random.random() < 0.5:
            resource["resourceType"] = self.choice([None, 1, ["Patient"], {"Patient": 1}])
            self.tally("resourceType not a string")
        if type_name == "Patient" or self.random.random() < 0.7:
            resource["id"] = self.choice([self.patient_id(), self.patient_id(), 42, None, [], "x" * 200])
        paths = self.types.get(type_name, [])
        for path in paths:
            if self.random.random() < 0.75:
                self.merge(resource, self.at_path(path))
        if paths and self.random.random() < 0.2:
            # the same member under another path of another type: routes nowhere here
            other = self.choice(self.types[self.choice(self.type_names)])
            self.merge(resource, self.at_path(other))
        if self.random.random() < 0.05:
            resource["extension"] = [self.deep(self.random.randint(1, 120))]
        if self.random.random() < 0.05:
            resource["text"] = {"div": "<div>" + "é😀" * self.random.randint(1, 2000) + "</div>"}
        return resource

    def text(self):
        """One resource as JSON text: mostly an object, sometimes something else."""
        if self.random.random() < 0.002:
            self.tally("not an object")
            return json.dumps(self.choice([[], [{"resourceType": "Patient", "id": "1"}], "Patient",
                                           1, None, True]))
        resource = self.resource()
        text = json.dumps(resource, ensure_ascii=self.random.random() < 0.5)
        if self.random.random() < 0.01 and text.startswith("{") and len(text) > 2:
            # a duplicate key: jsonb keeps the last one, for both implementations alike
            self.tally("duplicate key")
            text = '{"resourceType": "Patient", "id": "dup", ' + text[1:]
        return text


@pytest.fixture(scope="module")
def cluster():
    with Cluster(settings={"jit": "off"}) as c:
        yield c


def test_patient_refs_agrees_with_the_sql_reference(cluster):
    types = compartment_paths()
    generator = Generator(SEED, types)
    started = time.monotonic()
    with cluster.connect() as conn:
        conn.execute("CREATE EXTENSION fhir_notify")
        with open(REFERENCE_SQL) as f:
            conn.execute(f.read())
        conn.execute("CREATE TABLE generated (n int PRIMARY KEY, resource jsonb NOT NULL)")
        seen_types = set()
        with conn.cursor() as cur:
            with cur.copy("COPY generated (n, resource) FROM STDIN") as copy:
                for n in range(COUNT):
                    text = generator.text()
                    copy.write_row((n, text))
        generated_s = time.monotonic() - started
        seen_types = {row[0] for row in conn.execute(
            "SELECT DISTINCT resource->>'resourceType' FROM generated"
            " WHERE jsonb_typeof(resource) = 'object'")}
        count, routed, patients, mismatches = conn.execute(
            "WITH routed AS (SELECT n, resource, fhir_notify.patient_refs(resource) AS c,"
            " patient_refs_sql(resource) AS s FROM generated)"
            " SELECT count(*), count(*) FILTER (WHERE cardinality(c) > 0), sum(cardinality(c)),"
            " (SELECT array_agg(x) FROM (SELECT jsonb_build_object('n', n, 'c', c, 's', s,"
            "   'resource', left(resource::text, 400)) AS x FROM routed"
            "   WHERE c IS DISTINCT FROM s ORDER BY n LIMIT 5) first)"
            " FROM routed").fetchone()
    total_s = time.monotonic() - started
    print(f"routing differential: {count} resources (seed {SEED}), {routed} routed to"
          f" {patients} patient links; generated and loaded in {generated_s:.1f} s,"
          f" all in {total_s:.1f} s")
    print("forms:", json.dumps(dict(sorted(generator.forms.items()))))

    assert count == COUNT
    assert not mismatches, "C and SQL route differently:\n" + "\n".join(
        json.dumps(m) for m in mismatches)
    # the generator covered what it promises
    assert set(types) <= seen_types, sorted(set(types) - seen_types)
    expected_forms = {"relative", "absolute", "versioned", "absolute versioned", "urn:uuid",
                      "contained", "conditional", "fragment", "other type", "odd path", "huge",
                      "identifier only", "inline resource", "reference not a string",
                      "type Patient", "type other", "type not a string", "bad id", "odd value",
                      "object where array expected", "array where object expected",
                      "nested array", "deep nesting", "not an object", "duplicate key",
                      "type outside the compartment", "resourceType not a string"}
    if COUNT >= 100000:
        assert expected_forms <= set(generator.forms), sorted(expected_forms - set(generator.forms))
        assert routed > COUNT // 4
