"""Key-domain expansion of the root model node (``Alex::expand_root``).

When enough keys fall beyond the root's key domain, the root's pointer array grows by the power
of two needed to cover the new key (``expansion_factor``), keeping the model so existing keys
keep their buckets. If the grown array would pass ``max_fanout``, a new root with
``expansion_factor`` children is made instead, the old root becoming its first (or last) child.
The new pointer slots are filled with one new data node per ``n`` pointers, ``n`` being the
number of pointers that existed before, and the keys at the outer end that now route to new
buckets are moved into those new data nodes.

Deviation from C++: a *left* expansion always makes a new root. Expanding in place would shift
the root's intercept by an integer, which is not exact in floating point and can re-route keys
at every bucket boundary; with a new root only the boundary at the old domain edge is affected,
and the keys there are re-routed explicitly.
"""

from __future__ import annotations

import math

import numpy as np

from .costmodel import predict_positions
from .datanode import DataNode
from .internal import ModelNode


def _pow2_round_up(value: int) -> int:
    return 1 << max(1, (max(value, 2) - 1).bit_length())


def expand_root(alex, key: float, expand_left: bool) -> None:
    from .alex import _span

    cfg = alex.config
    root: ModelNode = alex._root
    domain_min, domain_max = alex._domain_min, alex._domain_max
    domain = _span(domain_min, domain_max)
    difference = (domain_min - key) if expand_left else (key - domain_max)
    factor = _pow2_round_up(int(math.ceil((difference + domain) / domain)))
    old_n = root.num_children
    alex.counters.root_expansions += 1
    if not expand_left and old_n * factor <= cfg.max_fanout:
        new_n = old_n * factor
        added = new_n - old_n
        root.children = root.children + [None] * added
        new_start, new_end = old_n, new_n
        root.num_children = new_n
        alex._index_bytes += 8 * added
        group = old_n
    else:
        new_root = ModelNode(root.slope / old_n, root.intercept / old_n, [None] * factor, 0)
        if expand_left:
            new_root.intercept += factor - 1
            new_root.children[factor - 1] = root
            new_start, new_end = 0, factor - 1
        else:
            new_root.children[0] = root
            new_start, new_end = 1, factor
        root.duplication_factor = 0
        for node in alex._nodes():
            node.level += 1
        alex._root = root = new_root
        alex._index_bytes += new_root.memory_bytes()
        group = 1

    # Routing is monotone in the key, so the keys that now route to new buckets form a prefix
    # (left) or suffix (right) of the key order: collect them leaf by leaf from the outer end.
    moved_keys, moved_payloads = [], []
    outermost = alex._first_leaf if expand_left else _last_leaf_linked(alex)
    leaf = outermost
    while leaf is not None:
        keys, payloads = leaf.sorted_items()
        buckets = predict_positions(keys, root.slope, root.intercept, root.num_children)
        moving = (buckets >= new_start) & (buckets < new_end)
        if moving.any():
            before = leaf.memory_bytes()
            leaf._load(keys[~moving], payloads[~moving])
            alex._data_bytes += leaf.memory_bytes() - before
            moved_keys.append(keys[moving])
            moved_payloads.append(payloads[moving])
        if not moving.all():
            break
        leaf = leaf.next_leaf if expand_left else leaf.prev_leaf
    if not expand_left:
        moved_keys.reverse()
        moved_payloads.reverse()
    moved_keys = np.concatenate(moved_keys) if moved_keys else np.empty(0)
    moved_payloads = np.concatenate(moved_payloads) if moved_payloads else np.empty(0, dtype=np.int64)
    moved_buckets = predict_positions(moved_keys, root.slope, root.intercept, root.num_children)
    new_leaves = []
    duplication = group.bit_length() - 1
    for start in range(new_start, new_end, group):
        lo = int(np.searchsorted(moved_buckets, start, "left"))
        hi = int(np.searchsorted(moved_buckets, start + group, "left"))
        leaf = DataNode.from_sorted(cfg, moved_keys[lo:hi], moved_payloads[lo:hi], root.level + 1)
        leaf.duplication_factor = duplication
        root.children[start:start + group] = [leaf] * group
        new_leaves.append(leaf)
        alex._data_bytes += leaf.memory_bytes()
    if expand_left:
        chain = new_leaves + [alex._first_leaf]
        alex._first_leaf = chain[0]
        chain[0].prev_leaf = None
        for a, b in zip(chain, chain[1:], strict=False):
            a.next_leaf, b.prev_leaf = b, a
        alex._domain_min = domain_max - factor * domain
        alex._below_domain = 0
        alex._keys_at_last_left_resize = alex._size
    else:
        tail = None
        chain = [_last_leaf_linked(alex)] + new_leaves
        for a, b in zip(chain, chain[1:], strict=False):
            a.next_leaf, b.prev_leaf = b, a
        chain[-1].next_leaf = tail
        alex._domain_max = domain_min + factor * domain
        alex._above_domain = 0
        alex._keys_at_last_right_resize = alex._size


def _last_leaf_linked(alex) -> DataNode:
    leaf = alex._first_leaf
    while leaf.next_leaf is not None:
        leaf = leaf.next_leaf
    return leaf

