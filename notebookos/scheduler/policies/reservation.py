"""The reservation policy: what JupyterHub does today (one kernel, its GPUs held for the whole session)."""

from __future__ import annotations

from traitlets import Int

from ..cluster import Cluster
from ..policy import Decision, Run, ScaleOut
from . import IndexedPolicy


class ReservationPolicy(IndexedPolicy):
    """Reservation: one replica per kernel that reserves its GPUs when it is placed and keeps them until the
    kernel is removed, busy or not (a JupyterHub single-user server with a GPU limit on Kubernetes).

    What it models:

    - **Placement** (``place``): a host with at least the kernel's GPUs *unreserved* (free), packing first (the
      host with the fewest free GPUs that fit, which leaves whole hosts free for 8-GPU sessions and for scale-in);
      the replica is placed and its GPUs committed at once (``cluster.commit``). ``None`` when no host has room:
      the caller scales out or queues the *session*.
    - **Cells** (``schedule_cell``): :class:`Run` at once with the reserved devices (cells never wait once the
      session is placed). ``cell_finished`` does not release anything; removing the kernel
      (``cluster.remove_kernel``) does.
    - No oversubscription and no subscription cap: a reserved GPU belongs to one session.
    - ``schedule_cell`` for a kernel not placed yet tries to place it, then answers :class:`ScaleOut` (fewer than
      ``max_hosts`` hosts) or :class:`Queue`.

    Parameters (traitlets, ``c.ReservationPolicy.<name>``): ``replicas_per_kernel`` (1; only 1 is supported),
    ``max_hosts`` (64), ``host_gpus`` (8), ``verify_misses`` (True).
    """

    name = "reservation"
    replicas_per_kernel = Int(1, help="Replicas per kernel (a reservation holds one).").tag(config=True)
    reserves_at_placement = True

    def place(self, cluster: Cluster, kernel_id: str, now: float) -> list[str] | None:
        kernel = cluster.kernels[kernel_id]
        if kernel.replicas:
            return []
        gpus = kernel.request.gpus
        idx = self.index(cluster)
        host_id = idx.best_fit(gpus)
        if host_id is None and self._retry_miss(cluster):
            host_id = idx.best_fit(gpus)
        if host_id is None:
            return None
        record = cluster.place_replica(kernel_id, host_id)
        cluster.commit(kernel_id, record.replica_id, now)
        idx.update(host_id)
        return [host_id]

    def schedule_cell(self, cluster: Cluster, kernel_id: str, now: float) -> Decision:
        kernel = cluster.kernels[kernel_id]
        if kernel.running is None and self.place(cluster, kernel_id, now) is None:
            if len(cluster.hosts) < self.max_hosts:
                return ScaleOut(self.host_gpus)
            return self._queue(cluster, kernel_id, now)
        replica_id, devices = kernel.running
        kernel.last_executor = replica_id
        kernel.last_active = now
        self.dequeue(kernel_id)
        return Run(replica_id, kernel.replicas[replica_id].host_id, devices)

    def cell_finished(self, cluster: Cluster, kernel_id: str, now: float) -> None:
        """The GPUs stay reserved: only note the activity."""
        cluster.kernels[kernel_id].last_active = now
        self.dequeue(kernel_id)
