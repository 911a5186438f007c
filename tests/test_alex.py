"""Tests of the pure-Python ALEX used by the complexity-attack experiment.

Property tests compare against a sorted-list reference under configurations with tiny data
nodes and fanouts so that expansions, sideways and downward splits and root expansions happen
constantly; unit tests pin the ALEX rules the attacks rely on.
"""

from __future__ import annotations

import bisect
import copy
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from experiments.storage.alex_attacks import Alex, AlexConfig, DataNode, MemoryUsage, OpCounters
from experiments.storage.alex_attacks.alex import AlexOutOfMemory
from experiments.storage.alex_attacks.costmodel import DATA_NODE_HEADER_BYTES, MODEL_NODE_HEADER_BYTES
from experiments.storage.alex_attacks.internal import ModelNode

SMALL_NODES = {"max_data_node_bytes": 16 * 48, "max_fanout": 16}


class AlexAgainstSortedList(RuleBasedStateMachine):
    """Random inserts (incl. duplicates), erases, lookups and ranges vs. a sorted list."""

    config = AlexConfig(**SMALL_NODES, memory_limit_bytes=1 << 22, max_splits_per_insert=500)
    key_strategy = st.integers(-2000, 2000).map(float) | st.floats(-3000, 3000, allow_nan=False)
    max_copies = 4  # copies of one key beyond this can make faithful ALEX split forever

    def __init__(self) -> None:
        super().__init__()
        self.index = Alex(self.config)
        self.reference: list[float] = []
        self.payloads: dict[float, set[int]] = {}

    @initialize(keys=st.lists(st.integers(-1000, 1000).map(float), max_size=300))
    def load(self, keys):
        capped: dict[float, int] = {}
        kept = []
        for key in keys:
            capped[key] = capped.get(key, 0) + 1
            if capped[key] <= self.max_copies:
                kept.append(key)
        self.index.bulk_load(np.array(kept, dtype=float), np.arange(len(kept)))
        self.reference = sorted(kept)
        for payload, key in enumerate(kept):
            self.payloads.setdefault(key, set()).add(payload)

    def _insert(self, key: float, payload: int) -> None:
        if self.reference.count(key) >= self.max_copies:
            return
        try:
            self.index.insert(key, payload)
        except AlexOutOfMemory:
            return  # an out-of-memory abort leaves the index without the key
        bisect.insort(self.reference, key)
        self.payloads.setdefault(key, set()).add(payload)

    @rule(key=key_strategy, payload=st.integers(0, 10**6))
    def insert(self, key, payload):
        self._insert(key, payload)

    @rule(start=st.integers(-2500, 2500), count=st.integers(1, 80), step=st.sampled_from([1.0, 0.001, 7.0]))
    def insert_run(self, start, count, step):
        for i in range(count):
            self._insert(start + i * step, i)

    @precondition(lambda self: self.reference)
    @rule(data=st.data())
    def insert_duplicate(self, data):
        self._insert(data.draw(st.sampled_from(self.reference)), 1)

    @rule(key=key_strategy)
    def erase(self, key):
        expected = self.reference.count(key)
        assert self.index.erase(key) == expected
        self.reference = [k for k in self.reference if k != key]
        self.payloads.pop(key, None)

    @rule(key=key_strategy)
    def lookup(self, key):
        found = self.index.lookup(key)
        if key in self.payloads and self.payloads[key]:
            assert found in self.payloads[key]
        else:
            assert found is None

    @rule(lo=key_strategy, width=st.floats(0, 500, allow_nan=False))
    def range_query(self, lo, width):
        hi = lo + width
        got = [k for k, _ in self.index.range(lo, hi)]
        i, j = bisect.bisect_left(self.reference, lo), bisect.bisect_left(self.reference, hi)
        assert got == self.reference[i:j]

    @invariant()
    def consistent(self):
        assert len(self.index) == len(self.reference)
        self.index.check_invariants(routing_sample=8)


class MitigatedAlexAgainstSortedList(AlexAgainstSortedList):
    """Same, with duplicate-aware splits and retrain bounds, and unlimited duplicates."""

    config = AlexConfig(**SMALL_NODES, duplicate_aware_split=True, max_retrains_per_node=3,
                        memory_limit_bytes=1 << 22, max_splits_per_insert=500)
    max_copies = 10**9


_state_settings = settings(max_examples=int(os.environ.get("ALEX_HYPOTHESIS_EXAMPLES", "120")), stateful_step_count=50, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestAlexAgainstSortedList = AlexAgainstSortedList.TestCase
TestAlexAgainstSortedList.settings = _state_settings
TestMitigatedAlexAgainstSortedList = MitigatedAlexAgainstSortedList.TestCase
TestMitigatedAlexAgainstSortedList.settings = _state_settings


# ---------------------------------------------------------------------------- unit tests

def _uniform(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1e6, n)


def test_api_surface_and_counters():
    index = Alex()
    assert isinstance(index.counters, OpCounters)
    index.bulk_load(_uniform(5000), np.arange(5000))
    keys = _uniform(5000)
    assert index.lookup(keys[17]) == 17
    assert index.lookup(-5.0) is None
    snap = index.counters.snapshot()
    assert snap["lookups"] == 2 and snap["search_steps"] > 0
    index.counters.reset()
    assert all(v == 0 for v in index.counters.snapshot().values())
    assert isinstance(index.memory(), MemoryUsage)
    assert all(isinstance(leaf, DataNode) for leaf in index.leaves())
    assert index.leaf_for(keys[3]).min_key <= keys[3] <= index.leaf_for(keys[3]).max_key
    assert index.depth() >= 0 and index.num_data_nodes() >= 1 and index.num_internal_nodes() >= 0


def test_gaps_hold_next_key_and_bitmap_is_unpacked_bool():
    index = Alex()
    index.bulk_load(_uniform(2000))
    leaf = next(index.leaves())
    assert leaf.bitmap.dtype == np.bool_ and leaf.keys.dtype == np.float64
    occupied = np.flatnonzero(leaf.bitmap)
    gap = int(np.flatnonzero(~leaf.bitmap[: occupied[-1]])[0])
    next_real = occupied[occupied > gap][0]
    assert leaf.keys[gap] == leaf.keys[next_real]
    assert np.isinf(leaf.keys[occupied[-1] + 1:]).all()


def test_expansion_happens_at_max_density():
    index = Alex()
    index.bulk_load(_uniform(1000))
    assert index.num_data_nodes() == 1
    leaf = next(index.leaves())
    capacity = leaf.capacity
    assert leaf.num_keys / capacity == pytest.approx(0.7, abs=0.01)
    rng = np.random.default_rng(5)
    while leaf.capacity == capacity:
        before = leaf.num_keys
        index.insert(float(rng.uniform(0, 1e6)))
    # The node expands on the first insert that finds num_keys >= 0.8 * capacity.
    assert before == int(np.ceil(0.8 * capacity))
    assert leaf.capacity == max(int(before / 0.6), before + 1)  # C++ resizes to kMinDensity
    assert index.counters.expansions == 1
    index.check_invariants()


def test_catastrophic_run_of_consecutive_keys_triggers_a_split():
    index = Alex()
    index.bulk_load(_uniform(10_000, seed=1))
    for i in range(3000):
        index.insert(5e5 + i * 1e-6)
    counters = index.counters
    assert counters.catastrophic_triggers > 0
    assert counters.sideways_splits + counters.downward_splits > 0
    assert counters.shifts > 100 * 64
    index.check_invariants()


def test_sideways_split_becomes_downward_when_max_fanout_is_tiny():
    def run(max_fanout: int) -> Alex:
        index = Alex(AlexConfig(max_data_node_bytes=16 * 256, max_fanout=max_fanout))
        index.bulk_load(_uniform(2000, seed=2))
        for key in _uniform(5000, seed=3):
            index.insert(key)
        index.check_invariants()
        return index

    wide = run(2**21)
    assert wide.counters.sideways_splits > 0
    narrow = run(2)
    assert narrow.counters.downward_splits > 0 and narrow.counters.sideways_splits == 0
    assert max(n.num_children for n in narrow._nodes() if isinstance(n, ModelNode)) <= 2
    assert narrow.depth() > wide.depth()


def test_memory_accounting_matches_cpp_layout_formula():
    config = AlexConfig(**SMALL_NODES)
    index = Alex(config)
    index.bulk_load(_uniform(3000))
    for key in _uniform(2000, seed=9):
        index.insert(key)
    data = sum(DATA_NODE_HEADER_BYTES + leaf.capacity * 16 + -(-leaf.capacity // 64) * 8 for leaf in index.leaves())
    inner = [n for n in index._nodes() if isinstance(n, ModelNode)]
    index_bytes = sum(MODEL_NODE_HEADER_BYTES + 8 * n.num_children for n in inner)
    usage = index.memory()
    assert usage.data_bytes == data and usage.index_bytes == index_bytes
    assert usage.total_bytes == data + index_bytes
    for leaf in index.leaves():
        assert leaf.memory_bytes() == DATA_NODE_HEADER_BYTES + leaf.capacity * 16 + -(-leaf.capacity // 64) * 8


def _insert_copies(config: AlexConfig, copies: int) -> tuple[Alex, int, bool]:
    index = Alex(config)
    index.bulk_load(_uniform(50_000, seed=4))
    before = index.memory().total_bytes
    try:
        for i in range(copies):
            index.insert(123_456.0, i)
    except AlexOutOfMemory:
        return index, before, True
    return index, before, False


def test_copies_of_one_key_blow_up_memory_unless_duplicate_aware():
    limit = 64 << 20
    faithful, before, crashed = _insert_copies(AlexConfig(memory_limit_bytes=limit), 2000)
    assert crashed or faithful.memory().total_bytes > 10 * before
    assert faithful.memory().index_bytes > limit // 2
    mitigated, before, crashed = _insert_copies(
        AlexConfig(memory_limit_bytes=limit, duplicate_aware_split=True), 2000)
    assert not crashed
    assert mitigated.memory().total_bytes < 2 * before
    assert mitigated.lookup(123_456.0) is not None
    assert mitigated.erase(123_456.0) == 2000
    mitigated.check_invariants()


def test_max_retrains_per_node_bounds_split_work():
    def triggers(limit):
        index = Alex(AlexConfig(max_retrains_per_node=limit))
        index.bulk_load(_uniform(10_000, seed=1))
        for i in range(3000):
            index.insert(5e5 + i * 1e-6)
        index.check_invariants()
        return index.counters.model_retrains

    assert triggers(1) < triggers(None)


def test_deepcopy_and_pickle_are_independent():
    index = Alex(AlexConfig(**SMALL_NODES))
    index.bulk_load(_uniform(3000))
    clone = copy.deepcopy(index)
    for key in _uniform(500, seed=11):
        clone.insert(key)
    assert len(clone) == 3500 and len(index) == 3000
    index.check_invariants()
    clone.check_invariants()
    assert clone.counters is not index.counters
    assert next(clone.leaves()) is not next(index.leaves())
    restored = pickle.loads(pickle.dumps(clone))
    restored.check_invariants()
    assert restored.range(-1.0, 2e6) == clone.range(-1.0, 2e6)
    assert restored.counters.snapshot() == clone.counters.snapshot()


def test_range_erase_and_duplicates_across_structure_changes():
    index = Alex(AlexConfig(**SMALL_NODES))
    index.bulk_load(np.arange(0, 1000, 2, dtype=float))
    for _ in range(3):
        index.insert(10.0, 5)
    assert [k for k, _ in index.range(9.0, 12.0)] == [10.0] * 4 + [11.0][:0]
    assert index.erase(10.0) == 4 and index.lookup(10.0) is None
    assert [k for k, _ in index.range(0.0, 7.0)] == [0.0, 2.0, 4.0, 6.0]
    for key in np.arange(2000, 3000, 0.5):  # appends beyond the key domain expand the root
        index.insert(float(key))
    assert len(index) == 499 + 2000
    index.check_invariants()


def test_key_domain_expansion_on_both_sides_keeps_routing_exact():
    index = Alex(AlexConfig(max_data_node_bytes=16 * 64, max_fanout=64))
    index.bulk_load(np.linspace(0.0, 1000.0, 2000))
    root_before = index._root
    fanout_before = root_before.num_children
    for i in range(1500):
        index.insert(1000.0 + 3.7 * (i + 1))
        index.insert(-3.3 * (i + 1))
    assert index._root is not root_before or index._root.num_children > fanout_before
    assert index.counters.root_expansions >= 2
    assert len(index) == 5000
    index.check_invariants(routing_sample=10**6)
    assert index.lookup(-3.3 * 1500) == 0 and index.lookup(1000.0 + 3.7) == 0


def test_empty_index_and_single_key():
    index = Alex()
    assert len(index) == 0 and index.lookup(1.0) is None and index.range(0, 10) == []
    index.insert(3.0, 9)
    assert index.lookup(3.0) == 9 and len(index) == 1
    index.bulk_load(np.array([]))
    assert len(index) == 0
    index.check_invariants()
