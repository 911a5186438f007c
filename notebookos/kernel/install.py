"""Applying node records on a replica: new nodes constructed, existing ones changed in place (see ``graph.py``).

Records are applied in two phases. Constructors first, each after the nodes its arguments name (a numpy view
after its base, an instance after its class); then state, children before parents, so an object is complete
before it becomes a dict key or a set member. Reference cycles resolve because no constructor needs its own
object. A new array or tensor whose data is a blob in the object store is built over the store's copy-on-write
mapping instead of being copied.
"""

from __future__ import annotations

import logging
from typing import Any

from . import graph, reduction
from .graph import NodeRecord, ObjectTable

log = logging.getLogger(__name__)


def same_record(node: graph.Node | None, record: NodeRecord) -> bool:
    """Whether this replica's node already holds ``record`` (same constructor and state digests)."""
    if node is None or node.record is None:
        return False
    old = node.record
    return old.ctor.digest == record.ctor.digest and (
        (old.body is None and record.body is None)
        or (old.body is not None and record.body is not None and old.body.digest == record.body.digest))


class Installer:
    """Applies node records to a tracker's table: constructors in dependency order, then state."""

    def __init__(self, table: ObjectTable, user_ns: dict[str, Any], records: dict[str, NodeRecord],
                 parts: dict[tuple[str, str], tuple[Any, list]], failed: dict[str, str]):
        self.table = table
        self.user_ns = user_ns
        self.records = records
        self.parts = parts
        self.failed = failed
        self.fresh: set[str] = set()
        self.filled: set[str] = set()
        self.constructing: set[str] = set()
        self.done: set[str] = set()

    def run(self) -> None:
        for oid in self.records:
            self._construct(oid)
        for oid in self._fill_order():
            if oid in self.failed or oid in self.filled or self.records[oid].body is None:
                continue
            try:
                body = self._load(oid, "body")
                reduction.fill(self.table.obj(oid), body, oid in self.fresh)
            except Exception as exc:
                log.exception("could not fill node %s", oid)
                self.failed[oid] = f"{type(exc).__name__}: {exc}"
        for oid, record in self.records.items():
            node = self.table.nodes.get(oid)
            if node is not None and oid not in self.failed:
                node.record = record
                node.signal = reduction.signal_of(node.obj)

    def _load(self, oid: str, which: str) -> Any:
        header, buffers = self.parts[oid, which]
        return graph.load_part(header, buffers, self.user_ns, self._resolve)

    def _resolve(self, oid: str) -> Any:
        if oid in self.records and oid not in self.done:
            self._construct(oid)
        if oid in self.failed:
            raise KeyError(f"node {oid} could not be loaded ({self.failed[oid]})")
        return self.table.obj(oid)

    def _construct(self, oid: str) -> None:
        if oid in self.done or oid in self.failed:
            return
        if oid in self.constructing:
            raise RecursionError(f"node {oid} is needed to construct itself")
        self.constructing.add(oid)
        try:
            record = self.records[oid]
            node = self.table.nodes.get(oid)
            if node is not None and node.record is not None and node.record.ctor.digest == record.ctor.digest:
                return
            func, args = self._load(oid, "ctor")
            if node is not None and reduction.reconstruct_in_place(node.obj, func, args):
                return
            obj = self._build(oid, func, args, record)
            self.table.bind(oid, obj, None)
            self.fresh.add(oid)
        except Exception as exc:
            log.exception("could not construct node %s", oid)
            self.failed[oid] = f"{type(exc).__name__}: {exc}"
        finally:
            self.constructing.discard(oid)
            self.done.add(oid)

    def _build(self, oid: str, func: Any, args: tuple, record: NodeRecord) -> Any:
        """Construct a new node; an array or tensor whose data came from the store maps it instead of copying."""
        body = record.body
        if func in (reduction.new_array, reduction.new_tensor) and body is not None and body.kind == "blob":
            _, buffers = self.parts[oid, "body"]
            if buffers and not memoryview(buffers[0]).readonly:
                self.filled.add(oid)
                return reduction.from_buffer(func, args, buffers[0])
        return reduction.construct(func, args)

    def _fill_order(self) -> list[str]:
        """Children before parents (post-order over the records' body references)."""
        order: list[str] = []
        seen: set[str] = set()
        for start in self.records:
            if start in seen:
                continue
            stack = [(start, iter(self.records[start].body_refs))]
            seen.add(start)
            while stack:
                oid, children = stack[-1]
                for child in children:
                    if child in self.records and child not in seen:
                        seen.add(child)
                        stack.append((child, iter(self.records[child].body_refs)))
                        break
                else:
                    stack.pop()
                    order.append(oid)
        return order


