#!/usr/bin/python3
"""Routing cost: fhir_notify.patient_refs() (C, on the jsonb binary) against
patient_refs_sql() (bench/routing_sql_reference.sql: the same rules in SQL
and jsonpath), over every resource of a Synthea sample and over a 300 KB
Provenance.

Runs on a throwaway cluster from the private installation (tests/pgcluster.py);
run `make` first. Checks that both give the same patients for every resource
(exit status 1 if not), prints the numbers, and appends them as JSON lines
{"name", "value", "unit"} to OUT_FILE when given.

Usage: bench/routing.py [OUT_FILE]
Environment: FHIR_NOTIFY_SYNTHEA_DIR, a Synthea NDJSON export to use instead
of the vendored subset (default: /work/shared/fhir-samples/synthea-10p when
present); BENCH_QUICK=1 for fewer repetitions.
"""
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))

from pgcluster import Cluster  # noqa: E402

SHARED_SAMPLE = "/work/shared/fhir-samples/synthea-10p"
VENDORED_SAMPLE = os.path.join(TOP, "tests", "data", "synthea")
QUICK = os.environ.get("BENCH_QUICK") == "1"

# Runs a query `loops` times inside the server and returns the fastest run in
# milliseconds: no client round trips in the numbers, and the minimum is the
# run least disturbed by other work on a shared machine.
TIMER_SQL = """
CREATE FUNCTION bench_best_ms(query text, loops int) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
	started timestamptz;
	best float8 := 'Infinity';
BEGIN
	FOR i IN 1..loops LOOP
		started := clock_timestamp();
		EXECUTE query;
		best := least(best, extract(epoch FROM clock_timestamp() - started) * 1000);
	END LOOP;
	RETURN best;
END
$$;
"""

# A Provenance listing 6000 targets (~300 KB), 1500 of them distinct patients.
PROVENANCE_SQL = """
INSERT INTO bench_provenance
SELECT jsonb_build_object('resourceType', 'Provenance', 'id', 'big',
	'recorded', '2024-01-01T00:00:00Z', 'target', jsonb_agg(target ORDER BY i))
FROM (
	SELECT i, CASE i % 4
		WHEN 0 THEN jsonb_build_object('reference', 'Patient/p-' || (i / 4 * 7919) % 1500)
		WHEN 1 THEN jsonb_build_object('reference', 'https://fhir.example.org/Patient/p-'
			|| (i / 4 * 7919 + 750) % 1500 || '/_history/' || i)
		WHEN 2 THEN jsonb_build_object('reference', 'Encounter/e-' || i, 'display', repeat('x', 40))
		ELSE jsonb_build_object('reference', 'urn:uuid:u-' || i)
		END AS target
	FROM generate_series(1, 6000) AS i
) targets
"""


def sample_files():
    """The NDJSON files to route, and where they come from."""
    source = os.environ.get("FHIR_NOTIFY_SYNTHEA_DIR")
    if not source:
        source = SHARED_SAMPLE if os.path.isdir(SHARED_SAMPLE) else VENDORED_SAMPLE
    files = [f for f in sorted(glob.glob(os.path.join(source, "*.ndjson")))
             if not os.path.basename(f).startswith("log.")]
    if not files:
        sys.exit(f"routing bench: no NDJSON files in {source}")
    return source, files


def load(conn, files):
    """Copies every resource of the sample into bench_resources."""
    conn.execute("CREATE TABLE bench_resources (resource jsonb NOT NULL)")
    with conn.cursor() as cur:
        with cur.copy("COPY bench_resources (resource) FROM STDIN") as copy:
            for path in files:
                with open(path) as f:
                    for line in f:
                        if line.strip():
                            # validate here so a bad line names its file
                            json.loads(line)
                            copy.write_row((line.strip(),))
    conn.execute("ANALYZE bench_resources")


def check_same_answers(conn, table):
    """Exits when C and SQL route any resource differently."""
    rows = conn.execute(
        f"SELECT resource->>'resourceType', resource->>'id', fhir_notify.patient_refs(resource),"
        f" patient_refs_sql(resource) FROM {table}"
        f" WHERE fhir_notify.patient_refs(resource) IS DISTINCT FROM patient_refs_sql(resource)"
        f" LIMIT 10").fetchall()
    if rows:
        for row in rows:
            print(f"routing bench: {row[0]}/{row[1]}: C {row[2]} != SQL {row[3]}", file=sys.stderr)
        sys.exit(1)


def per_resource_us(conn, table, expression, count, loops):
    """Microseconds per resource spent in expression, beyond reading the jsonb."""
    query = f"SELECT count(*) FROM {table} WHERE {{}} IS NOT NULL"
    baseline = conn.execute("SELECT bench_best_ms(%s, %s)",
                            (query.format("jsonb_typeof(resource)"), loops)).fetchone()[0]
    total = conn.execute("SELECT bench_best_ms(%s, %s)",
                         (query.format(expression), loops)).fetchone()[0]
    return max(total - baseline, 0.0) * 1000.0 / count


def main():
    out_file = sys.argv[1] if len(sys.argv) > 1 else None
    source, files = sample_files()
    c_loops, sql_loops = (3, 1) if QUICK else (20, 3)

    with Cluster(settings={"jit": "off"}) as cluster, cluster.connect() as conn:
        conn.execute("CREATE EXTENSION fhir_notify")
        with open(os.path.join(HERE, "routing_sql_reference.sql")) as f:
            conn.execute(f.read())
        conn.execute(TIMER_SQL)
        load(conn, files)
        conn.execute("CREATE TABLE bench_provenance (resource jsonb NOT NULL)")
        conn.execute(PROVENANCE_SQL)

        count, routed = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE cardinality(fhir_notify.patient_refs(resource)) > 0)"
            " FROM bench_resources").fetchone()
        provenance_bytes, provenance_patients = conn.execute(
            "SELECT octet_length(resource::text), cardinality(fhir_notify.patient_refs(resource))"
            " FROM bench_provenance").fetchone()
        check_same_answers(conn, "bench_resources")
        check_same_answers(conn, "bench_provenance")

        c_us = per_resource_us(conn, "bench_resources", "fhir_notify.patient_refs(resource)",
                               count, c_loops)
        sql_us = per_resource_us(conn, "bench_resources", "patient_refs_sql(resource)", count,
                                 sql_loops)
        c_prov_us = per_resource_us(conn, "bench_provenance", "fhir_notify.patient_refs(resource)",
                                    1, c_loops)
        sql_prov_us = per_resource_us(conn, "bench_provenance", "patient_refs_sql(resource)", 1,
                                      sql_loops)

    results = [
        {"name": "routing_resources", "value": count, "unit": "resources"},
        {"name": "routing_c_per_resource", "value": round(c_us, 2), "unit": "us"},
        {"name": "routing_sql_per_resource", "value": round(sql_us, 2), "unit": "us"},
        {"name": "routing_c_speedup", "value": round(sql_us / max(c_us, 0.01), 1), "unit": "x"},
        {"name": "routing_c_provenance_300kb", "value": round(c_prov_us, 1), "unit": "us"},
        {"name": "routing_sql_provenance_300kb", "value": round(sql_prov_us, 1), "unit": "us"},
        {"name": "routing_c_provenance_speedup",
         "value": round(sql_prov_us / max(c_prov_us, 0.01), 1), "unit": "x"},
    ]
    print(f"routing: {count} resources from {source} ({routed} routed to a patient); "
          f"C and SQL agree on every one")
    print(f"routing: per resource C {c_us:.2f} us, SQL/jsonpath {sql_us:.2f} us, "
          f"C is {sql_us / max(c_us, 0.01):.1f}x faster")
    print(f"routing: Provenance of {provenance_bytes} bytes, {provenance_patients} patients: "
          f"C {c_prov_us:.0f} us, SQL/jsonpath {sql_prov_us:.0f} us")
    if out_file:
        with open(out_file, "a") as f:
            for result in results:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
