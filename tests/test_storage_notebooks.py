"""The storage experiments' notebooks run top to bottom on the replicated kernel (papermill, small parameters).

Each notebook ends by binding ``summary``, a dict of its measured results, and printing it as JSON on the
last line of its last cell; the tests read that line and check behaviour a broken experiment would get wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
STORAGE = ROOT / "experiments" / "storage"

pytest.importorskip("torch")
pytest.importorskip("zstandard")


def _run_notebook(name: str, tmp_path: Path, **params: object) -> tuple[nbformat.NotebookNode, dict]:
    src, dst = STORAGE / name, tmp_path / name
    args = [sys.executable, "-m", "papermill", str(src), str(dst), "-k", "notebookos", "--cwd", str(tmp_path),
            "--log-level", "ERROR"]
    for key, value in params.items():
        args += ["-p", key, str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    nb = nbformat.read(dst, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{out.get('ename')}: {out.get('evalue')}"
    last = [o for o in nb.cells[-1].outputs if o.get("output_type") == "stream"]
    summary = json.loads(last[-1]["text"].strip().splitlines()[-1])
    return nb, summary


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def _has_progress_bars(nb: nbformat.NotebookNode) -> bool:
    return any("application/vnd.jupyter.widget-view+json" in out.get("data", {})
               for cell in nb.cells for out in cell.get("outputs", []))


def test_zllm_notebook_runs_on_the_replicated_kernel(tmp_path):
    nb, summary = _run_notebook("zllm.ipynb", tmp_path, preset="tiny", seed=0)
    assert summary["repos"] >= 8
    assert summary["restored_files"] >= summary["repos"]  # every file came back (SHA-256 checked by restore)
    assert 0 < summary["stored_bytes"] < summary["original_bytes"]
    # zLLM beats every baseline on the same hub, and finds the generator's families without being told them.
    assert summary["reduction"] > summary["best_baseline_reduction"] > 0
    assert summary["adjusted_rand_index"] == 1.0
    assert summary["bitx_over_zstd3"] > 1.0
    assert _images(nb) >= 1 and _has_progress_bars(nb)


def test_alex_attacks_notebook_runs_on_the_replicated_kernel(tmp_path):
    nb, summary = _run_notebook("alex_attacks.ipynb", tmp_path, datasets="lognormal", n_bulk=3000,
                                n_inserts=400)
    row = summary["lognormal"]
    # The OOM attack passes the memory cap the legitimate workload never reaches; the time attack costs more
    # counted shifts per insert; the guard keeps the OOM attack's memory far below the unguarded index's.
    assert row["legit_inserts_until_cap"] is None
    assert row["oom_inserts_until_cap"] is not None and row["oom_inserts_until_cap"] <= 400
    assert row["oom_memory_ratio"] > 2 * row["legit_memory_ratio"]
    assert row["time_shift_slowdown"] > 2
    assert row["guard_oom_memory_ratio"] < row["oom_memory_ratio"] / 2
    assert _images(nb) >= 2 and _has_progress_bars(nb)
