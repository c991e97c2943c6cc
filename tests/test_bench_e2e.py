"""The end-to-end benchmark's tools work and count right: bench/e2e at a tiny
size drives the real bridge and the reference relay with bench/loadgen, and
every update the writer committed arrives (no timing is asserted: speed is
bench/'s business)."""

import json
import os
import subprocess

import pytest

from pgcluster import TOP

E2E = os.path.join(TOP, "bench", "e2e")
LOADGEN = os.path.join(TOP, "bench", "loadgen")
PYTHON = "/usr/bin/python3"

TINY = {
    "E2E_LATENCY_CLIENTS": "40",
    "E2E_LATENCY_PATIENTS": "8",
    "E2E_LATENCY_RATE": "100",
    "E2E_LATENCY_SECONDS": "2",
    "E2E_LATENCY_10K_CLIENTS": "60",
    "E2E_LATENCY_10K_PATIENTS": "12",
    "E2E_LATENCY_10K_RATE": "100",
    "E2E_LATENCY_10K_SECONDS": "2",
    "E2E_FANOUT_CLIENTS": "30",
    "E2E_FANOUT_CHANGES": "20",
    "E2E_IDLE_CLIENTS": "50",
    "E2E_CATCHUP_CLIENTS": "20",
    "E2E_CATCHUP_PATIENTS": "5",
    "E2E_CATCHUP_CHANGES": "50",
}


@pytest.fixture(scope="module")
def e2e_results(tmp_path_factory):
    """One tiny bench/e2e run against both servers: {name: value}."""
    out = tmp_path_factory.mktemp("e2e") / "results.json"
    env = dict(os.environ, BENCH_QUICK="1", **TINY)
    run = subprocess.run([E2E, "--out", str(out)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    results = {}
    with open(out) as f:
        for line in f:
            entry = json.loads(line)
            assert set(entry) <= {"name", "value", "unit", "compared"}
            results[entry["name"]] = entry["value"]
    return results


@pytest.mark.parametrize("scenario", ["latency", "latency_10k", "fanout"])
@pytest.mark.parametrize("server", ["bridge", "relay"])
def test_every_update_arrives(e2e_results, scenario, server):
    assert e2e_results[f"e2e.{scenario}.{server}.delivered_fraction"] == 1.0


def test_latency_is_measured_from_the_writers_stamp(e2e_results):
    for server in ("bridge", "relay"):
        p50 = e2e_results[f"e2e.latency.{server}.p50"]
        p99 = e2e_results[f"e2e.latency.{server}.p99"]
        assert 0 < p50 <= p99 <= e2e_results[f"e2e.latency.{server}.max"]


def test_latency_is_measured_once_every_subscription_is_live(e2e_results):
    """A warm-up change per room first (loadgen --warmup): not counted."""
    for scenario in ("latency", "latency_10k"):
        for server in ("bridge", "relay"):
            assert e2e_results[f"e2e.{scenario}.{server}.live_seconds"] >= 0
            assert e2e_results[f"e2e.{scenario}.{server}.loadgen_cpu_us_per_update"] > 0


def test_catch_up_with_since_only_on_the_bridge(e2e_results):
    assert e2e_results["e2e.catchup.bridge.with_cursor"] == 20
    assert e2e_results["e2e.catchup.bridge.delivered_fraction"] == 1.0
    assert e2e_results["e2e.catchup.bridge.resyncs"] == 0
    assert "e2e.catchup.bridge.all_current_seconds" in e2e_results
    # the relay has no resume: whatever was written while away is lost
    assert e2e_results["e2e.catchup.relay.delivered_fraction"] == 0.0


def test_idle_connections_are_all_accepted_and_measured(e2e_results):
    for server in ("bridge", "relay"):
        assert e2e_results[f"e2e.idle.{server}.connected"] == 50
        assert e2e_results[f"e2e.idle.{server}.target_connections"] == 50
        assert e2e_results[f"e2e.idle.{server}.loadgen_processes"] == 1
        assert e2e_results[f"e2e.idle.{server}.rss_total"] > 0
    assert e2e_results["e2e.idle.rss_per_connection.bridge_vs_relay"] > 0


def test_loadgen_rejects_bad_arguments():
    subprocess.run(["make", "-s", "-C", os.path.join(TOP, "bench"), "loadgen"], check=True,
                   timeout=120)
    for argv in ([], ["--url", "http://x/"], ["--url", "ws://127.0.0.1:1/", "--mode", "nope"],
                 ["--url", "ws://127.0.0.1:1/", "--mode", "fanout"],
                 ["--url", "ws://127.0.0.1:1/", "--clients", "0"],
                 ["--url", "ws://127.0.0.1:1/", "--bind-from", "not-an-address"]):
        run = subprocess.run([LOADGEN] + argv, capture_output=True, text=True, timeout=10)
        assert run.returncode == 2, argv
        assert run.stderr.startswith("loadgen: ")


def test_loadgen_reports_a_server_it_cannot_reach(tmp_path):
    from pgcluster import free_port

    port = free_port()
    run = subprocess.run([LOADGEN, "--url", f"ws://127.0.0.1:{port}/api/ws", "--clients", "3",
                          "--retries", "1", "--duration", "2"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    result = json.loads(run.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    assert result["ready"] == 0 and result["failed"] == 3
