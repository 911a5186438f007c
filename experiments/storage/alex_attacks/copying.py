"""Deep copies and pickling of ``Alex`` without recursion along the linked leaf chain.

The attacks simulate candidate inserts on ``copy.deepcopy`` copies; the generic deepcopy/pickle
would recurse once per leaf through ``next_leaf`` and hit the recursion limit on large indexes.
"""

from __future__ import annotations

import copy

from .datanode import DataNode
from .internal import ModelNode


def deepcopy_alex(self, memo: dict):
    """``copy.deepcopy`` without recursing along the leaf chain (one frame per leaf otherwise)."""
    clone = type(self).__new__(type(self))
    memo[id(self)] = clone
    config = copy.deepcopy(self.config, memo)
    mapping: dict[int, DataNode | ModelNode] = {}
    for node in self._nodes():
        if node.__class__ is DataNode:
            twin = DataNode.__new__(DataNode)
            for name in DataNode.__slots__:
                setattr(twin, name, getattr(node, name))
            twin.keys, twin.payloads, twin.bitmap = node.keys.copy(), node.payloads.copy(), node.bitmap.copy()
            twin.config = config
        else:
            twin = ModelNode.__new__(ModelNode)
            for name in ModelNode.__slots__:
                setattr(twin, name, getattr(node, name))
        mapping[id(node)] = twin
    for twin in mapping.values():
        if twin.__class__ is DataNode:
            twin.next_leaf = mapping[id(twin.next_leaf)] if twin.next_leaf is not None else None
            twin.prev_leaf = mapping[id(twin.prev_leaf)] if twin.prev_leaf is not None else None
        else:
            # Rebuild the pointer array run by run (pointer runs share one child).
            children: list = []
            for child in twin.distinct_children():
                children.extend([mapping[id(child)]] * (1 << child.duplication_factor))
            twin.children = children
    for name, value in self.__dict__.items():
        setattr(clone, name, value)
    clone.config = config
    clone.counters = copy.copy(self.counters)
    clone._root = mapping[id(self._root)]
    clone._first_leaf = mapping[id(self._first_leaf)]
    return clone


def flat_state(self) -> dict:
    """Flat, non-recursive state: pickling the leaf chain directly would recurse per leaf."""
    nodes = list(self._nodes())
    position = {id(node): i for i, node in enumerate(nodes)}
    flat = []
    for node in nodes:
        if node.__class__ is DataNode:
            skip = ("next_leaf", "prev_leaf", "config")
            flat.append(("data", {name: getattr(node, name) for name in DataNode.__slots__ if name not in skip}))
        else:
            flat.append(("model", node.slope, node.intercept, node.level, node.duplication_factor,
                         [position[id(child)] for child in node.distinct_children()]))
    state = {k: v for k, v in self.__dict__.items() if k not in ("_root", "_first_leaf", "counters")}
    state["counters"] = self.counters.snapshot()
    state["nodes"] = flat
    return state

def restore_flat_state(self, state: dict) -> None:
    """Inverse of ``flat_state``."""
    state = dict(state)
    flat = state.pop("nodes")
    counters = state.pop("counters")
    self.__dict__.update(state)
    from .alex import OpCounters

    self.counters = OpCounters()
    for name, value in counters.items():
        setattr(self.counters, name, value)
    nodes: list = []
    for entry in flat:
        if entry[0] == "data":
            node = DataNode.__new__(DataNode)
            for name, value in entry[1].items():
                setattr(node, name, value)
            node.config = self.config
            node.next_leaf = node.prev_leaf = None
        else:
            node = ModelNode(entry[1], entry[2], [], entry[3])
            node.duplication_factor = entry[4]
        nodes.append(node)
    for node, entry in zip(nodes, flat, strict=True):
        if entry[0] == "model":
            children: list = []
            for i in entry[5]:
                children.extend([nodes[i]] * (1 << nodes[i].duplication_factor))
            node.children = children
            node.num_children = len(children)
    self._root = nodes[0]
    self._relink_leaves()
