"""The three algorithmic-complexity attacks on ALEX (Yang et al., VLDB 2024) as insert-sequence generators.

Each attack is white-box: the attacker knows the bulk-loaded keys and the index code, so it rebuilds the index
locally (``alex_factory()`` + ``bulk_load``) and plans on that copy. Every generator returns the adversarial
insert sequence as a float64 array, to be replayed against a fresh index by :func:`~.experiment.measure`.

* :func:`space_attack` (space ACA on data nodes): ALEX keeps each data node's keys in a gapped array sized at
  ``init_density`` and grows it (to ``min_density``) once ``max_density`` is reached; an insert that tips a node
  over that threshold buys a whole array's worth of gaps. For every data node we *simulate* feeding it keys that
  follow its own key distribution (so the model keeps fitting and ALEX expands or splits rather than failing),
  record the exact memory after each insert, and keep the insert counts right after a jump as the node's
  options. A multiple-choice knapsack over the nodes (:mod:`.knapsack`) then spends the insert budget where the
  bytes per inserted key are highest. ``space_packed`` (ours, beyond the paper) adds, for the largest nodes,
  options that pack keys where they shift most, tripping the catastrophic-cost splits.
* :func:`oom_attack` (space ACA on internal nodes): copies of a single key. No model can separate equal keys, so
  every catastrophic-cost split (or expansion) leaves all of them in one node again, while sideways splits keep
  doubling the parent's fanout (up to 2**21 pointers) and downward splits add levels. We probe a few candidate
  keys on copies of the index and keep the one whose copies grow memory fastest.
* :func:`time_attack` (time ACA): tightly packed runs of keys (bisected gaps, or adjacent float64 values via
  ``np.nextafter``) placed where the closest gap is farthest, in the densest stretches of the data nodes. The
  linear model maps a whole run to the same slot, so every insert lands on an occupied slot and shifts the
  ever-growing block to the closest gap; retraining cannot help because no linear model separates keys one ulp
  apart from their neighbours. The white-box attacker simulates a greedy plan and a few blind run lengths and
  keeps the one with the most shifts.
* :func:`legit_workload`: the legitimate baseline of the same size (:func:`.datasets.legit_inserts`).
"""

from __future__ import annotations

import contextlib
import copy
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .datasets import legit_inserts
from .knapsack import solve_mck

__all__ = ["ATTACKS", "ALL_ATTACKS", "SpacePlan", "space_attack", "plan_space_attack", "oom_attack", "time_attack",
           "legit_workload", "make_attack", "stored_keys", "structural_events"]

ATTACKS: tuple[str, ...] = ("space", "oom", "time")  # the paper's three
# Ours on top: the space attack allowed to pack keys into big nodes (catastrophic splits) as well as expand them.
ALL_ATTACKS: tuple[str, ...] = (*ATTACKS, "space_packed")

AlexFactory = Callable[[], Any]


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def stored_keys(node: Any) -> np.ndarray:
    """The keys a data node actually holds (sorted), read through its occupancy bitmap."""
    keys = np.asarray(node.keys, dtype=np.float64)
    bitmap = np.asarray(node.bitmap)
    if bitmap.dtype == bool and bitmap.shape == keys.shape:
        return keys[bitmap]
    # Fallback for a packed bitmap: ALEX fills each gap with its right neighbour's key, so the distinct finite
    # values are exactly the stored keys (duplicates collapse, which the callers here do not mind).
    return np.unique(keys[np.isfinite(keys)])


def structural_events(alex: Any) -> int:
    """A counter that moves whenever the index may have changed size (memory changes only at these events)."""
    c = alex.counters
    return int(c.expansions) + int(c.sideways_splits) + int(c.downward_splits) + int(c.catastrophic_triggers)


def _total_bytes(alex: Any) -> int:
    return int(alex.memory().total_bytes)


def _bulk_loaded(alex_factory: AlexFactory, bulk_keys: np.ndarray) -> Any:
    alex = alex_factory()
    alex.bulk_load(np.asarray(bulk_keys, dtype=np.float64))
    return alex


def _keys_following(keys: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` new keys strictly inside ``keys``' range, spread like ``keys`` (interpolated empirical CDF).

    Keeping the node's own distribution means its linear model stays accurate, so ALEX grows the node by the
    cheap, predictable route (expansion / split at the cost model's will) rather than by a catastrophic event,
    and the inserted keys land on gaps (no shifts: the space attack is also stealthy in time).
    """
    if keys.size < 2 or k <= 0:
        return np.empty(0, dtype=np.float64)
    u = (np.arange(k) + rng.uniform(0.05, 0.95, k)) / k * (keys.size - 1)
    j = np.minimum(u.astype(np.int64), keys.size - 2)
    frac = u - j
    cand = keys[j] + frac * (keys[j + 1] - keys[j])
    ok = (cand > keys[j]) & (cand < keys[j + 1])
    cand = np.unique(cand[ok])
    cand = cand[~np.isin(cand, keys)]
    return rng.permutation(cand)


@dataclass
class SpacePlan:
    """The space attack's plan: the inserts, and what the simulation predicted for them."""

    inserts: np.ndarray
    planned_gain_bytes: float
    budget: int
    nodes_attacked: int
    nodes_total: int
    nodes_by_family: dict[str, int] = field(default_factory=dict)
    options: list[list[tuple[int, float]]] = field(repr=False, default_factory=list)


def _record_jumps(sim: Any, next_key: Callable[[int], float | None], limit: int,
                  stop_above_bytes: float) -> tuple[list[tuple[int, float]], np.ndarray]:
    """Insert up to ``limit`` keys from ``next_key(i)`` into ``sim``; return the memory jumps and the keys.

    A jump ``(i, gain)`` means: after the first ``i`` keys the index holds ``gain`` more bytes than before, a new
    high. Only those counts are worth buying; any other count is dominated by the jump before it.
    """
    base = _total_bytes(sim)
    jumps: list[tuple[int, float]] = []
    keys = np.empty(limit, dtype=np.float64)
    best_gain = 0.0
    done = 0
    while done < limit:
        key = next_key(done)
        if key is None:
            break
        sim.insert(key)
        keys[done] = key
        done += 1
        gain = float(_total_bytes(sim) - base)
        if gain > best_gain:
            best_gain = gain
            jumps.append((done, gain))
        if base + gain > stop_above_bytes:
            break
    return jumps, keys[:done]


def _prune_options(jumps: list[tuple[int, float]], keep: int) -> list[tuple[int, float]]:
    """At most ``keep`` options: the best bytes per key, plus the largest gain (the DP table stays small)."""
    if len(jumps) <= keep:
        return jumps
    ranked = sorted(jumps, key=lambda wv: wv[1] / wv[0], reverse=True)[: keep - 1]
    return sorted(set(ranked) | {max(jumps, key=lambda wv: wv[1])})


def plan_space_attack(alex_factory: AlexFactory, bulk_keys: np.ndarray, budget: int, *, max_growth: float = 0.6,
                      packed: bool = False, packed_nodes: int = 32, packed_min_keys: int = 64,
                      packed_limit: int = 1024, max_options_per_node: int = 8, backend: str = "dp", seed: int = 0,
                      progress: bool = False) -> SpacePlan:
    """Plan the space ACA on data nodes: per-node options by exact simulation, then multiple-choice knapsack.

    Two families of options per data node, each simulated on its own copy of the index:

    * ``expand`` (the paper's): keys that follow the node's own distribution, so it grows by expansions at
      ``max_density`` (and the splits the cost model picks). ``max_growth`` bounds the simulated inserts to that
      fraction of the node's keys (0.6 covers two expansions: 0.7 -> 0.8, then 0.6 -> 0.8).
    * ``packed`` (beyond the paper, only with ``packed=True``; attack name ``space_packed``): for the ``packed_nodes`` largest nodes (at least
      ``packed_min_keys`` keys), up to ``packed_limit`` keys packed where they shift most (as the time attack),
      which trips the catastrophic-cost check and its splits; this is the only way to grow a big node whose
      expansion needs more keys than the budget.

    The knapsack takes at most one option per node. Nodes are simulated one after the other on a shared copy;
    inserts into one node only change its subtree and, through sideways splits, its parent, so the measured
    gains are what the replay sees up to those parent effects (:func:`measure` reports the real outcome).
    """
    rng = np.random.default_rng([seed, 0x5ACE])
    budget = int(budget)
    expand_sim = _bulk_loaded(alex_factory, bulk_keys)
    initial = _total_bytes(expand_sim)
    stop_above = initial + max(16 << 20, 4 * initial)  # keep the simulation's real RAM bounded
    leaf_keys = [stored_keys(node) for node in expand_sim.leaves()]
    groups: list[list[tuple[int, float]]] = []
    choices_meta: list[list[tuple[str, np.ndarray]]] = []
    for keys in _progress(leaf_keys, progress, desc="space attack: simulating nodes", leave=False):
        limit = min(budget, int(np.ceil(max_growth * keys.size)) + 1)
        seq = _keys_following(keys, limit, rng)
        jumps, used = _record_jumps(expand_sim, lambda i, seq=seq: float(seq[i]) if i < seq.size else None,
                                    seq.size, stop_above)
        jumps = _prune_options(jumps, max_options_per_node)
        groups.append(list(jumps))
        choices_meta.append([("expand", used)] * len(jumps))
    if packed and budget > 0:
        packed_sim = _bulk_loaded(alex_factory, bulk_keys)
        order = sorted(range(len(leaf_keys)), key=lambda g: leaf_keys[g].size, reverse=True)
        targets = [g for g in order[:packed_nodes] if leaf_keys[g].size >= packed_min_keys]
        for g in _progress(targets, progress, desc="space attack: packed options", leave=False):
            follow = {"key": float(leaf_keys[g][leaf_keys[g].size // 2])}

            def next_packed(_i: int, follow=follow) -> float | None:
                # Stay on whichever leaf now holds the packed keys (splits move them).
                best = _best_landing(packed_sim.leaf_for(follow["key"]))
                if best is None:
                    return None
                follow["key"] = best[1]
                return best[1]

            try:
                jumps, used = _record_jumps(packed_sim, next_packed, min(budget, packed_limit), stop_above)
            except MemoryError:
                break  # the simulated index gave out; keep the options found so far
            jumps = _prune_options(jumps, max_options_per_node)
            groups[g].extend(jumps)
            choices_meta[g].extend([("packed", used)] * len(jumps))
    solution = solve_mck(groups, budget, backend=backend) if budget > 0 else None
    parts: list[np.ndarray] = []
    by_family: dict[str, int] = {"expand": 0, "packed": 0}
    if solution is not None:
        for g, choice in enumerate(solution.choices):
            if choice is not None:
                count = groups[g][choice][0]
                family, keys = choices_meta[g][choice]
                parts.append(keys[:count])
                by_family[family] += 1
    inserts = np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)
    return SpacePlan(inserts=inserts.astype(np.float64), planned_gain_bytes=solution.value if solution else 0.0,
                     budget=budget, nodes_attacked=sum(by_family.values()), nodes_total=len(groups),
                     nodes_by_family=by_family, options=groups)


def space_attack(alex_factory: AlexFactory, bulk_keys: np.ndarray, budget: int, **kwargs: Any) -> np.ndarray:
    """The space ACA on data nodes: at most ``budget`` inserts that maximise the index's memory growth."""
    return plan_space_attack(alex_factory, bulk_keys, budget, **kwargs).inserts


def _oom_candidates(alex: Any, count: int, rng: np.random.Generator) -> list[float]:
    """Keys worth probing for the duplicate attack: existing keys of small, large and random data nodes."""
    leaves = [stored_keys(node) for node in alex.leaves()]
    leaves = [k for k in leaves if k.size]
    if not leaves:
        return []
    sizes = np.array([k.size for k in leaves])
    picks = {int(np.argmin(sizes)), int(np.argmax(sizes)), 0, len(leaves) - 1}
    while len(picks) < min(count, len(leaves)):
        picks.add(int(rng.integers(len(leaves))))
    return [float(leaves[i][leaves[i].size // 2]) for i in sorted(picks)]


def _probe_growth(alex: Any, key: float, inserts: int, cap_bytes: int) -> tuple[float, int]:
    """Insert copies of ``key`` into ``alex`` (mutated); return (bytes grown per insert, inserts done).

    An index that gives out during the probe (AlexOutOfMemory) is the best possible outcome: infinite rate.
    """
    base = _total_bytes(alex)
    done = 0
    grown = 0
    while done < inserts:
        try:
            alex.insert(key)
        except (MemoryError, ArithmeticError, ValueError):
            return float("inf"), done + 1
        done += 1
        grown = _total_bytes(alex) - base  # O(1): ALEX keeps running byte totals
        if base + grown > cap_bytes:
            break
    return grown / max(done, 1), done


def oom_attack(alex_factory: AlexFactory, bulk_keys: np.ndarray, n_inserts: int, *, candidates: int = 6,
               probe_inserts: int = 256, probe_cap_factor: float = 4.0, seed: int = 0,
               progress: bool = False) -> np.ndarray:
    """The space ACA on internal nodes: ``n_inserts`` copies of the one key whose copies blow memory up fastest.

    Each candidate key is probed with up to ``probe_inserts`` copies on its own copy of the index (stopping once
    memory passes ``probe_cap_factor`` times the bulk-loaded size, which also keeps the probe's real RAM small).
    """
    rng = np.random.default_rng([seed, 0x00A])
    base = _bulk_loaded(alex_factory, bulk_keys)
    cap = int(_total_bytes(base) * probe_cap_factor)
    best_key, best_rate = None, -1.0
    for key in _progress(_oom_candidates(base, candidates, rng), progress, desc="oom attack: probing keys",
                         leave=False):
        rate, _ = _probe_growth(copy.deepcopy(base), key, probe_inserts, cap)
        if rate > best_rate:
            best_key, best_rate = key, rate
    if best_key is None:
        best_key = float(np.median(bulk_keys)) if len(bulk_keys) else 0.0
    return np.full(int(n_inserts), best_key, dtype=np.float64)


def _densest_anchor(node: Any) -> float | None:
    """A stored key in the middle of the node's longest run of occupied slots (where shifts are dearest)."""
    bitmap = np.asarray(node.bitmap)
    keys = np.asarray(node.keys, dtype=np.float64)
    if bitmap.dtype != bool or bitmap.shape != keys.shape or not bitmap.any():
        held = stored_keys(node)
        return float(held[held.size // 2]) if held.size else None
    padded = np.concatenate(([0], bitmap.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[0::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    return float(keys[(starts[longest] + ends[longest] - 1) // 2])


def _consecutive_run(anchor: float, length: int, upper: float) -> np.ndarray:
    """``length`` consecutive float64 values just above ``anchor`` (below ``upper``), largest first.

    Largest first, so each new key is smaller than every key of the run already inserted: it lands on the
    run's first slot and the whole run must move.
    """
    run = np.empty(length, dtype=np.float64)
    x = anchor
    n = 0
    for n in range(length):
        x = np.nextafter(x, np.inf)
        if x >= upper:
            break
        run[n] = x
    else:
        n = length
    return run[:n][::-1].copy()


def _leaf_targets(alex: Any, count: int) -> Iterator[tuple[float, float]]:
    """(anchor key, next stored key) in the ``count`` largest data nodes, largest node first."""
    leaves = sorted(alex.leaves(), key=lambda node: int(node.num_keys), reverse=True)
    for node in leaves[:count]:
        anchor = _densest_anchor(node)
        if anchor is None:
            continue
        held = stored_keys(node)
        above = held[held > anchor]
        yield anchor, float(above[0]) if above.size else np.inf


def _slot_shift_costs(bitmap: np.ndarray) -> np.ndarray:
    """Shifts an insert landing on each slot would cost (ALEX moves the block to the closest gap, ties left)."""
    capacity = bitmap.size
    idx = np.arange(capacity)
    free = ~bitmap
    left_gap = np.maximum.accumulate(np.where(free, idx, -1))
    right_gap = np.minimum.accumulate(np.where(free, idx, capacity)[::-1])[::-1]
    left_dist = np.where(left_gap >= 0, idx - left_gap, capacity + 1)
    right_dist = np.where(right_gap < capacity, right_gap - idx, capacity + 1)
    # Going left, the key goes one slot before ``pos`` (C++: pos - 1), so the block moved is one shorter.
    return np.where(left_dist <= right_dist, left_dist - 1, right_dist)


def _best_landing(node: Any) -> tuple[int, float] | None:
    """(shifts, key) of the new key that would cost ``node`` the most shifts, or None if no key fits anywhere.

    A key strictly between two stored keys in adjacent occupied slots ``p-1``, ``p`` lands on ``p`` (the upper
    bound); we take the midpoint, so repeated picks pack keys ever tighter in the same gap (a run of
    consecutive keys, bisecting down to adjacent float64 values).
    """
    bitmap = np.asarray(node.bitmap)
    keys = np.asarray(node.keys, dtype=np.float64)
    if bitmap.size < 2:
        return None
    costs = _slot_shift_costs(bitmap)
    lower, upper = keys[:-1], keys[1:]
    with np.errstate(invalid="ignore"):  # +inf fills the slots after the last key
        mids = lower + (upper - lower) * 0.5
    usable = bitmap[:-1] & bitmap[1:] & (mids > lower) & (mids < upper)
    if not usable.any():
        return None
    score = np.where(usable, costs[1:], -1)
    p = int(np.argmax(score))
    return int(score[p]), float(mids[p])


def _greedy_time_attack(alex: Any, n_inserts: int, progress: bool) -> np.ndarray:
    """Each insert at the slot where it shifts the most (white-box, myopic), simulated on ``alex`` (mutated)."""
    heap: list[tuple[int, int, int]] = []  # (-shifts, tie-breaker, node id)
    state: dict[int, tuple[Any, float]] = {}  # node id -> (node, key); the node is kept alive so ids stay unique
    latest: dict[int, int] = {}  # node id -> serial of its current heap entry (older entries are stale)
    serial = 0

    def push(node: Any) -> None:
        nonlocal serial
        best = _best_landing(node)
        if best is None:
            state.pop(id(node), None)
            return
        serial += 1
        state[id(node)] = (node, best[1])
        latest[id(node)] = serial
        heapq.heappush(heap, (-best[0], serial, id(node)))

    for node in alex.leaves():
        push(node)
    out = np.empty(n_inserts, dtype=np.float64)
    events = structural_events(alex)
    done = 0
    for _ in _progress(range(n_inserts), progress, desc="time attack: greedy plan", leave=False):
        key = None
        while heap:
            _, s, nid = heapq.heappop(heap)
            if latest.get(nid) != s or nid not in state:
                continue  # stale entry
            node, candidate = state[nid]
            if alex.leaf_for(candidate) is not node:
                state.pop(nid, None)  # the node was split away since
                continue
            key = candidate
            break
        if key is None:
            break
        alex.insert(key)
        out[done] = key
        done += 1
        touched = [alex.leaf_for(key)]
        if structural_events(alex) != events:
            events = structural_events(alex)
            # A split replaces one leaf by neighbours; refresh the new ones around the key.
            for direction in ("prev_leaf", "next_leaf"):
                node = getattr(touched[0], direction, None)
                for _ in range(8):
                    if node is None:
                        break
                    touched.append(node)
                    node = getattr(node, direction, None)
        for node in touched:
            push(node)
    return out[:done]


def _runs_time_attack(alex: Any, n_inserts: int, run_length: int) -> np.ndarray:
    """Runs of ``run_length`` consecutive float64 keys after the densest key of each of the largest nodes."""
    n_runs = -(-n_inserts // run_length)
    targets = list(_leaf_targets(alex, n_runs))
    if not targets:
        return np.empty(0, dtype=np.float64)
    runs: list[np.ndarray] = []
    floor_of = {i: anchor for i, (anchor, _) in enumerate(targets)}
    total = 0
    i = 0
    while total < n_inserts:
        t = i % len(targets)
        run = _consecutive_run(floor_of[t], min(run_length, n_inserts - total), targets[t][1])
        if run.size == 0:
            if all(_consecutive_run(floor_of[s], 1, targets[s][1]).size == 0 for s in range(len(targets))):
                break  # every gap is used up (keys packed one ulp apart already)
            i += 1
            continue
        floor_of[t] = float(run[0])
        runs.append(run)
        total += run.size
        i += 1
    return np.concatenate(runs)[:n_inserts] if runs else np.empty(0, dtype=np.float64)


def _simulated_shifts(base: Any, keys: np.ndarray) -> float:
    """Counted shifts per insert when ``keys`` are replayed on a copy of ``base`` (an index that fails counts
    the inserts it managed)."""
    sim = copy.deepcopy(base)
    before = int(sim.counters.shifts)
    done = 0
    # An index that fails (AlexOutOfMemory, a NaN model) ends the replay; the inserts it took still count.
    with contextlib.suppress(MemoryError, ArithmeticError, ValueError):
        for key in keys:
            sim.insert(float(key))
            done += 1
    return (int(sim.counters.shifts) - before) / max(done, 1)


def time_attack(alex_factory: AlexFactory, bulk_keys: np.ndarray, n_inserts: int, *, strategy: str = "best",
                run_length: int = 512, run_lengths: tuple[int, ...] = (64, 512, 4096), seed: int = 0,
                progress: bool = False) -> np.ndarray:
    """The time ACA: ``n_inserts`` keys packed into the spots where ALEX must shift the most.

    ``strategy="greedy"`` simulates the index and sends each key to the slot whose closest gap is farthest,
    bisecting the gap between two stored keys, so the keys form tightly packed runs that the linear model maps
    to one slot; every insert then moves the whole growing block. ``strategy="runs"`` is the blind variant: runs
    of ``run_length`` adjacent float64 values (``np.nextafter``) right after a key in the densest stretch of each
    of the largest data nodes, largest key first so each insert lands in front of the run. ``strategy="best"``
    (default) builds the greedy sequence and the runs for each of ``run_lengths``, replays each on a copy of
    the index and keeps the one with the most counted shifts per insert (the attacker is white-box; the greedy
    choice is myopic, and a catastrophic split can make a blind run the better bet).
    """
    del seed  # deterministic given the index; kept for a uniform signature
    n_inserts = int(n_inserts)
    if n_inserts <= 0:
        return np.empty(0, dtype=np.float64)
    if strategy not in ("best", "greedy", "runs"):
        raise ValueError(f"unknown time attack strategy {strategy!r}; use 'best', 'greedy' or 'runs'")
    base = _bulk_loaded(alex_factory, bulk_keys)
    candidates: list[np.ndarray] = []
    if strategy in ("best", "greedy"):
        try:
            candidates.append(_greedy_time_attack(copy.deepcopy(base), n_inserts, progress))
        except (MemoryError, ArithmeticError, ValueError):
            pass  # the simulated index failed (packed keys behave like duplicates): fall back to runs
    if strategy == "runs" or (strategy == "greedy" and not candidates):
        return _runs_time_attack(copy.deepcopy(base), n_inserts, run_length)
    if strategy == "best":
        candidates += [_runs_time_attack(copy.deepcopy(base), n_inserts, length) for length in run_lengths]
    candidates = [c for c in candidates if c.size]
    if len(candidates) <= 1:
        return candidates[0] if candidates else np.empty(0, dtype=np.float64)
    scores = [_simulated_shifts(base, c) * c.size / n_inserts for c in candidates]
    return candidates[int(np.argmax(scores))]


def legit_workload(dataset: str, bulk_keys: np.ndarray, n_inserts: int, seed: int = 0) -> np.ndarray:
    """The legitimate baseline: ``n_inserts`` new keys from the data set's own distribution, random order."""
    return legit_inserts(dataset, bulk_keys, int(n_inserts), seed)


def make_attack(attack: str, alex_factory: AlexFactory, bulk_keys: np.ndarray, n_inserts: int, *,
                dataset: str | None = None, seed: int = 0, progress: bool = False, **kwargs: Any) -> np.ndarray:
    """The insert sequence of ``attack`` (one of :data:`ALL_ATTACKS` or ``legit``) for a bulk-loaded index."""
    if attack == "space":
        return space_attack(alex_factory, bulk_keys, n_inserts, seed=seed, progress=progress, **kwargs)
    if attack == "space_packed":
        kwargs.setdefault("packed", True)
        return space_attack(alex_factory, bulk_keys, n_inserts, seed=seed, progress=progress, **kwargs)
    if attack == "oom":
        return oom_attack(alex_factory, bulk_keys, n_inserts, seed=seed, progress=progress, **kwargs)
    if attack == "time":
        return time_attack(alex_factory, bulk_keys, n_inserts, seed=seed, progress=progress, **kwargs)
    if attack == "legit":
        if dataset is None:
            raise ValueError("the legit workload needs the data set name")
        return legit_workload(dataset, bulk_keys, n_inserts, seed)
    raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join((*ALL_ATTACKS, 'legit'))}")


def __getattr__(name: str) -> Any:
    # measure() and run_experiment() live in .experiment (which imports this module); reachable from here too.
    if name in ("measure", "run_experiment"):
        from . import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
