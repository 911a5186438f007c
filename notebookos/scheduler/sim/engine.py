"""Discrete-event simulation of a GPU cluster driven by a scheduling policy, in simulated time.

The same :class:`~notebookos.scheduler.policy.SchedulerPolicy` objects as the live scheduler make every decision
over a real :class:`~notebookos.scheduler.cluster.Cluster`; this module only plays the world around them: sessions
start and stop, cells are submitted and finish, hosts come online after a scale-out delay and go away when idle.
Nothing sleeps and nothing touches the network; time is a float of seconds.

The cluster model (:class:`SimConfig`):

- ``initial_hosts`` hosts of ``host_gpus`` GPUs are online at the start (the first session's start time); scale-in
  never goes below ``min_hosts`` (default: ``initial_hosts``) and scale-out never above ``max_hosts``.
- A session's kernel is placed when it starts (``policy.place``); when placement succeeds, its replicas take
  ``replica_start`` seconds to start (a cell submitted before then waits). When it fails the session waits for
  capacity: the simulator starts as many hosts as the policy says it needs (``policy.hosts_needed``, one by
  default; for a policy that reserves GPUs at placement, enough GPUs on one host, as for cells).
- A cell is scheduled when it is submitted (and its kernel is ready and idle): :class:`Run` starts it (after the
  policy's ``process_start_seconds``: the batch policy's fresh process) and it holds its
  GPUs until it finishes; :class:`Migrate` moves the replica (placed on the new host, removed from the old) and
  asks again after ``migration_cost`` seconds; :class:`ScaleOut` starts a host that comes online after
  ``scale_out_delay`` seconds (cells needing GPUs are promised the spare GPUs of hosts already starting before
  another host is started, and nothing starts past ``max_hosts``: the live scheduler's accounting,
  :class:`~notebookos.scheduler.cluster.Growth`), and the cell waits; :class:`Queue` waits. Either way the kernel is
  in the policy's waiting queue, as in the live scheduler (so the batch policy's first come, first served covers
  cells waiting for a scale-out too). Waiting cells are asked again, first in line first, whenever GPUs are
  released, a host comes online or goes away, or a session ends.
- A host with no replicas for ``scale_in_delay`` seconds is removed (the rule of
  ``SchedulerPolicy.idle_hosts``, which is called instead when a policy overrides it).
- A policy with its own autoscaler (``SchedulerPolicy.autoscale`` answers a :class:`~notebookos.scheduler.policy.
  Rebalance`, asked every ``autoscale_interval`` seconds) replaces that rule: hosts it adds come online after
  ``scale_out_delay``; its background moves take ``migration_cost`` (the new replica runs cells only then, and the
  old one goes then; no cell waits for them); a host it removes is gone ``scale_in_delay`` seconds later (and
  provisioned until then). Soft holds end when the policy's ``cell_finished`` said they lapse.

Metrics (:class:`SimResult.metrics`): GPU-hours provisioned (GPUs online x time, from the first session's start to
the last session's end), committed (GPUs bound to cells from their Run to their end: for ``batch`` this includes the
process start), reserved (GPUs committed in the cluster x time: for ``reservation``, the sessions' reservations),
interactivity delay per cell (submit -> start; a cell submitted while its own kernel still runs the previous cell
counts from that cell's end; the wait for the kernel's placement and start counts), and counts of migrations,
scale-outs, scale-ins and logged events.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cluster import AccountingError, Cluster, Growth, Host, PendingHost, ResourceRequest
from ..policy import Migrate, Move, Queue, Run, ScaleOut, SchedulerPolicy
from .traces import Session

__all__ = ["SimConfig", "SimResult", "Simulation", "simulate", "EVENT_COLUMNS", "METRIC_KEYS"]

EVENT_COLUMNS = ("time_s", "event", "session", "cell", "host", "gpus", "delay_s", "info")
METRIC_KEYS = ("gpu_hours_provisioned", "gpu_hours_committed", "gpu_hours_reserved", "interactivity_delay_p50_s",
               "interactivity_delay_p99_s", "interactivity_delay_mean_s", "immediate_start_fraction",
               "migrations", "background_migrations", "scale_outs", "scale_ins", "events", "wall_seconds",
               "sessions", "cells",
               "cells_run", "unfinished_sessions", "clipped_requests", "peak_hosts", "makespan_hours",
               "utilization")

# event kinds (heap entries are (time, seq, kind, session state))
(_START, _SUBMIT, _READY, _END_CELL, _RETRY, _STOP, _END, _ONLINE, _CHECK, _HOLD, _AUTOSCALE, _MOVED,
 _REMOVE) = range(13)


@dataclass
class SimConfig:
    """The cluster model. Times in seconds."""

    host_gpus: int = 8
    initial_hosts: int = 3
    min_hosts: int | None = None
    max_hosts: int = 64
    scale_out_delay: float = 120.0
    scale_in_delay: float = 1800.0
    replica_start: float = 5.0
    migration_cost: float = 30.0
    immediate_threshold: float = 1.0
    autoscale_interval: float = 30.0

    def __post_init__(self) -> None:
        if self.min_hosts is None:
            self.min_hosts = self.initial_hosts
        problems = []
        if self.host_gpus < 1:
            problems.append("host_gpus must be >= 1")
        if not 0 <= self.min_hosts <= self.max_hosts:
            problems.append("need 0 <= min_hosts <= max_hosts")
        if not 0 <= self.initial_hosts <= self.max_hosts:
            problems.append("need 0 <= initial_hosts <= max_hosts")
        if self.autoscale_interval <= 0:
            problems.append("autoscale_interval must be > 0")
        for name in ("scale_out_delay", "scale_in_delay", "replica_start", "migration_cost"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class SimResult:
    policy: str
    metrics: dict[str, Any]
    delays: np.ndarray
    #: (time_s, GPUs provisioned, GPUs bound to running cells, GPUs committed in the cluster: running cells, holds
    #: and reservations), one row per change
    timeline: np.ndarray
    events: list[tuple] = field(repr=False, default_factory=list)


class _S:
    """A session's state during the run."""

    __slots__ = ("sess", "kid", "gpus", "ready", "busy", "backlog", "next_cell", "cur", "clock", "prev_end",
                 "bound", "done", "ended", "logged_wait", "stop_due")

    def __init__(self, sess: Session, gpus: int) -> None:
        self.sess = sess
        self.kid = sess.id
        self.gpus = gpus
        self.ready = False
        self.busy = False
        self.backlog: deque[tuple[int, float]] = deque()
        self.next_cell = 0
        self.cur = -1
        self.clock = 0.0
        self.prev_end = -math.inf
        self.bound = 0
        self.done = 0
        self.ended = False
        self.logged_wait = False
        self.stop_due = False


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


class Simulation:
    """One policy over one workload. ``check=True`` verifies the GPU accounting after every event (tests)."""

    def __init__(self, policy: SchedulerPolicy, sessions: list[Session], config: SimConfig | None = None, *,
                 record_events: bool = True, check: bool = False, progress: bool = False) -> None:
        self.policy = policy
        self.config = config or SimConfig()
        self.sessions = sessions
        self.record = record_events
        self.check = check
        self.progress = progress
        self.cluster = Cluster()
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._log: list[tuple] = []
        self._nlog = 0
        self._host_seq = 0
        #: scale-out accounting, shared with the live scheduler (``cluster.Growth``)
        self.growth = Growth(self.config.max_hosts)
        #: sessions by kernel id; the cells that wait are the policy's queue (``policy.waiting``), as live
        self._by_kid: dict[str, _S] = {}
        self._waiting_place: dict[_S, None] = {}
        self._check_pending: set[str] = set()
        self._floored: dict[str, None] = {}
        self._delays: list[float] = []
        self.migrations = self.scale_ins = self.background_migrations = 0
        self._autoscaler = False  # the policy sizes the cluster itself (SchedulerPolicy.autoscale)
        self._removing: set[str] = set()
        self.clipped = 0
        self.peak_hosts = 0
        # gauges and their integrals
        self._prov = self._running = self._reserved = 0
        self._prov_area = self._running_area = self._reserved_area = 0.0
        self._t = 0.0
        self._timeline: list[list[float]] = []
        self._left = 0
        self._reserves = policy.reserves_at_placement
        self._strict_fifo = policy.strict_fifo
        self._overhead = float(policy.process_start_seconds or 0.0)
        self._custom_idle = type(policy).idle_hosts is not SchedulerPolicy.idle_hosts
        self._bar = None

    # -- plumbing --------------------------------------------------------------------------------------------
    def _push(self, t: float, kind: int, obj: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj))

    def _emit(self, event: str, s: _S | None = None, cell: int | str = "", host: str = "", gpus: int | str = "",
              delay: float | str = "", info: str = "") -> None:
        self._nlog += 1
        if self.record:
            self._log.append((self.now, event, s.kid if s is not None else "", cell, host, gpus, delay, info))

    def _touch(self, host_ids) -> None:
        self.policy.refresh(self.cluster, host_ids)

    def _mark(self) -> None:
        """Record the gauges (after they may have changed at ``now``)."""
        tl = self._timeline
        row = [self.now, self._prov, self._running, self._reserved]
        if tl and tl[-1][1:] == row[1:]:
            return
        if tl and tl[-1][0] == self.now:
            tl[-1] = row
        else:
            tl.append(row)

    def _advance(self, t: float) -> None:
        dt = t - self._t
        if dt > 0:
            self._prov_area += self._prov * dt
            self._running_area += self._running * dt
            self._reserved_area += self._reserved * dt
            self._t = t

    # -- hosts -----------------------------------------------------------------------------------------------
    def _new_host_id(self) -> str:
        self._host_seq += 1
        return f"h{self._host_seq:04d}"

    def _add_host(self, host_id: str) -> None:
        host = Host(host_id, gpus=self.config.host_gpus, online_since=self.now, idle_since=self.now)
        self.cluster.add_host(host)
        self._prov += host.gpus
        self.peak_hosts = max(self.peak_hosts, len(self.cluster.hosts))
        self._touch([host_id])
        self._idle_watch(host_id)

    def _started(self, p: PendingHost) -> None:
        """A scale-out started: ``p`` comes online after ``scale_out_delay``."""
        self._emit("scale_out", host=p.id, gpus=p.gpus)
        self._push(self.now + self.config.scale_out_delay, _ONLINE, p)

    def _request_gpus(self, s: _S) -> None:
        """``s`` needs ``s.gpus`` free GPUs on one host: a promise on a starting host, or a new host."""
        p, started = self.growth.promise(s.kid, s.gpus, len(self.cluster.hosts), self.config.host_gpus,
                                         self._new_host_id)
        if started:
            self._started(p)

    def _request_hosts_for_placement(self, s: _S) -> None:
        if self._reserves:
            self._request_gpus(s)
            return
        need = self.policy.hosts_needed(self.cluster, s.kid)
        for _ in range(self.growth.hosts_to_start(len(self.cluster.hosts), need)):
            self._started(self.growth.start(len(self.cluster.hosts), self.config.host_gpus, self._new_host_id()))

    def _idle_watch(self, host_id: str) -> None:
        if self._autoscaler:
            return
        host = self.cluster.hosts.get(host_id)
        if host is None or host.replicas or host_id in self._check_pending:
            return
        self._check_pending.add(host_id)
        self._push(host.idle_since + self.config.scale_in_delay, _CHECK, host_id)

    def _on_check(self, host_id: str) -> None:
        self._check_pending.discard(host_id)
        cluster = self.cluster
        host = cluster.hosts.get(host_id)
        if host is None or host.replicas or host.idle_since is None:
            return
        limit = self.config.scale_in_delay
        if self.now < host.idle_since + limit:  # (not now - idle_since < limit: rounding could loop forever)
            self._idle_watch(host_id)
            return
        if self._custom_idle and host_id not in self.policy.idle_hosts(cluster, self.now, limit):
            return
        if len(cluster.hosts) <= self.config.min_hosts:
            self._floored[host_id] = None  # looked at again when the cluster grows
            return
        cluster.remove_host(host_id)
        self._floored.pop(host_id, None)
        self._prov -= host.gpus
        self.scale_ins += 1
        self._touch([host_id])
        self._emit("scale_in", host=host_id, gpus=host.gpus)
        self._mark()
        self._retry_cells()
        self._retry_placements()

    def _on_online(self, p: PendingHost) -> None:
        self.growth.arrived(p)  # its promises end: whoever still waits asks again
        self._add_host(p.id)
        self._emit("host_online", host=p.id, gpus=self.config.host_gpus)
        self._mark()
        for host_id in list(self._floored):
            del self._floored[host_id]
            self._idle_watch(host_id)
        self._retry_cells()
        self._retry_placements()

    # -- sessions --------------------------------------------------------------------------------------------
    def _on_start(self, s: _S) -> None:
        self.cluster.add_kernel(s.kid, ResourceRequest(gpus=s.gpus, cpus=0.0, memory_mb=0), self.now)
        self._emit("session_start", s, gpus=s.gpus)
        sess = s.sess
        if sess.cells:
            first = sess.cells[0]
            self._push(first.submit if first.submit is not None else self.now + first.think, _SUBMIT, s)
        if sess.stop is not None:
            self._push(sess.stop, _STOP, s)
        self._place(s)
        self._maybe_end(s)

    def _place(self, s: _S) -> bool:
        hosts = self.policy.place(self.cluster, s.kid, self.now)
        if hosts is None:
            if not s.logged_wait:
                s.logged_wait = True
                self._emit("session_wait", s, gpus=s.gpus)
            self._waiting_place[s] = None
            self._request_hosts_for_placement(s)
            return False
        self._waiting_place.pop(s, None)
        self.growth.forget(s.kid)
        s.logged_wait = False
        self._touch(hosts)
        self._emit("placed", s, host=";".join(hosts), gpus=s.gpus)
        if hosts and self.config.replica_start > 0:
            self._push(self.now + self.config.replica_start, _READY, s)
        else:
            self._on_ready(s)
        return True

    def _on_ready(self, s: _S) -> None:
        if s.ended:
            return
        s.ready = True
        self._pump(s)

    def _on_submit(self, s: _S) -> None:
        i = s.next_cell
        s.next_cell += 1
        self._emit("cell_submit", s, cell=i, gpus=s.gpus)
        s.backlog.append((i, self.now))
        cells = s.sess.cells
        if s.next_cell < len(cells) and cells[s.next_cell].submit is not None:
            self._push(cells[s.next_cell].submit, _SUBMIT, s)
        self._pump(s)

    def _pump(self, s: _S) -> None:
        if s.ready and not s.busy and s.backlog:
            i, submitted = s.backlog.popleft()
            s.busy = True
            s.cur = i
            s.clock = max(submitted, s.prev_end)
            s.logged_wait = False
            self._schedule(s)

    def _schedule(self, s: _S):
        cluster = self.cluster
        kernel = cluster.kernels[s.kid]
        d = self.policy.schedule_cell(cluster, s.kid, self.now)
        kind = type(d)
        if kind is Run:
            self.policy.dequeue(s.kid)
            self.growth.forget(s.kid)
            start = self.now + self._overhead
            delay = start - s.clock
            self._delays.append(delay)
            s.bound = len(d.devices)
            self._running += s.bound
            self._mark()
            self._emit("cell_start", s, s.cur, d.host_id, s.bound, delay, f"replica={d.replica_id}")
            self._push(start + s.sess.cells[s.cur].duration, _END_CELL, s)
        elif kind is Migrate:
            self.policy.dequeue(s.kid)
            old = kernel.replicas[d.replica_id].host_id
            # (the policy reserved the cell's GPUs on to_host: the new replica adopts them, and runs the cell once
            # it is up)
            new = cluster.place_replica(s.kid, d.to_host, ready_at=self.now + self.config.migration_cost)
            cluster.remove_replica(s.kid, d.replica_id, self.now)
            self._touch([old, d.to_host])
            self.migrations += 1
            self._emit("migrate", s, s.cur, d.to_host, s.gpus, "",
                       f"replica={d.replica_id} from={old} new_replica={new.replica_id}")
            self._idle_watch(old)
            self._push(self.now + self.config.migration_cost, _RETRY, s)
        elif kind is ScaleOut:
            self.policy.enqueue(cluster, s.kid, self.now)
            if not s.logged_wait:
                s.logged_wait = True
                self._emit("cell_wait", s, s.cur, "", s.gpus, "", "scale_out")
            self._request_gpus(s)
        elif kind is Queue:
            self.policy.enqueue(cluster, s.kid, self.now)
            if not s.logged_wait:
                s.logged_wait = True
                self._emit("cell_wait", s, s.cur, "", s.gpus, "", f"queue position={d.position}")
        else:
            raise TypeError(f"policy {self.policy.name!r} returned {d!r}, not a Decision")
        return d

    def _on_end_cell(self, s: _S) -> None:
        cluster = self.cluster
        kernel = cluster.kernels[s.kid]
        running = kernel.running
        host_id = kernel.replicas[running[0]].host_id if running is not None else ""
        hold_until = self.policy.cell_finished(cluster, s.kid, self.now)
        if hold_until is not None:
            self._push(hold_until, _HOLD, s)
        freed = running is not None and kernel.running is None  # (held GPUs are free to other kernels' cells too)
        self._running -= s.bound
        s.bound = 0
        self._mark()
        self._emit("cell_end", s, s.cur, host_id, s.gpus)
        if host_id:
            self._idle_watch(host_id)
        s.busy = False
        s.done += 1
        s.prev_end = self.now
        cells = s.sess.cells
        if s.backlog:
            self._pump(s)
        elif s.next_cell < len(cells) and cells[s.next_cell].submit is None:
            self._push(self.now + cells[s.next_cell].think, _SUBMIT, s)
        self._maybe_end(s)
        if freed or hold_until is not None:
            self._retry_cells()

    def _maybe_end(self, s: _S) -> None:
        sess = s.sess
        if s.ended or s.done < len(sess.cells):
            return
        if sess.stop is None:
            if sess.linger > 0:
                self._push(self.now + sess.linger, _END, s)
            else:
                self._on_end(s)
        elif s.stop_due or self.now >= sess.stop:
            self._on_end(s)

    def _on_stop(self, s: _S) -> None:
        s.stop_due = True
        self._maybe_end(s)

    def _on_end(self, s: _S) -> None:
        if s.ended:
            return
        s.ended = True
        cluster = self.cluster
        self._waiting_place.pop(s, None)
        self.policy.withdraw(cluster, s.kid)
        kernel = cluster.kernels[s.kid]
        hosts = [r.host_id for r in kernel.replicas.values()]
        if kernel.held is not None:
            hosts.append(kernel.held.host_id)
        cluster.remove_kernel(s.kid, self.now)
        self._touch(hosts)
        self._mark()
        self._emit("session_end", s, host=";".join(hosts))
        for h in hosts:
            self._idle_watch(h)
        self._left -= 1
        if self._bar is not None:
            self._bar.update(1)
        if hosts:
            self._retry_cells()
            self._retry_placements()

    # -- holds and the policy's autoscaler -----------------------------------------------------------------------
    def _on_hold(self, s: _S) -> None:
        if s.ended:
            return
        host_id = self.policy.hold_lapsed(self.cluster, s.kid, self.now)
        if host_id is not None:
            self._idle_watch(host_id)
            self._retry_cells()

    def _on_autoscale(self, _: Any) -> None:
        rebalance = self.policy.autoscale(self.cluster, self.now, len(self.growth.pending))
        if rebalance is None:
            return  # the policy has no autoscaler: the idle-host rule scales in, ScaleOut decisions out
        if not self._autoscaler:
            self._autoscaler = True
            self._check_pending.clear()
        for _ in range(rebalance.add_hosts):
            p = self.growth.start(len(self.cluster.hosts), self.config.host_gpus, self._new_host_id())
            if p is None:
                break
            self._started(p)
        for move in rebalance.moves:
            self._background_move(move)
        for host_id in rebalance.remove_hosts:
            if host_id not in self._removing:
                self._removing.add(host_id)
                self._push(self.now + self.config.scale_in_delay, _REMOVE, host_id)
        if self._left:
            self._push(self.now + self.config.autoscale_interval, _AUTOSCALE, None)

    def _background_move(self, move: Move) -> None:
        kernel = self.cluster.kernels[move.kernel_id]
        kernel.replicas[move.new_replica_id].ready_at = self.now + self.config.migration_cost
        self.background_migrations += 1
        s = self._by_kid[move.kernel_id]
        self._emit("move", s, "", move.to_host, s.gpus, "", f"replica={move.replica_id} "
                   f"from={kernel.replicas[move.replica_id].host_id} new_replica={move.new_replica_id}")
        self._push(self.now + self.config.migration_cost, _MOVED, move)

    def _on_moved(self, move: Move) -> None:
        kernel = self.cluster.kernels.get(move.kernel_id)
        if kernel is None or move.replica_id not in kernel.replicas or move.new_replica_id not in kernel.replicas:
            return  # the kernel ended meanwhile
        old = kernel.replicas[move.replica_id].host_id
        self.cluster.remove_replica(move.kernel_id, move.replica_id, self.now)
        self._touch([old])

    def _on_remove(self, host_id: str) -> None:
        self._removing.discard(host_id)
        cluster = self.cluster
        host = cluster.hosts.get(host_id)
        if host is None or not host.draining or host.replicas or host.committed:
            return
        if len(cluster.hosts) <= self.config.min_hosts:
            host.draining = False
            self._touch([host_id])
            return
        cluster.remove_host(host_id)
        self._prov -= host.gpus
        self.scale_ins += 1
        self._touch([host_id])
        self._emit("scale_in", host=host_id, gpus=host.gpus)
        self._mark()

    # -- waiting ---------------------------------------------------------------------------------------------
    def _max_free_gpus(self) -> int:
        return self.policy.max_free_gpus(self.cluster)

    def _retry_cells(self) -> None:
        policy = self.policy
        if not policy.waiting:
            return
        room = self._max_free_gpus()
        for kid in policy.waiting:
            if policy.waiting_since(kid) is None:
                continue
            s = self._by_kid[kid]
            if s.gpus > room:
                if self._strict_fifo:
                    break
                continue
            d = self._schedule(s)
            kind = type(d)
            if kind is Run or kind is Migrate:
                room = self._max_free_gpus()
            elif self._strict_fifo:
                break

    def _retry_placements(self) -> None:
        if not self._waiting_place:
            return
        room = self._max_free_gpus() if self._reserves else None
        for s in list(self._waiting_place):
            if s not in self._waiting_place or (room is not None and s.gpus > room):
                continue
            if self._place(s) and room is not None:
                room = self._max_free_gpus()

    # -- run -------------------------------------------------------------------------------------------------
    def _check_invariants(self) -> None:
        cluster = self.cluster
        total = 0
        for host in cluster.hosts.values():
            if not 0 <= len(host.committed) <= host.gpus:
                raise AccountingError(f"host {host.id}: {len(host.committed)} of {host.gpus} GPUs committed")
            for dev, (kid, rid) in host.committed.items():
                kernel = cluster.kernels.get(kid)
                if dev in host.held:
                    hold = kernel.held if kernel is not None else None
                    ok = (hold is not None and host.held[dev] == kid and hold.host_id == host.id
                          and dev in hold.devices and hold.replica_id == rid
                          and (rid is None or kernel.replicas[rid].host_id == host.id))
                else:
                    ok = (kernel is not None and kernel.running is not None and kernel.running[0] == rid
                          and dev in kernel.running[1] and kernel.replicas[rid].host_id == host.id)
                if not 0 <= dev < host.gpus or not ok:
                    raise AccountingError(f"host {host.id}: device {dev} held by {kid}/{rid} inconsistently")
            total += len(host.committed)
            if host.subscribed_gpus < 0:
                raise AccountingError(f"host {host.id}: negative subscription")
        if total != self._reserved:
            raise AccountingError(f"{total} GPUs committed in the cluster, the simulator counted {self._reserved}")
        if self._running < 0 or self._running > total:
            raise AccountingError(f"{self._running} GPUs bound to running cells, {total} committed")
        self.policy.check(cluster)

    def run(self) -> SimResult:
        wall = time.perf_counter()
        cfg = self.config
        states = []
        for sess in self.sessions:
            gpus = sess.gpus
            if gpus > cfg.host_gpus:
                self.clipped += 1
                gpus = cfg.host_gpus
            states.append(_S(sess, gpus))
            self._by_kid[sess.id] = states[-1]
        self._left = len(states)
        t0 = min((s.sess.start for s in states), default=0.0)
        self.now = self._t = t0
        for _ in range(cfg.initial_hosts):
            self._add_host(self._new_host_id())
        self._mark()
        for s in states:
            self._push(s.sess.start, _START, s)
        self._push(t0, _AUTOSCALE, None)
        if self.progress:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=len(states), desc=self.policy.name, unit="session", leave=False)
            except ImportError:  # pragma: no cover
                self._bar = None
        handlers = {_START: self._on_start, _SUBMIT: self._on_submit, _READY: self._on_ready,
                    _END_CELL: self._on_end_cell, _RETRY: self._retry_one, _STOP: self._on_stop,
                    _END: self._on_end, _ONLINE: self._on_online, _CHECK: self._on_check, _HOLD: self._on_hold,
                    _AUTOSCALE: self._on_autoscale, _MOVED: self._on_moved, _REMOVE: self._on_remove}
        heap = self._heap
        pop = heapq.heappop
        check = self.check
        policy = self.policy
        trusted = policy.trust_refresh(True)  # every change below is reported through refresh()
        try:
            while heap and self._left:
                t, _, kind, obj = pop(heap)
                if t > self._t:
                    self._advance(t)
                self.now = t
                handlers[kind](obj)
                if self.cluster.n_committed != self._reserved:
                    self._reserved = self.cluster.n_committed
                    self._mark()
                if check:
                    self._check_invariants()
        finally:
            policy.trust_refresh(trusted)
            if self._bar is not None:
                self._bar.close()
        # all sessions ended at self.now (or, if some can never run, nothing more can happen after it)
        end = self.now
        self._advance(end)
        self.now = end
        self._mark()
        return self._result(time.perf_counter() - wall, t0, end)

    def _retry_one(self, s: _S) -> None:
        if not s.ended:
            self._schedule(s)

    def _result(self, wall: float, t0: float, end: float) -> SimResult:
        delays = np.asarray(self._delays, dtype=float)
        cells = sum(len(s.cells) for s in self.sessions)
        prov = self._prov_area / 3600.0
        committed = self._running_area / 3600.0
        metrics: dict[str, Any] = {
            "gpu_hours_provisioned": prov,
            "gpu_hours_committed": committed,
            "gpu_hours_reserved": self._reserved_area / 3600.0,
            "interactivity_delay_p50_s": _pct(delays, 50),
            "interactivity_delay_p99_s": _pct(delays, 99),
            "interactivity_delay_mean_s": float(delays.mean()) if len(delays) else None,
            "immediate_start_fraction": (float((delays <= self.config.immediate_threshold).mean())
                                         if len(delays) else None),
            "migrations": self.migrations,
            "background_migrations": self.background_migrations,
            "scale_outs": self.growth.started,
            "scale_ins": self.scale_ins,
            "events": self._nlog,
            "wall_seconds": wall,
            "sessions": len(self.sessions),
            "cells": cells,
            "cells_run": len(delays),
            "unfinished_sessions": self._left,
            "clipped_requests": self.clipped,
            "peak_hosts": self.peak_hosts,
            "makespan_hours": (end - t0) / 3600.0,
            "utilization": committed / prov if prov > 0 else None,
        }
        timeline = np.asarray(self._timeline, dtype=float).reshape(-1, 4)
        return SimResult(self.policy.name, metrics, delays, timeline, self._log)


def simulate(policy: SchedulerPolicy, sessions: list[Session], config: SimConfig | None = None,
             **kwargs) -> SimResult:
    """Run ``policy`` over ``sessions`` (see :class:`Simulation` for the keyword arguments)."""
    return Simulation(policy, sessions, config, **kwargs).run()
