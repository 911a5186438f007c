"""PyTorch tensors between replicas: GPU tensors replicate through host memory and return to a GPU on failover.

A follower holds no GPU between cells (a GPU is bound to the executor only while a cell runs), so it cannot load a
CUDA tensor the way ``torch`` pickles it: torch would try to put it back on a device that follower cannot see.
Instead every dense tensor is pickled as its bytes (a numpy ``uint8`` array, so large ones travel out of band to
the object store like any array) plus dtype, shape, ``requires_grad`` and the *type* of device it lived on:

- a follower rebuilds it in host memory and remembers that it was a GPU tensor ("displaced");
- when that replica next leads a cell with a GPU bound, :func:`restore_displaced` moves every displaced tensor to
  that GPU in place (``t.data = ...``), so models, optimisers and every other reference see it there.

The bytes are the tensor's content only (torch's own pickles also carry a random serialisation id), so the
executor and its followers compute the same digest for the same tensor. Storage shared between views is not
preserved: each tensor travels as its own contiguous copy.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

# id(tensor) -> (weak reference, device type it came from), for tensors loaded in host memory that lived on a GPU.
_displaced: dict[int, tuple[weakref.ref, str]] = {}


def reduce_tensor(obj: Any) -> tuple | None:
    """A pickle reduction for a plain dense tensor or parameter, or None to let torch pickle it."""
    torch = sys.modules.get("torch")
    if torch is None or type(obj) not in (torch.Tensor, torch.nn.Parameter):
        return None
    if obj.layout != torch.strided or obj.is_quantized or obj.device.type == "meta":
        return None
    device_type = device_type_of(obj)
    data = obj.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return _rebuild_tensor, (data, str(obj.dtype).removeprefix("torch."), tuple(obj.shape), device_type,
                             bool(obj.requires_grad), type(obj) is torch.nn.Parameter)


def _rebuild_tensor(data: Any, dtype: str, shape: tuple[int, ...], device_type: str, requires_grad: bool,
                    parameter: bool) -> Any:
    import torch

    if not data.flags.writeable:  # an in-band buffer of a read-only pickle: torch wants writable memory
        data = data.copy()
    tensor = torch.from_numpy(data).view(getattr(torch, dtype)).reshape(shape)
    if parameter:
        tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
    elif requires_grad:
        tensor.requires_grad_(True)
    mark_displaced(tensor, device_type)
    return tensor


def device_type_of(tensor: Any) -> str:
    """The device type ``tensor`` belongs on: a displaced tensor's GPU type, else where it is."""
    entry = _displaced.get(id(tensor))
    return entry[1] if entry is not None and entry[0]() is tensor else tensor.device.type


def mark_displaced(tensor: Any, device_type: str) -> None:
    """Remember that ``tensor``, held in host memory here, lived on a ``device_type`` device on the executor."""
    key = id(tensor)
    if device_type == "cpu" or tensor.device.type != "cpu":
        entry = _displaced.get(key)
        if entry is not None and entry[0]() is tensor:
            del _displaced[key]
        return
    _displaced[key] = (weakref.ref(tensor, lambda _, key=key: _displaced.pop(key, None)), device_type)


def displaced_count() -> int:
    return len(_displaced)


def restore_displaced(device: Any) -> int:
    """Move every displaced tensor whose device type matches ``device`` onto it, in place; return how many."""
    moved = 0
    for key, (ref, device_type) in list(_displaced.items()):
        tensor = ref()
        if tensor is None:
            _displaced.pop(key, None)
            continue
        if device_type != device.type:
            continue
        tensor.data = tensor.data.to(device)
        _displaced.pop(key, None)
        moved += 1
    return moved
