"""Kernels without standing replicas (the ``batch`` policy): every cell runs in a fresh replica process.

The scheduler places no replica for such a kernel. For each cell it answers ``run`` with a transient replica id, a
host and the GPUs it committed there; :class:`PerCellReplicas` starts that replica through the host's daemon, as a
Raft group of one, and retires it once the cell's reply and its final ``idle`` status have reached the client.

The committed state (the Raft state machine's snapshot: refs of every value, history, outputs) travels between
cells through the kernel's object store, like the values over the inline limit it refers to, never through a path
on the front's machine, which other hosts do not have:

1. The cell's replica (``ReplicaKernel.keep_state``) puts the state after its cell into the store, deletes the
   state it started from (so the store keeps one state, not one per cell), and reports the new digest in its
   execute_reply metadata and its status (``state``).
2. Before retiring it (or before starting the next cell's replica, whichever comes first) the front asks it for its
   status and keeps that digest: :attr:`PerCellReplicas.state_digest`.
3. The next cell's replica gets the digest (``ReplicaKernel.restore_digest``) and loads the state from its store
   before Raft starts. With per-host stores (``HostDaemon.store_root``) the ``hostfetch`` store copies it from the
   host that wrote it: a host daemon keeps a kernel's directory past its last replica there (under batch, every
   cell's) until the kernel ends (hostobjects.py).

A state that cannot be loaded (deleted, on no host, corrupt) or stored is an error, never an empty namespace: the
replica refuses the cell with ``StateMissing`` (the front with a DispatchError when the last state was never
stored), saying to restart the kernel. The first cell of a kernel has no state and starts empty.

Between cells there is no process to ask, so the front answers the requests a client sends on its own
(``kernel_info``, completion, inspection, ``is_complete``, history, ``comm_info``) with what it knows: a Python
kernel, and no matches. Comms (widgets) do not outlive the cell that opened them.
"""

from __future__ import annotations

import asyncio
import logging
import platform
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

    def __init__(self, supervisor: Supervisor, ready_timeout: float = 120.0, status_timeout: float = 30.0):
        self.supervisor = supervisor
        self.ready_timeout = ready_timeout
        self.status_timeout = status_timeout
        #: the digest of the latest committed state in the kernel's object store; None before the first cell
        self.state_digest: str | None = None
        #: why the latest state could not be stored: every later cell is refused with it
        self.state_lost: str | None = None
        self._ending: dict[str, set[str]] = {}  # execute msg_id -> which of "reply", "idle" reached the client
        self._latest: ReplicaHandle | None = None  # the replica of the latest cell
        self._reports: dict[int, asyncio.Future[None]] = {}  # replica id -> its state being asked for

    def expect(self, msg_id: str) -> None:
        """``msg_id`` is a cell about to run on a transient replica."""
        self._ending[msg_id] = set()

    async def start(self, choice: ExecutorChoice) -> ReplicaHandle:
        """Launch the cell's replica on the host the scheduler chose; return once it answers requests."""
        if self._latest is not None:
            await self._state_of(self._latest)  # the previous cell's replica may not be retired yet
        if self.state_lost:
            raise RuntimeError(self.state_lost)
        sup = self.supervisor
        sup.replica_config = {**sup.replica_config, "keep_state": True, "restore_digest": self.state_digest or ""}
        handle = await sup.launch([], host_id=choice.host, replica_id=choice.replica, campaign_now=True)
        handle.member = False  # not part of any lasting group: its exit is the plan, not a loss to replace
        try:
            handle.status = await sup.request(handle, protocol.STATUS_REQUEST, {}, timeout=self.ready_timeout)
        except TimeoutError:
            await self.retire(handle)
            raise RuntimeError(f"the replica for this cell (id {choice.replica} on {choice.host}) did not start "
                               f"within {self.ready_timeout:g} s") from None
        self._latest = handle
        return handle

    def _state_of(self, handle: ReplicaHandle) -> asyncio.Future[None]:
        """Ask ``handle`` (once) which state its cell left in the store, and record it."""
        report = self._reports.get(handle.id)
        if report is None:
            report = self._reports[handle.id] = asyncio.ensure_future(self._ask_state(handle))
        return report

    async def _ask_state(self, handle: ReplicaHandle) -> None:
        try:
            status = await self.supervisor.request(handle, protocol.STATUS_REQUEST, {}, timeout=self.status_timeout)
        except TimeoutError as exc:  # ReplicaGone too: it died during its cell, which then committed nothing
            log.warning("could not ask replica %d for the state its cell left: %s", handle.id, exc)
            return
        if status.get("state"):
            self.state_digest = status["state"]
        elif status.get("state_problem"):
            self.state_lost = f"this kernel's committed state is lost: {status['state_problem']}"

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
        if handle is self._latest:
            await self._state_of(handle)
        self._reports.pop(handle.id, None)
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

