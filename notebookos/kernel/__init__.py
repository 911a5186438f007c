"""The replicated kernel: replica, front, provisioner and the in-kernel API.

Inside a notebook running on the ``notebookos`` kernel::

    import notebookos.kernel
    notebookos.kernel.replicas()   # one dict per replica: id, pid, host, raft_role, last_executor, alive, ...
    notebookos.kernel.gpus()       # GPU device ids bound to the running cell ([] between cells)
    notebookos.kernel.device()     # torch.device of the first bound GPU (cpu when none)

``%replicas`` shows the same as a table.
"""

from __future__ import annotations

from typing import Any

REPLICA_FIELDS = ("id", "pid", "host", "raft_role", "last_executor", "alive", "applied_index")


def _current_replica():
    from ipykernel.kernelbase import Kernel

    kernel = Kernel.instance() if Kernel.initialized() else None
    if kernel is None or not hasattr(kernel, "replica_status"):
        raise RuntimeError(
            "notebookos.kernel.replicas() only works inside a notebookos kernel; this Python is not one. "
            "Choose the 'Python 3 (replicated)' kernel (kernelspec 'notebookos')."
        )
    return kernel


def replicas() -> list[dict[str, Any]]:
    """One dict per replica of this kernel, keys ``id, pid, host, raft_role, last_executor, alive, applied_index``.

    The replica running the cell reports itself live; the others are as the front last saw them (polled every 2 s).
    """
    rows = _current_replica().replicas()
    return [{key: row.get(key) for key in REPLICA_FIELDS} for row in sorted(rows, key=lambda r: r.get("id", 0))]


def gpus() -> list[int]:
    """The GPU device ids (on this replica's host) bound to the running cell; empty between cells."""
    return list(_current_replica().devices.devices)


def device():
    """A ``torch.device`` for the first GPU bound to the running cell, or ``cpu`` when none is bound.

    Subprocesses the cell starts see the bound GPUs through ``CUDA_VISIBLE_DEVICES``.
    """
    return _current_replica().devices.torch_device()
