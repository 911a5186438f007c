"""Structural invariant checks for ``Alex`` (used by the tests)."""

from __future__ import annotations

import numpy as np

from .datanode import DataNode
from .internal import ModelNode


def check_invariants(alex, routing_sample: int = 64) -> None:
    tree_leaves = []
    for node in alex._nodes():
        if node.__class__ is ModelNode:
            children = node.children
            assert node.num_children == len(children) > 0, "num_children mismatch"
            assert node.num_children & (node.num_children - 1) == 0, "fanout not a power of two"
            i = 0
            while i < node.num_children:
                child = children[i]
                run = 1 << child.duplication_factor
                assert i % run == 0, "duplicated pointer run not aligned"
                assert all(c is child for c in children[i:i + run]), "pointer run broken"
                assert child.level == node.level + 1, "child level"
                i += run
            assert i == node.num_children
        else:
            assert node.__class__ is DataNode
            node.check()
            tree_leaves.append(node)
    linked = list(alex.leaves())
    assert len(linked) == len(tree_leaves) and all(a is b for a, b in zip(linked, tree_leaves, strict=True)), \
        "leaf links differ from tree order"
    assert linked[0].prev_leaf is None
    assert sum(leaf.num_keys for leaf in linked) == len(alex), "size mismatch"
    previous_max = -np.inf
    for leaf in linked:
        if leaf.num_keys == 0:
            continue
        keys, _ = leaf.sorted_items()
        assert keys[0] >= previous_max, "keys out of order across leaves"
        previous_max = keys[-1]
        sample = keys if len(keys) <= routing_sample else keys[np.linspace(0, len(keys) - 1, routing_sample).astype(int)]
        for key in sample.tolist():
            assert alex.leaf_for(key) is leaf, f"key {key} not routed to its leaf"
    walked = alex._walk_memory()
    assert walked == alex.memory(), f"memory accounting drift: walked {walked} vs {alex.memory()}"
