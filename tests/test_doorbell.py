"""Commit mode's doorbell (fhir_notify.doorbell = commit, the default): one
NOTIFY per committing transaction that captured at least one change, whose
payload is that transaction's id (pg_current_xact_id(), decimal); never per
row, never for rolled-back work, never when nothing was captured, never when
switched off. (These were specs/doorbell_once.spec, which printed the
payload: an xid differs from run to run.)"""
from pgcluster import Cluster
from test_ticker import Listener

RESOURCE = """jsonb_build_object('resourceType', 'Condition', 'id', 'c' || i,
    'subject', jsonb_build_object('reference', 'Patient/p1'))"""


def test_doorbell_rings_once_per_transaction_with_its_xid():
    with Cluster() as cluster:
        with cluster.connect() as conn:
            conn.execute("CREATE EXTENSION fhir_notify")
            conn.execute("CREATE TABLE iso_doorbell (id serial, resource jsonb)")
            conn.execute("SELECT fhir_notify.watch('iso_doorbell', 'jsonb')")
        listener = Listener(cluster)
        writer = cluster.connect(autocommit=False)
        try:
            def changes():
                return writer.execute("SELECT count(*) FROM fhir_notify.changes").fetchone()[0]

            # Two statements, four changes, one transaction: one doorbell, the xid its payload.
            xid = writer.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
            writer.execute(f"INSERT INTO iso_doorbell (resource) SELECT {RESOURCE} "
                           "FROM generate_series(1, 3) i")
            writer.execute(f"INSERT INTO iso_doorbell (resource) SELECT {RESOURCE} "
                           "FROM generate_series(9, 9) i")
            writer.commit()
            assert listener.wait_for(1) == 1
            assert listener.poll(0.5) == 1
            channel, payload, _ = listener.received[0]
            assert (channel, payload) == ("fhir_notify", xid)
            assert changes() == 4
            writer.commit()
            # Rolled back: no doorbell, no rows.
            writer.execute(f"INSERT INTO iso_doorbell (resource) SELECT {RESOURCE} "
                           "FROM generate_series(1, 3) i")
            writer.rollback()
            assert listener.poll(0.5) == 1
            assert changes() == 4
            writer.commit()
            # Nothing captured (routes to no patient): no doorbell.
            writer.execute("INSERT INTO iso_doorbell (resource) VALUES "
                           "(jsonb_build_object('resourceType', 'Practitioner', 'id', 'dr1'))")
            writer.commit()
            assert listener.poll(0.5) == 1
            # A 300 KB resource: the doorbell is still tiny.
            writer.execute("""INSERT INTO iso_doorbell (resource)
                SELECT jsonb_build_object('resourceType', 'Provenance', 'id', 'prov1',
                    'target', jsonb_agg(jsonb_build_object('reference', 'Observation/obs-' || i)) ||
                              jsonb_build_array(jsonb_build_object('reference', 'Patient/p1')),
                    'patient', jsonb_build_object('reference', 'Patient/p1'))
                FROM generate_series(1, 12000) i""")
            writer.commit()
            assert listener.wait_for(2) == 2
            assert len(listener.received[1][1]) <= 20
            # Switched off: the change is logged, nobody is rung.
            writer.execute("SET fhir_notify.doorbell = 'off'")
            writer.execute(f"INSERT INTO iso_doorbell (resource) SELECT {RESOURCE} "
                           "FROM generate_series(1, 3) i")
            writer.commit()
            writer.execute("RESET fhir_notify.doorbell")
            writer.commit()
            assert listener.poll(0.5) == 2
            assert changes() == 8
        finally:
            writer.close()
            listener.close()
