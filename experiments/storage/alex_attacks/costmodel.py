"""Linear models, model-based placement and the ALEX cost model.

Everything here works on sorted numpy key arrays and is vectorised, because it runs on whole data
nodes (up to ~1M keys) during bulk load, expansion and splits.

Faithful to microsoft/ALEX (``alex_base.h`` / ``alex_nodes.h``):

* ``fit_linear`` is the least-squares ``LinearModelBuilder``: keys -> rank; all-equal keys give
  slope 0 and intercept = mean rank; a single key gives slope 0, intercept = rank sum.
* ``place_keys`` is model-based insertion: each key goes to ``max(predicted, previous + 1)`` and,
  once the remaining slots are fewer than the remaining keys, the rest are packed at the end.
* ``expected_iterations_and_shifts`` is ``ExpectedIterationsAndShiftsAccumulator``: mean of
  ``log2(|predicted - actual| + 1)`` and, for every maximal run of contiguous occupied slots of
  length L, ``L*L // 4`` expected shifts, averaged over the keys.
* Cost weights are the C++ constants; the expected data-node cost is
  ``kExpSearchIterationsWeight * iterations + kShiftsWeight * shifts * insert_fraction``.
"""

from __future__ import annotations

import numpy as np

# Cost-model weights from alex_base.h.
EXP_SEARCH_ITERATIONS_WEIGHT = 20.0
SHIFTS_WEIGHT = 0.5
NODE_LOOKUPS_WEIGHT = 20.0
MODEL_SIZE_WEIGHT = 5e-7

# Byte sizes used for memory accounting, following the C++ object layout on x86-64.
POINTER_BYTES = 8
LINEAR_MODEL_BYTES = 16  # two doubles (a, b)
# AlexModelNode: vtable, is_leaf/duplication_factor/level, model, cost, num_children, children ptr.
MODEL_NODE_HEADER_BYTES = 8 + 8 + LINEAR_MODEL_BYTES + 8 + 8 + 8
# AlexDataNode: base fields plus ~30 scalar members (capacities, counters, thresholds, min/max key,
# sibling pointers, array pointers, expected-cost statistics).
DATA_NODE_HEADER_BYTES = 8 + 8 + LINEAR_MODEL_BYTES + 8 + 200


def fit_linear(keys: np.ndarray) -> tuple[float, float]:
    """Least-squares line through (key, rank) for sorted ``keys``; returns (slope, intercept)."""
    n = len(keys)
    if n <= 1:
        return 0.0, 0.0  # C++: a = 0, b = sum of ranks (0 for one key)
    ranks = np.arange(n, dtype=np.float64)
    key_mean = float(keys.mean())
    centered = keys - key_mean
    denominator = float(np.dot(centered, centered))
    rank_mean = (n - 1) / 2.0
    if denominator == 0.0 or not np.isfinite(denominator):
        # All keys equal: C++ sets a = 0, b = mean rank.
        return 0.0, rank_mean
    slope = float(np.dot(centered, ranks - rank_mean)) / denominator
    return slope, rank_mean - slope * key_mean


def predict_positions(keys: np.ndarray, slope: float, intercept: float, size: int) -> np.ndarray:
    """Vectorised ``clamp(int(slope*key + intercept), 0, size-1)``, identical to the scalar path."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to +-inf clamps like the scalar path
        raw = keys * slope + intercept
        np.clip(raw, 0, size - 1, out=raw)
        return raw.astype(np.int64)


def place_keys(predicted: np.ndarray, capacity: int) -> np.ndarray:
    """Model-based insertion positions for keys whose (sorted-order) predictions are ``predicted``."""
    n = len(predicted)
    if n == 0:
        return predicted.astype(np.int64)
    order = np.arange(n, dtype=np.int64)
    # actual[i] = max(pred[i], actual[i-1] + 1)  <=>  actual[i] - i = cummax(pred[i] - i)
    actual = np.maximum.accumulate(predicted - order) + order
    # Once the tail cannot fit, the remaining keys are packed against the end of the array.
    np.minimum(actual, capacity - n + order, out=actual)
    return actual


def expected_iterations_and_shifts(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """Expected exponential-search iterations and shifts per key for a model-based layout."""
    n = len(actual)
    if n == 0:
        return 0.0, 0.0
    iterations = float(np.log2(np.abs(predicted - actual) + 1.0).mean())
    starts = np.flatnonzero(np.diff(actual) > 1) + 1
    bounds = np.concatenate(([0], starts, [n]))
    run_lengths = np.diff(bounds)
    shifts = float((run_lengths * run_lengths // 4).sum()) / n
    return iterations, shifts


def data_node_cost(iterations: float, shifts: float, insert_fraction: float = 1.0) -> float:
    """Expected cost of a data node, as AlexDataNode::compute_expected_cost."""
    return EXP_SEARCH_ITERATIONS_WEIGHT * iterations + SHIFTS_WEIGHT * shifts * insert_fraction


def capacity_for(num_keys: int, density: float) -> int:
    """Data capacity for ``num_keys`` at ``density``: max(int(n / density), n + 1) as in C++."""
    return max(int(num_keys / density), num_keys + 1)


def build_layout(keys: np.ndarray, capacity: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Train a model on sorted ``keys`` scaled to ``capacity`` and place the keys.

    Returns (slope, intercept, predicted positions, actual positions).
    """
    n = len(keys)
    slope, intercept = fit_linear(keys)
    if n > 0:
        scale = capacity / n
        slope *= scale
        intercept *= scale
    predicted = predict_positions(keys, slope, intercept, capacity)
    actual = place_keys(predicted, capacity)
    return slope, intercept, predicted, actual


def estimate_node_cost(keys: np.ndarray, density: float, insert_fraction: float = 1.0) -> float:
    """Expected cost of a data node built from sorted ``keys`` at ``density`` (fanout-tree leaf cost)."""
    if len(keys) == 0:
        return 0.0
    capacity = capacity_for(len(keys), density)
    _, _, predicted, actual = build_layout(keys, capacity)
    iterations, shifts = expected_iterations_and_shifts(predicted, actual)
    return data_node_cost(iterations, shifts, insert_fraction)


def gap_filled_keys(keys: np.ndarray, positions: np.ndarray, capacity: int) -> np.ndarray:
    """Slot array where each gap holds the next real key (ALEX convention), +inf after the last key."""
    out = np.full(capacity, np.inf, dtype=np.float64)
    n = len(keys)
    if n == 0:
        return out
    # Slot s in (positions[i-1], positions[i]] holds keys[i].
    run = np.diff(positions, prepend=-1)
    filled = np.repeat(keys, run)
    out[: len(filled)] = filled
    return out
