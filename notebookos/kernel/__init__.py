"""The replicated kernel: replica, front, provisioner and the in-kernel API.

Inside a notebook running on the ``notebookos`` kernel::

    import notebookos.kernel
    notebookos.kernel.replicas()   # one dict per replica: id, pid, host, raft_role, last_executor, alive, ...

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
