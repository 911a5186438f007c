"""The zLLM benchmark still runs in its --quick mode and prints its tables. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_zllm_benchmark_quick_prints_the_tables(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("zstandard")
    pytest.importorskip("experiments.storage.zllm.hub")
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_zllm.py"), "--quick",
                           "--hub", str(tmp_path / "hub"), "--work", str(tmp_path / "work"),
                           "--restore-dir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for heading in ("## methods on the same hub", "| method | stored MB | reduction | seconds | note |",
                    "## targets", "| reduction |", "| bitx_over_zstd3 |", "| ingest_mb_s |",
                    "| restore_mb_s |"):
        assert heading in proc.stdout, proc.stdout
    results = json.loads(out.read_text())
    methods = {r["method"] for r in results["methods"]}
    assert {"zstd-3 per file", "tensor dedup (no compression)", "ZipNN per file"} <= methods
    assert any(m.startswith("zLLM") for m in methods)
    assert results["stats"]["clustering"]["ari"] == 1.0
    assert results["peak_rss_bytes"]["ingest"] > 0
