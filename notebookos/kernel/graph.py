"""The user namespace as one object graph whose objects have the same ids on every replica.

What a replica must reproduce is not a set of independent values but the executor's object *graph*: an optimiser
holds the very parameters of its model, a numpy view shares memory with its base, ``c.items = a`` makes two names
reach one list. So every object reachable from the namespace that has an identity worth keeping (anything
mutable: lists, dicts, instances, arrays, tensors, cell-defined functions and classes) is a *node* with an
*oid*, a string the executor allocates and every replica uses for that object. Immutable values (numbers,
short strings, tuples, dtypes, importable classes and functions, modules) are *atoms*: they travel inline inside
the record of whatever holds them.

A node travels as a :class:`NodeRecord`: its pickle reduction (``func(*args)`` to construct it, then its state,
list items and dict items, as ``pickle`` itself does) serialised *shallowly*: every node it refers to is written
as a persistent id (its oid), not by value. So a record is small unless the object holds data itself (an array,
a tensor), and an object that did not change is not sent again even when its neighbours did.

A replica applying records updates existing objects *in place* (``list[:] = ...``, ``dict`` cleared and
refilled, ``__dict__`` replaced, an array's memory overwritten, a tensor's ``data`` set) so everything that
refers to them keeps seeing the same object; only new oids construct new objects (``reduction.py`` takes
objects apart and puts them back, ``install.py`` applies a cell's records in order).

Which nodes a cell changed is found by a walk from the names that cell may have changed (``namespace.py``): each
node reached is re-reduced and its record's digest compared with the last. Tensors skip that when a cheap exact
signal says they are unchanged: their version counter (bumped by every in-place operation, ``optimizer.step()``
included), data pointer, shape, strides, dtype and device.

This module holds what the two sides share: which objects are nodes (:func:`is_atom`), the records, pickling a
record's parts with nodes as persistent ids, and the table of this replica's nodes.

The table holds a strong reference to every node, so an id is never reused while its oid is alive; nodes no name
or output reaches any more are dropped by a mark-and-sweep over the recorded edges, and the delta names them so
every replica drops them too.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import decimal
import enum
import fractions
import io
import itertools
import os
import pickle
import re
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from cloudpickle import cloudpickle as _cp

from .reduction import reduce_node, signal_of
from .serialize import (
    _CURRENT_LOAD,
    NamespacePickler,
    _Load,
)

#: str and bytes at least this long are nodes (shared, not copied into every record that holds them).
LONG_ATOM = 4096

_ATOM_TYPES = frozenset({
    type(None), bool, int, float, complex, type(Ellipsis), type(NotImplemented), range, slice, tuple, frozenset,
    types.CodeType, types.BuiltinFunctionType, types.ModuleType, types.MethodWrapperType,
    datetime.date, datetime.datetime, datetime.time, datetime.timedelta, datetime.timezone,
    decimal.Decimal, fractions.Fraction, re.Pattern, pickle.PickleBuffer,
})
_NODE_TYPES = frozenset({list, dict, set, bytearray, collections.OrderedDict, collections.defaultdict,
                         collections.deque, types.SimpleNamespace})


def is_atom(obj: Any) -> bool:
    """Whether ``obj`` travels by value inside its holder's record (immutable, or importable by name)."""
    t = type(obj)
    if t in _ATOM_TYPES:
        return True
    if t in _NODE_TYPES:
        return False
    if t is str or t is bytes:
        return len(obj) < LONG_ATOM
    if isinstance(obj, type) or t is types.FunctionType:
        return _cp._should_pickle_by_reference(obj)
    if isinstance(obj, tuple | frozenset | enum.Enum):
        return True
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.generic | np.dtype):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.dtype | torch.device)


@dataclass
class NodeRecord:
    """How one node travels: its constructor call, its state, and the oids each of them refers to."""

    ctor: Any  # a ValueRef: pickle of (func, args)
    body: Any | None  # a ValueRef: pickle of (state, listitems, dictitems, state_setter); None if it has none
    ctor_refs: tuple[str, ...] = ()
    body_refs: tuple[str, ...] = ()

    @property
    def refs(self) -> tuple[str, ...]:
        return self.ctor_refs + self.body_refs


# -- serialising a reduction with nodes as persistent ids --------------------------------------------------------
class RecordPickler(NamespacePickler):
    """Pickles one part of a record: every node it meets (other than transient objects) becomes its oid."""

    def __init__(self, file: Any, user_ns: dict[str, Any], table: ObjectTable, transient: Iterable[Any],
                 buffer_callback: Any = None):
        super().__init__(file, user_ns, buffer_callback=buffer_callback)
        self.table = table
        self.transient = {id(o) for o in transient}
        self.children: list[str] = []

    def persistent_id(self, obj: Any) -> str | None:
        if type(obj) in _ATOM_TYPES or id(obj) in self.transient or is_atom(obj):
            return None
        oid = self.table.oid_for(obj)
        self.children.append(oid)
        return oid


def dump_part(value: Any, user_ns: dict[str, Any], table: ObjectTable, transient: Iterable[Any],
              out_of_band: bool = True) -> tuple[bytes, list[pickle.PickleBuffer], tuple[str, ...]]:
    """``value`` pickled with nodes as persistent ids: the bytes, out-of-band buffers and the oids met."""
    file = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    pickler = RecordPickler(file, user_ns, table, transient, buffers.append if out_of_band else None)
    pickler.dump(value)
    return file.getvalue(), buffers, tuple(dict.fromkeys(pickler.children))


class _RecordUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: Any, resolve: Callable[[str], Any]):
        super().__init__(file, buffers=buffers)
        self._resolve = resolve

    def persistent_load(self, pid: Any) -> Any:
        return self._resolve(pid)


def load_part(header: bytes | memoryview, buffers: Any, user_ns: dict[str, Any], resolve: Callable[[str], Any]) -> Any:
    """The inverse of :func:`dump_part`; ``resolve`` turns an oid into this replica's object."""
    with loading(user_ns):
        return _RecordUnpickler(io.BytesIO(header), () if buffers is None else buffers, resolve).load()


@contextlib.contextmanager
def loading(user_ns: dict[str, Any]) -> Iterator[None]:
    """Construct and fill nodes for ``user_ns``: cell-defined functions and classes are bound to it."""
    if (current := _CURRENT_LOAD.get()) is not None and current.user_ns is user_ns:
        yield
        return
    token = _CURRENT_LOAD.set(_Load(user_ns))
    try:
        yield
    finally:
        _CURRENT_LOAD.reset(token)


# -- the table ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Node:
    """What this replica knows of one node."""

    obj: Any
    record: NodeRecord | None = None  # None: allocated during a walk that has not finished
    signal: tuple | None = None  # tensors: the signal when ``record`` was made


class ObjectTable:
    """oid <-> object for one namespace, and the edges between nodes as their records name them."""

    def __init__(self, prefix: str | None = None) -> None:
        self.nodes: dict[str, Node] = {}
        self.by_id: dict[int, str] = {}
        # Random by default: a replica that takes over as executor allocates ids no other replica has used.
        self._prefix = os.urandom(4).hex() + "." if prefix is None else prefix
        self._counter = itertools.count(1)

    def __contains__(self, oid: str) -> bool:
        return oid in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def oid_of(self, obj: Any) -> str | None:
        oid = self.by_id.get(id(obj))
        return oid if oid is not None and self.nodes[oid].obj is obj else None

    def oid_for(self, obj: Any) -> str:
        """The oid of ``obj``, allocating one (a new node) if it has none."""
        oid = self.oid_of(obj)
        if oid is None:
            oid = f"{self._prefix}{next(self._counter):x}"
            self.nodes[oid] = Node(obj)
            self.by_id[id(obj)] = oid
        return oid

    def obj(self, oid: str) -> Any:
        return self.nodes[oid].obj

    def bind(self, oid: str, obj: Any, record: NodeRecord | None) -> None:
        old = self.nodes.get(oid)
        if old is not None and self.by_id.get(id(old.obj)) == oid:
            del self.by_id[id(old.obj)]
        self.nodes[oid] = Node(obj, record, signal_of(obj))
        self.by_id[id(obj)] = oid

    def drop(self, oids: Iterable[str]) -> None:
        for oid in oids:
            node = self.nodes.pop(oid, None)
            if node is not None and self.by_id.get(id(node.obj)) == oid:
                del self.by_id[id(node.obj)]

    def unreachable(self, roots: Iterable[str]) -> list[str]:
        """Oids no root reaches through the recorded edges (a node still being walked counts as reached)."""
        seen: set[str] = set()
        work = [oid for oid in roots if oid in self.nodes]
        while work:
            oid = work.pop()
            if oid in seen:
                continue
            seen.add(oid)
            record = self.nodes[oid].record
            if record is not None:
                work.extend(r for r in record.refs if r not in seen and r in self.nodes)
        return [oid for oid in self.nodes if oid not in seen]


def graph_shape(user_ns: dict[str, Any], names: Iterable[str]) -> str:
    """A digest of the identity structure of everything ``names`` reach: which objects are one object.

    Nodes are numbered in the order a walk from the sorted names first meets them, and each contributes its type
    and the numbers of the nodes its record refers to, so two namespaces give the same digest exactly when their
    names reach isomorphic graphs (values aside: compare those with ``serialize.namespace_digests``).
    """
    import hashlib

    table = ObjectTable(prefix="")
    pickler = NamespacePickler(io.BytesIO(), user_ns)
    lines: list[str] = []
    work: list[str] = []
    for name in sorted(names):
        if name not in user_ns:
            continue
        try:
            _, _, refs = dump_part(user_ns[name], user_ns, table, ())
        except Exception as exc:
            lines.append(f"{name} unserialisable {type(exc).__name__}")
            continue
        lines.append(f"{name} -> {' '.join(refs)}")
        work.extend(refs)
    seen: set[str] = set()
    i = 0
    while i < len(work):
        oid = work[i]
        i += 1
        if oid in seen:
            continue
        seen.add(oid)
        obj = table.obj(oid)
        try:
            reduction = reduce_node(obj, pickler)
            refs = dump_part(reduction.ctor, user_ns, table, reduction.transient)[2]
            if reduction.body is not None:
                refs += dump_part(reduction.body, user_ns, table, reduction.transient)[2]
        except Exception as exc:
            lines.append(f"{oid} {type(obj).__qualname__} unserialisable {type(exc).__name__}")
            continue
        lines.append(f"{oid} {type(obj).__module__}.{type(obj).__qualname__} -> {' '.join(refs)}")
        work.extend(refs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def value_fingerprint(user_ns: dict[str, Any], names: Iterable[str]) -> list:
    """What ``names`` reach, as JSON-able values plus identity, to compare a replicated kernel with a plain one.

    Unlike :func:`graph_shape` and content digests it does not depend on pickles (a class defined in a cell has an
    id of its own in each kernel): each object is described by its type's name and contents, and an object met a
    second time by ``"@n"``, its first-visit number. Immutable values (tuples, frozensets) are compared by value,
    as the graph replicates them. Tensors are summarised (sum and shape), modules and optimisers by their
    parameters.
    """
    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    seen: dict[int, int] = {}

    def enc(o: Any) -> Any:
        if o is None or isinstance(o, bool | int | float | str | bytes):
            return repr(o)
        if isinstance(o, tuple | frozenset):
            return [type(o).__name__, [enc(x) for x in (sorted(o, key=repr) if isinstance(o, frozenset) else o)]]
        if id(o) in seen:
            return f"@{seen[id(o)]}"
        seen[id(o)] = len(seen)
        if isinstance(o, list):
            return ["list", [enc(x) for x in o]]
        if isinstance(o, dict):
            return [type(o).__name__, [[enc(k), enc(v)] for k, v in o.items()]]
        if np is not None and isinstance(o, np.ndarray):
            return ["ndarray", o.tolist(), enc(o.base) if isinstance(o.base, np.ndarray) else None]
        if torch is not None and isinstance(o, torch.Tensor):
            return ["tensor", round(float(o.detach().double().sum()), 4), list(o.shape)]
        if torch is not None and isinstance(o, torch.nn.Module):
            return ["module", [enc(p) for p in o.parameters()]]
        if torch is not None and isinstance(o, torch.optim.Optimizer):
            return ["optimizer", [enc(p) for g in o.param_groups for p in g["params"]]]
        if isinstance(o, type | types.FunctionType | types.ModuleType):
            return [type(o).__name__, getattr(o, "__qualname__", getattr(o, "__name__", "?"))]
        state = getattr(o, "__dict__", None)
        return [type(o).__name__, enc(state) if isinstance(state, dict) else repr(o)]

    return [[n, enc(user_ns[n])] for n in names if n in user_ns]
