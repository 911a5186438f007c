"""Which replica runs a cell, with which GPUs: the interface the front asks, and the standalone policy.

The cluster scheduler's client implements :class:`ExecutorPolicy` too (it pre-commits GPUs in ``choose`` and
releases them in ``cell_finished``); the front does not know which one it talks to. A policy may answer
:class:`Wait` when no replica can get GPUs yet (the front tells the user in the cell's output and asks again) or
:class:`Migrate` (the front moves that replica to a host that has GPUs, then asks again).
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


@dataclass(frozen=True)
class ExecutorChoice:
    """Run the cell on ``replica`` with ``devices`` (GPU device ids on its host) bound for the cell."""

    replica: int
    devices: tuple[int, ...] = ()
    #: Where the replica is (cluster mode), so a policy without standing replicas can have it started there.
    host: str | None = None


@dataclass(frozen=True)
class Wait:
    """No GPU for the cell yet; ``position`` in the queue (1 = next), ``reason`` shown to the user."""

    position: int
    reason: str = "all GPUs are busy"


@dataclass(frozen=True)
class Migrate:
    """No replica's host can get GPUs: move ``replica`` to ``host_id`` (the front does it), then ask again."""

    replica: int
    host_id: str | None = None


class ExecutorPolicy(abc.ABC):
    """Chooses the replica (and GPUs) that lead each execute_request."""

    @abc.abstractmethod
    async def choose(self, replicas: list[ReplicaView], last_executor: int | None
                     ) -> ExecutorChoice | Wait | Migrate:
        """The live replica that should run the next cell and the devices it gets, or :class:`Wait` or
        :class:`Migrate`."""

    async def cell_finished(self, replica_id: int) -> None:  # noqa: B027 - optional hook
        """The chosen replica's execute_reply (or its death) ended the cell: release what ``choose`` bound."""

    async def replica_lost(self, replica_id: int) -> None:  # noqa: B027 - optional hook
        """A replica died: do not choose it again."""

    async def replica_added(self, replica_id: int, host_id: str | None) -> None:  # noqa: B027 - optional hook
        """A replacement replica joined the group."""

    async def place_replacement(self, lost_replica: int, lost_host: str | None) -> tuple[str | None, int | None]:
        """Where the replacement of ``lost_replica`` starts: ``(host id, replica id)``, ``None`` for either
        leaving the choice to the supervisor. By default where the lost one ran (on one machine: here)."""
        return lost_host, None

    async def migrated(self, old_replica: int, new_replica: int, host_id: str | None) -> None:  # noqa: B027
        """A :class:`Migrate` was carried out: ``new_replica`` on ``host_id`` replaced ``old_replica``."""


class LastExecutorPolicy(ExecutorPolicy):
    """Standalone: the last executor while it is alive (its caches are warm), else the lowest-id live replica.

    ``devices`` are this machine's GPUs that a cell gets (all replicas run here); none by default.
    """

    def __init__(self, devices: tuple[int, ...] = ()):
        self.devices = tuple(devices)

    async def choose(self, replicas: list[ReplicaView], last_executor: int | None) -> ExecutorChoice:
        live = sorted(r.id for r in replicas if r.alive)
        if not live:
            raise LookupError("no live replica to run the cell")
        chosen = last_executor if last_executor in live else live[0]
        return ExecutorChoice(chosen, self.devices)
