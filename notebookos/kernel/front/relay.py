"""The front's message relay: the client's five channels on one side, every replica's channels on the other.

Routing rules:

- ``execute_request``: cells queue in the front and run one at a time, in arrival order (JupyterLab's Run All
  sends them all before the first reply). Only when the previous cell has replied does the :class:`ExecutorPolicy`
  pick the next cell's executor (in cluster mode: the scheduler, with a GPU); it gets ``role: lead``, the other
  live replicas ``role: yield``. Only the executor's replies, iopub and stdin reach the client. A cell that ends
  in an error with ``stop_on_error`` (the default) aborts the cells queued behind it, as ipykernel does.
- ``comm_msg``/``comm_close``: to the replica that owns the comm (where the widget was created).
- Everything else (kernel_info, complete, inspect, history, is_complete, comm_info, interrupt, usage): to the
  *primary*, the last executor while alive, else the lowest-id live replica. Interrupts go to the replica running
  a cell. ``shutdown_request`` goes to every replica.
- Subshell requests are declined with an error reply, and ``kernel_info_reply`` does not advertise subshells, so
  JupyterLab never waits on one.
- The front's own control messages (``protocol.py``): a client may ask for ``notebookos_info_request`` and
  ``notebookos_digest_request`` (answered by the front) and ``notebookos_status_request`` (read-only, answered by
  the primary), on the control channel. Every other ``notebookos_*`` message from a client, signed or not, on any
  channel (a membership change above all: only the front and its supervisor change the group) is refused with a
  ``NotPermitted`` error reply naming it, and never reaches a replica.
- A message that fails to parse or verify is logged and dropped.

When a replica dies, the cell it was running ends with a ``ReplicaLost`` error (which aborts the queue like any
error), a cell it had not started runs elsewhere, and other requests it owed an answer are re-sent to the new
primary. When a cell's commit fails (an execute_reply
``QuorumLost`` from the commit, or ``ReplicaDiverged``; confirmed by the replica's status) the executor holds state
the group does not: it is retired (killed and replaced, see :meth:`Supervisor.retire`) before the next cell is
dispatched, which then runs on another replica with the committed state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client import protocol_version as jupyter_protocol_version
from jupyter_client.session import Session

from .. import protocol
from .executor import ExecutorChoice, ExecutorPolicy, Migrate, ReplicaView
from .percell import PerCellReplicas, reply_without_replica
from .supervisor import MigrationFailed, ReplicaHandle, Supervisor
from .wire import BadMessage, Signer, WireMessage, parse

log = logging.getLogger(__name__)

SUBSHELL_REQUESTS = {"create_subshell_request", "delete_subshell_request", "list_subshell_request"}
INFO_REQUEST = "notebookos_info_request"
INTERNAL_PREFIX = "notebookos_"
#: The front's own message types a client may send (control channel): all read-only.
CLIENT_INTERNAL_REQUESTS = frozenset({INFO_REQUEST, protocol.DIGEST_REQUEST, protocol.STATUS_REQUEST})
#: execute_reply errors after which the executor may hold a cell the group did not commit.
DIVERGENCE_SIGNS = frozenset({"QuorumLost", "ReplicaDiverged"})


class BoundedDict(OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries past ``limit``."""

    def __init__(self, limit: int = 10_000):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class Pending:
    """A client request forwarded to one replica and not yet answered by it."""

    replica: int
    channel: str
    msg: WireMessage


class Relay:
    def __init__(
        self,
        context: zmq.asyncio.Context,
        connection: dict[str, Any],
        client_session: Session,
        supervisor: Supervisor,
        policy: ExecutorPolicy,
        send_yield: bool = True,
    ):
        self.context = context
        self.connection = connection
        self.session = client_session
        self.client_signer = Signer(client_session.key)
        self.internal_signer = Signer(supervisor.session.key)
        self.supervisor = supervisor
        self.policy = policy
        self.send_yield = send_yield
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.owner: BoundedDict = BoundedDict()  # request msg_id -> replica id whose answers reach the client
        self.pending: dict[str, Pending] = {}  # non-execute requests awaiting their reply
        self.inflight: dict[int, OrderedDict[str, WireMessage]] = {}  # replica -> execute requests in order
        self.comm_owner: dict[str, int] = {}
        self.stdin_owner: BoundedDict = BoundedDict(1000)
        self.last_input_replica: int | None = None
        self.last_executor: int | None = None
        self.started: BoundedDict = BoundedDict()  # execute requests whose executor has published output
        self.committed_seq = 0
        self.dropped = 0
        #: Why this kernel has no replicas at all (e.g. the scheduler found no room), told in every error reply.
        self.unavailable: str | None = None
        #: Set when the kernel's policy keeps no standing replicas: each cell gets a fresh one (percell.py).
        self.per_cell: PerCellReplicas | None = None
        self._next_transfer = 0.0
        self.wait_retry = 0.5  # seconds between asks while a cell waits for a GPU
        self._dispatch_lock = asyncio.Lock()
        self._arrived = 0  # execute requests received so far
        self._abort_through = 0  # those up to this arrival number are aborted (a cell failed with stop_on_error)
        #: execute requests received when each cell's reply went out: a cell that fails aborts only those (the
        #: client may send the next cell the moment it has the reply, before the failure is acted on here)
        self._arrived_at_reply: dict[str, int] = {}
        self._outcomes: dict[str, asyncio.Future[str]] = {}  # execute msg_id -> how it ended ("ok", "error", ...)
        self._redo: deque[WireMessage] = deque()
        self._failed_migrations: BoundedDict = BoundedDict(100)  # execute msg_id -> why its migration failed
        self._dispatches: set[asyncio.Task] = set()
        self._suspects: dict[int, asyncio.Task] = {}  # replica id -> its retirement (it diverged), under way
        self._judgements: BoundedDict = BoundedDict(100)  # execute msg_id -> task judging its failed commit
        self._idle_seen: BoundedDict = BoundedDict(100)  # execute msg_ids whose idle status reached the client
        #: replica -> its cells whose execute_reply reached the client and whose idle status has not yet
        self._awaiting_idle: dict[int, OrderedDict[str, WireMessage]] = {}
        self._idle_by_front: BoundedDict = BoundedDict(100)  # cells the front itself ended with idle
        self._in_doubt: list[str] = []  # cells that failed after their executor may have proposed them
        self.committed_after_all = 0  # cells reported as not committed that Raft committed later
        self.shutdown = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        supervisor.on_sockets = self._watch_replica
        supervisor.on_lost = self._replica_lost
        supervisor.on_replaced = self._replica_replaced
        supervisor.on_diverged = self._diverged_in_status
        supervisor.place_replacement = lambda dead: policy.place_replacement(dead.id, dead.host_id)
        supervisor.on_placement_failed = policy.replica_lost

    # -- setup -------------------------------------------------------------------------------------------------
    def bind(self) -> None:
        c = self.connection
        for channel, kind in (("shell", zmq.ROUTER), ("control", zmq.ROUTER), ("stdin", zmq.ROUTER),
                              ("iopub", zmq.XPUB)):
            sock = self.context.socket(kind)
            sock.linger = 1000
            if kind == zmq.ROUTER:
                sock.router_handover = 1
            sock.bind(f"{c['transport']}://{c['ip']}:{c[channel + '_port']}")
            self.sockets[channel] = sock

    def start(self) -> None:
        for channel, handler in (("shell", self._on_client_shell), ("control", self._on_client_control),
                                 ("stdin", self._on_client_stdin)):
            self._spawn(self._client_loop(channel, handler))
        self._spawn(self._iopub_subscriptions())

    def _spawn(self, coro) -> asyncio.Task:
        """A background task of the relay's own, kept until it ends (cancelled by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _watch_replica(self, handle: ReplicaHandle) -> None:
        # Kept on the handle: Supervisor.forget cancels them with the sockets once the replica is gone.
        handle.tasks.extend(asyncio.ensure_future(self._replica_loop(handle, channel))
                            for channel in ("shell", "control", "stdin", "iopub"))

    # -- helpers -----------------------------------------------------------------------------------------------
    async def primary_when_started(self, timeout: float = 120.0) -> ReplicaHandle | None:
        """The primary; while the group is still being launched, wait for it rather than answer 'no replica'."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.supervisor.starting and self.primary() is None:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        return self.primary()

    def primary(self) -> ReplicaHandle | None:
        live = self.supervisor.usable or self.supervisor.live
        for handle in live:
            if handle.id == self.last_executor:
                return handle
        return min(live, key=lambda h: h.id) if live else None

    async def _to_replica(self, handle: ReplicaHandle, channel: str, msg: WireMessage) -> None:
        sock = handle.sockets.get(channel)
        if sock is None:
            log.warning("dropped %s for replica %d: it is gone", msg.msg_type, handle.id)
            return
        await sock.send_multipart(msg.frames(self.internal_signer))

    async def _to_client(self, channel: str, msg: WireMessage) -> None:
        await self.sockets[channel].send_multipart(msg.frames(self.client_signer))

    async def _send_client(self, channel: str, msg_type: str, content: dict[str, Any], parent: WireMessage | None,
                           idents: list[bytes] | None = None, metadata: dict[str, Any] | None = None) -> None:
        """Send a message the front itself authors (errors, declines), signed with the client's key."""
        msg = self.session.msg(msg_type, content, parent=parent.header if parent else None, metadata=metadata)
        if channel == "iopub":
            idents = [f"kernel.front.{msg_type}".encode()]
        await self.sockets[channel].send_multipart(self.session.serialize(msg, ident=idents))

    async def _error_reply(self, channel: str, msg: WireMessage, ename: str, evalue: str,
                           status: str = "error") -> None:
        """Answer a request from the front with an error, wrapped in busy/idle like a kernel would."""
        content: dict[str, Any] = {"status": status}
        if status == "error":
            content.update(ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])
        if msg.msg_type == "execute_request":
            content.setdefault("execution_count", None)
        if msg.msg_type == "kernel_info_request":
            # Clients read these fields unconditionally (jupyter_client's wait_for_ready raises KeyError without
            # protocol_version): give them, and the reason in the banner, so the user sees why, not a traceback.
            content.update(protocol_version=jupyter_protocol_version, implementation="notebookos",
                           implementation_version="", banner=f"{ename}: {evalue}",
                           language_info={"name": "python"}, help_links=[])
        shown = status == "error" and msg.msg_type == "execute_request"  # a failed cell also shows its error
        if msg.msg_type == "execute_request" and status != "aborted":
            self._arrived_at_reply[msg.msg_id] = self._arrived
        await self._answer(channel, msg, content, {k: content[k] for k in ("ename", "evalue", "traceback")}
                           if shown else None)

    # -- client side -------------------------------------------------------------------------------------------
    async def _client_loop(self, channel: str, handler) -> None:
        sock = self.sockets[channel]
        while True:
            frames = await sock.recv_multipart(copy=True)
            try:
                msg = parse(frames, self.client_signer)
            except BadMessage as exc:
                self.dropped += 1
                log.warning("dropped a message on the %s channel: %s", channel, exc)
                continue
            try:
                await handler(msg)
            except Exception:
                log.exception("failed to handle %s on %s", msg.msg_type, channel)

    async def _refuse_internal(self, channel: str, msg: WireMessage) -> bool:
        """Refuse a ``notebookos_*`` message a client may not send on ``channel``; True if it was refused."""
        msg_type = msg.msg_type
        if not msg_type.startswith(INTERNAL_PREFIX):
            return False
        if channel == "control" and msg_type in CLIENT_INTERNAL_REQUESTS:
            return False
        if msg_type in CLIENT_INTERNAL_REQUESTS:
            why = f"{msg_type} is answered on the control channel only; send it there"
        else:
            why = (f"{msg_type} is an internal message of the replicated kernel: only the kernel front and its "
                   "supervisor may send it (they alone change the replica group and its Raft membership). "
                   "The front refused it and no replica received it. Clients may send "
                   f"{', '.join(sorted(CLIENT_INTERNAL_REQUESTS))} on the control channel")
        log.warning("refused %s from a client on the %s channel", msg_type, channel)
        await self._error_reply(channel, msg, "NotPermitted", why)
        return True

    async def _on_client_shell(self, msg: WireMessage) -> None:
        msg_type = msg.msg_type
        if await self._refuse_internal("shell", msg):
            return
        if msg.header.get("subshell_id") is not None or msg_type in SUBSHELL_REQUESTS:
            await self._error_reply("shell", msg, "SubshellsNotSupported",
                                    "the replicated kernel runs every cell on one executor; subshells are not supported")
            return
        if msg_type == "execute_request":
            await self._execute(msg)
            return
        if msg_type == "connect_request":
            ports = {f"{ch}_port": self.connection[f"{ch}_port"] for ch in ("shell", "iopub", "stdin", "hb", "control")}
            await self._send_client("shell", "connect_reply", {"status": "ok", **ports}, msg, idents=msg.idents)
            return
        target = None
        if msg_type in ("comm_msg", "comm_close"):
            rid = self.comm_owner.get(msg.content.get("comm_id"))
            target = self.supervisor.replicas.get(rid) if rid is not None else None
            if target is not None and not target.alive:
                target = None
        target = target or await self.primary_when_started()
        if target is None:
            if await self._answer_without_replica("shell", msg):
                return
            await self._error_reply("shell", msg, "NoReplica", self.unavailable
                                    or "no replica of this kernel is alive; restart the kernel")
            return
        if msg_type == "comm_open":
            self.comm_owner[msg.content.get("comm_id")] = target.id
        await self._forward_request(target, "shell", msg)

    async def _forward_request(self, target: ReplicaHandle, channel: str, msg: WireMessage) -> None:
        self.owner[msg.msg_id] = target.id
        self.pending[msg.msg_id] = Pending(target.id, channel, msg)
        await self._to_replica(target, channel, msg)

    async def _execute(self, msg: WireMessage | None) -> None:
        """Queue a cell: cells run one at a time in arrival order, each dispatched only once the previous one has
        replied, as ipykernel runs its shell queue. The queue is here, not in the executor's ipykernel, because the
        executor of the next cell is chosen (a GPU asked of the scheduler) only when that cell is about to run."""
        arrival = None
        if msg is not None:
            self._arrived += 1
            arrival = self._arrived
        task = asyncio.ensure_future(self._dispatch_in_order(msg, arrival))
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    async def _dispatch_in_order(self, msg: WireMessage | None, arrival: int | None = None) -> None:
        async with self._dispatch_lock:
            # Reap dead replicas first: cells they never started go back in line ahead of this one.
            await self.supervisor.check_now()
            # An executor whose last commit failed is checked (and retired) before anything else runs.
            await self._settle_suspects()
            while self._redo:
                await self._dispatch_safely(self._redo.popleft())
            if msg is None:
                return
            if arrival is not None and arrival <= self._abort_through:
                # Queued behind a cell that failed: aborted, as ipykernel aborts its queue (stop_on_error).
                await self._error_reply("shell", msg, "", "", status="aborted")
                return
            await self._dispatch_safely(msg)

    async def _dispatch_safely(self, msg: WireMessage) -> None:
        """Run one cell to its end: dispatch it, then wait for its reply (or its executor's loss)."""
        outcome = self._outcomes[msg.msg_id] = asyncio.get_running_loop().create_future()
        try:
            await self._dispatch(msg)
        except Exception as exc:
            log.exception("could not dispatch %s", msg.msg_id)
            await self._error_reply("shell", msg, "DispatchError", f"the kernel front could not run the cell: {exc}")
        if not any(msg.msg_id in queue for queue in self.inflight.values()):
            # Not sent to a replica: the front answered it with an error (or a lost replica sent it back in line).
            self._cell_ended(msg.msg_id, "error")
        status = await outcome
        arrived = self._arrived_at_reply.pop(msg.msg_id, self._arrived)
        if status == "error" and msg.content.get("stop_on_error", True):
            self._abort_through = max(self._abort_through, arrived)

    def _cell_ended(self, msg_id: str, status: str) -> None:
        """The cell ``msg_id`` has replied (``status``), or went back in line (``"redo"``): the next one may run."""
        outcome = self._outcomes.pop(msg_id, None)
        if outcome is not None and not outcome.done():
            outcome.set_result(status)

    async def _dispatch(self, msg: WireMessage) -> None:
        sup = self.supervisor
        shown = None
        if self.unavailable:
            await self._error_reply("shell", msg, "NoReplica", self.unavailable)
            return
        while True:
            if self.per_cell is None and not sup.has_quorum():
                await self._error_reply("shell", msg, "QuorumLost", self.quorum_lost_text())
                return
            # A diverged replica (it holds a cell that was not committed) is never chosen again.
            views = [ReplicaView(h.id, h.status.get("host", ""), h.alive and not h.diverged) for h in sup.members]
            try:
                choice = await self.policy.choose(views, self.last_executor)
            except LookupError as exc:
                await self._error_reply("shell", msg, "NoReplica", str(exc))
                return
            if isinstance(choice, ExecutorChoice):
                target = sup.replicas.get(choice.replica)
                if target is None and self.per_cell is not None:
                    self.per_cell.expect(msg.msg_id)
                    try:
                        target = await self.per_cell.start(choice)
                    except Exception:
                        await self.policy.cell_finished(choice.replica)  # give the committed GPUs back
                        raise
                if target is not None and target.leaving:
                    # A background move removes this replica within moments: give the GPUs back, ask again then.
                    await self.policy.cell_finished(choice.replica)
                    await asyncio.sleep(self.wait_retry)
                    continue
                if target is not None and target.alive and not target.diverged:
                    break
                # The policy does not know yet that this replica died (or diverged, and is being retired): give its
                # GPUs back and ask again.
                await self.policy.cell_finished(choice.replica)
                await self.policy.replica_lost(choice.replica)
                continue
            if isinstance(choice, Migrate):
                await self._migrate(msg, choice)
                continue
            if (choice.position, choice.reason) != shown:
                shown = (choice.position, choice.reason)
                await self._send_client("iopub", "stream", {
                    "name": "stderr",
                    "text": f"notebookos: waiting for a GPU (position {choice.position} in the queue: "
                            f"{choice.reason}); the cell starts when one is free.\n"}, msg)
            await asyncio.sleep(self.wait_retry)
            await sup.check_now()
        chosen = choice.replica
        fresh = self.last_executor is not None and chosen != self.last_executor
        self.last_executor = chosen
        table = [h.view(chosen) for h in sup.replicas.values() if h.member or h.alive]
        self.owner[msg.msg_id] = chosen
        self.inflight.setdefault(chosen, OrderedDict())[msg.msg_id] = msg
        role = {"role": protocol.ROLE_LEAD, "after_seq": self.committed_seq, "fresh": fresh, "replicas": table,
                "devices": list(choice.devices)}
        await self._to_replica(target, "shell", msg.with_metadata({**msg.metadata, protocol.META_KEY: role}))
        if self.send_yield:
            await self._send_yields(msg, chosen)

    async def _migrate(self, msg: WireMessage, choice: Migrate) -> None:
        """Move a replica where the scheduler found a GPU, then tell the policy (the scheduler) it moved.

        A migration that fails is rolled back (:meth:`Supervisor.migrate`) and not reported; the cell asks the
        scheduler again (it may answer run, wait or migrate). A second move asked for the same cell ends the cell
        with an error that says why the first one failed, rather than trying forever.
        """
        failed = self._failed_migrations
        if msg.msg_id in failed:
            raise RuntimeError(f"{failed[msg.msg_id]} The scheduler asked to move the replica again, so the cell "
                               "does not run now: run it again later (it runs once a GPU is free where the kernel's "
                               "replicas are, or a move succeeds)")
        old = self.supervisor.replicas.get(choice.replica)
        if old is None or not old.alive:
            raise LookupError(f"cannot migrate replica {choice.replica}: it is not alive")
        await self._send_client("iopub", "stream", {
            "name": "stderr", "text": f"notebookos: moving replica {old.id} to host {choice.host_id or 'here'} "
                                      "where a GPU is free; the cell starts right after.\n"}, msg)
        try:
            new = await self.supervisor.migrate(old, choice.host_id, self.committed_seq)
        except MigrationFailed as exc:
            failed[msg.msg_id] = str(exc)
            await self._send_client("iopub", "stream", {
                "name": "stderr", "text": f"notebookos: {exc} Asking the scheduler again.\n"}, msg)
            return
        if self.last_executor == old.id:
            self.last_executor = None
        # The move has happened: the policy retries its report through a scheduler's hiccup.
        await self.policy.migrated(old.id, new.id, choice.host_id)

    async def _send_yields(self, msg: WireMessage, executor: int) -> None:
        """Tell the other replicas they yield ``msg``. A follower learns the cell's effect from the Raft log, so the
        notice is informational; replicas drop it before ipykernel's dispatcher (no busy/idle, no reply)."""
        notice = msg.with_metadata({**msg.metadata, protocol.META_KEY: {"role": protocol.ROLE_YIELD}})
        for handle in self.supervisor.live:
            if handle.id != executor:
                await self._to_replica(handle, "shell", notice)

    async def _on_client_control(self, msg: WireMessage) -> None:
        msg_type = msg.msg_type
        if await self._refuse_internal("control", msg):
            return
        if msg_type in SUBSHELL_REQUESTS or msg_type == "debug_request":
            await self._error_reply("control", msg, "NotSupported",
                                    f"{msg_type} is not supported by the replicated kernel")
            return
        if msg_type == INFO_REQUEST:
            await self._send_client("control", "notebookos_info_reply", self.info(), msg, idents=msg.idents)
            return
        if msg_type == protocol.DIGEST_REQUEST:
            await self._digests(msg)
            return
        if msg_type == "shutdown_request":
            await self._shutdown(msg)
            return
        target = await self.primary_when_started()
        if msg_type == "interrupt_request":
            running = [rid for rid, queue in self.inflight.items() if queue]
            if running and running[0] in self.supervisor.replicas:
                target = self.supervisor.replicas[running[0]]
        if target is None:
            if await self._answer_without_replica("control", msg):
                return
            await self._error_reply("control", msg, "NoReplica", self.unavailable
                                    or "no replica of this kernel is alive")
            return
        await self._forward_request(target, "control", msg)

    async def _answer_without_replica(self, channel: str, msg: WireMessage) -> bool:
        """Between cells a kernel without standing replicas has no process: the front answers what it can."""
        content = reply_without_replica(msg.msg_type, msg.content) if self.per_cell is not None else None
        if content is None:
            return False
        await self._answer(channel, msg, content)
        return True

    async def _answer(self, channel: str, msg: WireMessage, content: dict[str, Any],
                      error: dict[str, Any] | None = None) -> None:
        """The front's own reply to ``msg``, between busy and idle like a kernel's (with an iopub error first)."""
        await self._send_client("iopub", "status", {"execution_state": "busy"}, msg)
        if error is not None:
            await self._send_client("iopub", "error", error, msg)
        await self._send_client(channel, msg.msg_type.replace("_request", "_reply"), content, msg, idents=msg.idents)
        await self._send_client("iopub", "status", {"execution_state": "idle"}, msg)

    async def _shutdown(self, msg: WireMessage) -> None:
        target = self.primary()
        if target is None:
            await self._send_client("control", "shutdown_reply",
                                    {"status": "ok", "restart": msg.content.get("restart", False)}, msg,
                                    idents=msg.idents)
            self.shutdown.set()
            return
        self.owner[msg.msg_id] = target.id
        self.pending[msg.msg_id] = Pending(target.id, "control", msg)
        for handle in self.supervisor.live:
            await self._to_replica(handle, "control", msg)

    async def _digests(self, msg: WireMessage) -> None:
        """Admin/test request: every live replica's digest of each replicated name, computed from its namespace."""
        live = self.supervisor.live
        replies = await asyncio.gather(
            # Well inside a client's patience: a replica that dies meanwhile is reported, not waited for.
            *(self.supervisor.request(h, protocol.DIGEST_REQUEST, {}, timeout=10.0) for h in live),
            return_exceptions=True)
        content = {"status": "ok", "replicas": {
            str(h.id): (r if isinstance(r, dict) else {"error": repr(r)}) for h, r in zip(live, replies, strict=True)}}
        await self._send_client("control", protocol.DIGEST_REPLY, content, msg, idents=msg.idents)

    def info(self) -> dict[str, Any]:
        sup = self.supervisor
        return {
            "status": "ok",
            "last_executor": self.last_executor,
            "committed_seq": self.committed_seq,
            "has_quorum": sup.has_quorum(),
            "dropped_messages": self.dropped,
            "committed_after_all": self.committed_after_all,
            "replicas": [
                {**h.view(self.last_executor), "member": h.member, "connection_file": h.connection_file,
                 "raft_address": h.raft_address, "status": h.status, "diverged": h.diverged}
                for h in sorted([*sup.departed, *sup.replicas.values()], key=lambda h: h.id)
            ],
            # What the front holds for replicas, to check that gone ones leave nothing behind.
            "front": {
                "replica_handles": len(sup.replicas),
                "replica_sockets": sum(len(h.sockets) for h in sup.replicas.values()),
                "replica_tasks": sum(not t.done() for h in sup.replicas.values() for t in h.tasks),
                "relay_tasks": len(self._tasks),
                "asyncio_tasks": len(asyncio.all_tasks()),
            },
        }

    async def _on_client_stdin(self, msg: WireMessage) -> None:
        # jupyter_client's input() sends input_reply without a parent header: fall back to the latest asker.
        rid = self.stdin_owner.get(msg.parent_id, self.last_input_replica)
        target = self.supervisor.replicas.get(rid) if rid is not None else None
        if target is None or not target.alive:
            log.warning("dropped %s: the replica that asked for input is gone", msg.msg_type)
            return
        await self._to_replica(target, "stdin", msg)

    async def _iopub_subscriptions(self) -> None:
        """Answer each new iopub subscriber with ``iopub_welcome`` (JEP 65), as ipykernel 7 does."""
        sock = self.sockets["iopub"]
        while True:
            frames = await sock.recv_multipart()
            for frame in frames:
                if frame[:1] == b"\x01":
                    topic = frame[1:]
                    msg = self.session.msg("iopub_welcome", {"subscription": topic.decode("utf-8", "replace")})
                    prefix = [topic] if topic else []
                    await sock.send_multipart(prefix + self.session.serialize(msg))

    # -- replica side ------------------------------------------------------------------------------------------
    async def _replica_loop(self, handle: ReplicaHandle, channel: str) -> None:
        sock = handle.sockets[channel]
        while True:
            try:
                frames = await sock.recv_multipart(copy=True)
            except zmq.ZMQError:
                return  # socket closed: the replica is gone
            try:
                msg = parse(frames, self.internal_signer)
                await self._from_replica(handle, channel, msg)
            except BadMessage as exc:
                log.warning("dropped a message from replica %d on %s: %s", handle.id, channel, exc)
            except Exception:
                log.exception("failed to relay a message from replica %d on %s", handle.id, channel)

    async def _from_replica(self, handle: ReplicaHandle, channel: str, msg: WireMessage) -> None:
        parent_id = msg.parent_id
        if channel == "control" and self.supervisor.resolve(parent_id, msg.content):
            return
        if self.owner.get(parent_id) != handle.id:
            return  # a yielding replica's answer, or a reply to the front's own request
        msg_type = msg.msg_type
        if channel == "iopub":
            self.started[parent_id] = True
            if msg_type == "error" and msg.content.get("ename") in DIVERGENCE_SIGNS and (
                    parent_id in self._judgements or parent_id in self.inflight.get(handle.id, {})):
                msg = msg.with_content(await self._annotate_failure(handle, parent_id, msg.content))
            if msg_type == "comm_open":
                self.comm_owner[msg.content.get("comm_id")] = handle.id
            elif msg_type == "comm_close":
                self.comm_owner.pop(msg.content.get("comm_id"), None)
            idle = msg_type == "status" and msg.content.get("execution_state") == "idle"
            if idle and self._idle_by_front.get(parent_id):
                return  # the front ended the cell already, taking the replica for lost; never twice
            await self._to_client("iopub", msg)
            if idle:
                self._idle_seen[parent_id] = True
                self._awaiting_idle.get(handle.id, {}).pop(parent_id, None)
                await self._cell_over(handle, parent_id, "idle")
            return
        if channel == "stdin":
            self.stdin_owner[msg.msg_id] = handle.id
            self.last_input_replica = handle.id
            await self._to_client("stdin", msg)
            return
        # A reply on shell or control.
        request = None
        if msg_type == "execute_reply":
            queue = self.inflight.get(handle.id)
            if queue is not None:
                request = queue.pop(parent_id, None)
            meta = msg.metadata.get(protocol.META_KEY) or {}
            seq = meta.get("seq")
            if isinstance(seq, int) and msg.content.get("status") != "ok":
                self.committed_seq = max(self.committed_seq, seq)
            self._colocate_leader(handle, meta.get("raft_leader"))
            await self.policy.cell_finished(handle.id)
            status = msg.content.get("status")
            if status == "error" and msg.content.get("ename") in DIVERGENCE_SIGNS:
                # Judged before the client hears of it (and sends the next cell); the next dispatch waits for a
                # retirement this starts.
                msg = msg.with_content(await self._annotate_failure(handle, parent_id, msg.content))
                if msg.content.get("ename") == "QuorumLost" and handle.diverged:
                    self._in_doubt.append(f"In[{msg.content.get('execution_count')}] (QuorumLost)")
            elif status == "ok" and isinstance(seq, int):
                await self._settle_doubt(seq, msg)
        else:
            self.pending.pop(parent_id, None)
        if msg_type == "kernel_info_reply":
            content = dict(msg.content)
            content["supported_features"] = [f for f in content.get("supported_features", [])
                                             if f not in ("kernel subshells", "debugger")]
            msg = msg.with_content(content)
        if msg_type == "execute_reply":
            self._arrived_at_reply[parent_id] = self._arrived
        await self._to_client(channel, msg)
        if msg_type == "execute_reply":
            if request is not None and parent_id not in self._idle_seen:  # (iopub and shell race each other)
                self._awaiting_idle.setdefault(handle.id, OrderedDict())[parent_id] = request
            self._cell_ended(parent_id, msg.content.get("status", "error"))
            await self._cell_over(handle, parent_id, "reply")
        if msg_type == "shutdown_reply":
            self.shutdown.set()

    async def _cell_over(self, handle: ReplicaHandle, parent_id: str, what: str) -> None:
        """Retire a cell's transient replica once its reply and its idle status have both gone out."""
        if self.per_cell is not None and self.per_cell.cell_message(parent_id, what):
            await self.per_cell.retire(handle)

    def _colocate_leader(self, executor: ReplicaHandle, raft_leader: str | None) -> None:
        """Move Raft leadership to the executor when they differ.

        A follower's proposal takes two more network hops than the leader's (to the leader, and the commit back),
        so commits are fastest where cells run. Best effort and off the reply's path; at most once per second.
        """
        now = asyncio.get_running_loop().time()
        if not raft_leader or raft_leader == executor.raft_address or now < self._next_transfer:
            return
        leader = next((h for h in self.supervisor.live if h.raft_address == raft_leader), None)
        if leader is None:
            return
        self._next_transfer = now + 1.0

        async def transfer() -> None:
            try:
                await self.supervisor.request(leader, protocol.MEMBERSHIP_REQUEST,
                                              {"op": "transfer", "address": executor.raft_address})
            except TimeoutError:
                log.info("leadership transfer to replica %d timed out", executor.id)

        self._spawn(transfer())

    # -- failed commits ----------------------------------------------------------------------------------------
    async def _annotate_failure(self, handle: ReplicaHandle, parent_id: str, content: dict[str, Any]
                                ) -> dict[str, Any]:
        """A cell's executor answered QuorumLost or ReplicaDiverged (its iopub error, then its reply): find out once
        per cell whether it ran the cell and could not commit it, retire it if so, and say so in the error."""
        judged = self._judgements.get(parent_id)
        if judged is None:
            judged = self._judgements[parent_id] = asyncio.ensure_future(
                self._judge_failure(handle, parent_id, content.get("ename", ""), content.get("evalue", "")))
        note = await judged
        evalue = f"{content.get('evalue', '')}{note}"
        return {**content, "evalue": evalue, "traceback": [f"{content.get('ename')}: {evalue}"]}

    async def _judge_failure(self, handle: ReplicaHandle, parent_id: str, ename: str, evalue: str) -> str:
        if ename == "ReplicaDiverged":
            reason = evalue or f"replica {handle.id} reports that it diverged"
        else:
            # QuorumLost also answers a cell that never ran (no leader, could not catch up): only the replica knows
            # whether it ran the cell and then failed to commit it, and its status says so.
            reason = None
            try:
                handle.status = await self.supervisor.request(handle, protocol.STATUS_REQUEST, {}, timeout=5.0)
                reason = handle.status.get("diverged")
            except TimeoutError:
                log.warning("replica %d did not answer a status request after %s; the status poll will tell",
                            handle.id, ename)
        alive, members = self._live_counts()
        seen = f" The kernel front sees {alive} of {members} replicas alive."
        if not reason:
            return seen + ("" if self.supervisor.has_quorum() else " Without a quorum no cell can run: restart "
                           "the kernel.")
        handle.diverged = handle.diverged or reason  # never chosen again, from now on
        if handle.id not in self._suspects and handle.alive:
            task = asyncio.ensure_future(self._retire(handle, reason, after=parent_id))
            self._suspects[handle.id] = task
            task.add_done_callback(lambda _: self._suspects.pop(handle.id, None))
        if 2 * (alive - 1) > members:
            return (f"{seen} Replica {handle.id} ran a cell it could not commit, so its namespace no longer matches "
                    "the committed state: the front retires it (a replacement catches up from the committed log) "
                    "and the next cell runs on another replica, with the state as of the last committed cell.")
        return (f"{seen} Replica {handle.id} ran a cell it could not commit: it runs no more cells, and is retired "
                "once the others keep a quorum without it.")

    async def _settle_doubt(self, seq: int, reply: WireMessage) -> None:
        """A cell succeeded with sequence number ``seq``. Cells that failed after their executor may have proposed
        them (QuorumLost from a commit timeout, ReplicaLost) are settled by now: this executor passed a Raft barrier
        first, so any of them in the log was committed before it. Tell the user if one was, after all."""
        extra = seq - self.committed_seq - 1
        self.committed_seq = max(self.committed_seq, seq)
        if not self._in_doubt:
            return
        cells, self._in_doubt = ", ".join(self._in_doubt), []
        if extra <= 0:
            return
        text = (f"notebookos: {extra} cell(s) committed that the kernel reported as not committed ({cells}): a "
                "quorum of replicas had received the entry before its executor failed, so Raft committed it after "
                "all and its effects are in the kernel's state.\n")
        log.warning(text.strip())
        self.committed_after_all += extra
        await self._send_client("iopub", "stream", {"name": "stderr", "text": text}, reply)

    async def _settle_suspects(self) -> None:
        while self._suspects:
            await asyncio.gather(*list(self._suspects.values()), return_exceptions=True)

    async def _diverged_in_status(self, handle: ReplicaHandle, reason: str) -> None:
        """A status poll found ``handle`` diverged. While it still runs cells, the check after its reply handles it."""
        if not self.inflight.get(handle.id) and handle.id not in self._suspects:
            await self._retire(handle, reason)

    async def _retire(self, handle: ReplicaHandle, reason: str, after: str | None = None,
                      timeout: float = 10.0) -> None:
        """Retire ``handle`` (Supervisor.retire); with ``after``, once that cell's reply and idle have reached the
        client (its sockets close with it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while after is not None and (after in self.inflight.get(handle.id, {}) or after not in self._idle_seen):
            if asyncio.get_running_loop().time() > deadline or not handle.alive:
                break
            await asyncio.sleep(0.02)
        if await self.supervisor.retire(handle, reason):
            log.warning("replica %d retired: it ran a cell it could not commit", handle.id)

    def _live_counts(self) -> tuple[int, int]:
        return len(self.supervisor.live), len(self.supervisor.members)

    def quorum_lost_text(self) -> str:
        alive, members = self._live_counts()
        need = members // 2 + 1
        if alive == 0:
            return (f"this kernel has lost quorum: none of its {members} replicas is alive (committing a cell needs "
                    f"{need}), so its state is lost. Restart the kernel.")
        return (f"this kernel has lost quorum: {alive} of its {members} replicas {'is' if alive == 1 else 'are'} "
                f"alive and committing a cell needs {need}, so it refuses to run cells: nothing more can be "
                "committed and no cell runs. Restart the kernel to continue (it starts with an empty namespace).")


    async def _replica_replaced(self, dead: ReplicaHandle, new: ReplicaHandle) -> None:
        await self.policy.replica_added(new.id, new.host_id)

    async def _replica_lost(self, handle: ReplicaHandle) -> None:
        """End what the dead replica owed: its running cell fails, queued cells abort, other requests move."""
        await self.policy.replica_lost(handle.id)
        for request in self._awaiting_idle.pop(handle.id, OrderedDict()).values():
            # Its reply went out and its idle never will; a client (JupyterLab, nbclient) waits for both to end
            # the cell, so the front sends the idle the replica owed.
            self._idle_by_front[request.msg_id] = True
            self._idle_seen[request.msg_id] = True
            await self._send_client("iopub", "status", {"execution_state": "idle"}, request)
        queue = list(self.inflight.pop(handle.id, OrderedDict()).values())
        started = [m for m in queue if m.msg_id in self.started]
        if not started:
            # Nothing reached the client from these cells, so none of them began: run them elsewhere, in order.
            for _ in queue:
                await self.policy.cell_finished(handle.id)
            self._redo.extend(queue)
            for m in queue:
                self._cell_ended(m.msg_id, "redo")
            await self._execute(None)
        for i, msg in enumerate(queue if started else []):
            if i == 0:
                self._in_doubt.append(f"the cell that ended with ReplicaLost on replica {handle.id}")
                alive, members = self._live_counts()
                if self.supervisor.has_quorum():
                    then = (f"{alive} of {members} replicas are alive: run the cell again to continue on one of "
                            "them.")
                else:
                    then = f"The kernel has lost quorum: {self.quorum_lost_text().split(': ', 1)[1]}"
                how = "was retired: it ran a cell it could not commit" if handle.diverged else "died"
                await self._error_reply(
                    "shell", msg, "ReplicaLost",
                    f"replica {handle.id} (pid {handle.pid}) running this cell {how} before committing it. The "
                    f"cell's effects were not committed; the kernel's state is as of the last committed cell. {then}")
            else:
                await self._error_reply("shell", msg, "ReplicaLost", "", status="aborted")
            self._cell_ended(msg.msg_id, "error" if i == 0 else "aborted")
            await self.policy.cell_finished(handle.id)
        for msg_id, pend in list(self.pending.items()):
            if pend.replica != handle.id:
                continue
            target = self.primary()
            if target is None:
                continue
            if pend.msg.msg_type == "shutdown_request":
                self.owner[msg_id] = target.id
                pend.replica = target.id
                continue
            await self._forward_request(target, pend.channel, pend.msg)
        for comm_id, rid in list(self.comm_owner.items()):
            if rid == handle.id:
                del self.comm_owner[comm_id]

    async def close(self) -> None:
        for task in [*self._tasks, *self._suspects.values()]:
            task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=100)
