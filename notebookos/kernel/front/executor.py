"""Which replica runs a cell: the interface the front asks, and the standalone policy.

The cluster scheduler implements :class:`ExecutorPolicy` too (it also pre-commits GPUs in ``choose`` and releases
them in ``cell_finished``); the front does not know which one it talks to.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    """What a policy may know about a replica when choosing."""

    id: int
    host: str
    alive: bool


class ExecutorPolicy(abc.ABC):
    """Chooses the replica that leads each execute_request."""

    @abc.abstractmethod
    async def choose(self, replicas: list[ReplicaView], last_executor: int | None) -> int:
        """Return the id of the live replica that should run the next cell."""

    async def cell_finished(self, replica_id: int) -> None:  # noqa: B027 - optional hook
        """Called when the chosen replica's execute_reply (or its death) ends the cell."""


class LastExecutorPolicy(ExecutorPolicy):
    """The last executor while it is alive (its caches are warm), else the lowest-id live replica."""

    async def choose(self, replicas: list[ReplicaView], last_executor: int | None) -> int:
        live = sorted(r.id for r in replicas if r.alive)
        if not live:
            raise LookupError("no live replica to run the cell")
        if last_executor in live:
            return last_executor
        return live[0]
