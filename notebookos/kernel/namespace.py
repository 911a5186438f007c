"""A kernel's replicated state: what a cell did to the user namespace, as a delta, and applying it elsewhere.

The replica that ran a cell calls :meth:`NamespaceTracker.capture`; the :class:`CellDelta` it returns goes into
the Raft log; every other replica calls :meth:`NamespaceTracker.apply` on it, after which their namespaces hold
the same object graph: the same values, and the same objects shared between names, containers and cells (an
optimiser holds its model's parameters on every replica, not copies). ``graph.py`` says how: every mutable
object reachable from the namespace is a *node* with an id all replicas share, and a delta carries the records of
the nodes that are new or changed, each referring to other nodes by id. A name is bound to a small pickle of its
value in which nodes are ids. Records whose serialised size exceeds :data:`INLINE_LIMIT` (or that would take a
delta past :data:`INLINE_BUDGET` in-band bytes) go to the object store and the delta carries only their digest.
:meth:`~NamespaceTracker.restore` makes a namespace match a snapshot of every committed name and node.

Finding what a cell changed without walking the whole graph after every cell: the walk starts from the
*candidate* names: new, deleted and rebound names, every identifier in the cell's code, every global read or
written by a cell-defined function or class the cell mentions (transitively), and every name whose graph was
small (under :data:`REHASH_LIMIT` bytes of records) when last walked. Everything reachable from a candidate is
re-examined: torch tensors by their version counter and data pointer (exact, free), everything else by the
digest of its record, so a mutation anywhere under a candidate is found, however deep (``d["a"][0] = 1`` with
``d`` mentioned ships the array behind ``d["a"]``).

What a follower can still miss (each listed in the README, with a test):

* A mutation of an object reachable *only* from names the cell does not mention, whose graph is large, and not
  through a cell-defined function the cell calls: e.g. a library function given a big array through a
  container held by another object. The cell's output names nothing in that case; mention the name (a bare
  ``big`` line) to have it re-examined.
* In-place writes to a tensor's memory that bypass its version counter (``t.data.add_(1)``, a write through
  ``t.numpy()``) in a cell whose code says none of ``.data``, ``.numpy(``, ``from_numpy``, ``frombuffer``,
  ``dlpack`` (:data:`_BYPASSES_VERSION`; a cell that does re-hashes the tensors it reaches).
* A numpy array sharing a tensor's memory is replicated as a copy; the cell that makes it warns once
  (:attr:`NamespaceTracker.caveats`).
* Unserialisable values (open files, sockets, locks, generators, threads...) are not replicated; the cell's
  output warns about them (:func:`format_unserialisable_warning`) and followers drop their stale value of that
  name. Tensor gradients (``.grad``) are not part of a tensor's record.
* Widgets (``ipywidgets`` widgets, ``tqdm.notebook`` bars, functions made by ``interact``:
  ``serialize.is_front_end_state``) are front-end state, tied to a comm of the replica that made them. A name
  bound to one is not a replicated name (:func:`is_replicated_name`) and an ``Out`` value that is one is not
  carried: no warning, and on the other replicas the name is unbound (a name rebound to a widget is deleted
  there). A container holding a widget is unserialisable and warned about as above.

A tracker is not thread-safe; use it from one thread at a time.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import re
import weakref
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from ..objectstore.base import ObjectNotFound, ObjectStore, as_bytes_view, content_digest
from . import graph, mentions, reduction, serialize
from .graph import NodeRecord, ObjectTable
from .install import Installer, same_record

log = logging.getLogger(__name__)

INLINE_LIMIT = 256 << 10  # values whose serialised size exceeds this go to the object store
# In-band bytes one delta may carry; further changed values go to the object store even if small. PySyncObj
# pickles, compresses and encrypts an entry on its tick thread once per follower (and a follower undoes it on
# its own), so in-band bytes delay heartbeats on every replica, while the store writes them once, locally.
INLINE_BUDGET = 1 << 20
PACK_LIMIT = 64 << 10  # past the budget, values smaller than this are stored together in one blob per cell
REHASH_LIMIT = 64 << 10  # names whose graph's records are smaller than this are re-examined after every cell
REHASH_NODES = 64  # ... and that have at most this many nodes
HASH_IN_PARALLEL = 64 << 10  # record parts this large are hashed on threads, all of a cell's at once

# IPython keeps these itself (In/Out are replicated by the kernel from the cell history).
IPYTHON_NAMES = frozenset(
    {"_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh", "In", "Out", "exit", "quit", "get_ipython"}
)
_IPYTHON_CACHE_NAME = re.compile(r"_i?\d+")
_BYPASSES_VERSION = re.compile(r"\.data\b|\.numpy\(|from_numpy|frombuffer|dlpack|\.untyped_storage\(")

_MISSING = object()


@dataclass
class ValueRef:
    """One serialised value in a Raft entry: a name's binding, or one part of a node's record.

    ``refs`` are the node ids the value refers to (for a binding; a record lists them itself).
    """

    kind: str  # "inline" | "blob" | "packed"
    digest: str  # content digest of this value
    data: bytes | None = field(default=None, repr=False)  # inline: the pickle bytes
    size: int = 0
    buffers: list[bytes] | None = field(default=None, repr=False)  # inline: out-of-band buffers, if any
    refs: tuple[str, ...] = ()
    # packed: small values past a cell's in-band budget travel together, as entry ``slot`` of the blob ``pack``
    # (a cell that creates 10,000 small objects writes one blob, not 10,000)
    pack: str | None = None
    slot: int = 0


@dataclass
class CellDelta:
    """A cell's effect on the namespace."""

    updated: dict[str, ValueRef]  # new or rebound names
    deleted: list[str]
    # name -> reason. Not replicated; followers drop any stale value of these names.
    unserialisable: dict[str, str]
    # Values the caller asked to carry that are not namespace names (e.g. the cell's Out value).
    extras: dict[str, ValueRef]
    unserialisable_extras: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)  # new or changed nodes
    dropped: list[str] = field(default_factory=list)  # nodes nothing refers to any more


def is_replicated_name(name: Any, user_ns: Mapping[str, Any] | None = None, hidden: Any = ()) -> bool:
    """Whether ``name`` is user state to replicate, rather than Python's or IPython's own, or a widget (front-end
    state, see the module docstring)."""
    if not isinstance(name, str) or name in IPYTHON_NAMES or _IPYTHON_CACHE_NAME.fullmatch(name):
        return False
    if name.startswith("__") and name.endswith("__"):
        return False
    if user_ns is not None and serialize.is_front_end_state(user_ns.get(name)):
        return False
    if isinstance(hidden, Mapping):
        # IPython's rule (as in %who): a hidden name the user rebound is the user's again.
        return name not in hidden or user_ns is None or user_ns.get(name, _MISSING) is not hidden[name]
    return name not in hidden


def format_unserialisable_warning(unserialisable: dict[str, str]) -> str:
    """One line per value that was not replicated, saying what a failover would lose."""
    return "\n".join(
        f"Warning: {name!r} was not replicated ({reason}); if this kernel fails over to another replica, "
        f"{name!r} will be lost."
        for name, reason in sorted(unserialisable.items())
    )


@dataclass(slots=True)
class _Binding:
    """What the tracker last knew of one name."""

    obj_id: int
    type_: type
    wref: weakref.ref | None
    ref: ValueRef | None  # None: not replicated (unserialisable, or primed and never shipped)
    reason: str | None = None  # why it could not be serialised
    primed: bool = False  # present since prime(): this replica's own, never replicated
    small: bool = True  # its graph is cheap enough to re-examine after every cell

    def same_object(self, obj: Any) -> bool:
        if id(obj) != self.obj_id or type(obj) is not self.type_:
            return False
        return self.wref is None or self.wref() is obj


def _binding(obj: Any, ref: ValueRef | None = None, *, reason: str | None = None, primed: bool = False,
             small: bool = True) -> _Binding:
    try:
        wref = weakref.ref(obj)
    except TypeError:
        wref = None
    return _Binding(id(obj), type(obj), wref, ref, reason, primed, small)


@dataclass
class _Serialised:
    """A value serialised during a capture, until it is shipped."""

    header: bytes
    buffers: list[memoryview]
    refs: tuple[str, ...]
    digest: str | None  # None until hashed (large parts are hashed together, in parallel, after the walk)
    size: int


class _Walk:
    """One capture's walk over the nodes reachable from its candidates."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        # oid -> (ctor, body, tensor signal) of every node re-reduced, until the digests are known
        self.examined: dict[str, tuple[_Serialised, _Serialised | None, tuple | None]] = {}
        self.changed: dict[str, tuple[_Serialised, _Serialised | None, NodeRecord]] = {}
        self.failed: dict[str, str] = {}  # oid -> reason
        self.parents: dict[str, set[str]] = {}  # child oid -> the oids whose records refer to it
        self.new: set[str] = set()  # oids allocated during this walk
        self.caveats: dict[str, str] = {}  # name -> what followers hold differently (reduction.Reduction.caveat)
        self.root = ""  # the name being walked from, for caveats
        self.distrust_signals = False  # re-hash tensors even when their version counter did not move


class NamespaceTracker:
    """Computes (leader) and applies (followers) the deltas of one user namespace."""

    def __init__(
        self,
        user_ns: dict[str, Any],
        store: ObjectStore,
        hidden: Iterable[str] = (),
        inline_limit: int = INLINE_LIMIT,
        rehash_limit: int = REHASH_LIMIT,
        inline_budget: int = INLINE_BUDGET,
    ):
        self.user_ns = user_ns
        self.store = store
        # Kept live when it is a mapping or set (IPython's user_ns_hidden grows as the shell starts up).
        self.hidden = hidden if isinstance(hidden, Mapping | Set) else frozenset(hidden)
        self.inline_limit = inline_limit
        self.rehash_limit = rehash_limit
        self.inline_budget = inline_budget
        #: what -> reason, for values the last apply/restore could not materialise (names are left unbound).
        self.apply_errors: dict[str, str] = {}
        #: name -> digest of a blob the store no longer has (collected as garbage, see garbage.py). Only a replica
        #: behind the log sees this, and a later entry it has yet to apply rebinds or deletes the name.
        self.missing: dict[str, str] = {}
        self.table = ObjectTable()
        self._bindings: dict[str, _Binding] = {}
        self._pinned: set[str] = set()  # nodes the extras (Out values) keep alive
        self._missing_nodes: dict[str, str] = {}  # oid -> digest of its missing blob
        self._blamed: list[str] = []  # failed nodes already reported under a name
        self._packs: dict[str, list] = {}  # recently read packs of small values (see ValueRef.pack)
        self._cautioned: set[str] = set()  # nodes whose caveat the user was already shown
        #: name -> what followers hold differently, from the last capture (shown in the cell's output, once)
        self.caveats: dict[str, str] = {}

    # -- shared ----------------------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        ns = self.user_ns
        return sorted(n for n in list(ns) if is_replicated_name(n, ns, self.hidden))

    def prime(self) -> None:
        """Take the current namespace as this replica's own starting point: nothing in it is shipped unless a
        cell rebinds or mentions it."""
        ns = self.user_ns
        self._bindings = {n: _binding(ns[n], primed=True) for n in self._names()}

    def records(self) -> dict[str, ValueRef]:
        """The replicated names' bindings, as of the last capture/apply/restore."""
        ns = self.user_ns
        return {n: b.ref for n, b in sorted(self._bindings.items())
                if b.ref is not None and b.same_object(ns.get(n, _MISSING))}

    def node_records(self) -> dict[str, NodeRecord]:
        """Every node's record, as of the last capture/apply/restore."""
        return {oid: node.record for oid, node in self.table.nodes.items() if node.record is not None}

    def _roots(self) -> set[str]:
        roots = set(self._pinned)
        for b in self._bindings.values():
            if b.ref is not None:
                roots.update(b.ref.refs)
        return roots

    # -- leader ----------------------------------------------------------------------------------------------
    async def capture(self, code: str, extras: dict[str, object] | None = None) -> CellDelta:
        """What the cell that just ran (``code``) changed, and ``extras`` serialised alongside."""
        ns = self.user_ns
        bindings = self._bindings
        names = self._names()
        current = set(names)
        deleted = sorted(n for n in bindings if n not in current)
        mentioned = mentions.mentioned(code or "", ns)
        candidates = [
            n for n in names
            if (b := bindings.get(n)) is None or not b.same_object(ns[n]) or n in mentioned
            or (b.ref is not None and b.small)
        ]

        walk = _Walk()
        # Writes through ``t.data`` or a numpy view of a tensor's memory do not bump its version counter.
        walk.distrust_signals = bool(_BYPASSES_VERSION.search(code or ""))
        values: dict[str, _Serialised] = {}
        reasons: dict[str, str] = {}
        for n in candidates:
            try:
                values[n] = self._serialise_value(ns[n])
            except Exception as exc:  # pickling runs arbitrary user __reduce__ code
                reasons[n] = serialize.unserialisable_reason(exc)
                continue
            walk.root = n
            self._walk(values[n].refs, walk)
        extra_values: dict[str, _Serialised] = {}
        extra_reasons: dict[str, str] = {}
        for key, obj in (extras or {}).items():
            if serialize.is_front_end_state(obj):  # a widget as the cell's Out value: not carried, not warned about
                continue
            try:
                extra_values[key] = self._serialise_value(obj)
            except Exception as exc:
                extra_reasons[key] = serialize.unserialisable_reason(exc)
                continue
            walk.root = key
            self._walk(extra_values[key].refs, walk)

        await self._compare(walk)

        # Ship the changed records (blobs stored concurrently); a node that cannot be recorded, or that the store
        # refused, spoils everything that reaches it in this walk.
        spent = [0]
        changed = [oid for oid in walk.changed if oid not in walk.failed]
        parts = [(oid, which, v) for oid in changed
                 for which, v in zip(("ctor", "body"), walk.changed[oid][:2], strict=True) if v is not None]
        shipped = await self._ship_all([v for _, _, v in parts], spent)
        nodes: dict[str, NodeRecord] = {oid: walk.changed[oid][2] for oid in changed}
        for (oid, which, _), ref in zip(parts, shipped, strict=True):
            if isinstance(ref, _StoreRefused):
                walk.failed[oid] = ref.reason
            else:
                setattr(nodes[oid], which, ref)
        nodes = {oid: r for oid, r in nodes.items() if oid not in walk.failed}
        spoiled = self._spoiled(walk)
        if spoiled:
            nodes = {oid: r for oid, r in nodes.items() if oid not in spoiled}
            for n, v in list(values.items()):
                if any(o in spoiled for o in v.refs):
                    reasons[n] = self._reason(v.refs, walk)
                    del values[n]
            for key, v in list(extra_values.items()):
                if any(o in spoiled for o in v.refs):
                    extra_reasons[key] = self._reason(v.refs, walk)
                    del extra_values[key]

        names_out = [n for n, v in values.items()
                     if (b := bindings.get(n)) is None or b.ref is None or b.ref.digest != v.digest
                     or not b.same_object(ns[n])]
        keys = list(extra_values)
        shipped = await self._ship_all([values[n] for n in names_out] + [extra_values[k] for k in keys], spent)
        updated: dict[str, ValueRef] = {}
        extra_refs: dict[str, ValueRef] = {}
        for n, ref in zip(names_out, shipped[:len(names_out)], strict=True):
            if isinstance(ref, _StoreRefused):
                reasons[n] = ref.reason
            else:
                updated[n] = ref
        for key, ref in zip(keys, shipped[len(names_out):], strict=True):
            if isinstance(ref, _StoreRefused):
                extra_reasons[key] = ref.reason
            else:
                extra_refs[key] = ref

        # Commit the walk to the table and the bindings; sweep if an edge may have gone.
        sweep = bool(deleted or reasons or walk.new - nodes.keys())
        for oid, record in nodes.items():
            node = self.table.nodes[oid]
            if node.record is not None and not set(node.record.refs).issubset(record.refs):
                sweep = True
            node.record = record
            node.signal = reduction.signal_of(node.obj)
        for n in deleted:
            del bindings[n]
        for n in reasons:
            b = bindings.get(n)
            sweep = sweep or (b is not None and b.ref is not None and bool(b.ref.refs))
            bindings[n] = _binding(ns[n], reason=reasons[n])
        for n in values:
            if n in reasons:
                continue
            b = bindings.get(n)
            ref = updated.get(n) or (b.ref if b is not None else None)
            if b is not None and b.ref is not None and not set(b.ref.refs).issubset(ref.refs):
                sweep = True
            bindings[n] = _binding(ns[n], ref, small=self._is_small(ref.refs))
        for ref in extra_refs.values():
            self._pinned.update(ref.refs)
        dropped: list[str] = []
        if sweep:
            gone = self.table.unreachable(self._roots())
            self.table.drop(gone)
            nodes = {oid: r for oid, r in nodes.items() if oid not in set(gone)}
            dropped = sorted(oid for oid in gone if oid not in walk.new)  # followers never saw the others
        self.caveats = walk.caveats
        return CellDelta(updated=updated, deleted=deleted, unserialisable=reasons, extras=extra_refs,
                         unserialisable_extras=extra_reasons, nodes=nodes, dropped=dropped)

    def _is_small(self, start: Iterable[str]) -> bool:
        """Whether the graph under ``start`` is cheap enough to re-examine after every cell."""
        nodes = self.table.nodes
        seen: set[str] = set()
        size = 0
        work = list(start)
        while work:
            oid = work.pop()
            if oid in seen or oid not in nodes:
                continue
            seen.add(oid)
            record = nodes[oid].record
            if record is None:
                continue
            size += record.ctor.size + (record.body.size if record.body is not None else 0)
            if len(seen) > REHASH_NODES or size >= self.rehash_limit:
                return False
            work.extend(record.refs)
        return True

    def _reason(self, start: Iterable[str], walk: _Walk) -> str:
        """Why a value reaching a failed node cannot be replicated: the first failure under it."""
        children: dict[str, list[str]] = {}
        for child, parents in walk.parents.items():
            for p in parents:
                children.setdefault(p, []).append(child)
        seen: set[str] = set()
        work = list(start)
        while work:
            oid = work.pop()
            if oid in seen:
                continue
            seen.add(oid)
            if oid in walk.failed:
                return walk.failed[oid]
            work.extend(children.get(oid, ()))
        return "refers to a value that could not be serialised"

    def _serialise_value(self, obj: Any) -> _Serialised:
        header, buffers, refs = graph.dump_part(obj, self.user_ns, self.table, ())
        return self._serialised(header, buffers, refs)

    def _serialised(self, header: bytes, buffers: list, refs: tuple[str, ...], defer: bool = False) -> _Serialised:
        views = [as_bytes_view(b) for b in buffers]
        size = len(header) + sum(v.nbytes for v in views)
        digest = None if defer and size >= HASH_IN_PARALLEL else content_digest(header, views)
        return _Serialised(header, views, refs, digest, size)

    async def _compare(self, walk: _Walk) -> None:
        """Hash the large parts of the walk's records together, then note which records changed."""
        pending = [v for ctor, body, _ in walk.examined.values() for v in (ctor, body)
                   if v is not None and v.digest is None]
        if pending:
            # Threads of their own, not the digest pool: content_digest itself hashes a large part's leaves there,
            # and waiting on that pool from its own workers could leave none to do the hashing.
            digests = await asyncio.gather(*(asyncio.to_thread(content_digest, v.header, v.buffers)
                                             for v in pending))
            for v, digest in zip(pending, digests, strict=True):
                v.digest = digest
        for oid, (ctor, body, signal) in walk.examined.items():
            node = self.table.nodes[oid]
            old = node.record
            if old is None or old.ctor.digest != ctor.digest or (old.body is None) != (body is None) or (
                    body is not None and old.body.digest != body.digest):
                walk.changed[oid] = (ctor, body, NodeRecord(None, None, ctor.refs, body.refs if body else ()))
            elif signal is not None:
                node.signal = signal

    def _walk(self, start: Iterable[str], walk: _Walk) -> None:
        """Examine every node reachable from ``start`` not yet seen in this walk."""
        table = self.table
        work = [oid for oid in start]
        while work:
            oid = work.pop()
            if oid in walk.seen:
                continue
            walk.seen.add(oid)
            node = table.nodes[oid]
            if node.record is None:
                walk.new.add(oid)
            try:
                children = self._examine(oid, node, walk)
            except Exception as exc:  # pickling runs arbitrary user __reduce__ code
                walk.failed[oid] = serialize.unserialisable_reason(exc)
                continue
            for child in children:
                walk.parents.setdefault(child, set()).add(oid)
                if child not in walk.seen:
                    work.append(child)

    def _examine(self, oid: str, node: graph.Node, walk: _Walk) -> tuple[str, ...]:
        """Re-reduce one node into ``walk.examined`` (compared once hashed, see :meth:`_compare`); return the oids
        it refers to."""
        obj = node.obj
        if node.record is not None and node.signal is not None and not walk.distrust_signals \
                and reduction.signal_of(obj) == node.signal:
            return node.record.refs
        parts = reduction.reduce_node(obj, self._reducer())
        ctor = self._serialised(*graph.dump_part(parts.ctor, self.user_ns, self.table, parts.transient),
                                defer=True)
        body = None
        if parts.body is not None:
            body = self._serialised(*graph.dump_part(parts.body, self.user_ns, self.table, parts.transient),
                                    defer=True)
        walk.examined[oid] = (ctor, body, parts.signal)
        if parts.caveat is not None and oid not in self._cautioned:
            self._cautioned.add(oid)
            walk.caveats[walk.root] = parts.caveat
        return ctor.refs + (body.refs if body is not None else ())

    def _reducer(self) -> serialize.NamespacePickler:
        pickler = getattr(self, "_reducer_pickler", None)
        if pickler is None:
            pickler = self._reducer_pickler = serialize.NamespacePickler(_NullFile(), self.user_ns)
        return pickler

    def _spoiled(self, walk: _Walk) -> set[str]:
        spoiled: set[str] = set()
        work = list(walk.failed)
        while work:
            oid = work.pop()
            if oid in spoiled:
                continue
            spoiled.add(oid)
            work.extend(walk.parents.get(oid, ()))
        return spoiled

    async def _ship_all(self, values: list[_Serialised], spent: list[int]) -> list[ValueRef | _StoreRefused]:
        """The refs to put in the entry, in order: inline bytes while the budget lasts, else blobs the store now
        holds (written concurrently). A value the store refused gives a :class:`_StoreRefused`."""
        out: list[ValueRef | _StoreRefused | None] = []
        puts = []
        packed: list[tuple[int, _Serialised]] = []
        for v in values:
            if v.size <= self.inline_limit and spent[0] + v.size <= self.inline_budget:
                spent[0] += v.size
                buffers = [bytes(b) for b in v.buffers] or None
                out.append(ValueRef("inline", v.digest, v.header, v.size, buffers, v.refs))
            elif v.size < PACK_LIMIT:
                out.append(None)
                packed.append((len(out) - 1, v))
            else:
                out.append(None)
                puts.append((len(out) - 1, v))
        if packed:
            pack = pickle.dumps([(v.header, [bytes(b) for b in v.buffers]) for _, v in packed],
                                protocol=pickle.HIGHEST_PROTOCOL)
            try:
                pack_digest, _ = await self.store.put(pack, [])
            except Exception as exc:
                log.error("object store %s refused a value: %s", self.store.location, exc)
                refused = _StoreRefused(
                    f"could not be written to the object store: {serialize.unserialisable_reason(exc)}")
                for i, _ in packed:
                    out[i] = refused
            else:
                for slot, (i, v) in enumerate(packed):
                    out[i] = ValueRef("packed", v.digest, None, v.size, None, v.refs, pack_digest, slot)
        results = await asyncio.gather(*(self.store.put(v.header, v.buffers, digest=v.digest) for _, v in puts),
                                       return_exceptions=True)
        for (i, v), result in zip(puts, results, strict=True):
            if isinstance(result, BaseException):
                log.error("object store %s refused a value: %s", self.store.location, result)
                out[i] = _StoreRefused(
                    f"could not be written to the object store: {serialize.unserialisable_reason(result)}")
            else:
                digest, size = result
                out[i] = ValueRef("blob", digest, None, size, None, v.refs)
        return out

    # -- followers -------------------------------------------------------------------------------------------
    async def apply(self, delta: CellDelta) -> dict[str, object]:
        """Make the namespace reflect ``delta``; return its extras, materialised."""
        self.apply_errors = {}
        ns = self.user_ns
        for n in [*delta.deleted, *delta.unserialisable]:
            ns.pop(n, None)
            self._bindings.pop(n, None)
            self.missing.pop(n, None)
        failed = await self._install(delta.nodes)
        await self._bind_all(delta.updated, failed)
        extras: dict[str, object] = {}
        for key, ref in delta.extras.items():
            obj = await self._resolve_value(ref, f"extra {key!r}", failed=failed)
            if obj is not _MISSING:
                extras[key] = obj
                self._pinned.update(ref.refs)
        self._report(failed)
        self.table.drop(delta.dropped)
        for oid in delta.dropped:
            self._missing_nodes.pop(oid, None)
        return extras

    async def restore(self, records: dict[str, ValueRef], nodes: dict[str, NodeRecord] | None = None,
                      pinned: Iterable[str] = ()) -> None:
        """Make the replicated names and nodes exactly ``records`` and ``nodes`` (a snapshot of the log).

        Nodes this replica already holds with the same record are kept as they are; changed ones are updated
        in place; names the snapshot lacks go (except this replica's own, primed names).
        """
        self.apply_errors = {}
        ns = self.user_ns
        nodes = nodes or {}
        for n, b in list(self._bindings.items()):
            if n not in records and not b.primed:
                ns.pop(n, None)
                del self._bindings[n]
        self.missing = {n: d for n, d in self.missing.items() if n in records}
        stale = [oid for oid in self.table.nodes if oid not in nodes]
        self.table.drop(stale)
        changed = {oid: r for oid, r in nodes.items() if not same_record(self.table.nodes.get(oid), r)}
        failed = await self._install(changed)
        self._pinned = set(pinned) & set(nodes)
        keep = {n for n, ref in records.items()
                if (b := self._bindings.get(n)) is not None and b.ref is not None and b.ref.digest == ref.digest
                and b.same_object(ns.get(n, _MISSING))}
        await self._bind_all({n: r for n, r in records.items() if n not in keep}, failed)
        self._report(failed)

    def _report(self, failed: dict[str, str]) -> None:
        """Node failures no name or extra was blamed for (those are reported under the name)."""
        blamed = set(self._blamed)
        for oid, reason in failed.items():
            if oid not in blamed and reason != "missing":
                self.apply_errors[f"node {oid}"] = reason
        self._blamed = []

    async def _bind_all(self, refs: dict[str, ValueRef], failed: dict[str, str]) -> None:
        ns = self.user_ns
        for n, ref in sorted(refs.items()):
            self.missing.pop(n, None)
            obj = await self._resolve_value(ref, repr(n), name=n, failed=failed)
            if obj is _MISSING:
                ns.pop(n, None)
                self._bindings.pop(n, None)
            else:
                ns[n] = obj
                self._bindings[n] = _binding(obj, ref, small=False)

    async def _resolve_value(self, ref: ValueRef, what: str, name: str | None = None,
                             failed: dict[str, str] | None = None) -> Any:
        missing = [o for o in ref.refs if o in self._missing_nodes]
        if missing and name is not None:
            self.missing[name] = self._missing_nodes[missing[0]]
            return _MISSING
        broken = [o for o in ref.refs if failed and o in failed]
        if broken:
            self._blamed.extend(broken)
            self.apply_errors[what] = failed[broken[0]]
            return _MISSING
        try:
            header, buffers = await self._fetch(ref)
            return graph.load_part(header, buffers, self.user_ns, self.table.obj)
        except ObjectNotFound as exc:
            if name is None:  # an Out value: never collected while its cell is in the history
                log.error("could not load %s: %s", what, exc)
                self.apply_errors[what] = str(exc)
            else:
                log.info("%s: blob %s was already collected; a later entry rebinds the name", what, ref.digest)
                self.missing[name] = ref.digest
            return _MISSING
        except Exception as exc:
            # Leave the name unbound rather than stop half-way: the rest of the delta still applies.
            log.exception("could not load %s (%s %s)", what, ref.kind, ref.digest)
            self.apply_errors[what] = f"{type(exc).__name__}: {exc}"
            return _MISSING

    async def _fetch(self, ref: ValueRef) -> tuple[bytes | memoryview, list]:
        if ref.kind == "inline":
            return ref.data, list(ref.buffers or ())
        if ref.kind == "packed":
            pack = self._packs.get(ref.pack)
            if pack is None:
                header, _ = await self.store.get(ref.pack)
                pack = self._packs[ref.pack] = pickle.loads(header)
                while len(self._packs) > 4:  # the packs of the entry being applied, not every pack ever read
                    del self._packs[next(iter(self._packs))]
            return pack[ref.slot]
        if ref.kind == "blob":
            return await self.store.get(ref.digest)
        raise ValueError(f"unknown value kind {ref.kind!r}")

    async def _install(self, records: dict[str, NodeRecord]) -> dict[str, str]:
        """Create or update the nodes of ``records`` (see graph.py for the two phases); return the oids that
        failed, with why ("missing": the blob was collected, see garbage.py)."""
        if not records:
            return {}
        parts: dict[tuple[str, str], tuple[Any, list]] = {}
        failed: dict[str, str] = {}

        async def fetch(oid: str, which: str, ref: ValueRef) -> None:
            try:
                parts[oid, which] = await self._fetch(ref)
            except ObjectNotFound:
                self._missing_nodes[oid] = ref.digest
                failed[oid] = "missing"
            except Exception as exc:
                log.exception("could not load node %s (%s %s)", oid, ref.kind, ref.digest)
                failed[oid] = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(fetch(oid, which, ref) for oid, r in records.items()
                               for which, ref in (("ctor", r.ctor), ("body", r.body)) if ref is not None))
        with graph.loading(self.user_ns):
            Installer(self.table, self.user_ns, records, parts, failed).run()
        for oid in records:
            if oid not in failed:
                self._missing_nodes.pop(oid, None)
        return failed


class _StoreRefused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _NullFile:
    def write(self, data: bytes) -> int:
        return len(data)
