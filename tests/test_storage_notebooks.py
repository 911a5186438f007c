"""The storage experiments' notebooks run top to bottom on the replicated kernel (papermill, small parameters).

Each notebook ends by binding ``summary``, a dict of its measured results, and printing it as JSON on the
last line of its last cell; the tests read that line and check behaviour a broken experiment would get wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebook_runner import has_progress_bars, images, run_notebook

ROOT = Path(__file__).resolve().parent.parent
STORAGE = ROOT / "experiments" / "storage"

pytest.importorskip("torch")
pytest.importorskip("zstandard")


def test_zllm_notebook_runs_on_the_replicated_kernel(tmp_path):
    nb, summary = run_notebook(STORAGE / "zllm.ipynb", tmp_path, preset="tiny", seed=0)
    assert summary["repos"] >= 8
    assert summary["restored_files"] >= summary["repos"]  # every file came back (SHA-256 checked by restore)
    assert 0 < summary["stored_bytes"] < summary["original_bytes"]
    # zLLM beats every baseline on the same hub, and finds the generator's families without being told them.
    assert summary["reduction"] > summary["best_baseline_reduction"] > 0
    assert summary["adjusted_rand_index"] == 1.0
    assert summary["bitx_over_zstd3"] > 1.0
    assert images(nb) >= 1 and has_progress_bars(nb)


def test_alex_attacks_notebook_runs_on_the_replicated_kernel(tmp_path):
    nb, summary = run_notebook(STORAGE / "alex_attacks.ipynb", tmp_path, datasets="lognormal", n_bulk=3000,
                                n_inserts=400)
    row = summary["lognormal"]
    # The OOM attack passes the memory cap the legitimate workload never reaches; the time attack costs more
    # counted shifts per insert; the guard keeps the OOM attack's memory far below the unguarded index's.
    assert row["legit_inserts_until_cap"] is None
    assert row["oom_inserts_until_cap"] is not None and row["oom_inserts_until_cap"] <= 400
    assert row["oom_memory_ratio"] > 2 * row["legit_memory_ratio"]
    assert row["time_shift_slowdown"] > 2
    assert row["guard_oom_memory_ratio"] < row["oom_memory_ratio"] / 2
    assert images(nb) >= 2 and has_progress_bars(nb)
