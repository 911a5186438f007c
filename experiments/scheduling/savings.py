"""The runs behind ``notebookos_vs_reservation.ipynb``: every variant of ``benchmarks/bench_gpu_savings.py``
simulated over one workload, keeping what the plots need (start delays, the GPU timeline) beside the metrics.

``bench_gpu_savings.run()`` keeps only each run's metrics; :func:`simulate` runs the same variants, on the same
cluster model and workload, and also returns each run's delays and timeline, so the notebook's table and plots
come from the same runs (the test checks its GPU-hours against ``run()``'s).
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from notebookos.scheduler.policy import load_policy
from notebookos.scheduler.sim.engine import SimConfig, Simulation
from notebookos.scheduler.sim.traces import Session

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_gpu_savings.py"

#: issue 12's target: a notebookos row at no more than this fraction of reservation's GPU-hours ...
TARGET_VS_RESERVATION = 0.80
#: ... with a fraction of cells started within 1 s no lower than reservation's, at each of these scale-out delays
TARGET_DELAYS = (120.0, 15.0)
#: NotebookOS (arXiv:2503.20591): GPU-hours saved against reservation on its 17.5 h production workload
PAPER_SAVED_GPU_HOURS = 1187.0
PAPER_WORKLOAD_HOURS = 17.5


def bench_module() -> ModuleType:
    """``benchmarks/bench_gpu_savings.py``, imported by path (the benchmarks are scripts, not a package)."""
    if not BENCH.is_file():
        raise FileNotFoundError(f"{BENCH} not found: run from a checkout of notebookos (pip install -e .)")
    module = sys.modules.get("bench_gpu_savings")
    if module is None or getattr(module, "__file__", None) != str(BENCH):
        spec = importlib.util.spec_from_file_location("bench_gpu_savings", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_gpu_savings"] = module
        spec.loader.exec_module(module)
    return module


def as_floats(value: Any) -> list[float]:
    """A list of numbers from a parameter: a list, one number, ``"120,15"`` or ``"[120, 15]"`` (papermill's
    ``-p`` passes text)."""
    if isinstance(value, str):
        text = value.strip()
        value = ast.literal_eval(text) if text.startswith(("[", "(")) else [v for v in text.split(",") if v.strip()]
    if isinstance(value, int | float):
        value = [value]
    return [float(v) for v in value]


@dataclass
class Run:
    """One variant at one scale-out delay."""

    label: str
    policy: str
    options: dict[str, Any]
    scale_out_delay: float
    scale_in_delay: float
    metrics: dict[str, Any]
    #: every cell's start delay (s)
    delays: np.ndarray = field(repr=False)
    #: (time_s, provisioned, running, committed) rows, piecewise constant, as ``SimResult.timeline`` (the last
    #: row holds until ``end``), or :func:`binned` (``simulate(timeline_points=...)``)
    timeline: np.ndarray = field(repr=False)
    #: when the run ended (s): its first session's start plus its makespan
    end: float = 0.0
    vs_reservation: float = float("nan")
    vs_committed: float = float("nan")


def simulate(sessions: list[Session], delays: list[tuple[float, float]], *, max_hosts: int,
             variants=None, timeline_points: int | None = None, progress: bool = True) -> list[Run]:
    """Every variant (default: the benchmark's ``VARIANTS``) at every (scale-out, scale-in) delay, one tqdm bar
    over the runs; ratios as ``bench_gpu_savings.run()`` computes them (to the ``reservation`` run at the same
    delay, and to the GPU-hours bound to running cells). With ``timeline_points`` each run keeps its timeline
    :func:`binned` into that many bins (a month's raw timeline has tens of thousands of rows)."""
    from tqdm.auto import tqdm

    variants = bench_module().VARIANTS if variants is None else variants
    todo = [(out, back, v) for out, back in delays for v in variants]
    t0 = min((sess.start for sess in sessions), default=0.0)
    runs: list[Run] = []
    with tqdm(total=len(todo), desc="simulations", disable=not progress) as bar:
        for scale_out, scale_in, (label, name, options) in todo:
            bar.set_postfix_str(f"{label} @ {scale_out:g} s")
            config = SimConfig(scale_out_delay=scale_out, scale_in_delay=scale_in, max_hosts=max_hosts)
            result = Simulation(load_policy(name, max_hosts=max_hosts, **options), sessions, config,
                                record_events=False).run()
            end = t0 + result.metrics["makespan_hours"] * 3600.0
            if timeline_points:
                result.timeline = binned(result.timeline, end, timeline_points)
            runs.append(Run(label, name, dict(options), scale_out, scale_in, result.metrics, result.delays,
                            result.timeline, end))
            bar.update()
    for run in runs:
        base = next(r for r in runs if r.policy == "reservation" and r.scale_out_delay == run.scale_out_delay)
        run.vs_reservation = run.metrics["gpu_hours_provisioned"] / base.metrics["gpu_hours_provisioned"]
        run.vs_committed = run.metrics["gpu_hours_provisioned"] / run.metrics["gpu_hours_committed"]
    return runs


def meets_target(run: Run, runs: list[Run]) -> bool | None:
    """Whether a notebookos run meets the target at its delay (None for the other policies)."""
    if run.policy != "notebookos":
        return None
    base = next(r for r in runs if r.policy == "reservation" and r.scale_out_delay == run.scale_out_delay)
    return bool(run.vs_reservation <= TARGET_VS_RESERVATION
                and run.metrics["immediate_start_fraction"] >= base.metrics["immediate_start_fraction"])


def binned(timeline: np.ndarray, end: float, points: int = 1500) -> np.ndarray:
    """The timeline (its last row holding until ``end``) as ``points`` equal bins: (bin start s, then each
    gauge's time-weighted mean over the bin). The area, hence GPU-hours, is kept; a peak shorter than a bin is
    smoothed out."""
    t = timeline[:, 0]
    if len(t) == 0 or end <= t[0]:
        return timeline.copy()
    edges = np.linspace(t[0], end, points + 1)
    values = timeline[:, 1:]
    # area under each gauge up to each change, then up to each edge (values hold from their row to the next)
    area = np.vstack([np.zeros(values.shape[1]), np.cumsum(values[:-1] * np.diff(t)[:, None], axis=0)])
    i = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 1)
    at_edges = area[i] + values[i] * (edges - t[i])[:, None]
    means = np.diff(at_edges, axis=0) / np.diff(edges)[:, None]
    return np.column_stack([edges[:-1], means])


def gpu_hours(binned_timeline: np.ndarray, column: int = 1) -> float:
    """GPU-hours under one gauge of a :func:`binned` timeline (1 provisioned, 2 running, 3 committed)."""
    t = binned_timeline[:, 0]
    width = np.diff(t).mean() if len(t) > 1 else 0.0
    return float(binned_timeline[:, column].sum() * width / 3600.0)


def cdf(delays: np.ndarray, floor: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """An empirical CDF of start delays for a log x axis: delays below ``floor`` (cells started at once, 0 s)
    are drawn at ``floor``."""
    x = np.sort(np.maximum(np.asarray(delays, dtype=float), floor))
    return x, np.arange(1, len(x) + 1) / max(len(x), 1)


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout, and the files modified in it (or why not known)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        described = git("describe", "--always", "--dirty")
        changed = git("diff", "--name-only", "HEAD").split()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e.__class__.__name__})"
    return described + (f" (modified: {', '.join(changed)})" if changed else "")
