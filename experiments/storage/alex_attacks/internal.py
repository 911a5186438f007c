"""ALEX model (internal) node: a linear model over a power-of-two array of child pointers.

As in ``AlexModelNode``: a child that owns ``2**d`` consecutive pointer slots has
``duplication_factor = d``; a run of duplicated pointers always starts at a multiple of its
length. Expanding the node by ``2**k`` repeats every pointer ``2**k`` times and scales the
model by the same factor (exact in floating point, so no key changes child).
"""

from __future__ import annotations

from .costmodel import LINEAR_MODEL_BYTES, MODEL_NODE_HEADER_BYTES, POINTER_BYTES

__all__ = ["ModelNode", "LINEAR_MODEL_BYTES"]


class ModelNode:
    """Internal node: ``children[clamp(int(slope*key + intercept))]`` routes a key."""

    __slots__ = ("slope", "intercept", "children", "num_children", "level", "duplication_factor")

    def __init__(self, slope: float, intercept: float, children: list, level: int = 0) -> None:
        self.slope = slope
        self.intercept = intercept
        self.children = children
        self.num_children = len(children)
        self.level = level
        self.duplication_factor = 0

    def bucket(self, key: float) -> int:
        p = self.slope * key + self.intercept
        last = self.num_children - 1
        if p <= 0:
            return 0
        if p >= last:
            return last
        return int(p)

    def expand(self, log2_factor: int) -> int:
        """Repeat every pointer ``2**log2_factor`` times; returns the factor."""
        factor = 1 << log2_factor
        old = self.children
        new = [None] * (len(old) * factor)
        for offset in range(factor):
            new[offset::factor] = old
        for child in list(self.distinct_children()):
            child.duplication_factor += log2_factor
        self.children = new
        self.num_children = len(new)
        self.slope *= factor
        self.intercept *= factor
        return factor

    def distinct_children(self):
        """Each child once, in key order (skips duplicated pointers)."""
        children = self.children
        i = 0
        n = self.num_children
        while i < n:
            child = children[i]
            yield child
            i += 1 << child.duplication_factor

    def memory_bytes(self) -> int:
        return MODEL_NODE_HEADER_BYTES + POINTER_BYTES * self.num_children

    def __repr__(self) -> str:
        return f"ModelNode(level={self.level}, num_children={self.num_children})"
