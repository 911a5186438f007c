"""The replicated state machine of one kernel's Raft group: :class:`CellLog`.

Consensus (PySyncObj, ``consensus.py``), this state machine and what an entry *means* to a Python namespace
(``namespace.py``) live apart, as in etcd's raftexample.

:class:`CellLog`'s replicated methods run on every replica, in PySyncObj's tick thread, in log order. They only
update small bookkeeping (sequence number, refs to the committed values, history) and hand each committed event
(:class:`CommittedEvent`) to a callback; materialising values into a namespace is the caller's job, on its own
thread, so a large value never stalls Raft heartbeats.

Entries carry pickled bytes that PySyncObj passes through untouched. Snapshots (PySyncObj log compaction) contain
the refs of every committed value, never the values themselves: values over the inline limit are in the object
store, keyed by digest.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pysyncobj import SyncObjConsumer, replicated

from . import pysyncobj_setup  # noqa: F401  (PySyncObj's global side effects undone)
from .garbage import BlobLedger


@dataclass
class CommittedEvent:
    """One thing the state machine applied, handed to the applier in log order."""

    kind: str  # "cell" | "barrier" | "snapshot"
    seq: int
    entry: dict[str, Any] = field(default_factory=dict)


class CellLog(SyncObjConsumer):
    """The committed history of one kernel: which cells ran and the refs of the values they left behind."""

    def __init__(self, on_commit: Callable[[CommittedEvent], None]):
        # Attributes set before SyncObjConsumer.__init__ are treated as local, not replicated.
        self._on_commit = on_commit
        self._lock = threading.Lock()  # the kernel thread reads the garbage list while the tick thread applies
        super().__init__()
        self.seq = 0
        self.execution_count = 0
        self.records: dict[str, Any] = {}  # name -> namespace.ValueRef of its binding
        self.nodes: dict[str, Any] = {}  # oid -> graph.NodeRecord: the objects the names and outputs reach
        # (execution_count, raw code, transformed code or None) of stored cells
        self.history: list[tuple[int, str, str | None]] = []
        self.outputs: dict[int, Any] = {}  # execution_count -> ValueRef of Out[n]
        self.recent_entries: dict[str, int] = {}  # entry_id -> seq, so a retried proposal applies once
        self.blobs = BlobLedger()  # which object-store blobs the committed refs use (see garbage.py)

    @replicated
    def commit_cell(self, payload: bytes) -> int:
        entry = pickle.loads(payload)
        entry_id = entry.get("entry_id")
        if entry_id in self.recent_entries:
            return self.recent_entries[entry_id]
        self.seq += 1
        if entry_id is not None:
            self.recent_entries[entry_id] = self.seq
            if len(self.recent_entries) > 256:
                del self.recent_entries[next(iter(self.recent_entries))]
        delta = entry["delta"]
        with self._lock:
            self.blobs.collected(entry.get("collected", ()))
            for name, ref in delta.updated.items():
                self.blobs.rebind(self.records.get(name), ref, self.seq)
                self.records[name] = ref
            for name in list(delta.deleted) + list(delta.unserialisable):
                self.blobs.rebind(self.records.pop(name, None), None, self.seq)
            for oid, record in delta.nodes.items():
                old = self.nodes.get(oid)
                self.blobs.rebind(old.ctor if old is not None else None, record.ctor, self.seq)
                self.blobs.rebind(old.body if old is not None else None, record.body, self.seq)
                self.nodes[oid] = record
            for oid in delta.dropped:
                old = self.nodes.pop(oid, None)
                if old is not None:
                    self.blobs.rebind(old.ctor, None, self.seq)
                    self.blobs.rebind(old.body, None, self.seq)
            if entry.get("store_history"):
                self.execution_count = entry["execution_count"]
                self.history.append((entry["execution_count"], entry["code"], entry.get("code_parsed")))
                out = delta.extras.get("Out")
                if out is not None:
                    self.blobs.rebind(self.outputs.get(entry["execution_count"]), out, self.seq)
                    self.outputs[entry["execution_count"]] = out
        self._on_commit(CommittedEvent("cell", self.seq, entry))
        return self.seq

    @replicated
    def barrier(self, token: str) -> int:
        """A no-op entry: once it is applied locally, every entry committed before it has been applied too."""
        self._on_commit(CommittedEvent("barrier", self.seq, {"token": token}))
        return self.seq

    def garbage(self) -> list[str]:
        """Digests of the blobs no committed name or output refers to any more (safe from any thread)."""
        with self._lock:
            return self.blobs.pending()

    def _serialize(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "execution_count": self.execution_count,
            "records": dict(self.records),
            "nodes": dict(self.nodes),
            "history": list(self.history),
            "outputs": dict(self.outputs),
            "recent_entries": dict(self.recent_entries),
            "garbage": self.blobs.state(),
        }

    def _deserialize(self, data: dict[str, Any]) -> None:
        self.seq = data["seq"]
        self.execution_count = data["execution_count"]
        self.records = dict(data["records"])
        self.nodes = dict(data.get("nodes", {}))
        self.history = list(data["history"])
        self.outputs = dict(data["outputs"])
        self.recent_entries = dict(data.get("recent_entries", {}))
        with self._lock:
            parts = [p for r in self.nodes.values() for p in (r.ctor, r.body) if p is not None]
            self.blobs = BlobLedger.from_state([*self.records.values(), *self.outputs.values(), *parts],
                                               data.get("garbage", {}))
        self._on_commit(CommittedEvent("snapshot", self.seq, self._serialize()))
