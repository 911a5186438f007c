"""Replica processes of one kernel: launch, liveness, Raft membership, status polling and replacement.

Standalone mode runs every replica on this machine; the front is their parent, and each replica asks the Linux
kernel to SIGKILL it if the front dies, so a killed front never leaves replicas behind. The supervisor notices a
replica's death by polling its process (a dead process is certain, unlike a missed heartbeat), tells the relay,
then removes it from the Raft group and starts a replacement that joins through dynamic membership and catches up
from a snapshot plus the log.

A replica whose namespace holds a cell it could not commit (it *diverged*) is retired: killed, then lost and
replaced like any other, so no survivor keeps uncommitted state. A replica that is gone (dead, migrated away,
retired) keeps no sockets and no relay tasks in the front; its handle leaves :attr:`Supervisor.replicas` once it
is no longer a Raft member, and a short record of it stays in :attr:`Supervisor.departed` for ``info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ...common.replicas import release_held
from .. import protocol
from .launchers import Launched, LaunchSpec, LocalLauncher, ReplicaLauncher

log = logging.getLogger(__name__)

CHANNELS = ("shell", "control", "stdin", "iopub", "hb")


class ReplicaGone(TimeoutError):
    """A request to a replica whose sockets the front has already closed (it is dead or has left)."""


class MigrationFailed(RuntimeError):
    """A migration that could not complete and was rolled back (see :meth:`Supervisor.migrate`)."""

    def __init__(self, old: int, host_id: str | None, reason: str, outcome: str):
        super().__init__(f"moving replica {old} to host {host_id or 'here'} failed: {reason}. {outcome}")
        self.old = old
        self.host_id = host_id
        self.reason = reason


@dataclass
class ReplicaHandle:
    """The front's view of one replica process and its sockets."""

    id: int
    connection: dict[str, Any]
    connection_file: str
    raft_address: str
    launched: Launched | None = None
    alive: bool = True
    member: bool = True
    started_at: float = field(default_factory=time.monotonic)
    host_id: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    sockets: dict[str, zmq.asyncio.Socket] = field(default_factory=dict)
    #: The relay's loops over ``sockets``: cancelled with them when the replica is gone.
    tasks: list[asyncio.Task] = field(default_factory=list)
    #: Why this replica's namespace no longer matches the committed state (a cell it ran did not commit). It is
    #: never chosen again and is retired as soon as the group keeps its quorum without it.
    diverged: str | None = None
    retire_deferred: bool = False  # it diverged while the others had no quorum without it
    #: a background move is removing it from the group: no cell starts on it (the scheduler is asked again)
    leaving: bool = False
    #: when it last answered a status request (its start, before the first)
    answered_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int | None:
        return self.launched.pid if self.launched else None

    def view(self, last_executor: int | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "host": self.host_id or self.status.get("host")
            or (self.launched.host if self.launched else socket.gethostname()),
            "raft_role": self.status.get("raft_role", "starting") if self.alive else "dead",
            "last_executor": self.id == last_executor,
            "alive": self.alive,
            "applied_index": self.status.get("applied_index", 0),
        }


class Supervisor:
    """Starts, watches and replaces the replicas of one kernel."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        runtime_dir: Path,
        internal_session: Session,
        raft_secret: str,
        replica_config: dict[str, Any],
        host: str = "127.0.0.1",
        launcher: ReplicaLauncher | None = None,
    ):
        self.context = context
        self.launcher = launcher or LocalLauncher()
        self.runtime_dir = runtime_dir
        self.session = internal_session
        self.raft_secret = raft_secret
        self.replica_config = replica_config
        self.host = host
        self.replicas: dict[int, ReplicaHandle] = {}  # live replicas and Raft members (dead ones until removed)
        self.departed: deque[ReplicaHandle] = deque(maxlen=16)  # the latest ones gone for good, for info only
        self._cleanup_at_end: list[Launched] = []  # processes of departed replicas, cleaned up when the kernel ends
        self._next_id = 1
        self._pending: dict[str, asyncio.Future] = {}
        self.on_lost: Callable[[ReplicaHandle], Awaitable[None]] | None = None
        self.on_sockets: Callable[[ReplicaHandle], None] | None = None
        self.on_replaced: Callable[[ReplicaHandle, ReplicaHandle], Awaitable[None]] | None = None  # (dead, new)
        #: A status poll found a live replica diverged (or one kept as a voter still is): (handle, reason).
        self.on_diverged: Callable[[ReplicaHandle, str], Awaitable[None]] | None = None
        #: Where a lost replica's replacement starts: (host id, replica id), either None for the supervisor's choice.
        #: The relay asks the executor policy (in cluster mode, the scheduler); unset, where the lost one ran.
        self.place_replacement: Callable[[ReplicaHandle], Awaitable[tuple[str | None, int | None]]] | None = None
        #: A placed replacement (by id) did not start or join: its placement is given back.
        self.on_placement_failed: Callable[[int], Awaitable[None]] | None = None
        #: How long to keep trying to replace a lost replica (while the group keeps its quorum).
        self.replace_patience = 300.0
        self.replace_lost = True
        #: A live replica that answers no status request for this long is hung (stopped, swapping, deadlocked in
        #: C code): it is killed, and replaced as any lost one (0: never).
        self.unresponsive_timeout = 120.0
        self.starting = False  # True while the initial group is being launched
        self._replacing = False
        self._tasks: set[asyncio.Future] = set()  # background work that must not be garbage-collected mid-way
        self.hash_seed = str(int.from_bytes(os.urandom(4), "little"))

    # -- membership views --------------------------------------------------------------------------------------
    @property
    def members(self) -> list[ReplicaHandle]:
        return [r for r in self.replicas.values() if r.member]

    @property
    def live(self) -> list[ReplicaHandle]:
        return [r for r in self.members if r.alive]

    @property
    def usable(self) -> list[ReplicaHandle]:
        """Live members that may run cells and answer requests: not diverged."""
        return [r for r in self.live if not r.diverged]

    def id_used(self, replica_id: int) -> bool:
        """Whether this front has launched (or chosen) a replica with this id already."""
        return replica_id < self._next_id

    def has_quorum(self) -> bool:
        return 2 * len(self.live) > len(self.members)

    # -- launching ---------------------------------------------------------------------------------------------
    async def launch(self, peers: list[str], raft_address: str | None = None, campaign_now: bool = False,
                     host_id: str | None = None, replica_id: int | None = None) -> ReplicaHandle:
        rid = replica_id if replica_id is not None else self._next_id
        self._next_id = max(self._next_id, rid + 1)
        ip, ports = await self.launcher.ports(host_id, 6, self.host)
        connection = {
            "transport": "tcp",
            "ip": ip,
            "shell_port": ports[0],
            "iopub_port": ports[1],
            "stdin_port": ports[2],
            "control_port": ports[3],
            "hb_port": ports[4],
            "key": self.session.key.decode(),
            "signature_scheme": "hmac-sha256",
            "kernel_name": "notebookos-replica",
        }
        raft_address = raft_address or f"{ip}:{ports[5]}"
        config = {"ReplicaKernel": {**self.replica_config, "replica_id": rid, "raft_address": raft_address,
                                    "raft_peers": [p for p in peers if p != raft_address],
                                    "campaign_now": campaign_now, **({"host_id": host_id} if host_id else {})}}
        # One hash seed for the whole group, so str hashing and set order agree on every replica.
        env = {protocol.RAFT_SECRET_ENV: self.raft_secret, "PYTHONHASHSEED": self.hash_seed}
        spec = LaunchSpec(rid, connection, config, env, self.runtime_dir, host_id)
        launched = await self.launcher.launch(spec)
        handle = ReplicaHandle(rid, connection, str(self.runtime_dir / f"replica-{rid}.json"), raft_address,
                               launched)
        handle.host_id = host_id
        self._connect(handle)
        self.replicas[rid] = handle
        log.info("started replica %d (pid %s on %s, raft %s)", rid, launched.pid, launched.host, raft_address)
        return handle

    def _connect(self, handle: ReplicaHandle) -> None:
        c = handle.connection
        identity = f"front-{os.getpid()}-{handle.id}".encode()
        for channel, kind in (("shell", zmq.DEALER), ("control", zmq.DEALER), ("stdin", zmq.DEALER),
                              ("iopub", zmq.SUB)):
            sock = self.context.socket(kind)
            sock.linger = 0
            # The replica binds these ports only once its interpreter is up; retry every 10 ms rather than ZeroMQ's
            # default 100 ms, so the first requests (and the iopub status a client waits for) are not held back.
            sock.reconnect_ivl = 10
            if kind == zmq.DEALER:
                # shell and stdin share one identity: the replica routes input_request by the shell request's id.
                sock.identity = identity
            else:
                sock.subscribe(b"")
            sock.connect(f"tcp://{c['ip']}:{c[channel + '_port']}")
            handle.sockets[channel] = sock
        if self.on_sockets:
            self.on_sockets(handle)

    async def start(self, count: int, hosts: list[str | None] | None = None, ids: list[int] | None = None,
                    stagger: float = 0.0, minority_delay: float = 0.0) -> list[ReplicaHandle]:
        """Launch the initial group; every member is told every other member's Raft address up front.

        In cluster mode ``hosts`` and ``ids`` are the scheduler's placement. On one machine, replicas that start
        together share its cores: ``stagger`` seconds between the replicas of the first majority (the first one,
        which answers kernel_info and runs the first cell, starts alone), then ``minority_delay`` before the rest,
        which the first cell does not need (a majority commits it).
        """
        hosts = hosts or [None] * count
        addresses = []
        for host_id in hosts:  # each replica's Raft address, on the host it will run on
            ip, [port] = await self.launcher.ports(host_id, 1, self.host)
            addresses.append(f"{ip}:{port}")
        ids = ids or list(range(self._next_id, self._next_id + count))
        # The lowest id runs the first cell (LastExecutorPolicy): let it become Raft leader right away.
        first = min(ids)
        self.starting = True
        try:
            handles = []
            majority = count // 2 + 1
            for i, address in enumerate(addresses):
                if 0 < i < majority:
                    await asyncio.sleep(stagger)
                elif i == majority:
                    await asyncio.sleep(minority_delay)
                handles.append(await self.launch(addresses, raft_address=address, campaign_now=ids[i] == first,
                                                 host_id=hosts[i], replica_id=ids[i]))
            return handles
        finally:
            self.starting = False

    # -- control requests to replicas -------------------------------------------------------------------------
    async def request(self, handle: ReplicaHandle, msg_type: str, content: dict[str, Any],
                      timeout: float = 5.0) -> dict[str, Any]:
        sock = handle.sockets.get("control")
        if sock is None:
            raise ReplicaGone(f"replica {handle.id} is gone")
        msg = self.session.msg(msg_type, content)
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg["header"]["msg_id"]] = fut
        try:
            await sock.send_multipart(self.session.serialize(msg))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg["header"]["msg_id"], None)

    def resolve(self, parent_id: str, content: dict[str, Any]) -> bool:
        """Deliver a control reply to a request the front itself made; False if it was not ours."""
        fut = self._pending.get(parent_id)
        if fut is None:
            return False
        if not fut.done():
            fut.set_result(content)
        return True

    # -- liveness ----------------------------------------------------------------------------------------------
    async def watch(self, interval: float = 0.1) -> None:
        while True:
            await self.check_now()
            await asyncio.sleep(interval)

    async def check_now(self) -> None:
        """Reap dead replicas now (locally a waitpid per replica): cheap enough to run before every cell."""
        for handle in list(self.replicas.values()):
            code = await self.launcher.poll(handle.launched) if handle.alive and handle.launched else None
            if code is not None and handle.alive:  # (still alive: another check_now may have handled it meanwhile)
                handle.alive = False
                if handle.diverged:
                    log.warning("replica %d (pid %s) retired: %s", handle.id, handle.pid, handle.diverged)
                else:
                    # A signal (our own kill, a test's SIGKILL) leaves nothing useful in the log; an error exit does.
                    details = self.launcher.exit_details(handle.launched) if code > 0 else ""
                    log.warning("replica %d (pid %s) exited with %s%s", handle.id, handle.pid, code,
                                f"; the end of its log:\n{details}" if details else "")
                if handle.member:
                    self._background(self.elect_successor(handle))
                if self.on_lost:
                    await self.on_lost(handle)
                if self.replace_lost and handle.member:
                    self._background(self.replace(handle))
        self._prune()

    def _background(self, coro) -> asyncio.Future:
        self._tasks.add(task := asyncio.ensure_future(coro))
        task.add_done_callback(self._tasks.discard)
        return task

    def _prune(self) -> None:
        """Close the sockets of replicas that are gone and drop those no longer in the Raft group."""
        for handle in list(self.replicas.values()):
            if handle.alive:
                continue
            if handle.sockets:
                self.forget(handle)
            if not handle.member:
                del self.replicas[handle.id]
                self.departed.append(handle)
                if handle.launched is not None:
                    self._cleanup_at_end.append(handle.launched)

    def forget(self, handle: ReplicaHandle) -> None:
        """Stop listening to a replica that is gone: the relay's loops end, the sockets close (a dead replica's
        sockets would otherwise try to reconnect every 10 ms for as long as the kernel runs)."""
        for task in handle.tasks:
            task.cancel()
        handle.tasks.clear()
        for sock in handle.sockets.values():
            sock.close(linger=0)
        handle.sockets.clear()

    async def retire(self, handle: ReplicaHandle, reason: str, reap_timeout: float = 10.0) -> bool:
        """Stop a replica whose namespace holds a cell it could not commit (see :attr:`ReplicaHandle.diverged`).

        It is marked at once, so it is never chosen again. It is killed (SIGKILL) only while the others keep a
        quorum without it; its death is then handled as any loss (a successor stands for election, a replacement
        joins and catches up from the committed log). Otherwise it stays a Raft voter, which needs no namespace,
        until a later call can retire it. True once it is gone.
        """
        if not handle.alive:
            return True
        handle.diverged = handle.diverged or reason
        others = [h for h in self.live if h is not handle]
        if 2 * len(others) <= len(self.members):
            if not handle.retire_deferred:
                handle.retire_deferred = True
                log.warning("replica %d diverged (%s); retiring it would cost the quorum (%d of %d others alive): "
                            "it stays a Raft voter and runs no more cells", handle.id, reason, len(others),
                            len(self.members))
            return False
        log.warning("retiring replica %d (pid %s): %s", handle.id, handle.pid, reason)
        if handle.launched is not None:
            await self.launcher.kill(handle.launched)
            await self.launcher.wait(handle.launched, timeout=reap_timeout)
        await self.check_now()  # so the loss is handled before the next cell
        return not handle.alive

    async def elect_successor(self, dead: ReplicaHandle) -> None:
        """If ``dead`` led the Raft group, have the survivor with the most recent log stand for election now.

        Its followers would wait out an election timeout (1.2-2.4 s) before concluding what the front knows for
        certain from the exit; a cell waiting to commit on a survivor would wait as long.
        """
        survivors = [h for h in self.live if h.member]
        await asyncio.gather(*(self._poll_one(h) for h in survivors))
        known = [h for h in survivors if h.status.get("raft_last_log")]
        if not any(h.status.get("raft_leader") == dead.raft_address for h in known):
            return
        best = max(known, key=lambda h: tuple(h.status["raft_last_log"]))
        log.info("replica %d led the Raft group: replica %d stands for election now", dead.id, best.id)
        try:
            await self.request(best, protocol.MEMBERSHIP_REQUEST, {"op": "campaign"}, timeout=2.0)
        except TimeoutError:
            log.info("replica %d did not answer the campaign request; the election timeout will do", best.id)

    async def poll_status(self, interval: float = 1.0) -> None:
        while True:
            release_held()  # the ports our replicas listen on now need no hold
            await asyncio.gather(*(self._poll_one(h) for h in self.live), return_exceptions=True)
            await self._kill_unresponsive()
            for handle in self.live:
                reason = handle.diverged or handle.status.get("diverged")
                if reason and self.on_diverged is not None:
                    try:
                        await self.on_diverged(handle, reason)
                    except Exception:
                        log.exception("could not retire diverged replica %d", handle.id)
            await asyncio.sleep(interval)

    async def _poll_one(self, handle: ReplicaHandle) -> None:
        """Refresh ``handle.status``; a replica that does not answer in time keeps its last one."""
        with contextlib.suppress(TimeoutError):
            handle.status = await self.request(handle, protocol.STATUS_REQUEST, {}, timeout=2.0)
            handle.answered_at = time.monotonic()

    async def _kill_unresponsive(self) -> None:
        """Kill the live replicas silent for ``unresponsive_timeout``: a hung process never exits on its own, and a
        cell sent to it would wait forever; killed, it is lost like any other (its cell runs elsewhere if it had
        not started it, and a replacement joins)."""
        if self.unresponsive_timeout <= 0:
            return
        now = time.monotonic()
        killed = False
        for handle in list(self.live):
            silent = now - handle.answered_at
            if silent <= self.unresponsive_timeout or handle.launched is None:
                continue
            log.error("replica %d (pid %s) answered no status request for %.0f s: taken for hung and killed",
                      handle.id, handle.pid, silent)
            try:
                await self.launcher.kill(handle.launched)
                killed = True
            except Exception:
                log.exception("could not kill hung replica %d", handle.id)
        if killed:
            await self.check_now()

    async def replace(self, dead: ReplicaHandle) -> ReplicaHandle | None:
        """Take a dead replica out of the Raft group and start a new one that joins and catches up.

        Retried with backoff (up to 10 s apart) for :attr:`replace_patience` seconds while the group keeps its
        quorum: a membership change can be refused for a while after the dead replica was the Raft leader (the new
        leader must first commit an entry of its term), and in cluster mode the host chosen may be one whose death
        the scheduler has not noticed yet; each attempt asks for a placement anew.
        """
        while self._replacing:
            await asyncio.sleep(0.05)
        self._replacing = True
        try:
            deadline = time.monotonic() + self.replace_patience
            attempt = 0
            while True:
                if not self.has_quorum() or not self.replace_lost:
                    log.error("replica %d lost and the group has no quorum: not replacing", dead.id)
                    return None
                try:
                    new = await self._replace_once(dead)
                except Exception as exc:  # a launch on a dead host, a refused membership change, a busy scheduler
                    log.warning("replacing replica %d, attempt %d: %s", dead.id, attempt + 1, exc)
                    new = None
                if new is not None:
                    if self.on_replaced:
                        await self.on_replaced(dead, new)
                    return new
                if time.monotonic() > deadline:
                    log.error("gave up replacing replica %d after %d attempts in %.0f s", dead.id, attempt + 1,
                              self.replace_patience)
                    return None
                await asyncio.sleep(min(10.0, 0.5 * 2 ** attempt))
                attempt += 1
        finally:
            self._replacing = False

    async def _replace_once(self, dead: ReplicaHandle) -> ReplicaHandle | None:
        if dead.member:
            # An explicit Raft timeout: the replicas' commit_timeout may be short, and a membership change can wait
            # for an election first.
            reply = await self.request(self.live[0], protocol.MEMBERSHIP_REQUEST,
                                       {"op": "remove", "address": dead.raft_address, "timeout": 10.0}, timeout=15.0)
            if reply.get("status") != "ok":
                raise RuntimeError(f"could not remove it from the Raft group: {reply.get('evalue')}")
            dead.member = False
        host_id, replica_id = (await self.place_replacement(dead) if self.place_replacement is not None
                               else (dead.host_id, None))
        try:
            new = await self._launch_member(host_id, replica_id)
        except BaseException:
            if replica_id is not None and self.on_placement_failed is not None:
                await self.on_placement_failed(replica_id)
            raise
        log.info("replica %d replaced by %d%s", dead.id, new.id, f" on {host_id}" if host_id else "")
        return new

    async def _launch_member(self, host_id: str | None, replica_id: int | None = None) -> ReplicaHandle:
        """Start a replica and add it to the Raft group through a live member (it catches up by itself)."""
        new = await self.launch([r.raft_address for r in self.live], host_id=host_id, replica_id=replica_id)
        new.member = False
        reply = await self.request(self.live[0], protocol.MEMBERSHIP_REQUEST,
                                   {"op": "add", "address": new.raft_address, "timeout": 10.0}, timeout=15.0)
        if reply.get("status") != "ok":
            await self.kill(new)
            raise RuntimeError(f"new replica {new.id} could not join the Raft group: {reply.get('evalue')}")
        new.member = True
        return new

    #: Seconds a migration's new replica gets to start, join and catch up before the migration is rolled back
    #: (the front sets it from its ``migrate_timeout`` option).
    migrate_timeout = 60.0

    async def migrate(self, old: ReplicaHandle, host_id: str | None, catch_up_seq: int,
                      timeout: float | None = None, replica_id: int | None = None,
                      before_commit: Callable[[], Awaitable[None]] | None = None) -> ReplicaHandle:
        """Move a live replica to ``host_id``, as a transaction: a new replica joins the Raft group and catches up,
        then the old one leaves and stops. The group keeps its quorum throughout (it grows by one before it shrinks).

        The commit point is the old replica's removal from the Raft group. Until then the new replica is no part of
        the kernel (not in :attr:`replicas`: the watcher does not replace it, cells do not run on it), and if any
        step fails (it does not start or join, does not catch up within ``timeout``, leadership cannot be handed to
        it, the old one cannot be removed) the migration is rolled back: the new replica leaves the Raft group and
        its process is stopped, the old one stays a member and keeps running, and :class:`MigrationFailed` says why.

        ``replica_id``: the new replica's id (one the scheduler placed; default: the next free one here).
        ``before_commit`` is awaited once the new replica has caught up, before leadership moves and the old one is
        removed (a background move waits there for a cell running on the old replica; raising rolls back).
        """
        if timeout is None:
            timeout = self.migrate_timeout
        while self._replacing:
            await asyncio.sleep(0.05)
        self._replacing = True
        new: ReplicaHandle | None = None
        step = "start the new replica"
        handing_over = False  # the new replica may have become the Raft leader
        removing = False  # the old replica's removal (the commit point) was proposed
        try:
            deadline = time.monotonic() + timeout
            try:
                new = await self.launch([r.raft_address for r in self.live], host_id=host_id,
                                        replica_id=replica_id)
                # Not part of the kernel until the migration commits (launch registered it; no await since); stopped
                # with the kernel's departed replicas if the kernel ends meanwhile.
                del self.replicas[new.id]
                if new.launched is not None:
                    self._cleanup_at_end.append(new.launched)
                new.member = False
                step = f"add replica {new.id} to the Raft group"
                reply = await self.request(old, protocol.MEMBERSHIP_REQUEST,
                                           {"op": "add", "address": new.raft_address, "timeout": 10.0},
                                           timeout=15.0)
                if reply.get("status") != "ok":
                    raise RuntimeError(reply.get("evalue") or "the membership change was refused")
                new.member = True
                step = f"let replica {new.id} catch up"
                await self._catch_up(new, catch_up_seq, deadline, timeout)
                if before_commit is not None:
                    step = f"wait until replica {old.id} can leave"
                    await before_commit()
                step = f"hand Raft leadership from replica {old.id} to replica {new.id}"
                handing_over = True
                await self._hand_over_leadership(old, new)
                step = f"remove replica {old.id} from the Raft group"
                removing = True
                reply = await self.request(new, protocol.MEMBERSHIP_REQUEST,
                                           {"op": "remove", "address": old.raft_address, "timeout": 10.0},
                                           timeout=15.0)
                if reply.get("status") != "ok":
                    raise RuntimeError(reply.get("evalue") or "the membership change was refused")
            except Exception as exc:
                reason = f"could not {step}: {exc or type(exc).__name__}"
                if removing and await self._removed_after_all(old, new):
                    log.info("migration of replica %d: %s, but the removal was committed after all", old.id, reason)
                else:
                    log.error("migration of replica %d to %s failed (%s): rolling it back", old.id,
                              host_id or "this machine", reason)
                    outcome = await self._roll_back_migration(old, new, handing_over)
                    raise MigrationFailed(old.id, host_id, reason, outcome) from exc
            # Committed: the group is the new replica and the others.
            old.member = False
            old.alive = False  # before it exits, so the watcher does not take the planned exit for a loss
            self.replicas[new.id] = new
            if new.launched in self._cleanup_at_end:
                self._cleanup_at_end.remove(new.launched)
            await self.launcher.terminate(old.launched)
            self._prune()
            log.info("replica %d migrated to replica %d on %s", old.id, new.id, host_id or new.launched.host)
            return new
        finally:
            self._replacing = False

    async def _catch_up(self, new: ReplicaHandle, catch_up_seq: int, deadline: float, timeout: float) -> None:
        """Wait until ``new`` has applied every cell committed so far (``catch_up_seq``)."""
        while True:
            code = await self.launcher.poll(new.launched) if new.launched is not None else None
            if code is not None:
                raise RuntimeError(f"replica {new.id} exited with {code} before it caught up")
            try:
                new.status = await self.request(new, protocol.STATUS_REQUEST, {},
                                                timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            except TimeoutError:
                new.status = {}
            if new.status.get("applied_index", -1) >= catch_up_seq:
                return
            if time.monotonic() > deadline:
                seen = (f"it had applied {new.status['applied_index']} of {catch_up_seq} cells"
                        if "applied_index" in new.status else "it did not answer")
                raise TimeoutError(f"replica {new.id} did not catch up within {timeout:g} s ({seen})")
            await asyncio.sleep(0.1)

    async def _hand_over_leadership(self, old: ReplicaHandle, new: ReplicaHandle, patience: float = 10.0) -> None:
        """PySyncObj's leader cannot remove itself: if ``old`` leads, leadership moves to the caught-up ``new``."""
        deadline = time.monotonic() + patience
        while await self._leads(old):
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {old.id} still leads after {patience:g} s")
            try:
                reply = await self.request(old, protocol.MEMBERSHIP_REQUEST,
                                           {"op": "transfer", "address": new.raft_address}, timeout=5.0)
            except TimeoutError:
                reply = {"evalue": "no answer in time"}
            if reply.get("status") != "ok":
                log.info("replica %d could not hand Raft leadership to %d yet: %s", old.id, new.id,
                         reply.get("evalue"))
            await asyncio.sleep(0.2)

    async def _raft_members(self, ask: list[ReplicaHandle]) -> list[str] | None:
        """The Raft group's members as the first of ``ask`` that answers sees them; None if none answers."""
        for handle in ask:
            with contextlib.suppress(TimeoutError):
                status = await self.request(handle, protocol.STATUS_REQUEST, {}, timeout=5.0)
                if status.get("raft_members"):
                    return list(status["raft_members"])
        return None

    async def _removed_after_all(self, old: ReplicaHandle, new: ReplicaHandle) -> bool:
        """A step failed after the old replica's removal was proposed: did Raft commit it anyway? (The commit point
        has then passed, and the migration completes instead of rolling back.)"""
        members = await self._raft_members([new, *[h for h in self.live if h is not old]])
        return members is not None and old.raft_address not in members and new.raft_address in members

    async def _roll_back_migration(self, old: ReplicaHandle, new: ReplicaHandle | None, new_may_lead: bool,
                                   patience: float = 30.0) -> str:
        """Undo a migration that did not commit: the group ends as it began. Returns what the user is told."""
        kept = ", ".join(str(h.id) for h in self.members)
        if new is None:
            return f"Nothing was changed: the kernel keeps its replicas {kept}."
        new.alive = False
        if new_may_lead and old.alive and await self._leads(new):
            # It took leadership over already; a leader cannot remove itself, so it hands it back first.
            try:
                await self._hand_over_leadership(new, old)
            except Exception as exc:
                log.warning("replica %d could not hand Raft leadership back to %d: %s", new.id, old.id, exc)
        # Out of the group first, then stopped: a group of one old replica and the new one has no quorum without it.
        removed = await self._remove_from_group(old, new, patience)
        if new.launched is not None:
            await self.launcher.kill(new.launched)
        self.forget(new)
        if removed:
            self.departed.append(new)
            log.info("migration rolled back: replica %d stopped and out of the Raft group", new.id)
            return f"It was rolled back: replica {new.id} was stopped and the kernel keeps its replicas {kept}."
        # Still listed as a voter: keep counting it (as dead) in the quorum, and keep trying to remove it.
        self.replicas[new.id] = new
        self._background(self._remove_from_group(old, new, self.replace_patience))
        return (f"Replica {new.id} was stopped, but the Raft group still lists it; the kernel keeps its replicas "
                f"{kept} and keeps trying to remove it.")

    async def _remove_from_group(self, old: ReplicaHandle, new: ReplicaHandle, patience: float) -> bool:
        """Take ``new`` out of the Raft group through a live member, retried (an election may come first, when
        ``new`` led). True once Raft committed it (``new.member`` is then False)."""
        deadline = time.monotonic() + patience
        attempt = 0
        while True:
            members = await self._raft_members([old, *[h for h in self.live if h is not old]])
            if members is not None and new.raft_address not in members:
                new.member = False  # if it is in ``replicas`` (a dead voter), the watcher's next prune drops it
                return True
            through = old if old.alive else next(iter(self.live), None)
            if through is not None:
                try:
                    reply = await self.request(through, protocol.MEMBERSHIP_REQUEST,
                                               {"op": "remove", "address": new.raft_address, "timeout": 10.0},
                                               timeout=15.0)
                    if reply.get("status") != "ok":
                        log.info("removing replica %d from the Raft group: %s", new.id, reply.get("evalue"))
                except TimeoutError:
                    log.info("removing replica %d from the Raft group: no answer in time", new.id)
            if time.monotonic() > deadline:
                log.error("could not remove replica %d from the Raft group in %g s", new.id, patience)
                return False
            await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
            attempt += 1

    async def _leads(self, handle: ReplicaHandle) -> bool:
        await self._poll_one(handle)
        return handle.status.get("raft_role") == "leader"

    # -- teardown ----------------------------------------------------------------------------------------------
    async def kill(self, handle: ReplicaHandle) -> None:
        if handle.launched is not None and await self.launcher.poll(handle.launched) is None:
            await self.launcher.kill(handle.launched)
        handle.alive = False

    async def stop_all(self, grace: float = 2.0) -> None:
        running = [h.launched for h in self.replicas.values()
                   if h.launched is not None and await self.launcher.poll(h.launched) is None]
        for launched in running:
            await self.launcher.terminate(launched)
        await asyncio.gather(*(self.launcher.wait(launched, timeout=grace) for launched in running))
        for handle in self.replicas.values():
            await self.kill(handle)
            if handle.launched is not None:
                await self.launcher.cleanup(handle.launched)
            self.forget(handle)
        for launched in self._cleanup_at_end:
            await self.launcher.cleanup(launched)
        self._cleanup_at_end.clear()
