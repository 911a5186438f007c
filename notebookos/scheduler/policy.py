"""Scheduling policies: the interface the live scheduler and the simulator both drive.

A policy reads and updates a :class:`~notebookos.scheduler.cluster.Cluster` and returns decisions; it never
sleeps, sends or reads a clock (``now`` is an argument). That is what lets the same objects run live and in
simulated time. The methods are synchronous for that reason: with no I/O there is nothing to await, and the
simulator calls them hundreds of thousands of times. Implementations are found through the entry point group
``notebookos.scheduler_policies`` (like jupyter_client's provisioners); :func:`load_policy` resolves a name.

Besides the two abstract methods, :class:`SchedulerPolicy` has a default for every hook its callers use (the
live :class:`~notebookos.scheduler.core.SchedulerCore` and the simulator), so callers never probe for optional
methods: override what your policy does differently.

The policy also keeps *the* waiting queue of its cluster: the kernels whose cells were told to wait (a
:class:`Queue` or a :class:`ScaleOut`), first in line first. The caller puts a kernel told to wait in line
(:meth:`SchedulerPolicy.enqueue`) and takes it out when its cell runs or moves (:meth:`SchedulerPolicy.dequeue`);
a policy may use the order (the batch policy serves it strictly first come, first served).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from traitlets import Int
from traitlets.config import LoggingConfigurable

from .cluster import Cluster

ENTRY_POINT_GROUP = "notebookos.scheduler_policies"

#: The bundled policies, resolvable by name even where the installed package metadata predates their entry
#: points (an editable install made before they were added).
BUNDLED_POLICIES = {
    "notebookos": "notebookos.scheduler.policies.notebookos:NotebookOSPolicy",
    "reservation": "notebookos.scheduler.policies.reservation:ReservationPolicy",
    "batch": "notebookos.scheduler.policies.batch:BatchPolicy",
}


@dataclass(frozen=True)
class Run:
    """Run the cell now on ``replica_id`` with ``devices`` bound (already committed in the cluster)."""

    replica_id: int
    host_id: str
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Migrate:
    """Move ``replica_id`` to ``to_host`` (a new replica joins there, the old one leaves), then ask again."""

    replica_id: int
    to_host: str


@dataclass(frozen=True)
class ScaleOut:
    """The cell cannot run anywhere: add a host (of ``gpus`` GPUs), then ask again."""

    gpus: int


@dataclass(frozen=True)
class Queue:
    """Wait for GPUs to free (the cluster is at its maximum size); ``position`` is the cell's place in line."""

    position: int


Decision = Run | Migrate | ScaleOut | Queue


@dataclass(frozen=True)
class Move:
    """A background migration, off any cell's path: ``replica_id`` of an idle kernel moves to ``to_host``, where the
    policy has placed ``new_replica_id`` already, not ready (``ready_at`` infinite: the caller sets when it is up,
    started and caught up, and removes ``replica_id`` then)."""

    kernel_id: str
    replica_id: int
    new_replica_id: int
    to_host: str


@dataclass(frozen=True)
class Rebalance:
    """What a policy's autoscaler wants now: ``add_hosts`` more hosts, these background ``moves``, and
    ``remove_hosts`` (draining hosts left with no replicas and no GPUs in use: scale them in)."""

    add_hosts: int = 0
    moves: tuple[Move, ...] = ()
    remove_hosts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add_hosts or self.moves or self.remove_hosts)


class _PolicyMeta(type(LoggingConfigurable), abc.ABCMeta):
    """traitlets' metaclass and ABCMeta together (a class cannot have both as bases' metaclasses otherwise)."""


class SchedulerPolicy(LoggingConfigurable, metaclass=_PolicyMeta):
    """Where replicas go and which replica runs each cell.

    A policy that caps GPU subscription declares its own cap trait (``c.NotebookOSPolicy.max_subscription_ratio``).
    """

    name = "base"
    replicas_per_kernel = Int(3, help="Replicas per kernel.").tag(config=True)
    max_hosts = Int(64, help="Largest cluster size scale-out may reach; past it cells queue.").tag(config=True)
    host_gpus = Int(8, help="GPUs of a host added by scale-out.").tag(config=True)

    #: True when ``place`` commits the kernel's GPUs (a reservation held until the kernel ends): a running
    #: ``cluster.kernels[k].running`` then does not mean a cell runs, and scale-out for a kernel that cannot be
    #: placed asks for its GPUs on one host, not for hosts.
    reserves_at_placement = False
    #: True when cells run strictly first come, first served: once the first waiting cell cannot run, none behind
    #: it can (the simulator stops retrying there).
    strict_fifo = False
    #: Seconds between a :class:`Run` and the cell's start (the batch policy starts a fresh process per cell).
    process_start_seconds = 0.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._waiting: dict[str, float] = {}  # kernel id -> when it was first told to wait, in line order

    @abc.abstractmethod
    def place(self, cluster: Cluster, kernel_id: str, now: float) -> list[str] | None:
        """Hosts for a new kernel's replicas (distinct, under the cap), or None when the cluster must grow."""

    @abc.abstractmethod
    def schedule_cell(self, cluster: Cluster, kernel_id: str, now: float) -> Decision:
        """What to do for an execute_request. A :class:`Run` has already committed its GPUs in ``cluster``."""

    def cell_finished(self, cluster: Cluster, kernel_id: str, now: float) -> float | None:
        """The cell's reply was sent (or its replica died): release its GPUs. A policy that keeps them for the
        kernel's next cell (``cluster.hold``) returns when that hold lapses: the caller then calls
        :meth:`hold_lapsed`. Default: released, None."""
        if cluster.kernels[kernel_id].running is not None:
            cluster.release(kernel_id, now)
        self.dequeue(kernel_id)
        return None

    def hold_lapsed(self, cluster: Cluster, kernel_id: str, now: float) -> str | None:
        """Give back the GPUs held for ``kernel_id`` if their time is up; returns their host (None: nothing freed)."""
        kernel = cluster.kernels.get(kernel_id)
        hold = kernel.held if kernel is not None else None
        if hold is None or hold.until > now:
            return None
        cluster.drop_hold(kernel_id)
        self.refresh(cluster, [hold.host_id])
        return hold.host_id

    def autoscale(self, cluster: Cluster, now: float, starting: int) -> Rebalance | None:
        """The policy's autoscaler, called periodically (``starting``: hosts being added now). None: the policy
        has none, and the caller scales out when a decision asks (:class:`ScaleOut`) and scales in hosts idle past
        a limit (:meth:`idle_hosts`)."""
        return None

    def idle_hosts(self, cluster: Cluster, now: float, idle_limit: float) -> list[str]:
        """Hosts with no replicas for ``idle_limit`` seconds, which scale-in may remove."""
        return [h.id for h in cluster.hosts.values()
                if not h.replicas and h.idle_since is not None and now - h.idle_since >= idle_limit]

    def hosts_needed(self, cluster: Cluster, kernel_id: str) -> int:
        """How many new hosts ``place`` needs before it can place this kernel (after it answered None).
        Default 1: grow one host at a time and ask again."""
        return 1

    def max_free_gpus(self, cluster: Cluster) -> int:
        """Most GPUs a cell could have on one host (a cell needing more cannot run or migrate anywhere now)."""
        return max((h.available_gpus for h in cluster.hosts.values()), default=0)

    def refresh(self, cluster: Cluster, host_ids: list[str] | None = None) -> None:
        """The cluster changed on ``host_ids`` (all hosts when None) outside the policy: a host came or went,
        replicas were placed or removed, GPUs released. Default: nothing (a policy without an index)."""

    def trust_refresh(self, trusted: bool) -> bool:
        """``trusted``: the caller reports every change it makes through :meth:`refresh` (the simulator), so a
        policy with an index may skip re-checking hosts when it finds no room. Returns the previous setting.
        Default: nothing to skip, always False."""
        return False

    def no_room(self, cluster: Cluster, kernel_id: str) -> str:
        """What a kernel that ``place`` cannot place asks for, for error messages."""
        request = cluster.kernels[kernel_id].request
        return f"{self.replicas_per_kernel} replica(s) of {request.gpus} GPU(s) on distinct hosts"

    def check(self, cluster: Cluster) -> None:
        """Raise if the policy's own bookkeeping disagrees with ``cluster`` (tests, ``simulate(check=True)``)."""

    # -- the waiting queue -------------------------------------------------------------------------------------
    def enqueue(self, cluster: Cluster, kernel_id: str, now: float) -> int:
        """Put ``kernel_id`` in line (a kernel already there keeps its place); returns its position (1 = next).
        Kernels that left the cluster leave the line."""
        waiting = self._waiting
        kernels = cluster.kernels
        for k in [k for k in waiting if k not in kernels]:
            del waiting[k]
        if kernel_id not in waiting:
            waiting[kernel_id] = now
            return len(waiting)
        for pos, k in enumerate(waiting, 1):
            if k == kernel_id:
                return pos
        raise AssertionError("unreachable")

    def dequeue(self, kernel_id: str) -> None:
        """``kernel_id`` no longer waits (its cell runs or moves, or it finished)."""
        self._waiting.pop(kernel_id, None)

    def withdraw(self, cluster: Cluster, kernel_id: str) -> None:
        """The kernel's waiting cell was cancelled (or the kernel is going away): leave the line."""
        self.dequeue(kernel_id)

    def _queue(self, cluster: Cluster, kernel_id: str, now: float) -> Queue:
        """Answer :class:`Queue` with the kernel's place in line (putting it there)."""
        return Queue(self.enqueue(cluster, kernel_id, now))

    @property
    def waiting(self) -> list[str]:
        """Kernel ids whose cells wait, first in line first."""
        return list(self._waiting)

    def waiting_since(self, kernel_id: str) -> float | None:
        """When ``kernel_id`` was put in line (None: it does not wait)."""
        return self._waiting.get(kernel_id)

    def queue_position(self, kernel_id: str) -> int | None:
        """``kernel_id``'s place in line (1 = next), or None."""
        for pos, k in enumerate(self._waiting, 1):
            if k == kernel_id:
                return pos
        return None


def available_policies() -> dict[str, type[SchedulerPolicy]]:
    """Policy classes by name: the entry points, and the bundled ones where package metadata lacks them."""
    from ..plugins import available

    return {name: policy_class(name) for name in available(ENTRY_POINT_GROUP, BUNDLED_POLICIES)}


def policy_class(name: str) -> type[SchedulerPolicy]:
    """The policy class an entry point name, a bundled name or ``module:Class`` names (ValueError if none)."""
    from ..plugins import load_class

    return load_class(ENTRY_POINT_GROUP, name, SchedulerPolicy, "scheduling policy", BUNDLED_POLICIES)


def load_policy(name: str, **config: Any) -> SchedulerPolicy:
    """An instance of :func:`policy_class` ``(name)`` with ``config`` (traits, and ``parent``)."""
    return policy_class(name)(**config)
