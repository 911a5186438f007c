"""Serialisation of notebook values between the replicas of a kernel.

cloudpickle with pickle protocol 5: array-like values hand their memory to the caller as out-of-band buffers,
so a 256 MiB array is never copied into the pickle, and the object store writes (and later maps) those buffers
directly. On top of cloudpickle:

* Functions defined in notebook cells (their ``__globals__`` is the user namespace: plain functions, lambdas,
  nested functions and the methods of classes defined in cells) travel *without* their globals. cloudpickle
  would embed the value of every global they reference (a function that reads a 256 MiB array would carry it)
  and bind them on load to a fresh dict; here they are rebuilt bound to the namespace passed to :func:`loads`,
  so on a follower they read the follower's own, replicated values.
* Classes defined in cells travel by value as cloudpickle does, but the registry that keeps one class object
  per class across separate loads is kept per namespace (in ``user_ns["__notebookos_classes__"]``) rather than
  per process. Across processes this is what cloudpickle does; within one process (tests, several namespaces)
  it stops a follower namespace from receiving the leader's class object, whose methods would read the
  leader's globals. An existing class is updated only when the class itself is loaded, not whenever an
  instance of it is.
* PyTorch tensors travel as their bytes and dtype, and GPU tensors come back in host memory on a follower (which
  holds no GPU) until it leads a cell with a GPU bound (see ``tensors.py``).
* Open text files are refused (cloudpickle would read the whole file and ship its text as a ``StringIO``).
* Widgets are refused (:func:`is_front_end_state`): an ``ipywidgets`` widget, a ``tqdm.notebook`` progress bar
  (which holds widgets) or a function made by ``interact`` (which holds its widget) is front-end state, tied to a
  comm of the replica that made it. A name bound to one is not replicated at all (``namespace.is_replicated_name``)
  and not warned about; a container that holds one is refused with a reason that says so.
* A few history-dependent details are removed from class and code pickles so that a value pickles the same on
  the replica that defined it and on one that loaded it (see :func:`namespace_digests` for what remains).
"""

from __future__ import annotations

import builtins
import contextvars
import io
import pickle
import sys
import types
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

from ..objectstore.base import content_digest
from .tensors import reduce_tensor

PROTOCOL = 5


class _Load:
    """One :func:`loads` in progress: the namespace it loads into and the classes it met."""

    def __init__(self, user_ns: dict[str, Any]):
        self.user_ns = user_ns
        self.created: set[int] = set()
        self.deferred: dict[int, tuple[type, Any]] = {}


# Set by loads() for its duration; read by the rebuild functions the pickles call.
_CURRENT_LOAD: contextvars.ContextVar[_Load | None] = contextvars.ContextVar("notebookos_load", default=None)

CLASS_REGISTRY_NAME = "__notebookos_classes__"


class Unserialisable(Exception):
    """A namespace value that cannot be serialised, with a short human reason."""

    def __init__(self, name: str, reason: str, type_name: str):
        super().__init__(name, reason, type_name)
        self.name = name
        self.reason = reason
        self.type_name = type_name

    def __str__(self) -> str:
        return f"{self.name} ({self.type_name}): {self.reason}"


class _EmptyCell:
    """Stands for a closure cell with no value yet (a variable assigned after the function was defined)."""

    def __reduce__(self) -> str:
        return "_EMPTY_CELL"

    def __repr__(self) -> str:
        return "<empty cell>"


_EMPTY_CELL = _EmptyCell()


def _class_registry(user_ns: dict[str, Any]) -> weakref.WeakValueDictionary:
    registry = user_ns.get(CLASS_REGISTRY_NAME)
    if not isinstance(registry, weakref.WeakValueDictionary):
        registry = user_ns[CLASS_REGISTRY_NAME] = weakref.WeakValueDictionary()
    return registry


def _rebuild_function(
    code: types.CodeType, name: str, qualname: str, ncells: int | None
) -> types.FunctionType:
    """Create a cell-defined function bound to the namespace being loaded into; its state comes later."""
    load = _CURRENT_LOAD.get()
    if load is None:
        raise pickle.UnpicklingError(
            f"function {qualname!r} was defined in a notebook cell; load it with "
            "notebookos.kernel.serialize.loads, which binds it to a namespace"
        )
    user_ns = load.user_ns
    # What exec() does for a namespace without builtins; FunctionType reads it once, at creation.
    user_ns.setdefault("__builtins__", builtins)
    closure = None if ncells is None else tuple(types.CellType() for _ in range(ncells))
    func = types.FunctionType(code, user_ns, name, None, closure)
    func.__qualname__ = qualname
    return func


def _set_function_state(func: types.FunctionType, state: dict[str, Any]) -> types.FunctionType:
    # Separate from construction so defaults, closures and attributes may refer back to the function itself
    # (recursive closures, methods whose __class__ cell holds their class): pickle has memoised it by now.
    func.__defaults__ = state["defaults"]
    func.__kwdefaults__ = state["kwdefaults"]
    func.__annotations__ = state["annotations"]
    func.__doc__ = state["doc"]
    func.__module__ = state["module"]
    func.__dict__.update(state["dict"])
    if state["closure"] is not None:
        for cell, value in zip(func.__closure__, state["closure"], strict=True):
            if value is not _EMPTY_CELL:
                cell.cell_contents = value
    return func


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY_CELL


def _fresh(value: Any) -> Any:
    """A copy of a string that no other object shares.

    The pickle memo shares strings by identity, and identity differs between the replica that defined a
    function or class (one interned ``"__main__"`` for every ``__module__``) and one that loaded it (a string
    per load), so without copies the same value would serialise differently, and get a different digest, on
    each replica.
    """
    return "".join(value) if type(value) is str else value


def _fresh_const(value: Any) -> Any:
    if type(value) is tuple:
        return tuple([_fresh_const(v) for v in value])
    return _fresh(value)


def _reduce_code(code: types.CodeType) -> tuple:
    # Copies, so the pickle memo never links them to equal objects elsewhere: cloudpickle copies co_name but
    # not co_qualname (the compiler may make them different objects; a rebuilt code object has one), and the
    # compiler shares equal constant tuples between the code objects of one cell, which a replica that loaded
    # them separately does not.
    ctor, args = _cp._code_reduce(code)
    qualname = getattr(code, "co_qualname", None)
    return ctor, tuple(
        _fresh(a) if a is qualname else _fresh_const(a) if a is code.co_consts else a for a in args
    )


def _reduce_namespace_function(func: types.FunctionType) -> tuple:
    closure = func.__closure__
    args = (
        func.__code__,
        _fresh(func.__name__),
        _fresh(func.__qualname__),
        None if closure is None else len(closure),
    )
    state = {
        "defaults": func.__defaults__,
        "kwdefaults": func.__kwdefaults__,
        "annotations": func.__annotations__,
        "doc": func.__doc__,
        "module": _fresh(func.__module__),
        "dict": {"".join(k): v for k, v in func.__dict__.items()},
        "closure": None if closure is None else [_cell_value(c) for c in closure],
    }
    return _rebuild_function, args, state, None, None, _set_function_state


_SKELETONS = {
    _cp._make_skeleton_class: ("class", 4),
    _cp._make_skeleton_enum: ("enum", 5),
}
_MAKERS = {kind: (maker, index) for maker, (kind, index) in _SKELETONS.items()}


def _make_namespace_class(kind: str, args: tuple) -> type:
    """Return the class for a cloudpickle tracker id, from the registry of the namespace being loaded into."""
    maker, index = _MAKERS[kind]
    load = _CURRENT_LOAD.get()
    if load is None:
        return maker(*args)
    tracker_id = args[index]
    registry = _class_registry(load.user_ns)
    cls = registry.get(tracker_id)
    if cls is None:
        cls = maker(*args[:index], None, *args[index + 1 :])
        load.created.add(id(cls))
        registry[tracker_id] = cls
        with _cp._DYNAMIC_CLASS_TRACKER_LOCK:
            # So that when this replica pickles the class (after a failover) it keeps the same id, and
            # replicas holding instances of it keep one class.
            _cp._DYNAMIC_CLASS_TRACKER_BY_CLASS[cls] = tracker_id
            _cp._DYNAMIC_CLASS_TRACKER_BY_ID.setdefault(tracker_id, cls)
    return cls


def _set_namespace_class_state(cls: type, state: Any) -> type:
    """Fill a class just created by this load; defer the state of one that already existed.

    cloudpickle sets a class's whole state each time any value containing it is loaded, so loading an old
    instance (from a snapshot, say) would put back the methods its class had when that instance was pickled.
    Here an existing class changes only when the class itself is the value loaded (see :func:`loads`), which
    the tracker ships whenever the class changed.
    """
    load = _CURRENT_LOAD.get()
    if load is None or id(cls) in load.created:
        return _cp._class_setstate(cls, state)
    load.deferred[id(cls)] = (cls, state)
    return cls


def is_front_end_state(obj: Any) -> bool:
    """Whether ``obj`` is a widget: an ``ipywidgets.Widget``, a ``tqdm.notebook`` progress bar, or a function
    ``ipywidgets.interact`` returned (it carries its widget as ``f.widget``). Checked only once those modules are
    imported; nothing is imported here."""
    widget = sys.modules.get("ipywidgets.widgets.widget")
    if widget is not None:
        t = type(obj)
        if issubclass(t, widget.Widget):
            return True
        if t is types.FunctionType and issubclass(type(obj.__dict__.get("widget")), widget.Widget):
            return True
    bars = sys.modules.get("tqdm.notebook")
    return bars is not None and issubclass(type(obj), bars.tqdm_notebook)


class NamespacePickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, aware of the user namespace its values live in."""

    def __init__(self, file: Any, user_ns: dict[str, Any], buffer_callback: Any = None):
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self.user_ns = user_ns

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.FunctionType and obj.__globals__ is self.user_ns:
            return _reduce_namespace_function(obj)
        if t is types.CodeType:
            return _reduce_code(obj)
        if t is io.TextIOWrapper and obj is not sys.stdout and obj is not sys.stderr:
            raise TypeError("cannot pickle '_io.TextIOWrapper' object")
        if is_front_end_state(obj):
            raise TypeError(f"holds a widget ({t.__name__}): front-end state, never replicated")
        if "torch" in sys.modules:
            rv = reduce_tensor(obj)
            if rv is not None:
                return rv
        rv = super().reducer_override(obj)
        if type(rv) is tuple and rv[0] in _SKELETONS:
            kind, index = _SKELETONS[rv[0]]
            # The namespace that pickles a class owns it: if this replica later loads the same class back
            # (after a failover), it must get this object, not a copy.
            _class_registry(self.user_ns)[rv[1][index]] = obj
            args, (clsdict, slotstate) = rv[1], rv[2]
            if kind == "class":
                module = args[3].get("__module__")
                args = (*args[:3], {k: _fresh(v) for k, v in args[3].items()}, *args[4:])
            else:
                module = args[4]
            # Both are set on load anyway and would make the pickle depend on history, not content:
            # cloudpickle keeps __module__ when it is not the *same object* as the base class's (true on a
            # replica that loaded the classes, false where they were defined), and copyreg adds __slotnames__
            # to a class once one of its instances has been pickled.
            clsdict = {
                k: v
                for k, v in clsdict.items()
                if k != "__slotnames__" and not (k == "__module__" and v == module)
            }
            return (
                _make_namespace_class,
                (kind, args),
                (clsdict, slotstate),
                rv[3],
                rv[4],
                _set_namespace_class_state,
            )
        return rv


def dumps(
    obj: Any, user_ns: dict[str, Any], *, out_of_band: bool = True
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Serialise ``obj`` from ``user_ns``: the pickle bytes and its out-of-band buffers.

    With ``out_of_band=False`` the buffers are in the pickle and the list is empty. The buffers are views of
    ``obj``'s memory: consume them before ``obj`` changes.
    """
    file = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    NamespacePickler(file, user_ns, buffer_callback=buffers.append if out_of_band else None).dump(obj)
    return file.getvalue(), buffers


def loads(data: bytes | memoryview, buffers: Iterable[Any] | None, user_ns: dict[str, Any]) -> Any:
    """The inverse of :func:`dumps`; cell-defined functions and classes are bound to ``user_ns``."""
    load = _Load(user_ns)
    token = _CURRENT_LOAD.set(load)
    try:
        obj = pickle.loads(data, buffers=() if buffers is None else buffers)
        deferred = load.deferred.get(id(obj))
        if deferred is not None and deferred[0] is obj:
            _cp._class_setstate(obj, deferred[1])
        return obj
    finally:
        _CURRENT_LOAD.reset(token)


def unserialisable_reason(exc: BaseException) -> str:
    """A one-line reason for a failed dumps, e.g. ``cannot pickle '_thread.lock' object``."""
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    return reason if len(reason) <= 200 else reason[:197] + "..."


def check_dumps(
    name: str, obj: Any, user_ns: dict[str, Any], *, out_of_band: bool = True
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """:func:`dumps`, raising :class:`Unserialisable` (naming ``name``) for any value pickle refuses."""
    try:
        return dumps(obj, user_ns, out_of_band=out_of_band)
    except Exception as exc:  # pickling runs arbitrary __reduce__ code: any error means "cannot replicate"
        raise Unserialisable(name, unserialisable_reason(exc), type(obj).__qualname__) from exc


def namespace_digests(
    user_ns: dict[str, Any], names: Sequence[str], *, canonical: bool = True
) -> dict[str, str]:
    """The content digest of each of ``names`` present in ``user_ns``, computed from the live values.

    A pickle depends a little on its value's history, not only its content: the pickle memo shares strings by
    identity, and which equal strings are one object differs between where a function or class was compiled
    and where it was loaded. With ``canonical`` each value is first loaded into a scratch namespace and
    serialised from there, which removes that history, so two replicas holding the same values give the same
    digests. It costs a load per value (array buffers are not copied) and runs the values' unpickling code.

    What still differs between replicas holding equal values: sets of strings under different hash seeds
    (launch the replicas with one ``PYTHONHASHSEED``), and values that hold a function of a cell-defined class
    outside that class (a bound method ``inst.meth``): on a replica that loaded the class before, the class
    keeps its own function object, so the value's pickle has two functions where the original had one.

    Modules give ``module:NAME``; values that cannot be serialised give ``unserialisable:REASON``.
    """
    digests = {}
    for name in names:
        if name not in user_ns:
            continue
        obj = user_ns[name]
        if isinstance(obj, types.ModuleType):
            digests[name] = f"module:{obj.__name__}"
            continue
        try:
            header, buffers = dumps(obj, user_ns)
            if canonical:
                # A scratch namespace per value, so no class carries over from one value's load to the next.
                scratch = {"__name__": user_ns.get("__name__", "__main__"), "__builtins__": builtins}
                header, buffers = dumps(loads(header, [b.raw() for b in buffers], scratch), scratch)
        except Exception as exc:
            digests[name] = f"unserialisable:{unserialisable_reason(exc)}"
            continue
        digests[name] = content_digest(header, buffers)
    return digests
