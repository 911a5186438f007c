"""Fanout selection with the ALEX cost model (a simplified ``alex_fanout_tree.h``).

The C++ fanout tree evaluates, for a node holding sorted keys, the cost of splitting its key
space into ``2**k`` equal model buckets for k = 0, 1, 2, ...: every bucket becomes a data node
whose expected cost (search iterations + shifts, see ``costmodel``) is weighted by its share of
keys, plus a traversal/model-size term. It stops once the cost keeps growing, and then merges
sibling buckets bottom-up where that is cheaper.

Faithful parts: per-level models are the node's least-squares CDF model scaled to ``2**k``
buckets (so level k-1 buckets are unions of level-k sibling pairs, as in the C++ tree); bucket
costs are the expected data-node costs at ``init_density``; buckets too big for one data node
pay one extra ``kNodeLookupsWeight``; sibling pairs are merged bottom-up when
``cost_l*n_l/n + cost_r*n_r/n - cost_parent + kModelSizeWeight*sizeof(data node)*total/n >= 0``
or when the pair is empty (``merge_nodes_upwards``).

Simplifications (stated so results can be read accordingly):

* the level cost is ``sum(cost_i * n_i / n) + kNodeLookupsWeight
  + kModelSizeWeight * 2**k * (data node header + pointer) * total_keys / n``;
* the search stops after two consecutive levels that do not improve on the best cost, and tries
  at most 2**20 buckets;
* the fail-1 decision (``split_beats_expand``) compares just "one retrained node" with "two
  nodes split by the parent's model" (C++ runs the same fanout tree with max fanout 2).
"""

from __future__ import annotations

import numpy as np

from .costmodel import (
    DATA_NODE_HEADER_BYTES,
    EXP_SEARCH_ITERATIONS_WEIGHT,
    MODEL_SIZE_WEIGHT,
    NODE_LOOKUPS_WEIGHT,
    POINTER_BYTES,
    SHIFTS_WEIGHT,
    estimate_node_cost,
    fit_linear,
    predict_positions,
)

MAX_BULK_LOAD_DEPTH = 20  # cap on log2(fanout) tried at bulk load
PATIENCE_LEVELS = 2


def bucket_bounds(keys: np.ndarray, slope: float, intercept: float, fanout: int) -> np.ndarray:
    """Start offsets (length fanout+1) of each bucket's keys in sorted ``keys``."""
    buckets = predict_positions(keys, slope, intercept, fanout)
    return np.searchsorted(buckets, np.arange(fanout + 1), side="left")


def model_for_fanout(keys: np.ndarray, fanout: int) -> tuple[float, float]:
    """Model-node model: least-squares CDF of ``keys`` scaled to ``fanout`` buckets."""
    n = len(keys)
    slope, intercept = fit_linear(keys)
    scale = fanout / n if n else 0.0
    return slope * scale, intercept * scale


def segment_costs(keys: np.ndarray, bounds: np.ndarray, density: float) -> np.ndarray:
    """Expected data-node cost of every segment ``keys[bounds[i]:bounds[i+1]]`` (0 when empty).

    Vectorised version of ``estimate_node_cost`` over all segments at once: per-segment least
    squares, model-based placement (segmented running maximum) and the expected
    iterations/shifts accumulator.
    """
    counts = np.diff(bounds)
    costs = np.zeros(len(counts))
    nonempty = counts > 0
    if not nonempty.any():
        return costs
    starts = bounds[:-1][nonempty].astype(np.int64)
    cnt = counts[nonempty].astype(np.int64)
    lo, hi = int(starts[0]), int(starts[-1] + cnt[-1])
    seg_keys = keys[lo:hi]
    starts = starts - lo
    n = hi - lo
    num_segments = len(cnt)
    seg_id = np.repeat(np.arange(num_segments), cnt)
    local_rank = np.arange(n, dtype=np.int64) - np.repeat(starts, cnt)
    mean = np.add.reduceat(seg_keys, starts) / cnt
    xc = seg_keys - mean[seg_id]
    rank_mean = (cnt - 1) / 2.0
    yc = local_rank - rank_mean[seg_id]
    sxx = np.add.reduceat(xc * xc, starts)
    sxy = np.add.reduceat(xc * yc, starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
    intercept = rank_mean - slope * mean
    capacity = np.maximum((cnt / density).astype(np.int64), cnt + 1)
    scale = capacity / cnt
    slope *= scale
    intercept *= scale
    raw = seg_keys * slope[seg_id] + intercept[seg_id]
    np.clip(raw, 0, (capacity - 1)[seg_id], out=raw)
    predicted = raw.astype(np.int64)
    # Segmented running maximum: lift each segment above all previous ones.
    lift = np.int64(2 * (int(capacity.max()) + n + 1)) * seg_id
    actual = np.maximum.accumulate(predicted - local_rank + lift) - lift + local_rank
    np.minimum(actual, (capacity - cnt)[seg_id] + local_rank, out=actual)
    iterations = np.add.reduceat(np.log2(np.abs(predicted - actual) + 1.0), starts) / cnt
    region_start = np.ones(n, dtype=np.bool_)
    region_start[1:] = (np.diff(actual) > 1) | (local_rank[1:] == 0)
    region_index = np.flatnonzero(region_start)
    run = np.diff(np.append(region_index, n))
    shifts = np.bincount(seg_id[region_index], weights=(run * run // 4).astype(np.float64),
                         minlength=num_segments) / cnt
    costs[nonempty] = EXP_SEARCH_ITERATIONS_WEIGHT * iterations + SHIFTS_WEIGHT * shifts
    return costs


def _level(keys, depth, density, total_keys, max_node_keys):
    n = len(keys)
    fanout = 1 << depth
    slope, intercept = model_for_fanout(keys, fanout)
    bounds = bucket_bounds(keys, slope, intercept, fanout)
    counts = np.diff(bounds)
    costs = segment_costs(keys, bounds, density)
    # Too big for one data node: it will need one more level.
    costs = costs + np.where(counts > max_node_keys, NODE_LOOKUPS_WEIGHT, 0.0)
    footprint = DATA_NODE_HEADER_BYTES + POINTER_BYTES
    total = float((costs * counts).sum()) / n + NODE_LOOKUPS_WEIGHT + MODEL_SIZE_WEIGHT * fanout * footprint * total_keys / n
    return total, slope, intercept, bounds, costs, counts


def best_bulk_load_fanout(keys: np.ndarray, total_keys: int, density: float, max_fanout: int,
                          max_node_keys: int, must_split: bool):
    """Fanout tree for a node over sorted ``keys``.

    Returns ``(depth, slope, intercept, children)``; ``children`` lists ``(first bucket, log2 of
    pointer count, key start, key end)`` after bottom-up merging; depth 0 means "make a data
    node" (never returned when ``must_split``).
    """
    n = len(keys)
    best_cost = np.inf if must_split else float(segment_costs(keys, np.array([0, n]), density)[0])
    levels = {}
    best_depth = 0
    misses = 0
    max_depth = min(MAX_BULK_LOAD_DEPTH, max(1, int(max_fanout).bit_length() - 1))
    for depth in range(1, max_depth + 1):
        levels[depth] = level = _level(keys, depth, density, total_keys, max_node_keys)
        if level[0] < best_cost:
            best_cost, best_depth, misses = level[0], depth, 0
        else:
            misses += 1
            if misses >= PATIENCE_LEVELS and best_depth > 0:
                break
        if (1 << depth) >= 4 * n:
            break
    if best_depth == 0:
        if not must_split:
            return 0, 0.0, 0.0, []
        best_depth = 1
    _, slope, intercept, bounds, _, _ = levels[best_depth]
    # Bottom-up merging of sibling buckets (fanout_tree::merge_nodes_upwards).
    used = {best_depth: np.ones(1 << best_depth, dtype=np.bool_)}
    size_saving = MODEL_SIZE_WEIGHT * DATA_NODE_HEADER_BYTES * total_keys
    for depth in range(best_depth, 0, -1):
        parent_costs = levels[depth - 1][4] if depth > 1 else segment_costs(keys, np.array([0, n]), density)
        parent_counts = levels[depth - 1][5] if depth > 1 else np.array([n])
        child_costs, child_counts = levels[depth][4], levels[depth][5]
        use = used[depth]
        pair_used = use[0::2] & use[1::2]
        with np.errstate(divide="ignore", invalid="ignore"):
            saving = ((child_costs[0::2] * child_counts[0::2] + child_costs[1::2] * child_counts[1::2])
                      / parent_counts - parent_costs + size_saving / parent_counts)
        merge = pair_used & ((parent_counts == 0) | (saving >= 0))
        if depth == 1:
            merge[:] = False  # keep at least two children
        use[0::2] &= ~merge
        use[1::2] &= ~merge
        used[depth - 1] = merge
        if not merge.any():
            break
    children = []
    for depth, use in used.items():
        shift = best_depth - depth
        level_bounds = bounds[:: 1 << shift]
        for i in np.flatnonzero(use).tolist():
            children.append((i << shift, shift, int(level_bounds[i]), int(level_bounds[i + 1])))
    children.sort()
    return best_depth, slope, intercept, children


def split_beats_expand(keys: np.ndarray, split_at: int, density: float, total_keys: int) -> bool:
    """Fanout-tree decision for a node with significant cost deviation (max fanout 2).

    Compares one retrained node over all keys with two nodes split at ``split_at``.
    """
    n = len(keys)
    if n == 0 or split_at in (0, n):
        # The split would not separate anything; C++ still costs it, the two-node cost is the
        # one-node cost plus the model-size term, so expanding wins.
        return False
    one = estimate_node_cost(keys, density)
    bounds = np.array([0, split_at, n])
    two = float((segment_costs(keys, bounds, density) * np.diff(bounds)).sum()) / n
    two += MODEL_SIZE_WEIGHT * 2 * (DATA_NODE_HEADER_BYTES + POINTER_BYTES) * total_keys / n
    return two < one
