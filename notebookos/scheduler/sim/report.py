"""What a simulation run writes: ``summary.json``, ``events_<policy>.csv``, and plots (matplotlib, Agg backend).

- ``summary.json``: ``{"trace": {...}, "cluster": {...}, "policies": {<name>: {<metric>: value}}}`` with the metrics
  of :data:`~notebookos.scheduler.sim.engine.METRIC_KEYS` per policy (times in seconds, GPU-hours in hours).
- ``events_<policy>.csv``: one row per logged event, columns :data:`~notebookos.scheduler.sim.engine.EVENT_COLUMNS`
  (events: ``session_start``, ``placed``, ``session_wait``, ``cell_submit``, ``cell_start`` (with its delay),
  ``cell_wait``, ``migrate``, ``cell_end``, ``session_end``, ``scale_out``, ``host_online``, ``scale_in``).
- ``delay_cdf.png``: CDF of the interactivity delay (cell submit -> start) per policy, symlog x axis.
- ``gpus_<policy>.png``: GPUs provisioned, committed in the cluster (running cells, and held for a kernel's
  next cell or reserved for a moving replica), and bound to running cells over time.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .engine import EVENT_COLUMNS, SimResult

__all__ = ["write_summary", "write_events", "plot_delay_cdf", "plot_gpus", "format_table"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def write_events(path: str | os.PathLike, events: Iterable[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(EVENT_COLUMNS)
        w.writerows([_fmt(v) for v in row] for row in events)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_summary(path: str | os.PathLike, results: Sequence[SimResult], trace: dict[str, Any],
                  cluster: dict[str, Any]) -> dict[str, Any]:
    summary = {"trace": _clean(trace), "cluster": _clean(cluster),
               "policies": {r.policy: _clean(dict(r.metrics)) for r in results}}
    Path(path).write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return summary


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_delay_cdf(path: str | os.PathLike, results: Sequence[SimResult]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        d = np.sort(r.delays)
        if len(d) == 0:
            continue
        y = np.arange(1, len(d) + 1) / len(d)
        ax.step(np.concatenate([[0.0], d]), np.concatenate([[0.0], y]), where="post", label=r.policy)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("interactivity delay: cell submit -> start (s)")
    ax.set_ylabel("fraction of cells")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Cell start delay (CDF)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gpus(path: str | os.PathLike, result: SimResult) -> None:
    plt = _pyplot()
    tl = result.timeline
    fig, ax = plt.subplots(figsize=(9, 4))
    if len(tl):
        hours = (tl[:, 0] - tl[0, 0]) / 3600.0
        ax.step(hours, tl[:, 1], where="post", label="provisioned", lw=1.2)
        if np.any(tl[:, 3] != tl[:, 2]):  # GPUs held for kernels' next cells, or reserved for moving replicas
            ax.fill_between(hours, tl[:, 2], tl[:, 3], step="post", alpha=0.3, lw=0,
                            label="held / reserved (committed, no cell running)")
            ax.step(hours, tl[:, 3], where="post", label="committed", lw=0.8, alpha=0.8)
        ax.step(hours, tl[:, 2], where="post", label="bound to running cells", lw=0.8, alpha=0.8)
    m = result.metrics
    ax.set_title(f"{result.policy}: GPUs over time ({m['gpu_hours_provisioned']:.0f} GPU-h provisioned, "
                 f"{m['gpu_hours_committed']:.0f} GPU-h committed)")
    ax.set_xlabel("hours")
    ax.set_ylabel("GPUs")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


TABLE_COLUMNS = (
    ("policy", "policy", "{}"),
    ("GPU-h prov", "gpu_hours_provisioned", "{:.0f}"),
    ("GPU-h commit", "gpu_hours_committed", "{:.0f}"),
    ("util", "utilization", "{:.1%}"),
    ("delay p50 s", "interactivity_delay_p50_s", "{:.1f}"),
    ("delay p99 s", "interactivity_delay_p99_s", "{:.1f}"),
    ("immediate", "immediate_start_fraction", "{:.1%}"),
    ("migr", "migrations", "{}"),
    ("scale out/in", None, None),
    ("peak hosts", "peak_hosts", "{}"),
    ("events", "events", "{}"),
    ("events/s", None, None),
)


def format_table(results: Sequence[SimResult]) -> str:
    """The policies side by side (plain text)."""
    rows = [[h for h, _, _ in TABLE_COLUMNS]]
    for r in results:
        m = r.metrics
        row = []
        for header, key, fmt in TABLE_COLUMNS:
            if header == "policy":
                row.append(r.policy)
            elif header == "scale out/in":
                row.append(f"{m['scale_outs']}/{m['scale_ins']}")
            elif header == "events/s":
                row.append(f"{m['events'] / m['wall_seconds']:.0f}" if m["wall_seconds"] > 0 else "-")
            else:
                v = m.get(key)
                row.append("-" if v is None else fmt.format(v))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
