"""Configuration, counters and memory report types of the Python ALEX (the public contract)."""

from __future__ import annotations

from dataclasses import dataclass


class AlexOutOfMemory(MemoryError):
    """Raised where C++ ALEX would keep allocating until the process runs out of memory."""


@dataclass
class AlexConfig:
    max_density: float = 0.8  # kMaxDensity: expansion threshold
    init_density: float = 0.7  # kInitDensity: density of freshly built nodes
    min_density: float = 0.6  # kMinDensity: density after an expansion; contraction threshold
    catastrophic_shifts: float = 100.0  # average shifts per insert counted as catastrophic
    catastrophic_check_every: int = 64  # inserts between catastrophic-cost checks
    max_fanout: int = 2**21  # max pointers in a model node (1<<24 bytes / 8)
    max_data_node_bytes: int = 1 << 24  # max data node size (slots = this / (key + payload bytes))
    key_bytes: int = 8
    payload_bytes: int = 8
    # mitigations, all off by default (faithful ALEX):
    duplicate_aware_split: bool = False
    max_retrains_per_node: int | None = None
    # simulation guards standing in for the C++ out-of-memory crash:
    memory_limit_bytes: int = 1 << 30
    max_splits_per_insert: int = 100_000


_COUNTER_NAMES = (
    "inserts", "lookups", "shifts", "search_steps", "model_retrains", "expansions",
    "sideways_splits", "downward_splits", "catastrophic_triggers", "node_lookups", "root_expansions",
)


class OpCounters:
    """Cumulative operation counters (plain int attributes)."""

    __slots__ = _COUNTER_NAMES

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in _COUNTER_NAMES:
            setattr(self, name, 0)

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _COUNTER_NAMES}

    def __repr__(self) -> str:
        return f"OpCounters({self.snapshot()})"


@dataclass
class MemoryUsage:
    data_bytes: int  # data nodes: key+payload slots incl. gaps, packed bitmaps, node headers
    index_bytes: int  # model nodes: pointer arrays, models, headers

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.index_bytes
