"""The scheduler's view of a cluster: hosts and their GPUs, kernels and where their replicas are.

Plain data with the bookkeeping that must never go wrong (GPU commit and release) in one place, so that the
policies (``policy.py``), the live service and the simulator share it. Time is passed in by the caller (wall clock
in the service, simulated time in the simulator); nothing here sleeps or does I/O. :class:`Growth` is the
scale-out side of the same bookkeeping: hosts being added, and which waiting kernels their GPUs are promised to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class AccountingError(RuntimeError):
    """A GPU commit or release that would make the accounting wrong (double commit, negative free GPUs)."""


@dataclass(frozen=True)
class ResourceRequest:
    """What one replica of a kernel needs: GPUs bound while a cell runs; CPU and memory held while placed."""

    gpus: int = 1
    cpus: float = 1.0
    memory_mb: int = 2048

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.cpus < 0 or self.memory_mb < 0:
            raise ValueError(f"resource request must not be negative: {self}")


@dataclass
class Host:
    """One GPU server."""

    id: str
    gpus: int = 8
    cpus: float = 64.0
    memory_mb: int = 512 * 1024
    #: device id -> (kernel id, replica id) holding it: for a running cell, or held for the kernel's next cell
    #: (:class:`Hold`; replica id None while the replica it waits for is still arriving)
    committed: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    #: the devices of ``committed`` that are held, not running a cell: device id -> kernel id
    held: dict[int, str] = field(default_factory=dict)
    #: how many of ``held`` are firm (never taken back)
    firm_held: int = 0
    #: replicas placed here: (kernel id, replica id)
    replicas: set[tuple[str, int]] = field(default_factory=set)
    #: GPUs requested by the replicas placed here (what the oversubscription cap limits)
    subscribed_gpus: int = 0
    cpus_used: float = 0.0
    memory_used_mb: int = 0
    online_since: float = 0.0
    idle_since: float | None = 0.0
    draining: bool = False
    #: not started by the host provider (its daemon registered on its own): scale-in never removes it, so a
    #: policy's consolidation does not empty it
    fixed: bool = False

    @property
    def free_gpus(self) -> list[int]:
        return [d for d in range(self.gpus) if d not in self.committed]

    @property
    def available_gpus(self) -> int:
        """GPUs a cell could have here: free ones and those merely held (not firmly) for other kernels."""
        return self.gpus - len(self.committed) + len(self.held) - self.firm_held

    @property
    def subscription_ratio(self) -> float:
        return self.subscribed_gpus / self.gpus if self.gpus else float("inf")


@dataclass
class ReplicaRecord:
    kernel_id: str
    replica_id: int
    host_id: str
    #: when it can run cells (a replica migrating in starts and catches up first)
    ready_at: float = 0.0


@dataclass
class Hold:
    """GPUs kept for a kernel's next cell while none runs: after a cell (its executor keeps them a while), or on
    the host a replica of it is migrating to. ``firm`` holds are never taken back by another kernel's cell."""

    host_id: str
    replica_id: int | None  # None: for a replica still arriving on host_id (a migration)
    devices: tuple[int, ...]
    until: float
    firm: bool = False


@dataclass
class KernelRecord:
    id: str
    request: ResourceRequest
    replicas: dict[int, ReplicaRecord] = field(default_factory=dict)
    last_executor: int | None = None
    #: (replica id, device ids) while a cell runs
    running: tuple[int, tuple[int, ...]] | None = None
    last_active: float = 0.0
    next_replica_id: int = 1
    #: when its front last renewed its lease (the scheduler's clock)
    lease_renewed: float = 0.0
    #: GPUs kept for its next cell while none runs (a policy's soft hold, or a migration's target)
    held: Hold | None = None


class Cluster:
    """Hosts and kernels, with GPU commit/release that keep the accounting exact."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.kernels: dict[str, KernelRecord] = {}
        #: GPUs in every host's ``committed`` (running cells and holds), and of those the held ones
        self.n_committed = 0
        #: bumped by every change made through these methods (a caller may skip work when it did not move)
        self.version = 0
        self.n_held = 0
        #: GPUs requested by all replicas (the sum of every host's ``subscribed_gpus``), and by all kernels
        self.n_subscribed = 0
        self.n_requested = 0
        #: hosts whose GPUs, holds or replicas changed through these methods; a consumer (the notebookos
        #: autoscaler) reads and clears it, to look only at what changed since its last pass
        self.touched: set[str] = set()

    # -- hosts -----------------------------------------------------------------------------------------------
    def add_host(self, host: Host) -> Host:
        self.version += 1
        if host.id in self.hosts:
            raise ValueError(f"host {host.id!r} is already registered")
        self.hosts[host.id] = host
        self.n_subscribed += host.subscribed_gpus
        self.touched.add(host.id)
        return host

    def remove_host(self, host_id: str) -> Host:
        self.version += 1
        host = self.hosts[host_id]
        if host.held and not host.replicas:
            self.drop_holds_on(host_id)  # reserved for replicas that never arrived
        if host.replicas or host.committed:
            raise AccountingError(f"host {host_id!r} still has replicas or committed GPUs; migrate them first")
        self.touched.add(host_id)
        return self.hosts.pop(host_id)

    # -- kernels and replicas --------------------------------------------------------------------------------
    def add_kernel(self, kernel_id: str, request: ResourceRequest, now: float = 0.0) -> KernelRecord:
        self.version += 1
        if kernel_id in self.kernels:
            raise ValueError(f"kernel {kernel_id!r} already exists")
        record = self.kernels[kernel_id] = KernelRecord(kernel_id, request, last_active=now, lease_renewed=now)
        self.n_requested += request.gpus
        return record

    def place_replica(self, kernel_id: str, host_id: str, replica_id: int | None = None,
                      ready_at: float = 0.0) -> ReplicaRecord:
        self.version += 1
        kernel, host = self.kernels[kernel_id], self.hosts[host_id]
        if any(r.host_id == host_id for r in kernel.replicas.values()):
            raise AccountingError(f"kernel {kernel_id!r} already has a replica on host {host_id!r}")
        rid = replica_id if replica_id is not None else kernel.next_replica_id
        kernel.next_replica_id = max(kernel.next_replica_id, rid + 1)
        record = kernel.replicas[rid] = ReplicaRecord(kernel_id, rid, host_id, ready_at)
        hold = kernel.held
        if hold is not None and hold.replica_id is None and hold.host_id == host_id:
            hold.replica_id = rid  # the replica a migration reserved these GPUs for has arrived
            for d in hold.devices:
                host.committed[d] = (kernel_id, rid)
        host.replicas.add((kernel_id, rid))
        host.subscribed_gpus += kernel.request.gpus
        self.n_subscribed += kernel.request.gpus
        self.touched.add(host_id)
        host.cpus_used += kernel.request.cpus
        host.memory_used_mb += kernel.request.memory_mb
        host.idle_since = None
        return record

    def remove_replica(self, kernel_id: str, replica_id: int, now: float = 0.0) -> None:
        self.version += 1
        kernel = self.kernels[kernel_id]
        if kernel.running is not None and kernel.running[0] == replica_id:
            self.release(kernel_id, now)  # before the record goes: release() finds the host through it
        if kernel.held is not None and kernel.held.replica_id == replica_id:
            self.drop_hold(kernel_id)
        record = kernel.replicas.pop(replica_id)
        host = self.hosts[record.host_id]
        host.replicas.discard((kernel_id, replica_id))
        host.subscribed_gpus -= kernel.request.gpus
        self.n_subscribed -= kernel.request.gpus
        self.touched.add(host.id)
        host.cpus_used -= kernel.request.cpus
        host.memory_used_mb -= kernel.request.memory_mb
        if not host.replicas:
            host.idle_since = now

    def remove_kernel(self, kernel_id: str, now: float = 0.0) -> None:
        for rid in list(self.kernels[kernel_id].replicas):
            self.remove_replica(kernel_id, rid, now)
        if self.kernels[kernel_id].held is not None:  # for a replica that never arrived
            self.drop_hold(kernel_id)
        self.n_requested -= self.kernels.pop(kernel_id).request.gpus

    # -- GPU binding -----------------------------------------------------------------------------------------
    def commit(self, kernel_id: str, replica_id: int, now: float = 0.0) -> tuple[int, ...]:
        """Bind the kernel's GPU request on the replica's host for one cell; returns the device ids. GPUs the kernel
        holds elsewhere are given up (it runs one cell at a time); use :meth:`resume` to run on held ones."""
        self.version += 1
        kernel = self.kernels[kernel_id]
        if kernel.running is not None:
            raise AccountingError(f"kernel {kernel_id!r} already runs a cell on replica {kernel.running[0]}")
        if kernel.held is not None:
            self.drop_hold(kernel_id)
        host = self.hosts[kernel.replicas[replica_id].host_id]
        free = host.free_gpus
        if len(free) < kernel.request.gpus:
            raise AccountingError(f"host {host.id!r} has {len(free)} free GPUs, kernel needs {kernel.request.gpus}")
        devices = tuple(free[: kernel.request.gpus])
        for d in devices:
            host.committed[d] = (kernel_id, replica_id)
        self.n_committed += len(devices)
        self.touched.add(host.id)
        kernel.running = (replica_id, devices)
        kernel.last_executor = replica_id
        kernel.last_active = now
        return devices

    def _running_cell(self, kernel_id: str) -> tuple[KernelRecord, int, tuple[int, ...], Host]:
        kernel = self.kernels[kernel_id]
        if kernel.running is None:
            raise AccountingError(f"kernel {kernel_id!r} has no GPUs bound")
        replica_id, devices = kernel.running
        return kernel, replica_id, devices, self.hosts[kernel.replicas[replica_id].host_id]

    def release(self, kernel_id: str, now: float = 0.0) -> None:
        self.version += 1
        kernel, replica_id, devices, host = self._running_cell(kernel_id)
        for d in devices:
            if host.committed.get(d) != (kernel_id, replica_id):
                raise AccountingError(f"device {d} of host {host.id!r} is not held by {kernel_id!r}/{replica_id}")
            del host.committed[d]
        self.n_committed -= len(devices)
        self.touched.add(host.id)
        kernel.running = None
        kernel.last_active = now

    # -- holds (GPUs kept for a kernel's next cell) ----------------------------------------------------------
    def hold(self, kernel_id: str, until: float, now: float = 0.0) -> Hold:
        """The running cell ended: its executor keeps its GPUs (held, no cell running) until ``until``."""
        self.version += 1
        kernel, replica_id, devices, host = self._running_cell(kernel_id)
        for d in devices:
            host.held[d] = kernel_id
        self.n_held += len(devices)
        self.touched.add(host.id)
        kernel.running = None
        kernel.last_active = now
        kernel.held = Hold(host.id, replica_id, devices, until)
        return kernel.held

    def hold_for_arrival(self, kernel_id: str, host_id: str, until: float) -> Hold:
        """Reserve the kernel's GPUs on ``host_id`` for a replica migrating there (a firm hold: nobody else's
        cell takes them); the replica adopts them when it is placed there."""
        self.version += 1
        kernel, host = self.kernels[kernel_id], self.hosts[host_id]
        if kernel.running is not None:
            raise AccountingError(f"kernel {kernel_id!r} runs a cell; it cannot hold GPUs elsewhere")
        if kernel.held is not None:
            self.drop_hold(kernel_id)
        free = host.free_gpus
        if len(free) < kernel.request.gpus:
            raise AccountingError(f"host {host_id!r} has {len(free)} free GPUs, kernel needs {kernel.request.gpus}")
        devices = tuple(free[: kernel.request.gpus])
        arriving = next((r.replica_id for r in kernel.replicas.values() if r.host_id == host_id), None)
        for d in devices:
            host.committed[d] = (kernel_id, arriving)
            host.held[d] = kernel_id
        self.n_committed += len(devices)
        self.n_held += len(devices)
        host.firm_held += len(devices)
        self.touched.add(host_id)
        kernel.held = Hold(host_id, arriving, devices, until, firm=True)
        return kernel.held

    def resume(self, kernel_id: str, now: float = 0.0) -> tuple[int, ...]:
        """Run the kernel's next cell on the GPUs it holds (on the replica they are held for)."""
        self.version += 1
        kernel = self.kernels[kernel_id]
        hold = kernel.held
        if hold is None or hold.replica_id is None or kernel.running is not None:
            raise AccountingError(f"kernel {kernel_id!r} holds no GPUs of a replica it has")
        host = self.hosts[hold.host_id]
        for d in hold.devices:
            del host.held[d]
        self.n_held -= len(hold.devices)
        if hold.firm:
            host.firm_held -= len(hold.devices)
        self.touched.add(host.id)
        kernel.held = None
        kernel.running = (hold.replica_id, hold.devices)
        kernel.last_executor = hold.replica_id
        kernel.last_active = now
        return hold.devices

    def drop_hold(self, kernel_id: str) -> Hold | None:
        """Give the kernel's held GPUs back (its hold lapsed, or another kernel's cell takes them)."""
        self.version += 1
        kernel = self.kernels[kernel_id]
        hold, kernel.held = kernel.held, None
        if hold is None:
            return None
        host = self.hosts[hold.host_id]
        for d in hold.devices:
            if host.held.pop(d, None) != kernel_id:
                raise AccountingError(f"device {d} of host {host.id!r} is not held for {kernel_id!r}")
            del host.committed[d]
        self.n_committed -= len(hold.devices)
        self.n_held -= len(hold.devices)
        if hold.firm:
            host.firm_held -= len(hold.devices)
        self.touched.add(host.id)
        return hold

    def drop_holds_on(self, host_id: str) -> list[str]:
        """Give back every hold on ``host_id`` (it is going away); returns the kernels that held GPUs there."""
        host = self.hosts[host_id]
        kernels = list(dict.fromkeys(host.held.values()))
        for kernel_id in kernels:
            self.drop_hold(kernel_id)
        return kernels

    # -- totals ----------------------------------------------------------------------------------------------
    @property
    def gpus_online(self) -> int:
        return sum(h.gpus for h in self.hosts.values())

    @property
    def gpus_committed(self) -> int:
        """GPUs bound to running cells or held for kernels' next cells."""
        return self.n_committed

    @property
    def gpus_running(self) -> int:
        """GPUs bound to running cells."""
        return self.n_committed - self.n_held


#: Seconds after a failed scale-out during which cells are told why instead of starting another one.
SCALE_OUT_ERROR_HOLD_S = 10.0


class PendingHost:
    """A host being added: ``gpus`` it will have, ``unpromised`` of them not yet promised to a waiting kernel."""

    __slots__ = ("id", "gpus", "unpromised")

    def __init__(self, gpus: int, host_id: str | None = None) -> None:
        self.id = host_id
        self.gpus = gpus
        self.unpromised = gpus


class Growth:
    """Scale-out accounting: hosts being added (never past ``max_hosts`` with the online ones), and which waiting
    kernel each is promised to, so that kernels waiting for GPUs share a starting host before another starts.

    A promise is not given back when its kernel runs elsewhere or goes away (the host comes anyway); it ends when
    the host arrives or fails.
    """

    def __init__(self, max_hosts: int) -> None:
        self.max_hosts = max_hosts
        self.pending: list[PendingHost] = []
        self.promised: dict[str, PendingHost] = {}
        self.started = 0
        self.last_error: tuple[float, str] | None = None

    def room(self, online: int) -> int:
        """Hosts that may still be started besides ``online`` ones and the pending ones."""
        return self.max_hosts - online - len(self.pending)

    def start(self, online: int, gpus: int, host_id: str | None = None) -> PendingHost | None:
        """Count a new host of ``gpus`` GPUs as starting; None when the cluster is at ``max_hosts``."""
        if self.room(online) <= 0:
            return None
        p = PendingHost(gpus, host_id)
        self.pending.append(p)
        self.started += 1
        return p

    def attach(self, kernel_id: str, gpus: int) -> PendingHost | None:
        """Promise ``kernel_id`` ``gpus`` GPUs of a starting host that has them unpromised (its old promise, if
        any, stands); None when no starting host has them."""
        p = self.promised.get(kernel_id)
        if p is not None:
            return p
        for p in self.pending:
            if p.unpromised >= gpus:
                p.unpromised -= gpus
                self.promised[kernel_id] = p
                return p
        return None

    def promise(self, kernel_id: str, gpus: int, online: int, host_gpus: int,
                new_id: Callable[[], str] | None = None) -> tuple[PendingHost | None, bool]:
        """:meth:`attach`, else start a host of ``host_gpus`` GPUs (named ``new_id()``) and promise from it.
        Returns the host (None at ``max_hosts``) and whether it was started now (the caller then adds it)."""
        p = self.attach(kernel_id, gpus)
        if p is not None:
            return p, False
        if self.room(online) <= 0:
            return None, False
        p = self.start(online, host_gpus, new_id() if new_id is not None else None)
        if p is None:
            return None, False
        p.unpromised -= gpus
        self.promised[kernel_id] = p
        return p, True

    def hosts_to_start(self, online: int, need: int) -> int:
        """New hosts to start for a placement that needs ``need`` more hosts, counting the starting ones."""
        return max(0, min(self.room(online), need - len(self.pending)))

    def forget(self, kernel_id: str) -> None:
        """``kernel_id`` no longer waits for its promise (it runs, or was placed)."""
        self.promised.pop(kernel_id, None)

    def _end(self, p: PendingHost) -> None:
        self.pending.remove(p)
        for kernel_id in [k for k, q in self.promised.items() if q is p]:
            del self.promised[kernel_id]

    def arrived(self, p: PendingHost) -> None:
        """``p`` is online (or registered): it is no longer pending and its promises end."""
        self._end(p)
        self.last_error = None

    def failed(self, p: PendingHost, message: str, now: float) -> None:
        """Adding ``p`` failed with ``message``; cells are told for :data:`SCALE_OUT_ERROR_HOLD_S`."""
        self._end(p)
        self.last_error = (now, message)

    def recent_error(self, now: float) -> str | None:
        if self.last_error and now - self.last_error[0] < SCALE_OUT_ERROR_HOLD_S:
            return self.last_error[1]
        return None
