"""The ALEX attack benchmark still runs in its --quick mode (no timing asserted; the table is the product)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_alex_attack_benchmark_quick(tmp_path):
    pytest.importorskip("experiments.storage.alex_attacks.alex")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_alex_attacks.py"), "--quick",
                           "--datasets", "lognormal,uniform", "--mitigations", "none,guard", "--n-bulk", "10000",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = results["rows"]
    assert {r["attack"] for r in rows} == {"legit", "space", "oom", "time", "space_packed"}
    assert {r["dataset"] for r in rows} == {"lognormal", "uniform"}
    assert {r["mitigation"] for r in rows} == {"none", "guard"}
    assert "1,641x" in proc.stdout
