"""A kernel's replicated state: what a cell did to the user namespace, as a delta, and applying it elsewhere.

The replica that ran a cell calls :meth:`NamespaceTracker.capture`; the :class:`CellDelta` it returns goes
into the Raft log; every other replica calls :meth:`NamespaceTracker.apply` on it, after which their
namespaces hold the same values. Values whose serialised size exceeds :data:`INLINE_LIMIT` (or that would take
a delta past :data:`INLINE_BUDGET` in-band bytes) go to the object store and the delta carries only their
digest. :meth:`~NamespaceTracker.records` and :meth:`~NamespaceTracker.restore` do the same for a whole
namespace (Raft snapshots, a replica catching up).

Finding what a cell changed without serialising the whole namespace after every cell: the *candidates* are
new, deleted and rebound names (``id`` changed), every identifier in the cell's code, every global read or
written by a cell-defined function or class the cell mentions (transitively), and every value whose last
serialised size was under :data:`REHASH_LIMIT`. Each candidate is serialised and its digest compared with the
last one; only changes are shipped.

Limitations (what a follower can miss or get differently):

* A large value (>= ``rehash_limit``) that keeps its ``id``, is not mentioned by the cell and is not a global
  of a cell-defined function the cell calls is assumed unchanged. A mutation reaching it another way is not
  replicated: through another container (``d = {"a": big}``, then ``d["a"][0] = 1`` ships ``d`` but not
  ``big``), through a function stored in a container or defined outside the notebook, from a thread, etc.
* For values that cannot be weak-referenced (lists, dicts, tuples) "same id" is the only rebinding test; if
  such a large value is freed and a new one is created at the same address under the same name without the
  cell naming it, the change is missed.
* Each name is serialised on its own. Two names bound to the *same* object stay one object on the followers
  (``b = a``; the cell's ``Out`` value), but objects shared *inside* two values do not: an optimiser holding a
  model's parameters gets its own copies on a follower.
* Unserialisable values (open files, sockets, locks, generators, threads...) are not replicated; the cell's
  output warns about them (:func:`format_unserialisable_warning`) and followers drop their stale value of that
  name.
* Pickles are not perfectly canonical (string identity in the pickle memo, set order under different hash
  seeds), so after a failover the new executor may ship a few unchanged values once more. Harmless, only
  bytes.

A tracker is not thread-safe; use it from one thread at a time.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
import sys
import types
import weakref
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from ..objectstore.base import ObjectNotFound, ObjectStore, as_bytes_view, content_digest
from . import serialize

log = logging.getLogger(__name__)

INLINE_LIMIT = 1 << 20  # values whose serialised size exceeds this go to the object store
# In-band bytes one delta may carry; further changed values go to the object store even if small, because a
# Raft entry's commit time grows with its size (~15 ms per MB with PySyncObj) and blocks the next cell.
INLINE_BUDGET = 4 << 20
REHASH_LIMIT = 64 << 10  # values smaller than this are re-fingerprinted after every cell

# IPython keeps these itself (In/Out are replicated by the kernel from the cell history).
IPYTHON_NAMES = frozenset(
    {"_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh", "In", "Out", "exit", "quit", "get_ipython"}
)
_IPYTHON_CACHE_NAME = re.compile(r"_i?\d+")
# Over the raw text, so IPython magics and shell escapes (which are not Python) do not get in the way.
_IDENTIFIER = re.compile(r"[^\W\d]\w*")

_MISSING = object()


@dataclass
class ValueRef:
    """How one value travels in a Raft entry: small and picklable.

    ``alias_of`` names a namespace name bound to the *same object* on the replica that made the ref; a replica
    applying it binds that object instead of loading a copy, provided it holds the same content there
    (otherwise it loads the ref like any other).
    """

    kind: str  # "inline" | "blob" | "module"
    digest: str  # content digest (for module: the module name)
    data: bytes | None = field(default=None, repr=False)  # inline: the pickle bytes (in-band, protocol 5)
    size: int = 0
    alias_of: str | None = None


@dataclass
class CellDelta:
    """A cell's effect on the namespace."""

    updated: dict[str, ValueRef]  # new or changed names
    deleted: list[str]
    # name -> reason. Not replicated; followers drop any stale value of these names.
    unserialisable: dict[str, str]
    # Values the caller asked to carry that are not namespace names (e.g. the cell's Out value).
    extras: dict[str, ValueRef]
    unserialisable_extras: dict[str, str] = field(default_factory=dict)


def is_replicated_name(name: Any, user_ns: Mapping[str, Any] | None = None, hidden: Any = ()) -> bool:
    """Whether ``name`` is user state to replicate, rather than Python's or IPython's own."""
    if not isinstance(name, str) or name in IPYTHON_NAMES or _IPYTHON_CACHE_NAME.fullmatch(name):
        return False
    if name.startswith("__") and name.endswith("__"):
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
class _Entry:
    """What the tracker last knew of one name."""

    obj_id: int
    type_: type
    wref: weakref.ref | None
    ref: (
        ValueRef | None
    )  # without alias_of; None: not replicated (unserialisable, or primed and never shipped)
    size: int = -1
    reason: str | None = None  # why it could not be serialised
    primed: bool = False  # present since prime(): this replica's own, never replicated

    def same_object(self, obj: Any) -> bool:
        if id(obj) != self.obj_id or type(obj) is not self.type_:
            return False
        return self.wref is None or self.wref() is obj

    def holds(self, ref: ValueRef) -> bool:
        # Digest only: the same content may travel inline once and as a blob another time (INLINE_BUDGET).
        return self.ref is not None and self.ref.digest == ref.digest


def _new_entry(
    obj: Any, ref: ValueRef | None = None, *, reason: str | None = None, primed: bool = False
) -> _Entry:
    try:
        wref = weakref.ref(obj)
    except TypeError:
        wref = None
    if ref is not None and ref.alias_of is not None:
        ref = dataclasses.replace(ref, alias_of=None)
    return _Entry(id(obj), type(obj), wref, ref, ref.size if ref is not None else -1, reason, primed)


@dataclass
class _Serialised:
    """One value serialised during a capture (shared by every name bound to the same object)."""

    obj: Any
    ref: ValueRef | None = None
    reason: str | None = None
    # Inline values, until shipped: the out-of-band pickle (the data itself if there are no buffers), buffers.
    header: bytes | None = None
    buffers: list[memoryview] = field(default_factory=list)


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


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
        #: name -> reason, for values the last apply/restore could not materialise (the name is left unbound).
        self.apply_errors: dict[str, str] = {}
        #: name -> digest of a blob the store no longer has (collected as garbage, see garbage.py). Only a replica
        #: behind the log sees this, and a later entry it has yet to apply rebinds or deletes the name.
        self.missing: dict[str, str] = {}
        self._entries: dict[str, _Entry] = {}

    # -- shared ----------------------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        ns = self.user_ns
        return sorted(n for n in list(ns) if is_replicated_name(n, ns, self.hidden))

    def prime(self) -> None:
        """Take the current namespace as this replica's own starting point: nothing in it is shipped unless a
        cell rebinds or mentions it."""
        ns = self.user_ns
        self._entries = {n: _new_entry(ns[n], primed=True) for n in self._names()}

    def records(self) -> dict[str, ValueRef]:
        """The replicated names as refs, as of the last capture/apply/restore (for Raft snapshots)."""
        ns = self.user_ns
        live = {
            n: e for n, e in self._entries.items() if e.ref is not None and e.same_object(ns.get(n, _MISSING))
        }
        groups: dict[int, list[str]] = {}
        for n, e in live.items():
            if e.ref.kind != "module":
                groups.setdefault(e.obj_id, []).append(n)
        out = {}
        for n in sorted(live):
            e = live[n]
            group = groups.get(e.obj_id, ())
            first = min(group) if len(group) > 1 else n
            out[n] = e.ref if first == n else dataclasses.replace(e.ref, alias_of=first)
        return out

    # -- leader ----------------------------------------------------------------------------------------------
    async def capture(self, code: str, extras: dict[str, object] | None = None) -> CellDelta:
        """What the cell that just ran (``code``) changed, and ``extras`` serialised alongside."""
        ns = self.user_ns
        entries = self._entries
        names = self._names()
        current = set(names)
        deleted = sorted(n for n in entries if n not in current)
        mentioned = self._mentioned(code or "")

        candidates = []
        for n in names:
            e = entries.get(n)
            if (
                e is None
                or not e.same_object(ns[n])
                or n in mentioned
                or (e.ref is not None and e.ref.kind != "module" and e.size < self.rehash_limit)
            ):
                candidates.append(n)

        cache: dict[int, _Serialised] = {}
        sers: dict[str, _Serialised] = {}
        for n in candidates:
            sers[n] = await self._serialise(ns[n], cache)
        unserialisable = {n: s.reason for n, s in sers.items() if s.reason is not None}
        # A rebound name is shipped even with equal content: on the followers it may still be the same object
        # as another name (``b = a`` earlier, ``b = list(a)`` now).
        changed = {
            n
            for n, s in sers.items()
            if s.ref is not None
            and (n not in entries or not entries[n].holds(s.ref) or not entries[n].same_object(ns[n]))
        }

        # Names bound to one object must stay one object on the followers.
        by_id: dict[int, list[str]] = {}
        for n in names:
            if not isinstance(ns[n], types.ModuleType):
                by_id.setdefault(id(ns[n]), []).append(n)
        aliases: dict[str, str] = {}
        for group in by_id.values():
            moved = [n for n in group if n in changed]
            if len(group) < 2 or not moved:
                continue
            s = sers[moved[0]]
            kept = [n for n in group if n not in changed and n in entries and entries[n].holds(s.ref)]
            if kept:
                # b = a with a unchanged: b is bound to the follower's a.
                for n in moved:
                    aliases[n] = kept[0]
            else:
                # The object changed, so every name for it changed, including those that were not candidates.
                for n in group:
                    sers[n] = s
                    changed.add(n)
                    if n != group[0]:
                        aliases[n] = group[0]

        spent = [0]
        updated: dict[str, ValueRef] = {}
        for n in sorted(changed):
            ref = await self._finish(sers[n], aliases.get(n), spent)
            if ref is not None:
                updated[n] = ref
        for n, s in sers.items():
            if s.reason is not None:  # including values the store refused just now
                unserialisable[n] = s.reason

        extra_refs: dict[str, ValueRef] = {}
        extra_reasons: dict[str, str] = {}
        for key, obj in (extras or {}).items():
            s = await self._serialise(obj, cache)
            if s.reason is not None:
                extra_reasons[key] = s.reason
                continue
            same = [
                n
                for n in by_id.get(id(obj), ())
                if n in updated or (n in entries and entries[n].holds(s.ref))
            ]
            ref = await self._finish(s, same[0] if same else None, spent)
            if ref is None:
                extra_reasons[key] = s.reason
            else:
                extra_refs[key] = ref

        for n in deleted:
            del entries[n]
        for n, s in sers.items():
            obj = ns[n]
            if s.reason is not None:
                entries[n] = _new_entry(obj, reason=s.reason)
            elif n in updated:
                entries[n] = _new_entry(obj, updated[n])
            else:
                # Unchanged content: keep the old ref (its inline data is already computed).
                entries[n] = _new_entry(obj, entries[n].ref)
        return CellDelta(
            updated=updated,
            deleted=deleted,
            unserialisable=unserialisable,
            extras=extra_refs,
            unserialisable_extras=extra_reasons,
        )

    def _mentioned(self, code: str) -> set[str]:
        """Identifiers in the code, plus the globals that cell-defined functions and classes it names use."""
        ns = self.user_ns
        found: set[str] = set()
        work = list(set(_IDENTIFIER.findall(code)))
        seen_codes: set[int] = set()
        seen_types: set[int] = set()
        while work:
            name = work.pop()
            if name in found:
                continue
            found.add(name)
            obj = ns.get(name, _MISSING)
            if obj is _MISSING or isinstance(obj, types.ModuleType):
                continue
            try:
                codes = list(self._codes_of(obj, seen_types))
            except Exception:  # odd user types (proxies, broken descriptors) only lose this refinement
                log.debug("could not inspect %r for the globals it uses", name, exc_info=True)
                continue
            for code_obj in codes:
                if id(code_obj) not in seen_codes:
                    seen_codes.add(id(code_obj))
                    work.extend(n for n in _code_names(code_obj) if n not in found and n in ns)
        return found

    def _codes_of(self, obj: Any, seen_types: set[int]) -> Iterator[types.CodeType]:
        ns = self.user_ns
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
        if isinstance(obj, types.FunctionType):
            if obj.__globals__ is ns:
                yield obj.__code__
            return
        cls = obj if isinstance(obj, type) else type(obj)
        for klass in cls.__mro__:
            if id(klass) in seen_types or klass.__module__ == "builtins":
                continue
            seen_types.add(id(klass))
            for attr in list(vars(klass).values()):
                if isinstance(attr, property):
                    funcs: tuple[Any, ...] = (attr.fget, attr.fset, attr.fdel)
                elif isinstance(attr, staticmethod | classmethod):
                    funcs = (attr.__func__,)
                else:
                    funcs = (attr,)
                for f in funcs:
                    if isinstance(f, types.FunctionType) and f.__globals__ is ns:
                        yield f.__code__

    async def _serialise(self, obj: Any, cache: dict[int, _Serialised]) -> _Serialised:
        s = cache.get(id(obj))
        if s is not None:
            return s
        s = cache[id(obj)] = _Serialised(obj)
        if isinstance(obj, types.ModuleType):
            if sys.modules.get(obj.__name__) is obj:
                s.ref = ValueRef("module", obj.__name__)
            else:
                s.reason = f"module {obj.__name__!r} cannot be imported by name"
            return s
        try:
            header, buffers = serialize.dumps(obj, self.user_ns)
        except Exception as exc:  # pickling runs arbitrary user __reduce__ code
            s.reason = serialize.unserialisable_reason(exc)
            return s
        views = [as_bytes_view(b) for b in buffers]
        size = len(header) + sum(v.nbytes for v in views)
        if size <= self.inline_limit:
            s.ref = ValueRef("inline", content_digest(header, views), None, size)
            s.header, s.buffers = header, views
            return s
        await self._put(s, header, views)
        return s

    async def _put(self, s: _Serialised, header: bytes, views: list[memoryview]) -> None:
        try:
            digest, size = await self.store.put(header, views)
        except Exception as exc:
            log.exception("object store %s refused a value", self.store.location)
            s.ref = None
            s.reason = f"could not be written to the object store: {serialize.unserialisable_reason(exc)}"
            return
        s.ref = ValueRef("blob", digest, None, size)

    async def _finish(self, s: _Serialised, alias_of: str | None, spent: list[int]) -> ValueRef | None:
        """The ref to ship; inline pickle bytes are made only now, for values that changed.

        ``spent[0]`` counts the delta's in-band bytes so far. None if the value could not be stored after all.
        """
        if s.ref.kind == "inline" and s.ref.data is None:
            if spent[0] + s.ref.size > self.inline_budget:
                await self._put(s, s.header, s.buffers)
            else:
                spent[0] += s.ref.size
                s.ref.data = (
                    serialize.dumps(s.obj, self.user_ns, out_of_band=False)[0] if s.buffers else s.header
                )
            s.header, s.buffers = None, []
        if s.ref is None:
            return None
        return s.ref if alias_of is None else dataclasses.replace(s.ref, alias_of=alias_of)

    # -- followers -------------------------------------------------------------------------------------------
    async def apply(self, delta: CellDelta) -> dict[str, object]:
        """Make the namespace reflect ``delta``; return its extras, materialised."""
        self.apply_errors = {}
        ns = self.user_ns
        for n in [*delta.deleted, *delta.unserialisable]:
            ns.pop(n, None)
            self._entries.pop(n, None)
            self.missing.pop(n, None)
        await self._bind_all(delta.updated, keep_current=False)
        extras: dict[str, object] = {}
        for key, ref in delta.extras.items():
            obj = await self._resolve(ref, f"extra {key!r}")
            if obj is not _MISSING:
                extras[key] = obj
        return extras

    async def restore(self, records: dict[str, ValueRef]) -> None:
        """Make the replicated names exactly ``records`` (as from :meth:`records` on another replica)."""
        self.apply_errors = {}
        ns = self.user_ns
        for n, e in list(self._entries.items()):
            if n not in records and not e.primed:
                ns.pop(n, None)
                del self._entries[n]
        self.missing = {n: d for n, d in self.missing.items() if n in records}
        await self._bind_all(records, keep_current=True)

    async def _bind_all(self, refs: dict[str, ValueRef], keep_current: bool) -> None:
        """Bind every name of ``refs``; with ``keep_current``, names already holding their value keep it."""
        ns = self.user_ns
        kept = self._already_bound(refs) if keep_current else set()
        # Targets first, so that aliases find them.
        for n in sorted(refs, key=lambda n: refs[n].alias_of is not None):
            if n in kept:
                continue
            ref = refs[n]
            self.missing.pop(n, None)
            obj = await self._resolve(ref, repr(n), name=n)
            if obj is _MISSING:
                ns.pop(n, None)
                self._entries.pop(n, None)
            else:
                ns[n] = obj
                self._entries[n] = _new_entry(obj, ref)

    def _already_bound(self, refs: dict[str, ValueRef]) -> set[str]:
        """Names that hold their ref's content as the same object as when bound, shared with exactly the
        names the refs alias them with (a replica catching up from a snapshot keeps those)."""
        ns = self.user_ns
        holding = {
            n
            for n, ref in refs.items()
            if (e := self._entries.get(n)) is not None and e.holds(ref) and e.same_object(ns.get(n, _MISSING))
        }
        sharing: dict[int, set[str]] = {}
        for n in self._names():
            sharing.setdefault(id(ns[n]), set()).add(n)
        groups: dict[str, set[str]] = {}
        for n, ref in refs.items():
            groups.setdefault(ref.alias_of or n, set()).add(n)
        return {n for n in holding if sharing.get(id(ns[n]), {n}) == groups[refs[n].alias_of or n] <= holding}

    async def _resolve(self, ref: ValueRef, what: str, name: str | None = None) -> Any:
        if ref.alias_of is not None:
            e = self._entries.get(ref.alias_of)
            target = self.user_ns.get(ref.alias_of, _MISSING)
            if e is not None and e.holds(ref) and e.same_object(target):
                return target
        try:
            return await self._materialise(ref)
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

    async def _materialise(self, ref: ValueRef) -> Any:
        if ref.kind == "module":
            return importlib.import_module(ref.digest)
        if ref.kind == "inline":
            return serialize.loads(ref.data, (), self.user_ns)
        if ref.kind == "blob":
            header, buffers = await self.store.get(ref.digest)
            return serialize.loads(header, buffers, self.user_ns)
        raise ValueError(f"unknown value kind {ref.kind!r}")
