"""A faithful pure-Python ALEX (Ding et al., SIGMOD 2020; microsoft/ALEX) for complexity attacks.

Structure: an RMI of ``ModelNode`` (linear model over a power-of-two pointer array, pointers
duplicated for children owning several slots) and ``DataNode`` leaves (gapped arrays, see
``datanode``). Leaves are linked in key order for range scans.

Insert (``Alex::insert``): route the key with the models, insert into the leaf; if the leaf
refuses (cost deviation, catastrophic cost, or max size reached), handle it and retry in a loop:

* significant cost deviation -> the fanout tree (max fanout 2) decides between expanding the node
  with a retrained model and splitting it in two;
* catastrophic cost or max size -> always split in two;
* a split goes sideways (the parent gets the two new nodes in the pointer range of the old one,
  doubling its pointer array when the old node had a single pointer) unless
  ``parent.num_children * 2 / 2**duplication_factor > max_fanout`` or the node is the root, in
  which case it goes downward (a new model node with two data-node children replaces it);
* the split point is fixed by the (parent or new) model, so equal keys can never be separated:
  as in C++, a node full of copies of one key keeps splitting, growing pointer arrays and model
  nodes. C++ loops until it runs out of memory; here ``AlexOutOfMemory`` (a ``MemoryError``) is
  raised once the accounted memory passes ``memory_limit_bytes``, one insert exceeds
  ``max_splits_per_insert`` splits, or a model's slope overflows to inf (each futile split
  doubles it). The index stays consistent: the key being inserted is simply not inserted.

Keys above/below the root's key domain are counted and the root is expanded (``expand_root``)
with the C++ rule (at least 5 such keys and 2x the relative growth since the last resize, or
1000 keys); the pointer array grows by a power of two (or a new root is made when that would
pass ``max_fanout``) and the keys beyond the old domain move from the outermost leaf to new leaves.

Mitigations (off by default; they change ALEX's behaviour and are for the defence measurements):

* ``duplicate_aware_split``: before splitting, the split point is computed; if one side would
  receive every key (e.g. copies of one key, which no model can separate), the node is instead
  expanded with a retrained model and its split/retrain triggers are disabled until its min or
  max key changes. Memory then grows linearly with the keys instead of by pointer-array
  doublings and new model nodes, and the node may exceed the max data node size.
* ``max_retrains_per_node = N``: a data node (and the nodes split from it, which inherit the
  count) may retrain/split at most N times per window of 4096 inserts into it; beyond that it
  only expands (no triggers), bounding the retrain work an adversary can force per node.

Simplifications vs C++ (everything else follows alex.h / alex_nodes.h):

* bulk load: fanout tree with vectorised level costs and bottom-up merging, but the level cost
  formula and stopping rule are simplified (see ``fanout``);
* the fail-1 (cost deviation) decision compares one retrained node with two split nodes;
* splits always retrain the new nodes' models (C++ reuses the old model when forced by max size);
* binary-search step counts are the bit length of the final search window (the exponential
  doublings, which feed the empirical cost, are exact);
* no node merging on erase (C++ default build does not merge either; it contracts with
  ``resize(max_density)`` below ``min_density``, as done here);
* a left key-domain expansion always creates a new root (see ``rootexpand``); the experimental
  "split upwards" policy is not modelled (off by default in C++);
* bitmaps are unpacked bool arrays in Python; memory accounting charges the packed C++ size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from .config import AlexConfig, AlexOutOfMemory, MemoryUsage, OpCounters
from .costmodel import NODE_LOOKUPS_WEIGHT, estimate_node_cost, predict_positions
from .datanode import (
    FAIL_CATASTROPHIC,
    FAIL_COST_DEVIATION,
    DataNode,
)
from .fanout import best_bulk_load_fanout, split_beats_expand
from .internal import ModelNode

MIN_OUT_OF_DOMAIN_KEYS = 5  # kMinOutOfDomainKeys
MAX_OUT_OF_DOMAIN_KEYS = 1000  # kMaxOutOfDomainKeys
OUT_OF_DOMAIN_TOLERANCE_FACTOR = 2  # kOutOfDomainToleranceFactor


def _span(lo: float, hi: float) -> float:
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        span = max(abs(hi), abs(lo), 1.0) * 2.0**-20
    return span


class Alex:
    """ALEX index with float keys and int payloads; duplicates allowed."""

    def __init__(self, config: AlexConfig | None = None) -> None:
        self.config = config or AlexConfig()
        self.counters = OpCounters()
        self._reset_structure()

    def _reset_structure(self) -> None:
        self._root: DataNode | ModelNode = DataNode(self.config, 0)
        self._first_leaf: DataNode = self._root
        self._size = 0
        self._domain_min = math.inf
        self._domain_max = -math.inf
        self._above_domain = 0
        self._below_domain = 0
        self._keys_at_last_right_resize = 0
        self._keys_at_last_left_resize = 0
        self._data_bytes = self._root.memory_bytes()
        self._index_bytes = 0

    # ================================================================= bulk load

    def bulk_load(self, keys: np.ndarray, payloads: np.ndarray | None = None) -> None:
        """Replace the contents with ``keys`` (any order, duplicates allowed)."""
        keys = np.asarray(keys, dtype=np.float64).ravel()
        if payloads is None:
            payloads = np.zeros(len(keys), dtype=np.int64)
        payloads = np.asarray(payloads, dtype=np.int64).ravel()
        if len(payloads) != len(keys):
            raise ValueError("keys and payloads differ in length")
        if not np.isfinite(keys).all():
            raise ValueError("keys must be finite (+inf is the end-of-array sentinel)")
        order = np.argsort(keys, kind="stable")
        keys, payloads = keys[order], payloads[order]
        self._reset_structure()
        n = len(keys)
        self._root = self._build(keys, payloads, 0, n)
        self._size = n
        if n:
            self._domain_min, self._domain_max = float(keys[0]), float(keys[-1])
        self._keys_at_last_right_resize = self._keys_at_last_left_resize = n
        self._relink_leaves()
        usage = self._walk_memory()
        self._data_bytes, self._index_bytes = usage.data_bytes, usage.index_bytes

    def _build(self, keys: np.ndarray, payloads: np.ndarray, level: int, total: int):
        cfg = self.config
        n = len(keys)
        max_slots = max(2, cfg.max_data_node_bytes // (cfg.key_bytes + cfg.payload_bytes))
        fits = n <= int(max_slots * cfg.init_density)
        if n == 0 or keys[0] == keys[-1]:
            return DataNode.from_sorted(cfg, keys, payloads, level)
        if fits and estimate_node_cost(keys, cfg.init_density) < NODE_LOOKUPS_WEIGHT:
            return DataNode.from_sorted(cfg, keys, payloads, level)
        depth, slope, intercept, partition = best_bulk_load_fanout(
            keys, total, cfg.init_density, cfg.max_fanout, int(max_slots * cfg.init_density),
            must_split=not fits)
        if depth == 0:
            return DataNode.from_sorted(cfg, keys, payloads, level)
        children: list = [None] * (1 << depth)
        for first_bucket, log2_pointers, lo, hi in partition:
            if hi - lo == n:  # the model cannot separate these keys: recursing would not end
                child = DataNode.from_sorted(cfg, keys, payloads, level + 1)
            else:
                child = self._build(keys[lo:hi], payloads[lo:hi], level + 1, total)
            child.duplication_factor = log2_pointers
            children[first_bucket:first_bucket + (1 << log2_pointers)] = [child] * (1 << log2_pointers)
        return ModelNode(slope, intercept, children, level)

    # ================================================================= traversal

    def _traverse(self, key: float):
        """(leaf, parent model node or None, bucket in parent) for ``key``."""
        node = self._root
        parent = None
        bucket = 0
        steps = 0
        while node.__class__ is ModelNode:
            p = node.slope * key + node.intercept
            last = node.num_children - 1
            bucket = 0 if p <= 0 else (last if p >= last else int(p))
            parent = node
            node = node.children[bucket]
            steps += 1
        self.counters.node_lookups += steps
        return node, parent, bucket

    def leaf_for(self, key: float) -> DataNode:
        node = self._root
        while node.__class__ is ModelNode:
            node = node.children[node.bucket(key)]
        return node

    # ================================================================= queries

    def lookup(self, key: float) -> int | None:
        key = float(key)
        self.counters.lookups += 1
        leaf = self._traverse(key)[0]
        pos = leaf.find(key, self.counters)
        return None if pos < 0 else int(leaf.payloads[pos])

    def range(self, lo: float, hi: float) -> list[tuple[float, int]]:
        """All (key, payload) with lo <= key < hi, in key order."""
        lo, hi = float(lo), float(hi)
        out: list[tuple[float, int]] = []
        if not lo < hi:
            return out
        leaf = self.leaf_for(lo)
        start = leaf.lower_bound(lo)
        while leaf is not None:
            mask = leaf.bitmap[start:]
            ks = leaf.keys[start:][mask]
            ps = leaf.payloads[start:][mask]
            cut = int(ks.searchsorted(hi, "left"))
            out.extend(zip(ks[:cut].tolist(), ps[:cut].tolist(), strict=True))
            if cut < len(ks):
                break
            leaf = leaf.next_leaf
            start = 0
        return out

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: float) -> bool:
        leaf = self.leaf_for(float(key))
        lo = leaf.lower_bound(float(key))
        return lo < leaf.capacity and leaf.keys[lo] == key

    # ================================================================= updates

    def insert(self, key: float, payload: int = 0) -> None:
        key = float(key)
        if not -math.inf < key < math.inf:
            raise ValueError("keys must be finite (+inf is the end-of-array sentinel)")
        if self._size == 0 and self._root.__class__ is DataNode:
            self._domain_min = min(self._domain_min, key)
            self._domain_max = max(self._domain_max, key)
        if key > self._domain_max:
            self._above_domain += 1
            if self._should_expand(self._above_domain, self._keys_at_last_right_resize):
                self._expand_root(key, expand_left=False)
        elif key < self._domain_min:
            self._below_domain += 1
            if self._should_expand(self._below_domain, self._keys_at_last_left_resize):
                self._expand_root(key, expand_left=True)
        counters = self.counters
        leaf, parent, bucket = self._traverse(key)
        capacity = leaf.capacity
        fail = leaf.insert(key, payload, counters)
        splits = 0
        while fail:
            splits += 1
            if splits > self.config.max_splits_per_insert:
                raise AlexOutOfMemory(f"insert of {key!r} did not finish after {splits - 1} splits")
            self._handle_failure(leaf, parent, bucket, key, fail)
            leaf, parent, bucket = self._traverse(key)
            capacity = leaf.capacity
            fail = leaf.insert(key, payload, counters)
        if leaf.capacity != capacity:
            self._data_bytes += leaf.memory_bytes() - self._node_bytes_for_capacity(capacity)
        self._size += 1
        counters.inserts += 1

    def erase(self, key: float) -> int:
        """Remove every copy of ``key``; returns the number removed."""
        key = float(key)
        leaf = self._traverse(key)[0]
        before = leaf.memory_bytes()
        removed = leaf.erase(key)
        self._data_bytes += leaf.memory_bytes() - before
        self._size -= removed
        return removed

    def _node_bytes_for_capacity(self, capacity: int) -> int:
        from .costmodel import DATA_NODE_HEADER_BYTES

        cfg = self.config
        return DATA_NODE_HEADER_BYTES + capacity * (cfg.key_bytes + cfg.payload_bytes) + ((capacity + 63) // 64) * 8

    # ================================================================= splits

    def _check_memory(self) -> None:
        total = self._data_bytes + self._index_bytes
        if total > self.config.memory_limit_bytes:
            raise AlexOutOfMemory(f"ALEX memory {total} B passed memory_limit_bytes="
                                  f"{self.config.memory_limit_bytes}")

    def _split_plan(self, leaf: DataNode, parent: ModelNode | None, bucket: int, keys: np.ndarray):
        """(downward?, model slope, intercept, fanout, split boundary bucket, split index)."""
        cfg = self.config
        downward = parent is None or (parent.num_children * 2 >> leaf.duplication_factor) > cfg.max_fanout
        if downward:
            if parent is None:
                lo, hi = (float(keys[0]), float(keys[-1])) if len(keys) else (0.0, 1.0)
                slope = 2.0 / _span(lo, hi)
                intercept = -slope * lo
            else:
                repeats = 1 << leaf.duplication_factor
                start = bucket - bucket % repeats
                slope = parent.slope / repeats * 2
                intercept = 2 * (parent.intercept - start) / repeats
            fanout, boundary = 2, 1
        elif leaf.duplication_factor == 0:
            # The parent will double: the leaf then owns buckets [2b, 2b + 2).
            slope, intercept = parent.slope * 2, parent.intercept * 2
            fanout, boundary = parent.num_children * 2, bucket * 2 + 1
        else:
            repeats = 1 << leaf.duplication_factor
            slope, intercept, fanout = parent.slope, parent.intercept, parent.num_children
            boundary = bucket - bucket % repeats + repeats // 2
        buckets = predict_positions(keys, slope, intercept, fanout)
        split_at = int(np.searchsorted(buckets, boundary, side="left"))
        return downward, slope, intercept, split_at

    def _handle_failure(self, leaf: DataNode, parent: ModelNode | None, bucket: int, key: float,
                        fail: int) -> None:
        cfg = self.config
        counters = self.counters
        if fail == FAIL_CATASTROPHIC:
            counters.catastrophic_triggers += 1
        self._check_memory()
        keys, payloads = leaf.sorted_items()
        downward, slope, intercept, split_at = self._split_plan(leaf, parent, bucket, keys)
        if not (math.isfinite(slope) and math.isfinite(intercept)):
            # Each futile split doubles a model's slope; after ~1000 doublings it overflows. C++
            # would go on splitting with inf/NaN models; treat it as the memory exhaustion it is.
            raise AlexOutOfMemory("model slope overflowed while splitting keys no model can separate")
        n = len(keys)
        futile = split_at in (0, n)
        expand_instead = False
        if fail == FAIL_COST_DEVIATION:
            expand_instead = not split_beats_expand(keys, split_at, cfg.init_density, self._size)
        if futile and cfg.duplicate_aware_split:
            expand_instead = True
            leaf.split_blocked = True
        if expand_instead:
            before = leaf.memory_bytes()
            leaf.resize(cfg.min_density, True, leaf.is_append_mostly_right(), leaf.is_append_mostly_left())
            leaf.refresh_expected_cost()
            leaf.reset_stats()
            leaf.retrains_in_window += 1
            counters.expansions += 1
            counters.model_retrains += 1
            self._data_bytes += leaf.memory_bytes() - before
            return
        left = DataNode.from_sorted(cfg, keys[:split_at], payloads[:split_at], leaf.level)
        right = DataNode.from_sorted(cfg, keys[split_at:], payloads[split_at:], leaf.level)
        for child in (left, right):
            child.retrains_in_window = leaf.retrains_in_window + 1
        counters.model_retrains += 2
        if downward:
            self._split_downward(leaf, parent, bucket, slope, intercept, left, right)
        else:
            self._split_sideways(leaf, parent, bucket, left, right)
        self._data_bytes += left.memory_bytes() + right.memory_bytes() - leaf.memory_bytes()
        self._replace_leaf(leaf, left, right)

    def _split_sideways(self, leaf, parent: ModelNode, bucket: int, left: DataNode, right: DataNode) -> None:
        if leaf.duplication_factor == 0:
            self._index_bytes += 8 * parent.num_children
            parent.expand(1)
            bucket *= 2
        repeats = 1 << leaf.duplication_factor
        start = bucket - bucket % repeats
        half = repeats >> 1
        left.duplication_factor = right.duplication_factor = half.bit_length() - 1
        parent.children[start:start + half] = [left] * half
        parent.children[start + half:start + repeats] = [right] * half
        self.counters.sideways_splits += 1

    def _split_downward(self, leaf, parent: ModelNode | None, bucket: int, slope: float, intercept: float,
                        left: DataNode, right: DataNode) -> None:
        node = ModelNode(slope, intercept, [left, right], leaf.level)
        node.duplication_factor = leaf.duplication_factor
        left.level = right.level = leaf.level + 1
        if parent is None:
            self._root = node
            if leaf.num_keys:
                self._domain_min, self._domain_max = leaf.min_key, leaf.max_key
                self._keys_at_last_left_resize = self._keys_at_last_right_resize = self._size
                self._above_domain = self._below_domain = 0
        else:
            repeats = 1 << leaf.duplication_factor
            start = bucket - bucket % repeats
            parent.children[start:start + repeats] = [node] * repeats
        self._index_bytes += node.memory_bytes()
        self.counters.downward_splits += 1

    def _replace_leaf(self, old: DataNode, *new: DataNode) -> None:
        prev, nxt = old.prev_leaf, old.next_leaf
        for a, b in zip(new, new[1:], strict=False):
            a.next_leaf, b.prev_leaf = b, a
        new[0].prev_leaf = prev
        new[-1].next_leaf = nxt
        if prev is None:
            self._first_leaf = new[0]
        else:
            prev.next_leaf = new[0]
        if nxt is not None:
            nxt.prev_leaf = new[-1]
        old.next_leaf = old.prev_leaf = None

    # ================================================================= key-domain expansion

    def _should_expand(self, out_of_domain: int, keys_at_last_resize: int) -> bool:
        if self._root.__class__ is not ModelNode:
            return False
        if out_of_domain >= MAX_OUT_OF_DOMAIN_KEYS:
            return True
        growth = self._size / keys_at_last_resize - 1 if keys_at_last_resize else math.inf
        return out_of_domain >= MIN_OUT_OF_DOMAIN_KEYS and out_of_domain >= OUT_OF_DOMAIN_TOLERANCE_FACTOR * growth

    def _expand_root(self, key: float, expand_left: bool) -> None:
        """Grow the root's key domain by a power of two towards ``key`` (Alex::expand_root)."""
        from .rootexpand import expand_root

        expand_root(self, key, expand_left)

    # ================================================================= introspection

    def leaves(self) -> Iterator[DataNode]:
        leaf = self._first_leaf
        while leaf is not None:
            yield leaf
            leaf = leaf.next_leaf

    def _nodes(self) -> Iterator[DataNode | ModelNode]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield node
            if node.__class__ is ModelNode:
                stack.extend(reversed(list(node.distinct_children())))

    def _leaves_in_tree_order(self) -> list[DataNode]:
        return [node for node in self._nodes() if node.__class__ is DataNode]

    def _relink_leaves(self) -> None:
        leaves = self._leaves_in_tree_order()
        for a, b in zip(leaves, leaves[1:], strict=False):
            a.next_leaf, b.prev_leaf = b, a
        leaves[0].prev_leaf = None
        leaves[-1].next_leaf = None
        self._first_leaf = leaves[0]

    def depth(self) -> int:
        """Number of model nodes on the longest root-to-leaf path (0 when the root is a leaf)."""
        best = 0
        stack = [(self._root, 0)]
        while stack:
            node, d = stack.pop()
            if node.__class__ is ModelNode:
                stack.extend((child, d + 1) for child in node.distinct_children())
            else:
                best = max(best, d)
        return best

    def num_data_nodes(self) -> int:
        return sum(1 for node in self._nodes() if node.__class__ is DataNode)

    def num_internal_nodes(self) -> int:
        return sum(1 for node in self._nodes() if node.__class__ is ModelNode)

    def _walk_memory(self) -> MemoryUsage:
        data = index = 0
        for node in self._nodes():
            if node.__class__ is DataNode:
                data += node.memory_bytes()
            else:
                index += node.memory_bytes()
        return MemoryUsage(data, index)

    def memory(self) -> MemoryUsage:
        return MemoryUsage(self._data_bytes, self._index_bytes)

    def check_invariants(self, routing_sample: int = 64) -> None:
        """Assert structural invariants; raises AssertionError on the first violation."""
        from .invariants import check_invariants

        check_invariants(self, routing_sample)

    # ================================================================= copying / pickling

    def __deepcopy__(self, memo: dict) -> Alex:
        from .copying import deepcopy_alex

        return deepcopy_alex(self, memo)

    def __getstate__(self) -> dict:
        from .copying import flat_state

        return flat_state(self)

    def __setstate__(self, state: dict) -> None:
        from .copying import restore_flat_state

        restore_flat_state(self, state)


__all__ = ["Alex", "AlexConfig", "AlexOutOfMemory", "MemoryUsage", "OpCounters", "DataNode"]
