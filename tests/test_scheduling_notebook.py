"""experiments/scheduling/notebookos_vs_reservation.ipynb runs top to bottom on the replicated kernel (papermill,
2 days, one delay) and its numbers are those of benchmarks/bench_gpu_savings.py on the same workload.

The notebook ends by writing ``summary`` (every run's metrics and ratios) to ``summary_path``; the test reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from experiments.scheduling import savings
from tests.notebook_runner import has_progress_bars, images, run_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "experiments" / "scheduling" / "notebookos_vs_reservation.ipynb"
DAYS, SEED, MAX_HOSTS, SCALE_OUT, SCALE_IN = 2, 0, 200, 120.0, 60.0

pytest.importorskip("pandas")
pytest.importorskip("papermill")


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[nbformat.NotebookNode, dict]:
    tmp = tmp_path_factory.mktemp("scheduling")
    summary_path = tmp / "summary.json"
    nb, summary = run_notebook(NOTEBOOK, tmp, days=DAYS, seed=SEED, max_hosts=MAX_HOSTS,
                               scale_out_delays=f"{SCALE_OUT:g}", scale_in_delays=f"{SCALE_IN:g}",
                               summary_path=summary_path)
    assert json.loads(summary_path.read_text()) == summary
    return nb, summary


def test_every_variant_runs_with_the_ratios_of_the_benchmark(executed):
    _, summary = executed
    assert summary["days"] == DAYS and summary["scale_out_delays"] == [SCALE_OUT]
    assert summary["kernel_replicas"] == 3  # it ran on the replicated kernel
    variants = [label for label, _, _ in savings.bench_module().VARIANTS]
    rows = summary["rows"]
    assert summary["variants"] == variants and [r["label"] for r in rows] == variants
    by_label = {r["label"]: r for r in rows}
    assert by_label["reservation"]["vs_reservation"] == 1.0
    for r in rows:
        assert r["cells_run"] == r["delays"] == summary["cells"] > 0  # every cell ran and has a start delay
        assert r["vs_committed"] >= 1.0  # nothing provisions less than the GPUs its running cells hold
        # the plotted timeline is the run's: its area is the table's GPU-hours
        assert r["plotted_gpu_hours"] == pytest.approx(r["gpu_hours_provisioned"], rel=1e-9)
        assert 0.0 <= r["immediate_start_fraction"] <= 1.0
        assert (r["meets_target"] is None) == (r["policy"] != "notebookos")
        if r["policy"] == "notebookos":  # the verdict is computed from the row, not written in
            assert r["meets_target"] == (
                r["vs_reservation"] <= savings.TARGET_VS_RESERVATION
                and r["immediate_start_fraction"] >= by_label["reservation"]["immediate_start_fraction"])
    assert by_label["batch"]["immediate_start_fraction"] == 0.0  # a job's process start is 15 s
    # The same runs as bench_gpu_savings.run() on the same workload and cluster model.
    bench = savings.bench_module().run(SEED, DAYS, SCALE_OUT, SCALE_IN, MAX_HOSTS)
    for ours, theirs in zip(rows, bench, strict=True):
        assert ours["label"] == theirs["label"]
        for key in ("gpu_hours_provisioned", "vs_reservation", "vs_committed", "immediate_start_fraction",
                    "migrations", "background_migrations", "scale_outs"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12), (ours["label"], key)


def test_it_shows_tables_plots_and_a_progress_bar(executed):
    nb, _ = executed
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert images(nb) >= 2 and has_progress_bars(nb)  # GPU timelines, delay CDFs; the runs' progress bar
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "vs reservation" in html and "meets target" in html and "1,187+" in html
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "days = 30" in params[0].source
