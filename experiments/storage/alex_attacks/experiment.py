"""Replaying insert sequences against ALEX and comparing attacks with the legitimate workload.

:func:`measure` bulk-loads a fresh index, replays an insert sequence and records what the paper measures: memory
over time (checked after every insert, sampled for plots), the operation
counters (shifts, search steps, retrains, expansions, splits), wall time per insert, and how many inserts it
took to pass a memory cap (the OOM point).

:func:`run_experiment` does it for every attack and the legitimate workload of the same size, for each
mitigation, and returns plain dict rows with the ratios against the legitimate workload: memory amplification
(bytes per inserted key, attack / legit), inserts until the cap, and the slowdown in counted shifts and in wall
time per insert. Counted shifts are the stable number (tests use only them); wall time is Python time and only
meaningful as a ratio on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .attacks import ALL_ATTACKS, ATTACKS, make_attack
from .datasets import make_dataset
from .mitigations import MITIGATIONS, alex_factory

__all__ = ["measure", "run_experiment", "check_names", "COUNTER_FIELDS"]

COUNTER_FIELDS = ("inserts", "shifts", "search_steps", "model_retrains", "expansions", "sideways_splits",
                  "downward_splits", "catastrophic_triggers")

# Modelled bytes past which a replay is stopped whatever the cap: the Python index really allocates its gapped
# arrays, so an unbounded OOM replay would take this machine's RAM with it.
SAFETY_CAP_BYTES = 1 << 30


def _counters(alex: Any) -> dict[str, int]:
    snap = alex.counters.snapshot()
    return {k: int(snap.get(k, 0)) for k in COUNTER_FIELDS}


def _safe_div(a: float, b: float) -> float | None:
    if b == 0:
        return None if a == 0 else math.inf
    return a / b


def measure(alex_factory: Callable[[], Any], bulk_keys: np.ndarray, inserts: np.ndarray, *,
            memory_cap: int | None = None, cap_factor: float | None = None, stop_at_cap: bool = True,
            samples: int = 200, safety_cap_bytes: int = SAFETY_CAP_BYTES, progress: bool = False,
            label: str = "") -> dict[str, Any]:
    """Bulk-load ``bulk_keys`` into ``alex_factory()``, replay ``inserts``, and return the measurements.

    The memory cap is ``memory_cap`` bytes, or ``cap_factor`` times the bulk-loaded size; once the index passes
    it, ``inserts_until_cap`` is the number of inserts done (the replay stops there unless ``stop_at_cap`` is
    false). About ``samples`` points of the memory / shifts / time series are kept for plots.
    """
    inserts = np.asarray(inserts, dtype=np.float64)
    alex = alex_factory()
    t0 = time.perf_counter()
    alex.bulk_load(np.asarray(bulk_keys, dtype=np.float64))
    bulk_load_s = time.perf_counter() - t0
    alex.counters.reset()
    initial = alex.memory()
    initial_bytes = int(initial.total_bytes)
    cap = memory_cap if memory_cap is not None else (
        int(initial_bytes * cap_factor) if cap_factor is not None else None)
    every = max(1, inserts.size // max(1, samples))
    series: dict[str, list] = {"inserted": [0], "total_bytes": [initial_bytes], "shifts": [0], "elapsed_s": [0.0]}
    per_insert_s = np.empty(inserts.size, dtype=np.float64)
    total_bytes = initial_bytes
    peak_bytes = initial_bytes
    inserts_until_cap: int | None = None
    stopped_by = None
    done = 0
    elapsed = 0.0
    iterator = range(inserts.size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=label or "replaying inserts", leave=False)
    insert = alex.insert
    memory = alex.memory
    perf = time.perf_counter
    for i in iterator:
        key = float(inserts[i])
        t = perf()
        try:
            insert(key)
        except (MemoryError, ArithmeticError, ValueError) as e:
            # AlexOutOfMemory is where C++ ALEX would crash; a NaN/overflowing model after thousands of futile
            # splits is the same failure reached by floating point first. Either way the index is dead.
            per_insert_s[i] = perf() - t
            elapsed += per_insert_s[i]
            stopped_by = f"index failure ({type(e).__name__}: {str(e)[:80]})"
            if cap is not None and inserts_until_cap is None:
                inserts_until_cap = i + 1
            done = i + 1
            break
        dt = perf() - t
        per_insert_s[i] = dt
        elapsed += dt
        done = i + 1
        # memory() is O(1) (ALEX keeps running byte totals), so the cap is checked after every insert.
        total_bytes = int(memory().total_bytes)
        if total_bytes > peak_bytes:
            peak_bytes = total_bytes
        if done % every == 0 or done == inserts.size:
            series["inserted"].append(done)
            series["total_bytes"].append(total_bytes)
            series["shifts"].append(int(alex.counters.shifts))
            series["elapsed_s"].append(elapsed)
        if cap is not None and inserts_until_cap is None and total_bytes > cap:
            inserts_until_cap = done
            if stop_at_cap:
                stopped_by = "memory cap"
                break
        if total_bytes > safety_cap_bytes:
            stopped_by = "safety cap"
            break
    if series["inserted"][-1] != done:
        series["inserted"].append(done)
        series["total_bytes"].append(total_bytes)
        series["shifts"].append(int(alex.counters.shifts))
        series["elapsed_s"].append(elapsed)
    final = alex.memory()
    final_bytes = int(final.total_bytes)
    counters = _counters(alex)
    times = per_insert_s[:done]
    return {
        "label": label,
        "n_bulk": int(len(bulk_keys)),
        "planned_inserts": int(inserts.size),
        "inserted": done,
        "stopped_by": stopped_by,
        "bulk_load_s": bulk_load_s,
        "initial_bytes": initial_bytes,
        "final_bytes": final_bytes,
        "peak_bytes": max(peak_bytes, final_bytes),
        "final_data_bytes": int(final.data_bytes),
        "final_index_bytes": int(final.index_bytes),
        "bytes_per_insert": (final_bytes - initial_bytes) / done if done else 0.0,
        "memory_ratio": final_bytes / initial_bytes if initial_bytes else None,
        "memory_cap": cap,
        "inserts_until_cap": inserts_until_cap,
        **counters,
        "shifts_per_insert": counters["shifts"] / done if done else 0.0,
        "search_steps_per_insert": counters["search_steps"] / done if done else 0.0,
        "insert_s_total": float(times.sum()),
        "ns_per_insert": float(times.mean() * 1e9) if done else 0.0,
        "ns_per_insert_p50": float(np.percentile(times, 50) * 1e9) if done else 0.0,
        "ns_per_insert_p99": float(np.percentile(times, 99) * 1e9) if done else 0.0,
        "depth": int(alex.depth()),
        "data_nodes": int(alex.num_data_nodes()),
        "internal_nodes": int(alex.num_internal_nodes()),
        # Inserts the hot-slot guard sent to its overflow (None for a plain ALEX).
        "diverted": getattr(alex, "diverted", None),
        "series": series,
    }


def _compare(row: dict[str, Any], legit: dict[str, Any]) -> dict[str, Any]:
    """The attack-vs-legitimate ratios of one row (legit rows compare with themselves: all 1)."""
    return {
        "memory_amplification": _safe_div(row["bytes_per_insert"], legit["bytes_per_insert"]),
        "memory_ratio_vs_legit": _safe_div(row["memory_ratio"] or 0.0, legit["memory_ratio"] or 0.0),
        "shift_slowdown": _safe_div(row["shifts_per_insert"], legit["shifts_per_insert"]),
        "time_slowdown": _safe_div(row["ns_per_insert"], legit["ns_per_insert"]),
        "search_slowdown": _safe_div(row["search_steps_per_insert"], legit["search_steps_per_insert"]),
    }


def check_names(attacks: Sequence[str], mitigations: Sequence[str]) -> None:
    """Raise ValueError naming the first unknown attack or mitigation and the valid choices."""
    for attack in attacks:
        if attack not in ALL_ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; choose from {', '.join(ALL_ATTACKS)}")
    for mitigation in mitigations:
        if mitigation not in MITIGATIONS:
            raise ValueError(f"unknown mitigation {mitigation!r}; choose from {', '.join(MITIGATIONS)}")


def run_experiment(dataset: str, n_bulk: int, n_inserts: int, attacks: Sequence[str] = ATTACKS,
                   mitigations: Sequence[str] = ("none", "duplicate_aware", "max_retrains", "guard"), *,
                   seed: int = 0, cap_factor: float = 2.0, keep_series: bool = False, progress: bool = False,
                   bulk_keys: np.ndarray | None = None, legit_keys: np.ndarray | None = None,
                   attack_kwargs: dict[str, dict] | None = None,
                   mitigation_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of measurements per (mitigation, workload) for data set ``dataset``, each a plain dict.

    For every mitigation the legitimate workload (``attack="legit"``) runs first, then each attack, crafted
    white-box against that same configuration (an attacker who knows the defence). Every row carries the ratios
    against that legit row; the memory cap is ``cap_factor`` times the bulk-loaded size. ``bulk_keys`` replaces
    the generated data set (e.g. a real file from :func:`.datasets.load_keys`) and ``legit_keys`` the generated
    legitimate workload; with both given, ``dataset`` is only a label.
    """
    check_names(attacks, mitigations)
    bulk = make_dataset(dataset, n_bulk, seed) if bulk_keys is None else np.asarray(bulk_keys, dtype=np.float64)
    if legit_keys is None:
        legit_keys = make_attack("legit", None, bulk, n_inserts, dataset=dataset, seed=seed)
    rows: list[dict[str, Any]] = []
    for mitigation in mitigations:
        factory = alex_factory(mitigation, **(mitigation_kwargs or {}))
        common = {"dataset": dataset, "mitigation": mitigation, "seed": seed, "n_inserts": int(n_inserts)}
        legit = measure(factory, bulk, legit_keys, cap_factor=cap_factor, stop_at_cap=False, progress=progress,
                        label=f"{dataset}/{mitigation}/legit")
        legit.update(common, attack="legit", attack_s=0.0)
        rows.append(legit)
        for attack in attacks:
            t0 = time.perf_counter()
            keys = make_attack(attack, factory, bulk, n_inserts, dataset=dataset, seed=seed, progress=progress,
                               **(attack_kwargs or {}).get(attack, {}))
            attack_s = time.perf_counter() - t0
            # No replay stops at the cap: we record when it was passed and go on until the budget is spent or
            # the index fails (AlexOutOfMemory at memory_limit_bytes), so a mitigation's effect shows in the
            # final memory as well as in the inserts until the cap.
            row = measure(factory, bulk, keys, cap_factor=cap_factor, stop_at_cap=False, progress=progress,
                          label=f"{dataset}/{mitigation}/{attack}")
            row.update(common, attack=attack, attack_s=attack_s)
            rows.append(row)
        for row in rows:
            if row["mitigation"] == mitigation:
                row.update(_compare(row, legit))
    if not keep_series:
        for row in rows:
            row.pop("series", None)
    return rows
