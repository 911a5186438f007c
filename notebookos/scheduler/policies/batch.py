"""The batch policy: each cell is a job, first come first served, in a fresh process."""

from __future__ import annotations

from traitlets import Float, Int

from ..cluster import AccountingError, Cluster
from ..policy import Decision, Run, ScaleOut
from . import IndexedPolicy


class BatchPolicy(IndexedPolicy):
    """Batch: no standing replicas; every cell is submitted like a batch job, waits its turn in one FCFS queue,
    and runs in a fresh process on a host with free GPUs, which loads the kernel's state before it starts.

    What it models:

    - ``place`` places nothing (returns ``[]``): a session holds no process and no GPU between cells.
    - ``schedule_cell``: strictly first come, first served: while cells wait, a later cell waits behind them
      (no backfilling). The head of the line gets a *transient* replica (``cluster.place_replica``) on the host
      with the most free GPUs and its GPUs committed: :class:`Run`. Starting the process costs
      ``process_start_seconds`` before the cell runs (the simulator adds it to the cell's start; the GPUs are held
      from the commit). With no room, or behind other waiting cells: :class:`ScaleOut` below ``max_hosts`` hosts
      (GPUs of a starting host are promised to it), else :class:`Queue`.
    - ``cell_finished`` releases the GPUs and removes the transient replica.

    Parameters (traitlets, ``c.BatchPolicy.<name>``): ``process_start_seconds`` (15.0), ``max_hosts`` (64),
    ``host_gpus`` (8), ``verify_misses`` (True). ``replicas_per_kernel`` is 0; there is no
    subscription cap.
    """

    name = "batch"
    replicas_per_kernel = Int(0, help="Standing replicas per kernel (none: a process is started per cell).").tag(
        config=True)
    process_start_seconds = Float(
        15.0, help="Seconds to start a fresh process for a cell and load the session's state before the cell "
        "runs (container start, imports, state restore).").tag(config=True)
    strict_fifo = True

    def place(self, cluster: Cluster, kernel_id: str, now: float) -> list[str] | None:
        return []

    def schedule_cell(self, cluster: Cluster, kernel_id: str, now: float) -> Decision:
        kernel = cluster.kernels[kernel_id]
        if kernel.running is not None:
            raise AccountingError(f"kernel {kernel_id!r} already runs a cell on replica {kernel.running[0]}")
        waiting = self._waiting
        if waiting and next(iter(waiting)) != kernel_id and cluster.kernels.get(next(iter(waiting))) is not None:
            # FCFS: earlier cells go first. It still asks for GPUs of its own (a host starting for it), or a burst of
            # cells would be served by one new host at a time.
            if len(cluster.hosts) < self.max_hosts:
                return ScaleOut(self.host_gpus)
            return self._queue(cluster, kernel_id, now)
        gpus = kernel.request.gpus
        idx = self.index(cluster)
        host_id = idx.most_free(gpus)
        if host_id is None and self._retry_miss(cluster):
            host_id = idx.most_free(gpus)
        if host_id is None:
            if len(cluster.hosts) < self.max_hosts:
                return ScaleOut(self.host_gpus)
            return self._queue(cluster, kernel_id, now)
        record = cluster.place_replica(kernel_id, host_id)
        devices = cluster.commit(kernel_id, record.replica_id, now)
        idx.update(host_id)
        self.dequeue(kernel_id)
        return Run(record.replica_id, host_id, devices)

    def cell_finished(self, cluster: Cluster, kernel_id: str, now: float) -> None:  # (no hold: returns None)
        kernel = cluster.kernels[kernel_id]
        if kernel.running is not None:
            replica_id = kernel.running[0]
            host_id = kernel.replicas[replica_id].host_id
            cluster.remove_replica(kernel_id, replica_id, now)  # releases the GPUs
            self.index(cluster).update(host_id)
        self.dequeue(kernel_id)
