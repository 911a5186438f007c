"""The NotebookOS policy (arXiv:2503.20591): replicated kernels, GPUs bound only while a cell runs."""

from __future__ import annotations

from traitlets import Enum, Float, Int

from ..cluster import AccountingError, Cluster, KernelRecord
from ..policy import Decision, Migrate, Run, ScaleOut
from . import IndexedPolicy


class NotebookOSPolicy(IndexedPolicy):
    """NotebookOS: every kernel has ``replicas_per_kernel`` replicas on distinct hosts; none holds a GPU between
    cells, and a cell binds its GPUs on whichever replica's host has them free.

    What it models:

    - **Placement** (``place``): the replicas go to the least subscribed hosts (subscribed GPUs / GPUs) on which
      the kernel's GPU request still fits under ``max_subscription_ratio`` (NotebookOS uses 7: a host of 8 GPUs
      takes replicas requesting up to 56 GPUs). ``place`` places them and returns their hosts, or ``None``
      (nothing placed) when fewer than ``replicas_per_kernel`` hosts have room: the caller scales out.
    - **Executor choice** (``schedule_cell``): the last executor first (its state is warm), then the other
      replicas by most free GPUs on their host; the first whose host has the kernel's GPUs free gets them
      committed (``cluster.commit``) and the answer is :class:`Run`.
    - **Migration**: if no replica's host has room, a replica moves to a host with enough free GPUs and room under
      the cap (the one with most free GPUs): :class:`Migrate` of the replica whose host has the fewest free GPUs.
    - **Autoscaling**: with no such host, :class:`ScaleOut` (a host of ``host_gpus`` GPUs) while the cluster has
      fewer than ``max_hosts`` hosts, else :class:`Queue`, whose position is the kernel's place in a FIFO of
      waiting kernels (a kernel leaves it when its cell runs or on :meth:`withdraw`).
    - A kernel that lost replicas runs on the survivors; replacing them is the caller's (``place`` tops up).
    - Idle hosts (no replicas for the idle limit) may be scaled in (:meth:`idle_hosts`, inherited).

    Parameters (traitlets, ``c.NotebookOSPolicy.<name>``): ``replicas_per_kernel`` (3), ``max_subscription_ratio``
    (7.0), ``max_hosts`` (64), ``host_gpus`` (8), ``verify_misses`` (True).
    """

    name = "notebookos"
    replicas_per_kernel = Int(3, help="Replicas per kernel, each on a distinct host.").tag(config=True)
    max_subscription_ratio = Float(
        7.0, help="Most GPUs that replicas placed on a host may request, as a multiple of its GPUs (NotebookOS "
        "uses 7: a host of 8 GPUs takes replicas requesting up to 56). The scheduler's GPU subscription cap: "
        "--NotebookOSPolicy.max_subscription_ratio=N.").tag(config=True)
    placement = Enum(("spread", "pack"), "spread", help="Where replicas go: 'spread' to the least subscribed "
                     "hosts (more free GPUs where a kernel's replicas are), 'pack' to the most subscribed ones that "
                     "still fit under the cap (hosts empty sooner and scale in).").tag(config=True)

    # -- placement -------------------------------------------------------------------------------------------
    def _candidates(self, cluster: Cluster, kernel: KernelRecord, need: int) -> list[str]:
        idx = self.index(cluster)
        have = {r.host_id for r in kernel.replicas.values()}
        pick = idx.most_subscribed if self.placement == "pack" else idx.least_subscribed
        hosts = pick(need, kernel.request.gpus, self.max_subscription_ratio, have)
        if len(hosts) < need and self._retry_miss(cluster):
            hosts = pick(need, kernel.request.gpus, self.max_subscription_ratio, have)
        return hosts

    def place(self, cluster: Cluster, kernel_id: str, now: float) -> list[str] | None:
        kernel = cluster.kernels[kernel_id]
        need = self.replicas_per_kernel - len(kernel.replicas)
        if need <= 0:
            return []
        hosts = self._candidates(cluster, kernel, need)
        if len(hosts) < need:
            return None
        idx = self.index(cluster)
        for host_id in hosts:
            cluster.place_replica(kernel_id, host_id)
            idx.update(host_id)
        return hosts

    def hosts_needed(self, cluster: Cluster, kernel_id: str) -> int:
        """How many new empty hosts ``place`` needs to succeed for this kernel (0 if it can now)."""
        kernel = cluster.kernels[kernel_id]
        need = self.replicas_per_kernel - len(kernel.replicas)
        if need <= 0:
            return 0
        return need - len(self._candidates(cluster, kernel, need))

    def no_room(self, cluster: Cluster, kernel_id: str) -> str:
        return f"{super().no_room(cluster, kernel_id)}, oversubscription {self.max_subscription_ratio:g}"

    # -- cells -----------------------------------------------------------------------------------------------
    def executor_order(self, cluster: Cluster, kernel_id: str) -> list[int]:
        """Replica ids in the order they are tried: last executor, then by most free GPUs (then by id)."""
        kernel = cluster.kernels[kernel_id]
        hosts = cluster.hosts
        last = kernel.last_executor

        def most_free_first(rid: int) -> tuple[int, int]:
            h = hosts[kernel.replicas[rid].host_id]
            return (len(h.committed) - h.gpus, rid)

        others = sorted((rid for rid in kernel.replicas if rid != last), key=most_free_first)
        return ([last] if last in kernel.replicas else []) + others

    def schedule_cell(self, cluster: Cluster, kernel_id: str, now: float) -> Decision:
        kernel = cluster.kernels[kernel_id]
        if kernel.running is not None:
            raise AccountingError(f"kernel {kernel_id!r} already runs a cell on replica {kernel.running[0]}")
        gpus = kernel.request.gpus
        hosts = cluster.hosts
        idx = self.index(cluster)

        for rid in self.executor_order(cluster, kernel_id):
            host = hosts[kernel.replicas[rid].host_id]
            if host.draining or host.gpus - len(host.committed) < gpus:
                continue
            devices = cluster.commit(kernel_id, rid, now)
            idx.update(host.id)
            self.dequeue(kernel_id)
            return Run(rid, host.id, devices)

        if kernel.replicas:
            holders = {r.host_id for r in kernel.replicas.values()}
            cap = self.max_subscription_ratio

            def accept(h):
                return h.id not in holders and h.subscribed_gpus + gpus <= cap * h.gpus

            target = idx.most_free(gpus, accept)
            if target is None and self._retry_miss(cluster):
                target = idx.most_free(gpus, accept)
            if target is not None:
                def tightness(rid: int) -> tuple[int, int, int]:
                    h = hosts[kernel.replicas[rid].host_id]
                    return (h.gpus - len(h.committed), -h.subscribed_gpus, rid)

                source = min(kernel.replicas, key=tightness)
                return Migrate(source, target)

        if len(hosts) < self.max_hosts:
            return ScaleOut(self.host_gpus)
        return self._queue(cluster, kernel_id, now)

    def cell_finished(self, cluster: Cluster, kernel_id: str, now: float) -> None:
        kernel = cluster.kernels[kernel_id]
        if kernel.running is not None:
            host_id = kernel.replicas[kernel.running[0]].host_id
            cluster.release(kernel_id, now)
            self.index(cluster).update(host_id)
        self.dequeue(kernel_id)
