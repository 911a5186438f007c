"""How one node of the object graph is taken apart and put back together (see ``graph.py``).

:func:`reduce_node` is pickle's reduction of an object, normalised to a *constructor* ``(func, args)`` and a
*body* ``(state, listitems, dictitems, state_setter)``, with special cases where pickle's own would lose
identity or memory: lists, dicts and sets are filled in place; a numpy array travels as its raw bytes and a view
as its base node plus offset and strides; a tensor as its bytes and dtype (a GPU tensor comes back in host memory
on a follower until it leads with a GPU bound, see ``tensors.py``) and a view of another tensor as that tensor
plus its geometry. :func:`construct`, :func:`reconstruct_in_place` and :func:`fill` do the reverse on a replica,
changing an existing object in place rather than replacing it, so everything that refers to it keeps seeing it.
"""

from __future__ import annotations

import collections
import copyreg
import pickle
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudpickle import cloudpickle as _cp

from .serialize import (
    NamespacePickler,
    _make_namespace_class,
    _reduce_namespace_function,
    _set_namespace_class_state,
)


def _fill_set(obj: set, items: list) -> None:
    obj.clear()
    obj.update(items)


def _fill_bytearray(obj: bytearray, data: bytes) -> None:
    obj[:] = data


def _identity(value: Any) -> Any:
    return value


def new_array(shape: tuple, dtype: Any, writeable: bool) -> Any:
    import numpy as np

    arr = np.empty(shape, dtype)
    if not writeable:
        arr.flags.writeable = False
    return arr


def _fill_array(arr: Any, data: Any) -> None:
    import numpy as np

    src = np.frombuffer(data, dtype=arr.dtype).reshape(arr.shape) if arr.size else arr
    writeable = arr.flags.writeable
    if not writeable:
        arr.flags.writeable = True
    np.copyto(arr, src)
    arr.flags.writeable = writeable


def _fill_object_array(arr: Any, items: list) -> None:
    arr.reshape(-1)[...] = items if arr.size else arr.reshape(-1)


def _np_view(base: Any, offset: int, shape: tuple, strides: tuple, dtype: Any, writeable: bool) -> Any:
    import numpy as np

    view = np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)
    if not writeable:
        view.flags.writeable = False
    return view


def new_tensor(dtype: str, shape: tuple, device_type: str, requires_grad: bool, parameter: bool) -> Any:
    import torch

    return _dressed(torch.empty(shape, dtype=getattr(torch, dtype)), device_type, requires_grad, parameter)


def _dressed(tensor: Any, device_type: str, requires_grad: bool, parameter: bool) -> Any:
    """``tensor`` as a Parameter or requiring grad as its record says, remembered as displaced if it lived on a
    GPU (see ``tensors.py``)."""
    import torch

    from . import tensors

    if parameter:
        tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
    elif requires_grad:
        tensor.requires_grad_(True)
    tensors.mark_displaced(tensor, device_type)
    return tensor


def _fill_tensor(tensor: Any, data: Any) -> None:
    import torch

    if len(data):
        with warnings.catch_warnings():  # read-only memory (a stored blob, inline bytes): only ever read here
            warnings.simplefilter("ignore", UserWarning)
            src = torch.frombuffer(data, dtype=torch.uint8)
    else:
        src = torch.empty(0, dtype=torch.uint8)
    src = src.view(tensor.dtype).reshape(tensor.shape)
    with torch.no_grad():
        if tensor.device.type == "cpu" and tensor.is_contiguous():
            tensor.copy_(src)
        else:
            tensor.data = src.to(tensor.device, copy=True)


def from_buffer(func: Callable, args: tuple, buffer: Any) -> Any:
    """A new array or tensor (``new_array``/``new_tensor`` arguments) over writable ``buffer``, not a copy:
    a value from the object store is a private copy-on-write mapping, so it costs no copy until written."""
    if func is new_array:
        import numpy as np

        shape, dtype, writeable = args
        arr = np.ndarray(shape, dtype=dtype, buffer=buffer)
        if not writeable:
            arr.flags.writeable = False
        return arr
    import torch

    dtype, shape, device_type, requires_grad, parameter = args
    tensor = torch.frombuffer(buffer, dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape)
    return _dressed(tensor, device_type, requires_grad, parameter)


def _tensor_view(base: Any, offset: int, shape: tuple, stride: tuple) -> Any:
    import torch

    with torch.no_grad():
        return base.as_strided(shape, stride, offset)


def _root_array(arr: Any) -> Any | None:
    """The ndarray that owns ``arr``'s memory, if ``arr`` is a view we can rebuild as one."""
    import numpy as np

    base = arr.base
    if not isinstance(base, np.ndarray):
        return None
    while isinstance(base.base, np.ndarray):
        base = base.base
    if base.base is not None or not base.flags.c_contiguous or base.dtype.hasobject:
        return None  # memory from elsewhere (bytes, mmap, a tensor): the view travels as a copy
    offset = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if offset < 0 or offset > base.nbytes:
        return None
    return base


@dataclass
class Reduction:
    ctor: tuple  # (func, args)
    body: tuple | None  # (state, listitems, dictitems, state_setter)
    transient: list  # objects built for this reduction only: they travel by value, never as nodes
    signal: tuple | None = None  # tensors: unchanged signal => unchanged record
    caveat: str | None = None  # what a follower will hold differently, for the cell's output


def tensor_signal(t: Any) -> tuple:
    return (t._version, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.storage_offset(), t.dtype,
            t.device, t.requires_grad)


def reduce_node(obj: Any, pickler: NamespacePickler) -> Reduction:
    """The pickle reduction of one node, normalised to a constructor and a body."""
    t = type(obj)
    if t is list:
        items = list(obj)
        return Reduction((list, ()), (None, items, None, None), [items])
    if t is dict:
        items = list(obj.items())
        return Reduction((dict, ()), (None, None, items, None), [items])
    if t is set:
        items = list(obj)
        return Reduction((set, ()), (items, None, None, _fill_set), [items])
    if t is bytearray:
        return Reduction((bytearray, ()), (bytes(obj), None, None, _fill_bytearray), [])
    if t is str or t is bytes:
        return Reduction((_identity, (obj,)), None, [obj])
    np = sys.modules.get("numpy")
    if np is not None and t is np.ndarray:
        return _reduce_array(obj, np)
    torch = sys.modules.get("torch")
    if torch is not None and t in (torch.Tensor, torch.nn.Parameter):
        rv = _reduce_tensor(obj, torch)
        if rv is not None:
            return rv
    if t is types.FunctionType and obj.__globals__ is pickler.user_ns:
        func, args, state, _, _, setter = _reduce_namespace_function(obj)
        return Reduction((func, args), (state, None, None, setter), [state, state["dict"], state["closure"]])
    rv = pickler.reducer_override(obj)
    if rv is NotImplemented:
        reduce = pickler.dispatch_table.get(t)
        rv = reduce(obj) if reduce is not None else obj.__reduce_ex__(pickle.DEFAULT_PROTOCOL)
    if isinstance(rv, str):  # a global: importable by name
        return Reduction((_identity, (obj,)), None, [obj])
    func, args, state, listitems, dictitems, setter = tuple(rv) + (None,) * (6 - len(rv))
    del rv
    transient: list = []
    if func is _make_namespace_class:
        # cloudpickle builds the class dict and the type kwargs afresh for each reduction.
        setter = _cp._class_setstate
        transient += [a for a in args[1] if isinstance(a, dict)]
        transient += [s for s in state if isinstance(s, dict)]
    elif setter is _set_namespace_class_state:
        setter = _cp._class_setstate
    state = _detach_state(obj, state, transient)
    if _refs(state) <= _FRESH_REFS:
        transient.append(state)
    elif type(state) is tuple:
        transient += [s for s in state if _refs(s) <= _FRESH_IN_TUPLE]
    if listitems is not None:
        listitems = list(listitems)
        transient.append(listitems)
    if dictitems is not None:
        dictitems = list(dictitems)
        transient.append(dictitems)
    body = None if state is None and listitems is None and dictitems is None else (state, listitems, dictitems, setter)
    return Reduction((func, args), body, transient)


def _refs(obj: Any) -> int:
    """References to a dict or list (a large number for anything else)."""
    return sys.getrefcount(obj) if type(obj) is dict or type(obj) is list else 1 << 30


def _calibrate() -> tuple[int, int]:
    """How many references :func:`_refs` sees to a container nothing else holds, alone and inside a tuple.

    A ``__reduce__``/``__getstate__`` often builds its state afresh (``Optimizer.__getstate__`` returns a new
    dict of its attributes): such a container must travel by value, or every reduction would mint a new node.
    Measured here, through the same call shapes as in :func:`reduce_node`, rather than assumed.
    """
    state = {"probe": 1}
    alone = _refs(state)
    pair = ({"probe": 1}, None)
    inside = max(_refs(s) for s in pair if s is not None)
    return alone, inside


def _detach_state(obj: Any, state: Any, transient: list) -> Any:
    """The instance dict in a state is the object's own: send a copy, not a node of its own."""
    inst_dict = getattr(obj, "__dict__", None)
    if state is not None and state is inst_dict:
        state = dict(state)
        transient.append(state)
    elif type(state) is tuple and len(state) == 2 and all(s is None or type(s) is dict for s in state):
        parts = [dict(s) if s is not None else None for s in state]
        transient.extend(p for p in parts if p is not None)
        state = tuple(parts)
    return state


_FRESH_REFS, _FRESH_IN_TUPLE = _calibrate()


def _reduce_array(arr: Any, np: Any) -> Reduction:
    if arr.dtype.hasobject:
        items = list(arr.reshape(-1))
        return Reduction((new_array, (arr.shape, arr.dtype, arr.flags.writeable)),
                         (items, None, None, _fill_object_array), [items])
    root = _root_array(arr)
    if root is not None:
        offset = arr.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        return Reduction((_np_view, (root, offset, arr.shape, arr.strides, arr.dtype, arr.flags.writeable)), None, [])
    data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8) if arr.size else b""
    caveat = None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(arr.base, torch.Tensor):
        caveat = ("shares memory with a torch tensor (Tensor.numpy()); replicas hold it as a separate copy, so "
                  "after a failover writes through one are not seen through the other")
    return Reduction((new_array, (arr.shape, arr.dtype, arr.flags.writeable)),
                     (pickle.PickleBuffer(data) if arr.size else b"", None, None, _fill_array), [], caveat=caveat)


def _reduce_tensor(t: Any, torch: Any) -> Reduction | None:
    if t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
        return None
    from . import tensors

    base = t._base
    if base is not None and type(base) in (torch.Tensor, torch.nn.Parameter) and base.is_contiguous() \
            and base.storage_offset() == 0:
        return Reduction((_tensor_view, (base, t.storage_offset(), tuple(t.shape), tuple(t.stride()))), None, [],
                         tensor_signal(t))
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    ctor = (new_tensor, (str(t.dtype).removeprefix("torch."), tuple(t.shape), tensors.device_type_of(t),
                            bool(t.requires_grad), type(t) is torch.nn.Parameter))
    return Reduction(ctor, (pickle.PickleBuffer(data) if data.size else b"", None, None, _fill_tensor), [],
                     tensor_signal(t))



def construct(func: Callable, args: tuple) -> Any:
    return func(*args)


def reconstruct_in_place(obj: Any, func: Callable, args: tuple) -> bool:
    """Make an existing node match a changed constructor without replacing it; False if it cannot be done."""
    if func in (copyreg.__newobj__, copyreg.__newobj_ex__) and args and isinstance(args[0], type):
        if type(obj) is not args[0]:
            try:
                obj.__class__ = args[0]
            except TypeError:
                return False
        return True
    if func is new_tensor:
        import torch

        dtype, shape, device_type, requires_grad, _ = args
        with torch.no_grad():
            obj.data = torch.empty(shape, dtype=getattr(torch, dtype), device=obj.device)
        if obj.requires_grad != requires_grad and obj.is_leaf:
            obj.requires_grad_(requires_grad)
        from . import tensors

        tensors.mark_displaced(obj, device_type)
        return True
    if isinstance(obj, collections.defaultdict) and func is type(obj):
        obj.default_factory = args[0] if args else None
        return True
    if func is new_array and tuple(obj.shape) == tuple(args[0]) and obj.dtype == args[1]:
        if obj.flags.writeable != args[2]:
            obj.flags.writeable = args[2]
        return True
    return False


def fill(obj: Any, body: tuple, fresh: bool) -> None:
    """Set a node's state from its body, as pickle does; an existing node is reset first."""
    state, listitems, dictitems, setter = body
    if listitems is not None:
        if not fresh:
            if hasattr(obj, "clear"):
                obj.clear()
            else:
                del obj[:]
        if hasattr(obj, "extend"):
            obj.extend(listitems)
        else:
            for item in listitems:
                obj.append(item)
    if dictitems is not None:
        if not fresh:
            obj.clear()
        for key, value in dictitems:
            obj[key] = value
    if setter is not None:
        setter(obj, state)
    elif state is not None:
        _set_state(obj, state, fresh)


def _set_state(obj: Any, state: Any, fresh: bool) -> None:
    inst_dict = getattr(obj, "__dict__", None)
    dict_like = type(state) is dict or (
        type(state) is tuple and len(state) == 2 and (state[0] is None or type(state[0]) is dict))
    if not fresh and dict_like and isinstance(inst_dict, dict):
        inst_dict.clear()  # what unpickling starts from; attributes deleted on the executor go too
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None and not _is_default_setstate(obj):
        setstate(state)
        return
    slotstate = None
    if type(state) is tuple and len(state) == 2:
        state, slotstate = state
    if state:
        obj.__dict__.update(state)
    if slotstate:
        for key, value in slotstate.items():
            setattr(obj, key, value)


def _is_default_setstate(obj: Any) -> bool:
    return getattr(type(obj), "__setstate__", None) is getattr(object, "__setstate__", None)


def signal_of(obj: Any) -> tuple | None:
    torch = sys.modules.get("torch")
    if torch is not None and type(obj) in (torch.Tensor, torch.nn.Parameter):
        try:
            return tensor_signal(obj)
        except RuntimeError:
            return None
    return None
