"""The NotebookOS policy (arXiv:2503.20591): replicated kernels, GPUs bound only while a cell runs."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque

from traitlets import Bool, Enum, Float, Int

from ..cluster import AccountingError, Cluster, Host, KernelRecord
from ..policy import Decision, Migrate, Move, Rebalance, Run, ScaleOut
from . import IndexedPolicy, free_gpu_count


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
      The target's GPUs are reserved for the kernel (a firm hold) until its new replica runs the cell, so no other
      cell takes them meanwhile.
    - **Soft hold** (``hold_seconds`` > 0): when a cell ends, its executor keeps its GPUs that long, so the
      kernel's next cell starts there at once (between a notebook's cells the median gap is minutes). Another
      kernel's cell on that host takes held GPUs back when it needs them, so a hold never makes a cell wait.
    - A kernel that lost replicas runs on the survivors; replacing them is the caller's (``place`` tops up).
    - **Committed-driven autoscaling** (``autoscale``, when ``committed_autoscale``): the cluster is sized from
      the GPUs in use (running, and held weighted by ``held_weight``): ``ceil(scale_factor x in use / host GPUs) +
      spare_hosts`` hosts, and never fewer than the replicas' subscriptions need under the cap. Each pass first
      makes room (``keep_room``): an idle kernel none of whose replicas' hosts could start its next cell gets a
      replica moved, in the background, to the most subscribed host that could (a host is added when none can);
      ``room_hosts`` asks for room on that many of its hosts, and ``room_share`` caps how many idle kernels may
      count on the same free GPUs (fixed hosts, which the provider did not add, are never emptied). Past the target, and ``consolidate_after`` seconds after the cluster last had to grow, one host with no cell
      running (and no hold, unless holds weigh less than running cells) that is no idle kernel's only room is
      consolidated per pass: the replicas on it move in the background to the most subscribed hosts with room under
      the cap (never on a cell's path) and the emptied host is removed. Without it, scale-out waits for a cell that
      finds no room and scale-in for hosts idle past a limit (:meth:`idle_hosts`).

    Parameters (traitlets, ``c.NotebookOSPolicy.<name>``): ``replicas_per_kernel`` (3), ``max_subscription_ratio``
    (7.0), ``max_hosts`` (64), ``host_gpus`` (8), ``placement`` (spread), ``hold_seconds`` (0),
    ``migration_hold_seconds`` (300), ``committed_autoscale`` (False), ``scale_factor`` (1.05), ``spare_hosts``
    (1), ``held_weight`` (1), ``keep_room`` (True), ``room_hosts`` (1), ``room_share`` (0: no cap), ``max_moves``
    (32), ``consolidate_after`` (300), ``dynamic_cap`` (False), ``cap_window`` (20), ``verify_misses`` (True).
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
    hold_seconds = Float(
        0.0, help="Seconds an executor keeps its GPUs after a cell for the kernel's next cell (a soft hold: "
        "another kernel's cell on that host takes them back when it needs them). 0: release at once.").tag(config=True)
    committed_autoscale = Bool(
        False, help="Size the cluster from the GPUs in use (running and held) and consolidate: move idle kernels' "
        "replicas off hosts with no GPU in use, in the background, and remove those hosts. Off: scale out when a "
        "cell finds no room, scale in hosts with no replica for the idle limit.").tag(config=True)
    scale_factor = Float(
        1.05, help="committed_autoscale: hosts for this multiple of the GPUs in use (NotebookOS: 1.05).").tag(
        config=True)
    spare_hosts = Int(1, help="committed_autoscale: hosts kept beyond what the GPUs in use need.").tag(config=True)
    held_weight = Float(
        1.0, help="committed_autoscale: how much a held GPU counts toward the GPUs in use (1: like a running one; "
        "0: holds only use what spare room the running cells leave).").tag(config=True)
    keep_room = Bool(
        True, help="committed_autoscale: move (in the background) a replica of each idle kernel none of whose "
        "replicas' hosts could start its next cell at once to a host that could, and add a host when none "
        "can.").tag(config=True)
    room_hosts = Int(
        1, help="keep_room: on how many of an idle kernel's replicas' hosts its next cell must find room (2 "
        "survives another kernel's cell taking one of them).").tag(config=True)
    dynamic_cap = Bool(
        False, help="committed_autoscale: the subscription cap follows demand, as NotebookOS's: replicas_per_kernel x "
        "the mean over the last cap_window passes of (GPUs all kernels request / GPUs running cells; "
        "max_subscription_ratio / replicas_per_kernel while none runs), never above max_subscription_ratio. "
        "Replicas placed under a higher cap stay.").tag(config=True)
    cap_window = Int(20, help="dynamic_cap: autoscaler passes the demand ratio is averaged over.").tag(config=True)
    room_share = Float(
        0.0, help="keep_room: how many idle kernels may count on the same free GPUs as the room for their next cell, "
        "in GPUs per free GPU (2: a host with 8 free GPUs is the room of at most two idle 8-GPU kernels, or sixteen "
        "1-GPU ones; the others get room elsewhere). 0: no limit (a free host can be the room of every idle "
        "kernel with a replica there, and all of them lose it when one starts a cell). Every pass then looks at "
        "every idle kernel.").tag(config=True)
    max_moves = Int(32, help="committed_autoscale: most background moves started per autoscaler pass.").tag(
        config=True)
    consolidate_after = Float(
        300.0, help="committed_autoscale: seconds after the cluster last had to grow (a host added, or a cell "
        "that found no room) before hosts are consolidated again; consolidation empties one host per pass. "
        "Keeps the autoscaler from removing a host it will need again at once.").tag(config=True)
    migration_hold_seconds = Float(
        300.0, help="Seconds a migration's target GPUs stay reserved for the kernel whose replica moves there "
        "(the cell runs there once the replica is up).").tag(config=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._grew_at = float("-inf")  # when the cluster last had to grow (see consolidate_after)
        #: (cluster, its version, whether consolidation was allowed, starting hosts) of the last autoscaler pass
        #: that wanted nothing: the same state wants nothing again
        self._quiet: tuple | None = None
        # what _make_room saw of each host, and the kernels it could not give room (see _kernels_to_check)
        self._room_cluster: Cluster | None = None
        self._cap: float | None = None  # dynamic_cap's current cap
        self._demand: deque[float] = deque()  # dynamic_cap: the last passes' demand ratios
        self._unresolved: set[str] = set()

    # -- placement -------------------------------------------------------------------------------------------
    def _candidates(self, cluster: Cluster, kernel: KernelRecord, need: int) -> list[str]:
        idx = self.index(cluster)
        have = {r.host_id for r in kernel.replicas.values()}
        pick = idx.most_subscribed if self.placement == "pack" else idx.least_subscribed
        hosts = pick(need, kernel.request.gpus, self.cap, have)
        if len(hosts) < need and self._retry_miss(cluster):
            hosts = pick(need, kernel.request.gpus, self.cap, have)
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
        return f"{super().no_room(cluster, kernel_id)}, oversubscription {self.cap:g}"

    # -- cells -----------------------------------------------------------------------------------------------
    def executor_order(self, cluster: Cluster, kernel_id: str) -> list[int]:
        """Replica ids in the order they are tried: last executor, then by most free GPUs (then by id)."""
        kernel = cluster.kernels[kernel_id]
        hosts = cluster.hosts
        last = kernel.last_executor

        def most_free_first(rid: int) -> tuple[int, int]:
            return (-free_gpu_count(hosts[kernel.replicas[rid].host_id]), rid)

        others = sorted((rid for rid in kernel.replicas if rid != last), key=most_free_first)
        return ([last] if last in kernel.replicas else []) + others

    def schedule_cell(self, cluster: Cluster, kernel_id: str, now: float) -> Decision:
        kernel = cluster.kernels[kernel_id]
        if kernel.running is not None:
            raise AccountingError(f"kernel {kernel_id!r} already runs a cell on replica {kernel.running[0]}")
        gpus = kernel.request.gpus
        hosts = cluster.hosts
        idx = self.index(cluster)

        hold = kernel.held
        if hold is not None:
            replica = kernel.replicas.get(hold.replica_id) if hold.replica_id is not None else None
            if replica is not None and not hosts[hold.host_id].draining and replica.ready_at <= now:
                devices = cluster.resume(kernel_id, now)
                idx.update(hold.host_id)
                self.dequeue(kernel_id)
                return Run(hold.replica_id, hold.host_id, devices)
            if replica is None or hosts[hold.host_id].draining:
                cluster.drop_hold(kernel_id)  # (a replica still starting keeps its hold: the cell waits for it)
                idx.update(hold.host_id)

        kernel_hold_host = kernel.held.host_id if kernel.held is not None else None
        order = [rid for rid in self.executor_order(cluster, kernel_id)
                 if kernel.replicas[rid].ready_at <= now and not hosts[kernel.replicas[rid].host_id].draining]
        for take_back in (False, True):
            for rid in order:
                host = hosts[kernel.replicas[rid].host_id]
                free = host.gpus - len(host.committed)
                if free < gpus and not (take_back and free_gpu_count(host) >= gpus):
                    continue
                self._take_back(cluster, host, gpus - free)
                devices = cluster.commit(kernel_id, rid, now)  # (gives up a hold the kernel kept elsewhere)
                idx.update_many([host.id] + ([kernel_hold_host] if kernel_hold_host else []))
                self.dequeue(kernel_id)
                return Run(rid, host.id, devices)

        if kernel.replicas:
            holders = {r.host_id for r in kernel.replicas.values()}
            cap = self.cap

            def accept(h):
                return h.id not in holders and h.subscribed_gpus + gpus <= cap * h.gpus

            target = idx.most_free(gpus, accept)
            if target is None and self._retry_miss(cluster):
                target = idx.most_free(gpus, accept)
            if target is not None:
                def tightness(rid: int) -> tuple[int, int, int]:
                    h = hosts[kernel.replicas[rid].host_id]
                    return (free_gpu_count(h), -h.subscribed_gpus, rid)

                source = min(kernel.replicas, key=tightness)
                host = hosts[target]
                # The target's GPUs wait for the replica moving there (no other cell takes them meanwhile).
                self._take_back(cluster, host, gpus - (host.gpus - len(host.committed)))
                cluster.hold_for_arrival(kernel_id, target, now + self.migration_hold_seconds)
                idx.update_many([target] + ([kernel_hold_host] if kernel_hold_host else []))
                return Migrate(source, target)

        if len(hosts) < self.max_hosts:
            self._grew_at = now
            return ScaleOut(self.host_gpus)
        return self._queue(cluster, kernel_id, now)

    def _take_back(self, cluster: Cluster, host: Host, need: int) -> None:
        """Free ``need`` more GPUs on ``host`` by giving back other kernels' soft holds, those that lapse first."""
        if need <= 0:
            return
        holders = sorted({k for k in host.held.values() if not cluster.kernels[k].held.firm},
                         key=lambda k: (cluster.kernels[k].held.until, k))
        for k in holders:
            need -= len(cluster.drop_hold(k).devices)
            if need <= 0:
                return
        raise AccountingError(f"host {host.id!r}: not enough GPUs to take back")

    def cell_finished(self, cluster: Cluster, kernel_id: str, now: float) -> float | None:
        kernel = cluster.kernels[kernel_id]
        until = None
        if kernel.running is not None:
            host_id = kernel.replicas[kernel.running[0]].host_id
            if self.hold_seconds > 0 and not cluster.hosts[host_id].draining:
                until = cluster.hold(kernel_id, now + self.hold_seconds, now).until
            else:
                cluster.release(kernel_id, now)
            self.index(cluster).update(host_id)
        self.dequeue(kernel_id)
        return until

    # -- autoscaling -----------------------------------------------------------------------------------------
    def target_hosts(self, cluster: Cluster) -> int:
        """Hosts the cluster should have: for the GPUs in use (running and held), plus spares, and enough for the
        replicas' subscriptions under the cap."""
        host_gpus = max(1, self.host_gpus)
        gpus = cluster.gpus_committed - (1.0 - self.held_weight) * cluster.n_held
        in_use = math.ceil(self.scale_factor * gpus / host_gpus) + self.spare_hosts
        subscribed = cluster.n_subscribed
        for_subscriptions = math.ceil(subscribed / (self.cap * host_gpus))
        return min(self.max_hosts, max(in_use, for_subscriptions, self.replicas_per_kernel))

    @property
    def cap(self) -> float:
        """The subscription cap now: ``max_subscription_ratio``, or with ``dynamic_cap`` the demand's."""
        return self._cap if self._cap is not None else self.max_subscription_ratio

    def _update_cap(self, cluster: Cluster) -> None:
        if not self.dynamic_cap:
            self._cap = None
            return
        running, usual = cluster.gpus_running, max(1, self.replicas_per_kernel)
        self._demand.append(cluster.n_requested / running if running else self.max_subscription_ratio / usual)
        while len(self._demand) > max(1, self.cap_window):
            self._demand.popleft()
        self._cap = min(self.max_subscription_ratio, usual * sum(self._demand) / len(self._demand))

    def autoscale(self, cluster: Cluster, now: float, starting: int) -> Rebalance | None:
        if not self.committed_autoscale:
            return None
        self._update_cap(cluster)
        state = (id(cluster), cluster.version, now - self._grew_at >= self.consolidate_after, starting)
        if state == self._quiet:
            return Rebalance()
        rebalance = self._autoscale(cluster, now, starting)
        self._quiet = None if rebalance else (id(cluster), cluster.version, *state[2:])
        return rebalance

    def _autoscale(self, cluster: Cluster, now: float, starting: int) -> Rebalance:
        hosts = cluster.hosts
        target = self.target_hosts(cluster)
        draining = [h for h in hosts.values() if h.draining]
        active = len(hosts) - len(draining)
        remove = tuple(h.id for h in draining if not h.replicas and not h.committed)
        if active + starting < target:
            short = target - active - starting
            for h in draining[:short]:  # a draining host is cheaper to keep than a new one to start
                if h.id not in remove:
                    h.draining = False
                    short -= 1
            remove = tuple(h for h in remove if hosts[h].draining)
            room = self.max_hosts - len(hosts) + len(remove) - starting
            self.refresh(cluster, [h.id for h in draining])
            self._grew_at = now
            return Rebalance(max(0, min(short, room)), (), remove)
        moves: list[Move] = []
        short_of_room = 0
        if self.keep_room:
            room_moves, short_of_room = self._make_room(cluster, now)
            moves.extend(room_moves)
        if short_of_room and starting == 0:
            self._grew_at = now
            return Rebalance(min(1, self.max_hosts - len(hosts)), tuple(moves), remove)
        if starting == 0 and active > target and now - self._grew_at >= self.consolidate_after:
            candidates = self._consolidation_candidates(cluster, 1, now)
            for host in candidates:  # all draining first: none is a target of another's moves
                host.draining = True
                cluster.drop_holds_on(host.id)
            self.refresh(cluster, [h.id for h in candidates])
            for i, host in enumerate(candidates):
                planned = self._plan_moves(cluster, host, now)
                if planned is None:
                    for h in candidates[i:]:
                        h.draining = False
                    self.refresh(cluster, [h.id for h in candidates[i:]])
                    break
                moves.extend(planned)
                if not host.replicas:
                    remove += (host.id,)
        return Rebalance(0, tuple(moves), remove)

    def _make_room(self, cluster: Cluster, now: float) -> tuple[list[Move], int]:
        """Background moves so that each idle kernel has a replica on a host with room for its next cell (GPUs
        free or only softly held); returns them and how many kernels are left without room (no host has it)."""
        hosts = cluster.hosts
        idx = self.index(cluster)
        cap = self.cap
        moves: list[Move] = []
        short = 0
        kernels = cluster.kernels
        left: set[str] = set()
        usual, room_hosts, max_moves = self.replicas_per_kernel, self.room_hosts, self.max_moves  # (traits: slow)
        share = self.room_share
        rooms: dict[int, list[tuple[int, str]]] = {}  # per cell size, built when first needed in this pass
        claimed: dict[str, int] = {}  # room_share: GPUs of each host idle kernels count on, this pass

        def room(h: Host, gpus: int) -> bool:
            free = free_gpu_count(h)
            return free >= gpus and (not share or claimed.get(h.id, 0) + gpus <= share * free)

        to_check = self._kernels_to_check(cluster)
        if share:
            to_check = sorted(kernels)  # claims are counted afresh: every idle kernel
        for i, kernel_id in enumerate(to_check):
            kernel = kernels.get(kernel_id)
            if kernel is None or kernel.running is not None or kernel.held is not None or not kernel.replicas:
                continue
            replicas = kernel.replicas
            if len(replicas) > usual:
                left.add(kernel_id)  # a move of it is under way: looked at again once it is done
                continue
            gpus = kernel.request.gpus
            need, roomy = min(room_hosts, len(replicas)), []
            for r in replicas.values():
                h = hosts[r.host_id]
                if not h.draining and room(h, gpus):
                    roomy.append(h.id)
                    if len(roomy) >= need:
                        break
            if len(roomy) >= need:
                for host_id in roomy:
                    claimed[host_id] = claimed.get(host_id, 0) + gpus
                continue
            if len(moves) >= max_moves:
                left.update(to_check[i:])  # looked at next pass
                break
            holders = {r.host_id for r in replicas.values()}
            # The most subscribed host with room: a few hosts with free GPUs become the room of many idle kernels
            # (they rarely all need it at once), and the rest of the cluster packs.
            order = rooms.get(gpus)
            if order is None:  # hosts with room for a cell of this size, ascending (subscribed GPUs, id)
                order = rooms[gpus] = sorted((h.subscribed_gpus, h.id) for h in hosts.values()
                                             if not h.draining and free_gpu_count(h) >= gpus)
            target = None
            # Hosts subscribed past cap x (the most GPUs a host has) - gpus are over the cap for this kernel.
            j = bisect_right(order, (math.floor(cap * idx.max_host_gpus - gpus), "\U0010ffff"))
            while j > 0:
                j -= 1
                h = hosts[order[j][1]]
                if h.id not in holders and h.subscribed_gpus + gpus <= cap * h.gpus and room(h, gpus):
                    target = h.id
                    break
            if target is None:
                short += 1
                left.add(kernel_id)
                continue
            # (with room_share, a replica's host may have the GPUs free but counted on by others)
            source = min([r for r in replicas.values()
                          if hosts[r.host_id].draining or free_gpu_count(hosts[r.host_id]) < gpus]
                         or replicas.values(),
                         key=lambda r: (not hosts[r.host_id].draining, free_gpu_count(hosts[r.host_id]),
                                        r.replica_id))
            claimed[target] = claimed.get(target, 0) + gpus
            before = hosts[target].subscribed_gpus
            new = cluster.place_replica(kernel.id, target, ready_at=math.inf)  # (the caller says when it is up)
            idx.update(target)
            for order in rooms.values():  # re-file the target under its grown subscription (its room is the same)
                j = bisect_left(order, (before, target))
                if j < len(order) and order[j] == (before, target):
                    del order[j]
                    insort(order, (hosts[target].subscribed_gpus, target))
            moves.append(Move(kernel.id, source.replica_id, new.replica_id, target))
        self._unresolved = left
        return moves, short

    def _kernels_to_check(self, cluster: Cluster) -> list[str]:
        """The kernels whose room may have changed since the last pass: those with a replica on a host whose GPUs,
        holds, replicas or draining changed (``Cluster.touched``, which :meth:`refresh` adds to), and those left
        without room then (sorted: the order must not depend on string hashing). The first pass on a cluster
        checks every kernel."""
        if self._room_cluster is not cluster:
            self._room_cluster, self._unresolved = cluster, set()
            cluster.touched.clear()
            return sorted(cluster.kernels)
        check = set(self._unresolved)
        hosts = cluster.hosts
        for host_id in cluster.touched:
            host = hosts.get(host_id)
            if host is not None:
                check.update(k for k, _ in host.replicas)
        cluster.touched.clear()
        return sorted(check)

    def _consolidation_candidates(self, cluster: Cluster, count: int, now: float) -> list[Host]:
        """Up to ``count`` hosts to empty: not fixed, no cell running there, no firm hold, no replica still
        arriving (a move's target); soft holds too only while they count less than running cells (``held_weight``
        < 1: they are given back). Fewest replicas first; none while the first has a replica of a kernel that runs
        a cell (it could not move)."""
        keep_holds = self.held_weight >= 1.0
        idle = [h for h in cluster.hosts.values() if not h.draining and not h.fixed
                and len(h.committed) == len(h.held) and not h.firm_held and not (keep_holds and h.held)]
        idle.sort(key=lambda h: (len(h.held), len(h.replicas), h.subscribed_gpus, h.id))
        kernels = cluster.kernels
        chosen = []
        for host in idle:
            if any(kernels[k].replicas[r].ready_at > now for k, r in host.replicas):
                continue  # a replica still arriving (a move's target)
            if self.keep_room and self._only_room(cluster, host):
                continue  # the only room an idle kernel has for its next cell
            if any(kernels[k].running is not None for k, _ in host.replicas):
                # A kernel with a replica here runs a cell elsewhere: the cluster is busy, consolidate later.
                # (Trying the next host instead cost more GPU-hours in the simulator: hosts emptied in busy times
                # are needed again soon.)
                break
            chosen.append(host)
            if len(chosen) == count:
                break
        return chosen

    def _only_room(self, cluster: Cluster, host: Host) -> bool:
        hosts = cluster.hosts
        for kernel_id, _ in host.replicas:
            kernel = cluster.kernels[kernel_id]
            if kernel.running is not None:
                continue
            gpus = kernel.request.gpus
            if not any(r.host_id != host.id and not hosts[r.host_id].draining
                       and free_gpu_count(hosts[r.host_id]) >= gpus for r in kernel.replicas.values()):
                return True
        return False

    def _plan_moves(self, cluster: Cluster, host: Host, now: float) -> list[Move] | None:
        """Place, on other hosts, a new replica for each replica on ``host`` (most subscribed hosts with room
        first, so the cluster packs); None, with nothing placed, when one of them has no room anywhere or its kernel
        runs a cell (a move happens only while its kernel is idle)."""
        idx = self.index(cluster)
        placed: list[tuple[str, int, int, str]] = []
        ok = True
        for kernel_id, rid in sorted(host.replicas):
            kernel = cluster.kernels[kernel_id]
            if kernel.running is not None:
                ok = False
                break
            have = {r.host_id for r in kernel.replicas.values()} | {host.id}
            target = idx.most_subscribed(1, kernel.request.gpus, self.cap, have)
            if not target and self._retry_miss(cluster):
                target = idx.most_subscribed(1, kernel.request.gpus, self.cap, have)
            if not target:
                ok = False
                break
            new = cluster.place_replica(kernel_id, target[0], ready_at=math.inf)  # (the caller says when it is up)
            idx.update(target[0])
            placed.append((kernel_id, rid, new.replica_id, target[0]))
        if not ok:
            for kernel_id, _, new_rid, target in placed:
                cluster.remove_replica(kernel_id, new_rid, now)
                idx.update(target)
            return None
        return [Move(k, rid, new_rid, target) for k, rid, new_rid, target in placed]
