"""The bundled scheduling policies and what they share.

- :class:`~.notebookos.NotebookOSPolicy` (``notebookos``): 3 replicas per kernel, GPUs bound only while a cell
  runs, an oversubscription cap, migration, scale-out, a FIFO when the cluster is at its largest.
- :class:`~.reservation.ReservationPolicy` (``reservation``): 1 replica holding its GPUs for the whole session.
- :class:`~.batch.BatchPolicy` (``batch``): FCFS, a fresh process per cell, nothing held between cells.

They are found through the ``notebookos.scheduler_policies`` entry points (:func:`notebookos.scheduler.policy.
load_policy`). All three keep a :class:`HostIndex` (hosts bucketed by free GPUs and by subscription ratio) so that
a decision does not scan every host; the FIFO of the kernels whose cells wait is the base class's.

Conventions shared by the three (the caller, live service or simulator, relies on them):

- ``place`` *places* the replicas (``cluster.place_replica``) and returns the hosts of the replicas it placed;
  ``None`` means the cluster must grow first (nothing was placed). A kernel that already has some replicas
  (a lost replica being replaced) only gets the missing ones.
- ``schedule_cell`` never mutates the cluster except for the commit of a :class:`~notebookos.scheduler.policy.
  Run` (and, for ``batch``, the transient replica that goes with it). A :class:`~notebookos.scheduler.policy.
  Migrate` is carried out by the caller: place a replica on ``to_host``, remove ``replica_id``, then ask again.
- The index follows every change a policy makes itself. Code that changes the cluster in other ways (adds or
  removes hosts, places or removes replicas, releases GPUs, removes kernels) should call
  :meth:`IndexedPolicy.refresh` with the hosts it touched; if it does not, decisions stay correct (entries are
  checked against the hosts when read, and with ``verify_misses`` every host is re-checked before the policy
  answers that no host has room) but a preference (most free, least subscribed) may be off until the next
  refresh. The waiting FIFO is the base class's (:meth:`~notebookos.scheduler.policy.SchedulerPolicy.enqueue`).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Collection, Iterable

from traitlets import Bool

from ..cluster import Cluster, Host
from ..policy import SchedulerPolicy

__all__ = ["HostIndex", "IndexedPolicy", "free_gpu_count"]


def free_gpu_count(host: Host) -> int:
    """GPUs of ``host`` a cell could have: free, or held (not firmly) for another kernel's next cell, which a
    cell takes back (:attr:`Host.available_gpus`, without the property call)."""
    return host.gpus - len(host.committed) + len(host.held) - host.firm_held


def _ratio(host: Host) -> float:
    return host.subscribed_gpus / host.gpus if host.gpus else float("inf")


class _Buckets:
    """Host ids filed under a sortable key: ``key_of[host] -> key``, ``members[key] -> ordered hosts``.

    Buckets are insertion-ordered dicts, not sets: iteration order must not depend on string hashing, or two
    runs of the simulator with the same seed would differ.
    """

    __slots__ = ("key_of", "members", "keys")

    def __init__(self) -> None:
        self.key_of: dict[str, float] = {}
        self.members: dict[float, dict[str, None]] = {}
        self.keys: list[float] = []  # sorted keys of non-empty buckets

    def set(self, host_id: str, key: float) -> None:
        old = self.key_of.get(host_id)
        if old is not None:
            if old == key:
                return
            self._drop(host_id, old)
        self.key_of[host_id] = key
        bucket = self.members.get(key)
        if bucket is None:
            bucket = self.members[key] = {}
            insort(self.keys, key)
        bucket[host_id] = None

    def discard(self, host_id: str) -> None:
        old = self.key_of.pop(host_id, None)
        if old is not None:
            self._drop(host_id, old)

    def _drop(self, host_id: str, key: float) -> None:
        bucket = self.members[key]
        del bucket[host_id]
        if not bucket:
            del self.members[key]
            del self.keys[bisect_left(self.keys, key)]


class HostIndex:
    """Hosts of one cluster bucketed by free GPUs (those a cell could have: :func:`free_gpu_count`) and by
    subscription ratio (subscribed GPUs / GPUs).

    Updating a host is O(1) (a few dict operations); the queries walk buckets from the preferred end and stop at
    the first hosts that qualify, so a decision costs O(buckets + hosts skipped) instead of O(hosts). Every host a
    query returns is checked against the live :class:`Host` (a stale entry is re-filed, never trusted).
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.free = _Buckets()
        self.sub = _Buckets()
        self.max_host_gpus = 0
        for host in cluster.hosts.values():
            self._file(host)

    def __len__(self) -> int:
        return len(self.free.key_of)

    def _file(self, host: Host) -> None:
        self.free.set(host.id, free_gpu_count(host))
        self.sub.set(host.id, _ratio(host))
        if host.gpus > self.max_host_gpus:
            self.max_host_gpus = host.gpus

    def update(self, host_id: str) -> None:
        """Re-file one host after its GPUs, replicas or existence changed."""
        host = self.cluster.hosts.get(host_id)
        if host is None:
            self.free.discard(host_id)
            self.sub.discard(host_id)
        else:
            self._file(host)

    def update_many(self, host_ids: Iterable[str]) -> None:
        for h in host_ids:
            self.update(h)

    def resync(self) -> None:
        """Re-check every host (O(hosts)): after changes nobody reported."""
        hosts = self.cluster.hosts
        for hid in [h for h in self.free.key_of if h not in hosts]:
            self.update(hid)
        for host in hosts.values():
            self._file(host)

    def is_exact(self) -> bool:
        """True when every host is filed under its current values (for tests)."""
        hosts = self.cluster.hosts
        if set(self.free.key_of) != set(hosts) or set(self.sub.key_of) != set(hosts):
            return False
        return all(self.free.key_of[h.id] == free_gpu_count(h) and self.sub.key_of[h.id] == _ratio(h)
                   for h in hosts.values())

    # -- queries ---------------------------------------------------------------------------------------------
    def max_free_gpus(self) -> int:
        """Most free GPUs on any host (0 with no hosts)."""
        keys = self.free.keys
        return int(keys[-1]) if keys else 0

    def _walk_free(self, gpus: int, descending: bool,
                   accept: Callable[[Host], bool] | None) -> str | None:
        hosts = self.cluster.hosts
        keys = self.free.keys
        start = bisect_left(keys, gpus)
        order = reversed(keys[start:]) if descending else keys[start:]
        stale: list[str] = []
        found = None
        for key in order:
            for hid in self.free.members[key]:
                host = hosts.get(hid)
                if host is None:
                    stale.append(hid)
                    continue
                free = free_gpu_count(host)
                if free != key:
                    stale.append(hid)
                    if free < gpus:
                        continue
                if host.draining or (accept is not None and not accept(host)):
                    continue
                found = hid
                break
            if found is not None:
                break
        for hid in stale:
            self.update(hid)
        return found

    def most_free(self, gpus: int, accept: Callable[[Host], bool] | None = None) -> str | None:
        """The host with the most free GPUs (at least ``gpus``) that ``accept`` admits; not draining."""
        return self._walk_free(gpus, True, accept)

    def best_fit(self, gpus: int, accept: Callable[[Host], bool] | None = None) -> str | None:
        """The host with the fewest free GPUs that still has ``gpus`` free (packing); not draining."""
        return self._walk_free(gpus, False, accept)

    def most_subscribed(self, n: int, gpus: int, cap_ratio: float, exclude: Collection[str] = ()) -> list[str]:
        """Up to ``n`` hosts, most subscribed first, where ``gpus`` more subscribed GPUs stay within
        ``cap_ratio`` x the host's GPUs; not draining, not in ``exclude`` (packing: emptier hosts stay empty)."""
        return self._walk_subscribed(n, gpus, cap_ratio, exclude, reversed(self.sub.keys), None)

    def least_subscribed(self, n: int, gpus: int, cap_ratio: float,
                         exclude: Collection[str] = ()) -> list[str]:
        """Up to ``n`` hosts, least subscribed first, where ``gpus`` more subscribed GPUs stay within
        ``cap_ratio`` x the host's GPUs; not draining, not in ``exclude``."""
        # A host of g GPUs fits iff ratio <= cap - gpus/g; no host has more than max_host_gpus GPUs, so past
        # this ratio nothing fits and the walk can stop.
        limit = cap_ratio - gpus / self.max_host_gpus if self.max_host_gpus else -1.0
        return self._walk_subscribed(n, gpus, cap_ratio, exclude, self.sub.keys, limit)

    def _walk_subscribed(self, n: int, gpus: int, cap_ratio: float, exclude: Collection[str],
                         keys: Iterable[float], stop_above: float | None) -> list[str]:
        hosts = self.cluster.hosts
        out: list[str] = []
        stale: list[str] = []
        for key in keys:
            if stop_above is not None and key > stop_above + 1e-12:
                break
            for hid in self.sub.members[key]:
                host = hosts.get(hid)
                if host is None:
                    stale.append(hid)
                    continue
                if _ratio(host) != key:
                    stale.append(hid)
                if host.draining or hid in exclude or host.subscribed_gpus + gpus > cap_ratio * host.gpus:
                    continue
                out.append(hid)
                if len(out) == n:
                    break
            if len(out) == n:
                break
        for hid in stale:
            self.update(hid)
        return out


class IndexedPolicy(SchedulerPolicy):
    """A policy with a :class:`HostIndex` over the cluster it is driven on."""

    verify_misses = Bool(
        True, help="Before answering that no host has room (ScaleOut, Queue, None from place), re-check every "
        "host against the index once (O(hosts)). Needed when code other than the policy changes the cluster "
        "without calling refresh(); the simulator keeps the index exact and turns it off.").tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._index: HostIndex | None = None

    # -- index -----------------------------------------------------------------------------------------------
    def index(self, cluster: Cluster) -> HostIndex:
        """The index for ``cluster`` (rebuilt when the cluster or its number of hosts changed behind it)."""
        idx = self._index
        if idx is None or idx.cluster is not cluster or len(idx) != len(cluster.hosts):
            if idx is not None and idx.cluster is not cluster:
                self._waiting.clear()  # driven on another cluster now: its waiting kernels are not ours
            idx = self._index = HostIndex(cluster)
        return idx

    def refresh(self, cluster: Cluster, host_ids: Iterable[str] | None = None) -> None:
        """Tell the policy the cluster changed on ``host_ids`` (all hosts when None)."""
        cluster.touched.update(cluster.hosts if host_ids is None else host_ids)
        idx = self._index
        if idx is None or idx.cluster is not cluster:
            self.index(cluster)
        elif host_ids is None:
            idx.resync()
        else:
            idx.update_many(host_ids)

    def trust_refresh(self, trusted: bool) -> bool:
        """Turn ``verify_misses`` off while the caller reports every change (see the base class)."""
        previous = not self.verify_misses
        self.verify_misses = not trusted
        return previous

    def check(self, cluster: Cluster) -> None:
        """The index must file every host under its current values."""
        idx = self._index
        if idx is not None and idx.cluster is cluster and not idx.is_exact():
            raise AssertionError("the policy's host index is out of date")

    def max_free_gpus(self, cluster: Cluster) -> int:
        """Most free GPUs on one host (a cell needing more cannot run or migrate anywhere now)."""
        return self.index(cluster).max_free_gpus()

    def _retry_miss(self, cluster: Cluster) -> bool:
        """On a miss: resync once if configured; True when the caller should search again."""
        if self.verify_misses:
            self.index(cluster).resync()
            return True
        return False
