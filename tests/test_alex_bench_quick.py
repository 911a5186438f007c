"""Smoke test: ``benchmarks/bench_alex.py --quick`` runs and prints its comparison table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_alex_quick_prints_table():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_alex.py"), "--quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["dist", "keys", "bulk", "s"]
    assert "lookup/s" in lines[0] and "insert/s" in lines[0] and "ratio" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["uniform", "lognormal"]
    assert all(float(value) >= 0 for row in rows for value in row[1:])
    assert all(float(row[5]) > 0 and float(row[8]) > 0 for row in rows)  # the two ratio columns
