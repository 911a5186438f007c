"""Background moves: the cluster scheduler's autoscaler asks a kernel's front to move a replica off a host (to
empty the host and scale it in, or to give an idle kernel room for its next cell), off any cell's path.

The order comes in the answer to the front's lease renewal (``SchedulerExecutorPolicy.keep_lease``), with the id
the scheduler placed the new replica under. :class:`BackgroundMoves` carries each out once, in turn, with
:meth:`Supervisor.migrate` (the new replica joins the Raft group and catches up, the old one leaves): cells keep
running meanwhile, on any replica. Before the old replica leaves, the move waits for a cell it runs to reply and
then marks it ``leaving`` (a cell the scheduler sends it from then on is asked for again, moments later, once the
move is reported). The scheduler hears of the outcome: done (``migrated``, as for a move on a cell's path), or
failed (``move_failed``: it forgets the new replica's placement).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .supervisor import MigrationFailed

if TYPE_CHECKING:
    from .cluster import SchedulerExecutorPolicy
    from .relay import Relay
    from .supervisor import ReplicaHandle, Supervisor

log = logging.getLogger(__name__)


class BackgroundMoves:
    """Carries out the scheduler's move orders for one kernel, one at a time."""

    def __init__(self, relay: Relay, supervisor: Supervisor, policy: SchedulerExecutorPolicy,
                 cell_patience: float = 60.0):
        self.relay = relay
        self.supervisor = supervisor
        self.policy = policy
        #: seconds a move waits for a cell running on the replica it moves before it gives up (rolled back)
        self.cell_patience = cell_patience
        self._seen: set[int] = set()  # new replica ids ordered so far (orders repeat until reported)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def order(self, order: dict[str, Any]) -> None:
        """An order from a lease renewal; a repeated one is ignored."""
        new_id = int(order["new_replica_id"])
        if new_id in self._seen:
            return
        if self.supervisor.id_used(new_id):
            # An order from before a move on a cell's path took that id (the scheduler has cancelled it since).
            log.info("ignoring a background move to replica %d: this kernel has used that id", new_id)
            return
        self._seen.add(new_id)
        task = asyncio.ensure_future(self._carry_out(order))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _carry_out(self, order: dict[str, Any]) -> None:
        old_id, new_id, host_id = int(order["replica_id"]), int(order["new_replica_id"]), order["to_host"]
        async with self._lock:
            old = self.supervisor.replicas.get(old_id)
            if old is None or not old.alive or old.diverged:
                await self._failed(new_id, f"replica {old_id} is not a live replica of this kernel")
                return
            if order.get("to_host_url"):
                self.policy.launcher.host_urls[host_id] = order["to_host_url"]
            log.info("moving replica %d to host %s as replica %d (background)", old_id, host_id, new_id)
            try:
                new = await self.supervisor.migrate(old, host_id, self.relay.committed_seq, replica_id=new_id,
                                                    before_commit=lambda: self._let_leave(old))
            except Exception as exc:  # (rolled back: the old replica stays)
                old.leaving = False
                if not isinstance(exc, MigrationFailed):
                    log.exception("background move of replica %d failed", old_id)
                await self._failed(new_id, str(exc) or type(exc).__name__)
                return
            if self.relay.last_executor == old.id:
                self.relay.last_executor = None
            await self.policy.migrated(old.id, new.id, host_id)

    async def _let_leave(self, old: ReplicaHandle) -> None:
        """Wait until ``old`` runs no cell, then mark it leaving (no new cell starts on it)."""
        deadline = time.monotonic() + self.cell_patience
        while self.relay.inflight.get(old.id):
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {old.id} was still running a cell after {self.cell_patience:g} s")
            await asyncio.sleep(0.05)
        old.leaving = True

    async def _failed(self, new_id: int, why: str) -> None:
        log.warning("background move to replica %d not made: %s", new_id, why)
        await self.policy.move_failed(new_id)
