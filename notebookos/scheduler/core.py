"""The scheduler's decisions without the network: :class:`SchedulerCore` and its scale-out accounting.

:class:`SchedulerCore` is what ``notebookos scheduler`` decides, with no tornado, no HTTP and no awaiting: the
cluster's state (:class:`~notebookos.scheduler.cluster.Cluster`), the policy calls, placement and top-up, the
answer to each execute request, the waiting queue (the policy's: :meth:`~notebookos.scheduler.policy.
SchedulerPolicy.enqueue`), scale-out accounting, front leases, reclaiming idle or orphaned kernels, scale-in and the
replica reports of the fronts. Its clock is a function (``clock``), so tests drive it with a fake one. What needs
the network (asking a host provider for a host, telling host daemons to stop replicas) it leaves to its caller,
the REST service (``service.py``), by returning it: a :class:`PendingHost` to start, :class:`Chores` to do.

A policy with an autoscaler of its own (:meth:`~notebookos.scheduler.policy.SchedulerPolicy.autoscale`, asked by
:meth:`SchedulerCore.autoscale`) sizes the cluster instead of the idle-host rule: the hosts it adds are
:class:`Chores`, its background moves go to the kernels' fronts through :class:`~notebookos.scheduler.moves.
MoveBook` (in their lease renewals), and the emptied hosts it names are removed through the provider.

:class:`~notebookos.scheduler.cluster.Growth` (in ``cluster.py``, with the rest of the pure accounting) is the
scale-out accounting the core and the simulator (``sim/engine.py``) share: the hosts being added, the GPUs of each
already promised to waiting kernels, and whether the cluster may grow at all.

Errors are raised as ``error(status, message)`` (``CoreError`` unless the caller passes its own class, as the
service passes its ``APIError``), with the HTTP status the service answers.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cluster import Cluster, Growth, Host, KernelRecord, PendingHost, ResourceRequest
from .liveness import HostLiveness
from .moves import MoveBook
from .policy import Migrate, Queue, Run, ScaleOut, SchedulerPolicy

__all__ = ["Chores", "CoreError", "Growth", "PendingHost", "SchedulerCore"]

class CoreError(Exception):
    """A request the core refuses: ``status`` is the HTTP status the service answers with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Chores:
    """What a housekeeping pass (or a request) leaves to the caller, over the network."""

    #: (kernel id, [(host url, replica id)]): have those host daemons stop those replicas
    stop_replicas: list[tuple[str, list[tuple[str | None, int]]]] = field(default_factory=list)
    #: kernels that ended: every host may drop its copy of their objects
    ended_kernels: list[str] = field(default_factory=list)
    #: hosts the provider added that it should now remove (scale-in, or taken for dead)
    remove_hosts: list[str] = field(default_factory=list)
    #: hosts the provider should add (the policy's autoscaler; counted as starting already)
    add_hosts: list[PendingHost] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.stop_replicas or self.ended_kernels or self.remove_hosts or self.add_hosts)


def wait_answer(position: int, reason: str) -> dict[str, Any]:
    return {"action": "wait", "position": position, "reason": reason, "retry_after": 1.0}


class SchedulerCore:
    """Cluster state and decisions of one scheduler (see the module docstring). ``on_change`` is called whenever
    GPUs were released or the cluster changed (the service wakes its long-polling execute requests)."""

    def __init__(self, policy: SchedulerPolicy, *, max_hosts: int = 64, min_hosts: int = 0,
                 host_idle_limit: float = 0.0, session_idle_limit: float = 0.0, front_lease: float = 0.0,
                 reclaim_stops_replicas: bool = True, host_timeout: float = 0.0, move_timeout: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, log: logging.Logger | None = None,
                 error: Callable[[int, str], Exception] = CoreError,
                 on_change: Callable[[], None] | None = None) -> None:
        self.policy = policy
        self.max_hosts = max_hosts
        self.min_hosts = min_hosts
        self.host_idle_limit = host_idle_limit
        self.session_idle_limit = session_idle_limit
        self.front_lease = front_lease
        self.reclaim_stops_replicas = reclaim_stops_replicas
        self.host_timeout = host_timeout
        self.move_timeout = move_timeout
        self.clock = clock
        self.log = log or logging.getLogger(__name__)
        self.error = error
        self.on_change = on_change or (lambda: None)
        self.cluster = Cluster()
        self.growth = Growth(max_hosts)
        self.host_urls: dict[str, str] = {}
        self.host_devices: dict[str, list[dict]] = {}
        self.managed_hosts: set[str] = set()
        self.liveness = HostLiveness()
        self.reclaimed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.moves = MoveBook()
        #: the policy sizes the cluster itself (its autoscale() answered once): no idle-host rule
        self.autoscaling = False
        self.scale_ins = 0

    # -- lookups and views ----------------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    @property
    def standing_replicas(self) -> bool:
        """False under a policy that starts a replica per cell (batch): a kernel then has none between cells."""
        return self.policy.replicas_per_kernel > 0

    def kernel(self, kernel_id: str) -> KernelRecord:
        record = self.cluster.kernels.get(kernel_id)
        if record is not None:
            return record
        if kernel_id in self.reclaimed:
            raise self.error(410, f"kernel {kernel_id!r} was reclaimed: {self.reclaimed[kernel_id]['why']}")
        raise self.error(404, f"no such kernel: {kernel_id!r}")

    def host(self, host_id: str) -> Host:
        try:
            return self.cluster.hosts[host_id]
        except KeyError:
            raise self.error(404, f"no such host: {host_id!r}") from None

    def host_view(self, host: Host) -> dict[str, Any]:
        return {
            "id": host.id,
            "url": self.host_urls.get(host.id),
            "gpus": host.gpus,
            "free_gpus": host.free_gpus,
            "committed": {str(d): {"kernel_id": k, "replica_id": r} for d, (k, r) in sorted(host.committed.items())},
            "subscribed_gpus": host.subscribed_gpus,
            "subscription_ratio": host.subscription_ratio if host.gpus else None,
            "cpus": host.cpus,
            "cpus_used": host.cpus_used,
            "memory_mb": host.memory_mb,
            "memory_used_mb": host.memory_used_mb,
            "replicas": [{"kernel_id": k, "replica_id": r} for k, r in sorted(host.replicas)],
            "idle_s": None if host.idle_since is None else round(self.now() - host.idle_since, 3),
            "draining": host.draining,
            "managed": host.id in self.managed_hosts,
            "devices": self.host_devices.get(host.id, []),
        }

    def replica_views(self, record: KernelRecord) -> list[dict[str, Any]]:
        now = self.now()
        return [{"replica_id": rid, "host_id": r.host_id, "host_url": self.host_urls.get(r.host_id),
                 "ready": r.ready_at <= now} for rid, r in sorted(record.replicas.items())]

    def kernel_view(self, record: KernelRecord) -> dict[str, Any]:
        running = None
        if record.running is not None:
            rid, devices = record.running
            running = {"replica_id": rid, "host_id": record.replicas[rid].host_id, "devices": list(devices)}
        return {
            "kernel_id": record.id,
            "request": {"gpus": record.request.gpus, "cpus": record.request.cpus,
                        "memory_mb": record.request.memory_mb},
            "replicas": self.replica_views(record),
            "running": running,
            "last_executor": record.last_executor,
            "idle_s": round(self.now() - record.last_active, 3),
            "waiting": self.policy.queue_position(record.id),
        }

    def queue(self) -> list[dict[str, Any]]:
        """The waiting queue (the policy's), first in line first."""
        now = self.now()
        kernels = self.cluster.kernels
        waiting = [k for k in self.policy.waiting if k in kernels]
        return [{"kernel_id": k, "position": i + 1, "waiting_s": round(now - self.policy.waiting_since(k), 3)}
                for i, k in enumerate(waiting)]

    def status(self) -> dict[str, Any]:
        online, committed = self.cluster.gpus_online, self.cluster.gpus_committed
        error = self.growth.last_error
        return {
            "hosts": len(self.cluster.hosts),
            "hosts_starting": len(self.growth.pending),
            "max_hosts": self.max_hosts,
            "gpus": {"online": online, "committed": committed, "free": online - committed,
                     "subscribed": sum(h.subscribed_gpus for h in self.cluster.hosts.values())},
            "kernels": len(self.cluster.kernels),
            "running": sorted(k.id for k in self.cluster.kernels.values() if k.running is not None),
            "queue": self.queue(),
            "last_scale_out_error": error[1] if error else None,
            "reclaimed": [{"kernel_id": k, **v} for k, v in self.reclaimed.items()],
            "autoscaler": self.autoscaling,
            "background_moves": {"pending": len(self.moves), "done": self.moves.done,
                                 "cancelled": self.moves.cancelled},
            "scale_ins": self.scale_ins,
        }

    def _forget_kernel(self, kernel_id: str) -> None:
        """Take a kernel that is going away out of the queue, its promise and its move orders."""
        self.moves.forget_kernel(kernel_id)
        self.policy.withdraw(self.cluster, kernel_id)
        self.growth.forget(kernel_id)

    # -- hosts ----------------------------------------------------------------------------------------------------
    def register_host(self, host_id: str, url: str, gpus: int, cpus: float, memory_mb: int,
                      devices: list[dict] | None = None, heartbeat_s: float = 0.0) -> dict[str, Any]:
        """Add a host (a daemon registering again with its old URL replaces its record; its replicas are lost).
        Returns the host view, with ``lost_replicas`` when there were some."""
        url = url.rstrip("/")
        lost: list[dict[str, Any]] = []
        if host_id in self.cluster.hosts:
            if self.host_urls.get(host_id) != url:
                raise self.error(409, f"host {host_id!r} is already registered with url "
                                      f"{self.host_urls.get(host_id)!r}")
            self.log.warning("host %s registered again (its daemon restarted): dropping its old replicas", host_id)
            lost = self.drop_host(host_id)
        now = self.now()
        # Fixed (never scaled in) unless the provider says it added it (host_added).
        self.cluster.add_host(Host(host_id, gpus=gpus, cpus=cpus, memory_mb=memory_mb, online_since=now,
                                   idle_since=now, fixed=host_id not in self.managed_hosts))
        self.host_urls[host_id] = url
        self.host_devices[host_id] = devices or []
        self.liveness.registered(host_id, heartbeat_s, now)
        self.policy.refresh(self.cluster, [host_id])
        self.log.info("host %s registered: %d GPU(s), %g CPUs, %d MiB, %s", host_id, gpus, cpus, memory_mb, url)
        self.on_change()
        view = self.host_view(self.cluster.hosts[host_id])
        if lost:
            view["lost_replicas"] = lost
        return view

    def drop_host(self, host_id: str) -> list[dict[str, Any]]:
        """Remove a host and the records of the replicas on it (they went with their host)."""
        now = self.now()
        lost = sorted(self.cluster.hosts[host_id].replicas)
        for kernel_id, replica_id in lost:
            if replica_id in self.cluster.kernels[kernel_id].replicas:  # (a cancelled move may have taken it)
                self._cancel_moves(kernel_id, replica_id, f"host {host_id} left")
                self.cluster.remove_replica(kernel_id, replica_id, now)
        self.cluster.remove_host(host_id)
        self.host_urls.pop(host_id, None)
        self.host_devices.pop(host_id, None)
        self.managed_hosts.discard(host_id)
        self.liveness.forget(host_id)
        self.policy.refresh(self.cluster, [host_id])
        if lost:
            self.log.warning("host %s left with %d replica(s): %s", host_id, len(lost), lost)
        return [{"kernel_id": k, "replica_id": r} for k, r in lost]

    def heartbeat(self, host_id: str) -> dict[str, Any]:
        self.host(host_id)  # 404 tells a daemon the scheduler has forgotten it: it registers again
        self.liveness.heartbeat(host_id, self.now())
        return {"host_id": host_id}

    def deregister_host(self, host_id: str) -> dict[str, Any]:
        self.host(host_id)
        lost = self.drop_host(host_id)
        self.log.info("host %s deregistered", host_id)
        self.on_change()
        return {"host_id": host_id, "lost_replicas": lost}

    # -- scale-out ------------------------------------------------------------------------------------------------
    def hosts_for_placement(self, kernel_id: str) -> list[PendingHost]:
        """``place`` found no room for ``kernel_id``: the hosts to add (counted as starting now), or 503 when the
        cluster is at ``max_hosts``."""
        online = len(self.cluster.hosts)
        room = self.growth.room(online)
        request = self.cluster.kernels[kernel_id].request
        if room <= 0:
            pending = len(self.growth.pending)
            raise self.error(503, f"no room for kernel {kernel_id!r} ({self.policy.no_room(self.cluster, kernel_id)})"
                                  f" and the cluster is at its maximum size (max_hosts={self.max_hosts}, {online} "
                                  f"hosts{f', {pending} starting' if pending else ''})")
        count = max(1, min(room, self.policy.hosts_needed(self.cluster, kernel_id)))
        self.log.info("no room for kernel %s: scaling out by %d host(s)", kernel_id, count)
        gpus = max(self.policy.host_gpus, request.gpus)
        return [self.growth.start(online, gpus) for _ in range(count)]

    def host_added(self, p: PendingHost, host_id: str) -> None:
        """The provider added ``p`` as ``host_id`` (which registered): a host scale-in may remove."""
        self.growth.arrived(p)
        self.managed_hosts.add(host_id)
        self.cluster.hosts[host_id].fixed = False
        self.policy.refresh(self.cluster, [host_id])
        self.log.info("scaled out: host %s added (%d hosts)", host_id, len(self.cluster.hosts))
        self.on_change()

    def scale_out_failed(self, p: PendingHost, message: str) -> None:
        self.growth.failed(p, message, self.now())
        self.log.error("scale-out failed: %s", message)
        self.on_change()

    # -- kernels --------------------------------------------------------------------------------------------------
    def add_kernel(self, kernel_id: str, request: ResourceRequest) -> KernelRecord:
        if kernel_id in self.cluster.kernels:
            raise self.error(409, f"kernel {kernel_id!r} already exists")
        self.reclaimed.pop(kernel_id, None)
        return self.cluster.add_kernel(kernel_id, request, self.now())

    def place(self, kernel_id: str) -> list[dict[str, Any]] | None:
        """Place the replicas ``kernel_id`` is missing (the policy chooses the hosts); the new ones, or None when
        the cluster must grow first (:meth:`hosts_for_placement`)."""
        if kernel_id not in self.cluster.kernels:
            raise self.error(409, f"kernel {kernel_id!r} was removed while it was being placed")
        record = self.cluster.kernels[kernel_id]
        before = set(record.replicas)
        hosts = self.policy.place(self.cluster, kernel_id, self.now())
        if hosts is None:
            return None
        unknown = [h for h in hosts if h not in self.cluster.hosts]
        if unknown:
            raise self.error(500, f"policy {self.policy.name!r} placed replicas on unknown hosts {unknown}")
        missing = [h for h in hosts if not any(r.host_id == h for r in record.replicas.values())]
        for host_id in missing:  # the bundled policies place the replicas themselves; place the rest
            self.cluster.place_replica(kernel_id, host_id)
        if missing:
            self.policy.refresh(self.cluster, missing)
        record.last_active = self.now()
        self.growth.forget(kernel_id)
        self.on_change()
        return [r for r in self.replica_views(record) if r["replica_id"] not in before]

    def remove_kernel(self, kernel_id: str) -> None:
        """The kernel ends (its front removed it, or its placement failed): free everything it holds."""
        touched = [r.host_id for r in self.kernel(kernel_id).replicas.values()]
        self.cluster.remove_kernel(kernel_id, self.now())
        self._forget_kernel(kernel_id)
        self.policy.refresh(self.cluster, touched)
        self.on_change()

    def decide(self, kernel_id: str) -> tuple[dict[str, Any], PendingHost | None]:
        """The answer to one execute request, and a host the caller must now add (scale-out started) or None."""
        record = self.kernel(kernel_id)
        policy = self.policy
        # Under a reserving policy (reservation) the kernel holds its GPUs between cells: that is not a running cell.
        if record.running is not None and not policy.reserves_at_placement:
            raise self.error(409, f"kernel {kernel_id!r} already runs a cell on replica {record.running[0]}; "
                                  "POST .../finished when it ends")
        if not record.replicas and self.standing_replicas:
            raise self.error(409, f"kernel {kernel_id!r} has no replicas left; POST .../placement to place new ones")
        now = self.now()
        record.last_active = now
        decision = policy.schedule_cell(self.cluster, kernel_id, now)
        if isinstance(decision, Run):
            policy.dequeue(kernel_id)
            self.growth.forget(kernel_id)
            devices = list(decision.devices)
            known = {d.get("index"): d.get("uuid") for d in self.host_devices.get(decision.host_id, [])}
            return {"action": "run", "replica_id": decision.replica_id, "host_id": decision.host_id,
                    "host_url": self.host_urls.get(decision.host_id), "devices": devices,
                    "device_uuids": [known.get(d) for d in devices]}, None
        if isinstance(decision, Migrate):
            policy.dequeue(kernel_id)
            # The move on the cell's path replaces any background one: the front picks the new replica's id
            # itself then, and a pending order could name the same id.
            for order in list(self.moves.orders.get(kernel_id, ())):
                self._cancel_moves(kernel_id, order.move.new_replica_id, "a move on a cell's path replaced it")
            if decision.to_host not in self.cluster.hosts:
                raise self.error(500, f"policy {policy.name!r} migrates to unknown host {decision.to_host!r}")
            return {"action": "migrate", "replica_id": decision.replica_id, "to_host": decision.to_host,
                    "to_host_url": self.host_urls.get(decision.to_host)}, None
        if not isinstance(decision, (Queue, ScaleOut)):
            raise self.error(500, f"policy {policy.name!r} returned an unknown decision {decision!r}")
        position = policy.enqueue(self.cluster, kernel_id, now)
        if isinstance(decision, Queue):
            return wait_answer(position, "all GPUs the kernel could use are busy; the cell is queued"), None
        gpus = record.request.gpus
        if self.growth.attach(kernel_id, gpus) is not None:
            return wait_answer(position, "no GPU is free; waiting for a new host (scale-out in progress)"), None
        error = self.growth.recent_error(now)
        if error:
            return wait_answer(position, f"no GPU is free and scale-out failed: {error}"), None
        p, _ = self.growth.promise(kernel_id, gpus, len(self.cluster.hosts), max(decision.gpus, gpus))
        if p is not None:
            return wait_answer(position, "no GPU is free; adding a host (scale-out started)"), p
        return wait_answer(position, f"no GPU is free and the cluster is at its maximum size "
                                     f"(max_hosts={self.max_hosts}); the cell is queued"), None

    def finished(self, kernel_id: str) -> dict[str, Any]:
        record = self.kernel(kernel_id)
        was_running = record.running is not None
        self.policy.cell_finished(self.cluster, kernel_id, self.now())
        self.policy.dequeue(kernel_id)
        record.last_active = self.now()
        if was_running:
            self.on_change()
        return {"released": was_running}

    def renew_lease(self, kernel_id: str) -> dict[str, Any]:
        """The front is alive; the answer carries the background moves its kernel has to make (until it reports
        each done or failed)."""
        self.kernel(kernel_id).lease_renewed = self.now()
        return {"lease_s": self.front_lease, "moves": self.moves.for_kernel(kernel_id)}

    def replicas_changed(self, kernel_id: str, old: int | None, new: int, host_id: str) -> dict[str, Any]:
        """A migration (``old`` moved to ``new`` on ``host_id``) or a replacement (``old`` None) is done."""
        record = self.kernel(kernel_id)
        self.host(host_id)
        if old is not None and old not in record.replicas:
            raise self.error(404, f"kernel {kernel_id!r} has no replica {old}")
        order = self.moves.find(kernel_id, new)
        if order is not None:  # a background move the policy planned, with the new replica placed already
            if (order.move.replica_id, order.move.to_host) != (old, host_id):
                raise self.error(409, f"kernel {kernel_id!r}: replica {new} is to replace replica "
                                      f"{order.move.replica_id} on host {order.move.to_host!r}, not {old} on "
                                      f"{host_id!r}")
            touched = self.moves.complete(self.cluster, order, self.now())
            self.policy.refresh(self.cluster, touched)
            record.last_active = self.now()
            self.log.info("kernel %s: replica %s moved to %d on %s (background)", kernel_id, old, new, host_id)
            self.on_change()
            return self.kernel_view(record)
        if new in record.replicas:
            raise self.error(409, f"kernel {kernel_id!r} already has a replica {new}")
        clash = [rid for rid, r in record.replicas.items() if r.host_id == host_id and rid != old]
        if clash:
            raise self.error(409, f"kernel {kernel_id!r} already has replica {clash[0]} on host {host_id!r}")
        if old is not None and record.running is not None and record.running[0] == old:
            raise self.error(409, f"replica {old} of kernel {kernel_id!r} runs a cell; finish it before moving it")
        now = self.now()
        touched = [host_id]
        if old is not None:
            touched.append(record.replicas[old].host_id)
            self.cluster.remove_replica(kernel_id, old, now)
        self.cluster.place_replica(kernel_id, host_id, new)
        self.policy.refresh(self.cluster, touched)
        record.last_active = now
        self.log.info("kernel %s: replica %s -> %d on %s", kernel_id, old, new, host_id)
        self.on_change()
        return self.kernel_view(record)

    def replica_lost(self, kernel_id: str, replica_id: int) -> dict[str, Any]:
        record = self.kernel(kernel_id)
        if replica_id not in record.replicas:
            raise self.error(404, f"kernel {kernel_id!r} has no replica {replica_id}")
        host_id = record.replicas[replica_id].host_id
        self._cancel_moves(kernel_id, replica_id, f"replica {replica_id} was reported lost")
        if replica_id in record.replicas:
            self.cluster.remove_replica(kernel_id, replica_id, self.now())
        self.policy.refresh(self.cluster, [host_id])
        self.on_change()
        return self.kernel_view(record)

    def _cancel_moves(self, kernel_id: str, replica_id: int, why: str) -> None:
        """Moves of ``replica_id``, or to it, will not happen: drop the replicas placed for them."""
        for order in self.moves.involving(kernel_id, replica_id):
            touched = self.moves.cancel(self.cluster, order, self.now())
            self.policy.refresh(self.cluster, touched)
            self.log.info("kernel %s: move of replica %d to %s cancelled (%s)", kernel_id, order.move.replica_id,
                          order.move.to_host, why)

    # -- housekeeping ---------------------------------------------------------------------------------------------
    def reclaim(self, record: KernelRecord, why: str, stop: bool, chores: Chores) -> None:
        """End a kernel nobody will end (its front is idle past the limit, or dead): free what it holds, and with
        ``stop`` have its host daemons stop its replicas (added to ``chores``). Its front, if alive, gets 410."""
        targets = [(self.host_urls.get(r.host_id), r.replica_id) for r in record.replicas.values()]
        touched = [r.host_id for r in record.replicas.values()]
        self.cluster.remove_kernel(record.id, self.now())  # releases the GPUs of a running cell too
        self._forget_kernel(record.id)
        self.policy.refresh(self.cluster, touched)
        self.reclaimed[record.id] = {"why": why, "reclaimed_at": time.time()}
        while len(self.reclaimed) > 1000:
            self.reclaimed.popitem(last=False)
        self.log.warning("kernel %s reclaimed: %s", record.id, why)
        if stop:
            chores.stop_replicas.append((record.id, targets))
        chores.ended_kernels.append(record.id)
        self.on_change()

    def drop_silent_hosts(self, chores: Chores) -> None:
        """Drop hosts whose daemon stopped sending heartbeats (killed, or its machine is gone)."""
        for host_id, silent_s in self.liveness.silent(self.now(), self.host_timeout):
            managed = host_id in self.managed_hosts
            lost = self.drop_host(host_id)
            self.log.warning("host %s sent no heartbeat for %.1f s: taken for dead, dropped with %d replica(s)",
                             host_id, silent_s, len(lost))
            if managed:  # let the provider clean up what is left of it (a local provider reaps the process)
                chores.remove_hosts.append(host_id)
            self.on_change()

    def housekeeping(self) -> Chores:
        """One pass: silent hosts, lapsed holds, lapsed front leases, idle kernels, idle hosts the provider added
        (scale-in)."""
        chores = Chores()
        self.drop_silent_hosts(chores)
        now = self.now()
        for order in self.moves.expired(now, self.move_timeout):
            m = order.move
            self._cancel_moves(m.kernel_id, m.new_replica_id, f"not done within {self.move_timeout:g} s")
        for record in list(self.cluster.kernels.values()):  # GPUs a policy kept for a kernel's next cell
            if record.held is not None and record.held.until <= now and \
                    self.policy.hold_lapsed(self.cluster, record.id, now) is not None:
                self.on_change()
        if self.front_lease > 0:
            for record in list(self.cluster.kernels.values()):
                silent = now - record.lease_renewed
                if silent > self.front_lease:
                    self.reclaim(record, f"its front did not renew its lease for {silent:.1f} s (front_lease "
                                         f"{self.front_lease:g} s): taken for dead", True, chores)
        if self.session_idle_limit > 0:
            for record in list(self.cluster.kernels.values()):
                idle = now - record.last_active
                if record.running is None and idle >= self.session_idle_limit:
                    self.reclaim(record, f"{idle:.1f} s without activity (session_idle_limit "
                                         f"{self.session_idle_limit:g} s)", self.reclaim_stops_replicas, chores)
        if self.host_idle_limit > 0 and not self.autoscaling:
            idle_hosts = [h for h in self.policy.idle_hosts(self.cluster, now, self.host_idle_limit)
                          if h in self.managed_hosts]
            for host_id in idle_hosts:
                self._scale_in(host_id, f"idle past {self.host_idle_limit:g} s", chores)
        return chores

    def _scale_in(self, host_id: str, why: str, chores: Chores) -> bool:
        """Remove a host the provider added that holds no replica and no GPU (forgotten first, so nothing is
        placed there while it stops); False if it may not go."""
        host = self.cluster.hosts.get(host_id)
        if host is None or host.replicas or host.committed or host_id not in self.managed_hosts \
                or len(self.cluster.hosts) <= self.min_hosts:
            return False
        self.drop_host(host_id)
        self.scale_ins += 1
        self.log.info("scale-in: removing host %s (%s)", host_id, why)
        chores.remove_hosts.append(host_id)
        self.on_change()
        return True

    def autoscale(self) -> Chores:
        """One pass of the policy's autoscaler (if it has one): hosts to add, background moves to hand to the
        fronts, emptied hosts to remove."""
        chores = Chores()
        now = self.now()
        # Hosts below min_hosts are the admin's own, expected to register (at startup, or a daemon restarting):
        # counted as starting, so the autoscaler does not add hosts in their place.
        expected = max(0, self.min_hosts - len(self.cluster.hosts))
        rebalance = self.policy.autoscale(self.cluster, now, len(self.growth.pending) + expected)
        if rebalance is None:
            return chores
        self.autoscaling = True
        for _ in range(rebalance.add_hosts):
            p = self.growth.start(len(self.cluster.hosts) + expected, self.policy.host_gpus)
            if p is None:
                break
            chores.add_hosts.append(p)
        for move in rebalance.moves:
            self.moves.issue(self.cluster, move, now, self.host_urls.get(move.to_host))
            self.log.info("kernel %s: moving replica %d to host %s in the background (as replica %d)",
                          move.kernel_id, move.replica_id, move.to_host, move.new_replica_id)
        for host_id in rebalance.remove_hosts:
            host = self.cluster.hosts.get(host_id)
            if not self._scale_in(host_id, "emptied by the autoscaler", chores) and host is not None \
                    and host.draining and not host.replicas and not host.committed:
                host.draining = False  # may not go (fixed, or the cluster at min_hosts): back in use
                self.policy.refresh(self.cluster, [host_id])
        if rebalance.moves or rebalance.add_hosts:
            self.on_change()
        return chores
