"""The test harness itself: a throwaway cluster with fhir_notify preloaded."""
from pgcluster import Cluster


def test_cluster_runs_with_extension():
    with Cluster() as pg:
        pg.execute("CREATE EXTENSION fhir_notify")
        assert pg.execute("SHOW shared_preload_libraries") == [("fhir_notify",)]
        assert pg.execute("SELECT fhir_notify.newest_tick()") == [(1,)]
