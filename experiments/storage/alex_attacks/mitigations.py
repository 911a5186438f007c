"""Mitigations against the ALEX attacks that go beyond the paper, and the factories the experiments use.

Two of them live in the index itself (:class:`AlexConfig` switches, implemented in ``alex.py``):

* ``duplicate_aware``: ``AlexConfig(duplicate_aware_split=True)``: a split that cannot separate equal keys is
  not attempted (the node grows instead), which defuses the OOM attack's split cascade;
* ``max_retrains``: ``AlexConfig(max_retrains_per_node=N)``: caps the model retrains a node may do.

One is ours, a wrapper that needs no change to ALEX (:class:`HotSlotGuard`, mitigation ``guard``): a *shift
budget* plus a *hot-slot* counter. An insert that would shift more than ``shift_budget`` keys, or that collides
on a predicted slot which already absorbed ``hot_slot_threshold`` colliding inserts, goes to a small
B+-tree-like overflow (sorted chunks of at most ``chunk_size`` keys) instead of the gapped array. Both attacks
that hurt ALEX funnel their keys through one slot (copies of one key, or keys packed ever tighter between two
neighbours), and a legitimate workload almost never does (a fitted model leaves a gap every few slots, so most
inserts land on a gap and are not even tracked), so the guard catches the attacks with little overhead. Overflow
shifts are counted into the same ``shifts`` counter and overflow bytes into ``memory()``, so measurements stay
honest.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["MITIGATIONS", "HotSlotGuard", "alex_factory"]

MITIGATIONS: tuple[str, ...] = ("none", "duplicate_aware", "max_retrains", "guard")


class _ChunkedSortedList:
    """Sorted keys in chunks of bounded size (the leaf level of a B+-tree): inserts move at most a chunk."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.chunks: list[list[float]] = []
        self.payloads: list[list[Any]] = []
        self.firsts: list[float] = []  # first key of each chunk, for bisect
        self.size = 0

    def insert(self, key: float, payload: Any) -> int:
        """Insert and return the number of element moves (the shift count a gapped array would report)."""
        self.size += 1
        if not self.chunks:
            self.chunks.append([key])
            self.payloads.append([payload])
            self.firsts.append(key)
            return 0
        c = max(0, bisect.bisect_right(self.firsts, key) - 1)
        chunk = self.chunks[c]
        pos = bisect.bisect_right(chunk, key)
        chunk.insert(pos, key)
        self.payloads[c].insert(pos, payload)
        self.firsts[c] = chunk[0]
        moves = len(chunk) - 1 - pos
        if len(chunk) > self.chunk_size:
            half = len(chunk) // 2
            self.chunks.insert(c + 1, chunk[half:])
            self.payloads.insert(c + 1, self.payloads[c][half:])
            del chunk[half:]
            del self.payloads[c][half:]
            self.firsts.insert(c + 1, self.chunks[c + 1][0])
            moves += len(self.chunks[c + 1])
        return moves

    def find(self, key: float) -> Any | None:
        c = bisect.bisect_right(self.firsts, key) - 1
        while c >= 0:
            chunk = self.chunks[c]
            pos = bisect.bisect_left(chunk, key)
            if pos < len(chunk) and chunk[pos] == key:
                return self.payloads[c][pos]
            if pos > 0:
                return None
            c -= 1  # equal keys may straddle a chunk boundary
        return None

    def erase(self, key: float) -> int:
        removed = 0
        for c in range(len(self.chunks) - 1, -1, -1):
            chunk = self.chunks[c]
            keep = [i for i, k in enumerate(chunk) if k != key]
            if len(keep) != len(chunk):
                removed += len(chunk) - len(keep)
                self.chunks[c] = [chunk[i] for i in keep]
                self.payloads[c] = [self.payloads[c][i] for i in keep]
        kept = [c for c, ch in enumerate(self.chunks) if ch]
        self.chunks = [self.chunks[c] for c in kept]
        self.payloads = [self.payloads[c] for c in kept]
        self.firsts = [ch[0] for ch in self.chunks]
        self.size -= removed
        return removed

    def items(self, lo: float, hi: float) -> Iterator[tuple[float, Any]]:
        for chunk, pays in zip(self.chunks, self.payloads, strict=True):
            for k, p in zip(chunk, pays, strict=True):
                if lo <= k <= hi:
                    yield k, p

    def bytes(self, key_bytes: int, payload_bytes: int) -> tuple[int, int]:
        """(data bytes, index bytes): full chunks are allocated, plus one separator key + pointer per chunk."""
        data = len(self.chunks) * self.chunk_size * (key_bytes + payload_bytes)
        index = len(self.chunks) * (key_bytes + 8)
        return data, index


class HotSlotGuard:
    """An ALEX index behind a hot-slot guard (see the module docstring); delegates everything else to ALEX.

    Per insert the guard finds where ALEX would put the key (the upper bound in its data node). A key that lands
    on a free slot goes straight to ALEX, untracked (most legitimate inserts). A key that collides is diverted
    to the overflow when moving the block to the closest gap would exceed ``shift_budget`` shifts, or when its
    predicted slot has already absorbed ``hot_slot_threshold`` colliding inserts (copies of one key collide
    on the same slot without necessarily being far from a gap yet).
    """

    def __init__(self, inner: Any, *, hot_slot_threshold: int = 8, shift_budget: int = 32, chunk_size: int = 32,
                 max_tracked_slots: int = 1 << 20) -> None:
        self.inner = inner
        self.hot_slot_threshold = hot_slot_threshold
        self.shift_budget = shift_budget
        self.max_tracked_slots = max_tracked_slots
        self.overflow = _ChunkedSortedList(chunk_size)
        self.diverted = 0
        self._slot_hits: dict[tuple[int, int, int], int] = {}

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found on the guard: leaves(), depth(), counters, config, ... Dunders
        # (``__deepcopy__``!) must not reach ALEX, or copying the guard would return a bare copy of ALEX.
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def bulk_load(self, keys, payloads=None) -> None:
        self.inner.bulk_load(keys, payloads)
        self._slot_hits.clear()

    def _should_divert(self, key: float) -> bool:
        node = self.inner.leaf_for(key)
        capacity = int(node.capacity)
        pos = int(node.keys.searchsorted(key, "right"))
        if pos < capacity and not node.bitmap[pos]:
            return False  # lands on a gap: no shift, nothing to watch
        pos = min(pos, capacity - 1)
        gap = node.closest_gap(pos)
        if gap < 0 or abs(gap - pos) > self.shift_budget:
            return True
        # The node's identity and capacity: a resized or replaced node starts with fresh counts.
        slot = (id(node), capacity, int(node.predict(key)))
        hits = self._slot_hits.get(slot, 0) + 1
        if len(self._slot_hits) >= self.max_tracked_slots:
            self._slot_hits.clear()  # bounded memory; a real attack re-heats its slot within a few inserts
        self._slot_hits[slot] = hits
        return hits > self.hot_slot_threshold

    def insert(self, key: float, payload: Any = 0) -> None:
        key = float(key)
        if self._should_divert(key):
            self.diverted += 1
            moves = self.overflow.insert(key, payload)
            counters = self.inner.counters
            counters.inserts += 1
            counters.shifts += moves
            return
        self.inner.insert(key, payload)

    def lookup(self, key: float) -> Any | None:
        found = self.inner.lookup(key)
        return found if found is not None else self.overflow.find(float(key))

    def erase(self, key: float) -> int:
        return int(self.inner.erase(key)) + self.overflow.erase(float(key))

    def range(self, lo: float, hi: float) -> list:
        merged = list(self.inner.range(lo, hi)) + list(self.overflow.items(lo, hi))
        merged.sort(key=lambda kv: kv[0])
        return merged

    def __len__(self) -> int:
        return len(self.inner) + self.overflow.size

    def memory(self) -> Any:
        usage = self.inner.memory()
        cfg = getattr(self.inner, "config", None)
        data, index = self.overflow.bytes(getattr(cfg, "key_bytes", 8), getattr(cfg, "payload_bytes", 8))
        # The collision-count table, as a compact hash map would hold it: key (3 words) + count per slot.
        index += len(self._slot_hits) * 32
        return type(usage)(data_bytes=usage.data_bytes + data, index_bytes=usage.index_bytes + index)


# Modelled bytes at which ALEX raises AlexOutOfMemory (its stand-in for the C++ crash). The Python index really
# allocates its pointer arrays, so we stop well before the machine's RAM: one OOM insert can split thousands of
# times, and the 1 GiB default would cost this process gigabytes.
DEFAULT_MEMORY_LIMIT_BYTES = 256 << 20


def alex_factory(mitigation: str = "none", *, max_retrains: int = 4, hot_slot_threshold: int = 8,
                 shift_budget: int = 32, **config_overrides: Any) -> Callable[[], Any]:
    """A zero-argument factory of fresh (empty) indexes with ``mitigation`` applied (one of :data:`MITIGATIONS`).

    ``config_overrides`` are :class:`AlexConfig` fields (``memory_limit_bytes`` defaults to 256 MiB here).
    """
    from .alex import Alex, AlexConfig

    config_overrides.setdefault("memory_limit_bytes", DEFAULT_MEMORY_LIMIT_BYTES)
    if mitigation == "none":
        return lambda: Alex(AlexConfig(**config_overrides))
    if mitigation == "duplicate_aware":
        return lambda: Alex(AlexConfig(duplicate_aware_split=True, **config_overrides))
    if mitigation == "max_retrains":
        return lambda: Alex(AlexConfig(max_retrains_per_node=max_retrains, **config_overrides))
    if mitigation == "guard":
        return lambda: HotSlotGuard(Alex(AlexConfig(**config_overrides)), hot_slot_threshold=hot_slot_threshold,
                                    shift_budget=shift_budget)
    raise ValueError(f"unknown mitigation {mitigation!r}; choose one of {', '.join(MITIGATIONS)}")
