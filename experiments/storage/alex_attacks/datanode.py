"""ALEX data node: a gapped array of keys/payloads placed by a linear model.

Layout (as ``AlexDataNode`` in microsoft/ALEX with ``ALEX_DATA_NODE_SEP_ARRAYS``):

* ``keys``: float64 slots of length ``capacity``. Real keys are flagged in ``bitmap``; every gap
  holds a copy of the next real key to its right (+inf after the last real key), so the slot
  array is non-decreasing and searches run on the whole array without consulting the bitmap.
* ``payloads``: int64 slots (undefined in gaps).
* ``bitmap``: **unpacked** numpy bool array (one entry per slot). Memory accounting nevertheless
  charges the packed C++ size ``ceil(capacity / 64) * 8`` bytes.

Operations mirror the C++ node: lookups predict a slot and run an exponential search for the
upper bound; inserts go to the upper bound (after equal keys, duplicates allowed), and if that
slot is occupied the elements between it and the closest gap are shifted (ties go left). Before
inserting, the node checks every ``catastrophic_check_every`` inserts whether its cost is
catastrophic (``> catastrophic_shifts`` shifts per insert, empirical or expected), and when it
reaches ``expansion_threshold`` keys it either asks the tree to split (significant cost
deviation, catastrophic cost, or more than ``max_slots * min_density`` keys) or expands itself
to ``min_density`` (``resize``), retraining the model only when it holds fewer than 50 keys.

Search-step accounting: the exponential-search doublings are computed exactly (same comparisons
as C++); the binary-search steps are ``bit_length`` of the final search window. The position is
found with ``np.searchsorted`` on the (non-decreasing) slot array, which returns the same
upper bound the C++ search would.
"""

from __future__ import annotations

import math

import numpy as np

from .costmodel import (
    DATA_NODE_HEADER_BYTES,
    EXP_SEARCH_ITERATIONS_WEIGHT,
    NODE_LOOKUPS_WEIGHT,
    SHIFTS_WEIGHT,
    build_layout,
    capacity_for,
    data_node_cost,
    expected_iterations_and_shifts,
    fit_linear,
    gap_filled_keys,
    place_keys,
    predict_positions,
)

# Insert outcomes (first element of AlexDataNode::insert's result).
INSERT_OK = 0
FAIL_COST_DEVIATION = 1
FAIL_CATASTROPHIC = 2
FAIL_MAX_CAPACITY = 3

APPEND_MOSTLY_THRESHOLD = 0.9  # kAppendMostlyThreshold
RETRAIN_BELOW_KEYS = 50  # resize() retrains the model only for nodes with fewer keys than this
RETRAIN_WINDOW_INSERTS = 4096  # window for the max_retrains_per_node mitigation


class DataNode:
    """Leaf of the ALEX RMI. See the module docstring for the layout and rules."""

    __slots__ = (
        "keys", "payloads", "bitmap", "capacity", "num_keys", "slope", "intercept", "level",
        "min_key", "max_key", "duplication_factor", "config", "max_slots",
        "expansion_threshold", "contraction_threshold", "cost", "expected_avg_iterations",
        "expected_avg_shifts", "num_inserts", "num_lookups", "num_shifts", "num_exp_iterations",
        "num_resizes", "num_right_out_of_bounds", "num_left_out_of_bounds", "next_leaf",
        "prev_leaf", "split_blocked", "retrains_in_window", "inserts_in_window",
    )

    def __init__(self, config, level: int = 0) -> None:
        self.config = config
        self.level = level
        self.duplication_factor = 0
        self.max_slots = max(2, config.max_data_node_bytes // (config.key_bytes + config.payload_bytes))
        self.next_leaf: DataNode | None = None
        self.prev_leaf: DataNode | None = None
        self.split_blocked = False
        self.retrains_in_window = 0
        self.inserts_in_window = 0
        self._load(np.empty(0), np.empty(0, dtype=np.int64))

    # ----------------------------------------------------------------- building

    @classmethod
    def from_sorted(cls, config, keys: np.ndarray, payloads: np.ndarray, level: int = 0) -> DataNode:
        """Build a node from sorted keys at ``init_density`` (bulk_load / bulk_load_from_existing)."""
        node = cls(config, level)
        node._load(keys, payloads)
        return node

    def _load(self, keys: np.ndarray, payloads: np.ndarray) -> None:
        n = len(keys)
        capacity = capacity_for(n, self.config.init_density)
        slope, intercept, predicted, actual = build_layout(keys, capacity)
        self._install(keys, payloads, capacity, slope, intercept, actual)
        iterations, shifts = expected_iterations_and_shifts(predicted, actual)
        self.expected_avg_iterations = iterations
        self.expected_avg_shifts = shifts
        self.cost = data_node_cost(iterations, shifts)
        self.reset_stats()
        self.num_right_out_of_bounds = 0
        self.num_left_out_of_bounds = 0

    def _install(self, keys, payloads, capacity, slope, intercept, positions) -> None:
        self.capacity = capacity
        self.slope = slope
        self.intercept = intercept
        self.keys = gap_filled_keys(keys, positions, capacity)
        self.payloads = np.zeros(capacity, dtype=np.int64)
        self.payloads[positions] = payloads
        self.bitmap = np.zeros(capacity, dtype=np.bool_)
        self.bitmap[positions] = True
        self.num_keys = n = len(keys)
        self.min_key = float(keys[0]) if n else math.inf
        self.max_key = float(keys[-1]) if n else -math.inf
        cfg = self.config
        self.expansion_threshold = min(max(capacity * cfg.max_density, n + 1), capacity)
        self.contraction_threshold = capacity * cfg.min_density

    def reset_stats(self) -> None:
        self.num_inserts = 0
        self.num_lookups = 0
        self.num_shifts = 0
        self.num_exp_iterations = 0
        self.num_resizes = 0

    def sorted_items(self) -> tuple[np.ndarray, np.ndarray]:
        """The real keys and payloads in key order."""
        mask = self.bitmap
        return self.keys[mask], self.payloads[mask]

    def resize(self, target_density: float, force_retrain: bool = False, keep_left: bool = False,
               keep_right: bool = False) -> bool:
        """Re-place all keys model-based into ``num_keys / target_density`` slots (C++ resize).

        Returns whether the model was retrained.
        """
        n = self.num_keys
        if n == 0:
            return False
        keys, payloads = self.sorted_items()
        old_capacity = self.capacity
        new_capacity = max(int(n / target_density), n + 1)
        retrained = n < RETRAIN_BELOW_KEYS or force_retrain
        if retrained:
            slope, intercept = fit_linear(keys)
            if keep_left or keep_right:
                factor = old_capacity / n
            else:
                factor = new_capacity / n
            slope *= factor
            intercept *= factor
            if keep_right and not keep_left:
                intercept += new_capacity - old_capacity
        else:
            slope, intercept = self.slope, self.intercept
            if keep_right:
                intercept += new_capacity - old_capacity
            elif not keep_left:
                factor = new_capacity / old_capacity
                slope *= factor
                intercept *= factor
        predicted = predict_positions(keys, slope, intercept, new_capacity)
        actual = place_keys(predicted, new_capacity)
        self._install(keys, payloads, new_capacity, slope, intercept, actual)
        return retrained

    def refresh_expected_cost(self) -> None:
        """Recompute the expected cost statistics for the current layout and model."""
        keys, _ = self.sorted_items()
        predicted = predict_positions(keys, self.slope, self.intercept, self.capacity)
        actual = np.flatnonzero(self.bitmap)
        iterations, shifts = expected_iterations_and_shifts(predicted, actual)
        self.expected_avg_iterations = iterations
        self.expected_avg_shifts = shifts
        self.cost = data_node_cost(iterations, shifts)

    # ----------------------------------------------------------------- cost checks

    def shifts_per_insert(self) -> float:
        return self.num_shifts / self.num_inserts if self.num_inserts else 0.0

    def empirical_cost(self) -> float:
        operations = self.num_inserts + self.num_lookups
        if operations == 0:
            return 0.0
        insert_fraction = self.num_inserts / operations
        return (EXP_SEARCH_ITERATIONS_WEIGHT * self.num_exp_iterations / operations
                + SHIFTS_WEIGHT * self.shifts_per_insert() * insert_fraction)

    def significant_cost_deviation(self) -> bool:
        empirical = self.empirical_cost()
        return empirical > NODE_LOOKUPS_WEIGHT and empirical > 1.5 * self.cost

    def catastrophic_cost(self) -> bool:
        limit = self.config.catastrophic_shifts
        return self.shifts_per_insert() > limit or self.expected_avg_shifts > limit

    def is_append_mostly_right(self) -> bool:
        return self.num_inserts > 0 and self.num_right_out_of_bounds / self.num_inserts > APPEND_MOSTLY_THRESHOLD

    def is_append_mostly_left(self) -> bool:
        return self.num_inserts > 0 and self.num_left_out_of_bounds / self.num_inserts > APPEND_MOSTLY_THRESHOLD

    def triggers_enabled(self) -> bool:
        """False when a mitigation has disabled split/retrain triggers for this node."""
        if self.split_blocked:
            return False
        limit = self.config.max_retrains_per_node
        return limit is None or self.retrains_in_window < limit

    # ----------------------------------------------------------------- queries

    def predict(self, key: float) -> int:
        """Predicted slot for ``key``, clamped to [0, capacity-1] (predict_position)."""
        p = self.slope * key + self.intercept
        last = self.capacity - 1
        if p <= 0:
            return 0
        if p >= last:
            return last
        return int(p)

    def _search(self, key: float, counters) -> int:
        """Upper bound of ``key`` found as an exponential search from the prediction would."""
        m = self.predict(key)
        pos = int(self.keys.searchsorted(key, "right"))
        capacity = self.capacity
        if pos > m:  # keys[m] <= key: doubling to the right
            size = capacity - m
            distance = min(pos - m, size)
            doublings = (distance - 1).bit_length()
            bound = 1 << doublings
            window = min(bound, size) - (bound >> 1)
        else:  # keys[m] > key: doubling to the left
            size = m
            distance = min(m - pos, size - 1)
            doublings = distance.bit_length() if distance > 0 else 0
            bound = 1 << doublings
            window = min(bound, size) - (bound >> 1)
        self.num_exp_iterations += doublings
        counters.search_steps += doublings + (window.bit_length() if window > 0 else 0)
        return pos

    def find(self, key: float, counters) -> int:
        """Slot holding ``key`` (the last equal one), or -1 (find_key)."""
        self.num_lookups += 1
        pos = self._search(key, counters) - 1
        if pos < 0 or self.keys[pos] != key:
            return -1
        return pos

    def lower_bound(self, key: float) -> int:
        return int(self.keys.searchsorted(key, "left"))

    # ----------------------------------------------------------------- updates

    def insert(self, key: float, payload: int, counters) -> int:
        """Insert, possibly expanding first; returns INSERT_OK or a FAIL_* code (nothing inserted)."""
        cfg = self.config
        enabled = self.triggers_enabled()
        if enabled and self.num_inserts % cfg.catastrophic_check_every == 0 and self.catastrophic_cost():
            return FAIL_CATASTROPHIC
        if self.num_keys >= self.expansion_threshold:
            if enabled:
                if self.significant_cost_deviation():
                    return FAIL_COST_DEVIATION
                if self.catastrophic_cost():
                    return FAIL_CATASTROPHIC
                if self.num_keys > self.max_slots * cfg.min_density:
                    return FAIL_MAX_CAPACITY
            retrained = self.resize(cfg.min_density, False, self.is_append_mostly_right(),
                                    self.is_append_mostly_left())
            self.num_resizes += 1
            counters.expansions += 1
            if retrained:
                counters.model_retrains += 1
        pos = self._search(key, counters)
        capacity = self.capacity
        bitmap = self.bitmap
        if pos < capacity and not bitmap[pos]:
            self.keys[pos] = key
            self.payloads[pos] = payload
            bitmap[pos] = True
        else:
            gap = self.closest_gap(pos if pos < capacity else capacity - 1)
            keys = self.keys
            payloads = self.payloads
            if gap >= pos:
                keys[pos + 1:gap + 1] = keys[pos:gap]
                payloads[pos + 1:gap + 1] = payloads[pos:gap]
                shifts = gap - pos
            else:
                pos -= 1
                keys[gap:pos] = keys[gap + 1:pos + 1]
                payloads[gap:pos] = payloads[gap + 1:pos + 1]
                shifts = pos - gap
            keys[pos] = key
            payloads[pos] = payload
            bitmap[gap] = True
            self.num_shifts += shifts
            counters.shifts += shifts
        self.num_keys += 1
        self.num_inserts += 1
        if key > self.max_key:
            self.max_key = key
            self.num_right_out_of_bounds += 1
            self.split_blocked = False
        if key < self.min_key:
            self.min_key = key
            self.num_left_out_of_bounds += 1
            self.split_blocked = False
        if cfg.max_retrains_per_node is not None:
            self.inserts_in_window += 1
            if self.inserts_in_window >= RETRAIN_WINDOW_INSERTS:
                self.inserts_in_window = 0
                self.retrains_in_window = 0
        return INSERT_OK

    def closest_gap(self, pos: int) -> int:
        """Closest unoccupied slot to ``pos`` (``pos`` itself if free); ties go left; -1 if full."""
        bitmap = self.bitmap
        capacity = self.capacity
        width = 32
        while True:
            lo = pos - width if pos > width else 0
            hi = pos + width + 1
            if hi > capacity:
                hi = capacity
            right = bitmap[pos:hi]
            r = int(right.argmin())
            right_distance = r if not right[r] else -1
            left = bitmap[lo:pos + 1][::-1]
            left_index = int(left.argmin())
            left_distance = left_index if not left[left_index] else -1
            if left_distance >= 0 and (right_distance < 0 or left_distance <= right_distance):
                return pos - left_distance
            if right_distance >= 0:
                return pos + right_distance
            if lo == 0 and hi == capacity:
                return -1
            width *= 8

    def erase(self, key: float) -> int:
        """Remove every copy of ``key``; returns how many were removed. Contracts like C++."""
        keys = self.keys
        lo = int(keys.searchsorted(key, "left"))
        hi = int(keys.searchsorted(key, "right"))
        if lo == hi:
            return 0
        removed = int(np.count_nonzero(self.bitmap[lo:hi]))
        self.bitmap[lo:hi] = False
        keys[lo:hi] = keys[hi] if hi < self.capacity else math.inf
        self.num_keys -= removed
        if self.num_keys == 0:
            self.min_key, self.max_key = math.inf, -math.inf
        else:
            occupied = np.flatnonzero(self.bitmap)
            self.min_key = float(keys[occupied[0]])
            self.max_key = float(keys[occupied[-1]])
        if 0 < self.num_keys < self.contraction_threshold:
            self.resize(self.config.max_density)
            self.num_resizes += 1
        return removed

    # ----------------------------------------------------------------- accounting

    def memory_bytes(self) -> int:
        cfg = self.config
        return (DATA_NODE_HEADER_BYTES + self.capacity * (cfg.key_bytes + cfg.payload_bytes)
                + ((self.capacity + 63) // 64) * 8)

    def check(self) -> None:
        """Assert the gapped-array invariants (used by Alex.check_invariants)."""
        keys, bitmap = self.keys, self.bitmap
        assert len(keys) == len(bitmap) == len(self.payloads) == self.capacity
        assert int(np.count_nonzero(bitmap)) == self.num_keys, "bitmap count != num_keys"
        assert bool(np.all(keys[1:] >= keys[:-1])), "slot array not sorted"
        occupied = np.flatnonzero(bitmap)
        expected = gap_filled_keys(keys[occupied], occupied, self.capacity)
        assert np.array_equal(expected, keys), "gaps do not hold the next key"
        if self.num_keys:
            assert self.min_key <= keys[occupied[0]] and self.max_key >= keys[occupied[-1]]

    def __repr__(self) -> str:
        return (f"DataNode(level={self.level}, num_keys={self.num_keys}, capacity={self.capacity}, "
                f"keys=[{self.min_key}, {self.max_key}])")
