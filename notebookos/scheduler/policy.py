"""Scheduling policies: the interface the live scheduler and the simulator both drive.

A policy reads and updates a :class:`~notebookos.scheduler.cluster.Cluster` and returns decisions; it never
sleeps, sends or reads a clock (``now`` is an argument). That is what lets the same objects run live and in
simulated time. The methods are synchronous for that reason: with no I/O there is nothing to await, and the
simulator calls them hundreds of thousands of times. Implementations are found through the entry point group
``notebookos.scheduler_policies`` (like jupyter_client's provisioners); :func:`load_policy` resolves a name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from .cluster import Cluster

ENTRY_POINT_GROUP = "notebookos.scheduler_policies"


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


class _PolicyMeta(type(LoggingConfigurable), abc.ABCMeta):
    """traitlets' metaclass and ABCMeta together (a class cannot have both as bases' metaclasses otherwise)."""


class SchedulerPolicy(LoggingConfigurable, metaclass=_PolicyMeta):
    """Where replicas go and which replica runs each cell."""

    name = "base"
    replicas_per_kernel = Int(3, help="Replicas per kernel.").tag(config=True)
    max_subscription_ratio = Float(
        7.0, help="Most GPUs that replicas placed on a host may request, as a multiple of its GPUs "
        "(NotebookOS uses 7).").tag(config=True)
    max_hosts = Int(64, help="Largest cluster size scale-out may reach; past it cells queue.").tag(config=True)
    host_gpus = Int(8, help="GPUs of a host added by scale-out.").tag(config=True)

    @abc.abstractmethod
    def place(self, cluster: Cluster, kernel_id: str, now: float) -> list[str] | None:
        """Hosts for a new kernel's replicas (distinct, under the cap), or None when the cluster must grow."""

    @abc.abstractmethod
    def schedule_cell(self, cluster: Cluster, kernel_id: str, now: float) -> Decision:
        """What to do for an execute_request. A :class:`Run` has already committed its GPUs in ``cluster``."""

    def cell_finished(self, cluster: Cluster, kernel_id: str, now: float) -> None:
        """The cell's reply was sent (or its replica died): release its GPUs."""
        if cluster.kernels[kernel_id].running is not None:
            cluster.release(kernel_id, now)

    def idle_hosts(self, cluster: Cluster, now: float, idle_limit: float) -> list[str]:
        """Hosts with no replicas for ``idle_limit`` seconds, which scale-in may remove."""
        return [h.id for h in cluster.hosts.values()
                if not h.replicas and h.idle_since is not None and now - h.idle_since >= idle_limit]


def available_policies() -> dict[str, type[SchedulerPolicy]]:
    return {ep.name: ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_policy(name: str, **config: Any) -> SchedulerPolicy:
    policies = available_policies()
    if name not in policies:
        raise ValueError(f"unknown scheduling policy {name!r}; available: {', '.join(sorted(policies)) or 'none'} "
                         f"(entry point group {ENTRY_POINT_GROUP!r})")
    return policies[name](**config)
