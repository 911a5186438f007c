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
    assert results


def test_cluster_start_benchmark_runs(tmp_path):
    results = _run("bench_cluster_start.py", tmp_path)
    assert len(results["runs"]["prewarmed"]) == results["kernels"] and results["cold_s"] > 0
