"""The benchmark scripts still run (in their --quick mode). No timing is asserted: targets live in the scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, tmp_path: Path) -> dict:
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_kernel_benchmark_runs(tmp_path):
    results = _run("bench_kernel.py", tmp_path)
    assert results["round_trip_ms"]["notebookos"]["p50"] > 0
    assert set(results["idle_cpu_percent"]["notebookos"]) >= {"front", "replica 1"}


def test_simulator_benchmark_runs(tmp_path):
    results = _run("bench_sim.py", tmp_path)
    assert set(results["throughput"]) == {"notebookos", "nbos autoscale", "reservation", "batch"}
    assert all(m["events"] > 0 for m in results["throughput"].values())
    latency = {d["label"]: d for d in results["latency"]}
    # The autoscaler's passes ran beside the decisions, and moved replicas in the background.
    assert latency["nbos autoscale"]["passes"] > 0 and latency["nbos autoscale"]["moves"] > 0
    assert latency["notebookos"]["passes"] == 0


def test_cluster_start_benchmark_runs(tmp_path):
    results = _run("bench_cluster_start.py", tmp_path)
    assert len(results["runs"]["prewarmed"]) == results["kernels"] and results["cold_s"] > 0


def test_soak_keeps_every_variable_and_the_graph(tmp_path):
    results = _run("soak.py", tmp_path)  # --quick: 120 cells, a replica SIGKILLed every 30
    assert results["lost_variables"] == [] and results["same_as_plain"] and results["replicas_agree"]
    assert results["optimizer_attached"] and results["still_training"]
    assert results["kills_between"] + results["kills_during"] == 4


def test_state_benchmark_runs(tmp_path):
    results = _run("bench_state.py", tmp_path)
    nb = results["training"]["notebookos"]
    assert nb["cell_s"] > 0
    # The executor reports how long replication took after the cell ran; both parts are inside the cell's time.
    assert 0 < nb["capture_s"] and 0 < nb["commit_s"] and nb["capture_s"] + nb["commit_s"] < nb["cell_s"]
    assert results["untouched"]["notebookos"]["with_model_ms"] > 0


def test_gpu_savings_benchmark_runs(tmp_path):
    rows = _run("bench_gpu_savings.py", tmp_path)  # --quick: 3 days, 120 s scale-out
    labels = [r["label"] for r in rows]
    assert labels[0] == "reservation" and rows[0]["vs_reservation"] == 1.0
    assert all(r["cells_run"] > 0 and r["vs_committed"] >= 1.0 for r in rows)
