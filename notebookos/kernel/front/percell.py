"""Kernels without standing replicas (the ``batch`` policy): every cell runs in a fresh replica process.

The scheduler places no replica for such a kernel. For each cell it answers ``run`` with a transient replica id, a
host and the GPUs it committed there; :class:`PerCellReplicas` starts that replica through the host's daemon, as a
Raft group of one that begins from the state the previous cell's replica wrote (``ReplicaKernel.restore_from`` /
``state_file``), and retires it once the cell's reply and its final ``idle`` status have reached the client. Values
over the inline limit stay in the kernel's object store between cells, like any committed value.

Between cells there is no process to ask, so the front answers the requests a client sends on its own
(``kernel_info``, completion, inspection, ``is_complete``, history, ``comm_info``) with what it knows: a Python
kernel, and no matches. Comms (widgets) do not outlive the cell that opened them.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

from jupyter_client import protocol_version

from .. import protocol
from .executor import ExecutorChoice
from .supervisor import ReplicaHandle, Supervisor

log = logging.getLogger(__name__)

BANNER = ("notebookos kernel under a policy without standing replicas (batch): each cell runs in a fresh process on "
          "a host with free GPUs, starting from the state the previous cell committed.")


class PerCellReplicas:
    """Starts the transient replica of each cell and retires it when the cell is over."""

    def __init__(self, supervisor: Supervisor, state_file: Path, ready_timeout: float = 120.0):
        self.supervisor = supervisor
        self.state_file = state_file
        self.ready_timeout = ready_timeout
        self._ending: dict[str, set[str]] = {}  # execute msg_id -> which of "reply", "idle" reached the client

    def expect(self, msg_id: str) -> None:
        """``msg_id`` is a cell about to run on a transient replica."""
        self._ending[msg_id] = set()

    async def start(self, choice: ExecutorChoice) -> ReplicaHandle:
        """Launch the cell's replica on the host the scheduler chose; return once it answers requests."""
        sup = self.supervisor
        sup.replica_config = {**sup.replica_config, "state_file": str(self.state_file),
                              "restore_from": str(self.state_file)}
        handle = await sup.launch([], host_id=choice.host, replica_id=choice.replica, campaign_now=True)
        handle.member = False  # not part of any lasting group: its exit is the plan, not a loss to replace
        try:
            handle.status = await sup.request(handle, protocol.STATUS_REQUEST, {}, timeout=self.ready_timeout)
        except TimeoutError:
            await self.retire(handle)
            raise RuntimeError(f"the replica for this cell (id {choice.replica} on {choice.host}) did not start "
                               f"within {self.ready_timeout:g} s") from None
        return handle

    def cell_message(self, msg_id: str, what: str) -> bool:
        """Note that the cell's ``reply`` or ``idle`` went to the client; True once both have."""
        seen = self._ending.get(msg_id)
        if seen is None:
            return False
        seen.add(what)
        if seen >= {"reply", "idle"}:
            del self._ending[msg_id]
            return True
        return False

    async def retire(self, handle: ReplicaHandle) -> None:
        handle.alive = False
        # Out of the table before the await: the supervisor's pruning would otherwise list it among the departed
        # Raft members (it never was one), and only sometimes, depending on when it ran.
        self.supervisor.replicas.pop(handle.id, None)
        self.supervisor.forget(handle)
        if handle.launched is not None:
            await self.supervisor.launcher.terminate(handle.launched)


def reply_without_replica(msg_type: str, content: dict[str, Any]) -> dict[str, Any] | None:
    """The front's own answer to a request that needs no cell, or None when it has none."""
    if msg_type == "kernel_info_request":
        return {"status": "ok", "protocol_version": protocol_version, "implementation": "notebookos",
                "implementation_version": "", "banner": BANNER, "help_links": [],
                "language_info": {"name": "python", "version": platform.python_version(), "mimetype": "text/x-python",
                                  "file_extension": ".py", "pygments_lexer": "ipython3",
                                  "codemirror_mode": {"name": "ipython", "version": 3},
                                  "nbconvert_exporter": "python"}}
    if msg_type == "complete_request":
        cursor = content.get("cursor_pos", 0)
        return {"status": "ok", "matches": [], "cursor_start": cursor, "cursor_end": cursor, "metadata": {}}
    if msg_type == "inspect_request":
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    if msg_type == "is_complete_request":
        return {"status": "unknown"}
    if msg_type == "history_request":
        return {"status": "ok", "history": []}
    if msg_type == "comm_info_request":
        return {"status": "ok", "comms": {}}
    return None

