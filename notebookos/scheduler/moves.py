"""The live scheduler's background moves: the policy's :class:`~notebookos.scheduler.policy.Move` orders while a
kernel's front carries them out.

A policy's autoscaler (:meth:`~notebookos.scheduler.policy.SchedulerPolicy.autoscale`) plans a move by placing the
new replica in the cluster already. The simulator then waits ``migration_cost``; the live scheduler instead hands
the order to the kernel's front (in the answer to its next lease renewal, again on every renewal until the front
reports), and the front migrates its replica to that id on that host (``Supervisor.migrate``: the new replica
joins the Raft group and catches up, the old one leaves) while cells keep running on the other replicas. Until the
front reports the move done, the new replica is not ready (``ReplicaRecord.ready_at`` is infinite: no cell runs on
it). An order the front reports failed, whose old replica is lost, or that is not done within the timeout is
cancelled: the new replica's record is removed again.

:class:`MoveBook` is only the bookkeeping, with no clock of its own and no network (the core calls it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .cluster import Cluster
from .policy import Move

__all__ = ["MoveBook", "MoveOrder"]


@dataclass
class MoveOrder:
    move: Move
    issued: float
    #: the target host's daemon URL, for the front's launcher
    to_host_url: str | None = None

    def view(self) -> dict[str, Any]:
        m = self.move
        return {"replica_id": m.replica_id, "new_replica_id": m.new_replica_id, "to_host": m.to_host,
                "to_host_url": self.to_host_url}


class MoveBook:
    """Move orders not yet done, per kernel (a kernel may have more than one: its front does them in turn)."""

    def __init__(self) -> None:
        self.orders: dict[str, list[MoveOrder]] = {}
        self.done = 0
        self.cancelled = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.orders.values())

    def issue(self, cluster: Cluster, move: Move, now: float, to_host_url: str | None) -> None:
        """Record an order; its new replica (placed by the policy) runs no cell until the move is done."""
        cluster.kernels[move.kernel_id].replicas[move.new_replica_id].ready_at = math.inf
        self.orders.setdefault(move.kernel_id, []).append(MoveOrder(move, now, to_host_url))

    def for_kernel(self, kernel_id: str) -> list[dict[str, Any]]:
        return [o.view() for o in self.orders.get(kernel_id, ())]

    def find(self, kernel_id: str, new_replica_id: int) -> MoveOrder | None:
        return next((o for o in self.orders.get(kernel_id, ()) if o.move.new_replica_id == new_replica_id), None)

    def complete(self, cluster: Cluster, order: MoveOrder, now: float) -> list[str]:
        """The front moved the replica: the old one goes, the new one runs cells. Returns the hosts touched."""
        m = order.move
        kernel = cluster.kernels[m.kernel_id]
        old_host = kernel.replicas[m.replica_id].host_id
        cluster.remove_replica(m.kernel_id, m.replica_id, now)
        kernel.replicas[m.new_replica_id].ready_at = 0.0
        self._drop(order)
        self.done += 1
        return [old_host, m.to_host]

    def cancel(self, cluster: Cluster, order: MoveOrder, now: float) -> list[str]:
        """The move will not happen: forget the new replica placed for it. Returns the hosts touched."""
        m = order.move
        self._drop(order)
        self.cancelled += 1
        kernel = cluster.kernels.get(m.kernel_id)
        if kernel is None or m.new_replica_id not in kernel.replicas:
            return []
        cluster.remove_replica(m.kernel_id, m.new_replica_id, now)
        return [m.to_host]

    def involving(self, kernel_id: str, replica_id: int) -> list[MoveOrder]:
        """The orders that move ``replica_id`` or move a replica to it."""
        return [o for o in self.orders.get(kernel_id, ())
                if replica_id in (o.move.replica_id, o.move.new_replica_id)]

    def forget_kernel(self, kernel_id: str) -> None:
        """The kernel ended (its records went with it)."""
        self.orders.pop(kernel_id, None)

    def expired(self, now: float, timeout: float) -> list[MoveOrder]:
        return [o for orders in self.orders.values() for o in orders if now - o.issued > timeout]

    def _drop(self, order: MoveOrder) -> None:
        orders = self.orders.get(order.move.kernel_id, [])
        if order in orders:
            orders.remove(order)
        if not orders:
            self.orders.pop(order.move.kernel_id, None)
