"""The front's message relay: the client's five channels on one side, every replica's channels on the other.

Routing rules:

- ``execute_request``: the :class:`ExecutorPolicy` picks the executor; it gets ``role: lead``, the other live
  replicas ``role: yield``. Only the executor's replies, iopub and stdin reach the client.
- ``comm_msg``/``comm_close``: to the replica that owns the comm (where the widget was created).
- Everything else (kernel_info, complete, inspect, history, is_complete, comm_info, interrupt, usage): to the
  *primary*, the last executor while alive, else the lowest-id live replica. Interrupts go to the replica running
  a cell. ``shutdown_request`` goes to every replica.
- Subshell requests are declined with an error reply, and ``kernel_info_reply`` does not advertise subshells, so
  JupyterLab never waits on one.
- A message that fails to parse or verify is logged and dropped.

When a replica dies, the cell it was running ends with a ``ReplicaLost`` error, cells queued behind it are aborted,
and other requests it owed an answer are re-sent to the new primary.
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
from .supervisor import ReplicaHandle, Supervisor
from .wire import BadMessage, Signer, WireMessage, parse

log = logging.getLogger(__name__)

SUBSHELL_REQUESTS = {"create_subshell_request", "delete_subshell_request", "list_subshell_request"}


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
        self._redo: deque[WireMessage] = deque()
        self._dispatches: set[asyncio.Task] = set()
        self.shutdown = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        supervisor.on_sockets = self._watch_replica
        supervisor.on_lost = self._replica_lost
        supervisor.on_replaced = self._replica_replaced

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
            self._tasks.append(asyncio.ensure_future(self._client_loop(channel, handler)))
        self._tasks.append(asyncio.ensure_future(self._iopub_subscriptions()))

    def _watch_replica(self, handle: ReplicaHandle) -> None:
        for channel in ("shell", "control", "stdin", "iopub"):
            self._tasks.append(asyncio.ensure_future(self._replica_loop(handle, channel)))

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
        live = self.supervisor.live
        for handle in live:
            if handle.id == self.last_executor:
                return handle
        return min(live, key=lambda h: h.id) if live else None

    async def _to_replica(self, handle: ReplicaHandle, channel: str, msg: WireMessage) -> None:
        await handle.sockets[channel].send_multipart(msg.frames(self.internal_signer))

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

    async def _on_client_shell(self, msg: WireMessage) -> None:
        msg_type = msg.msg_type
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
        """Dispatch off the client loop (a cell may wait for a GPU) but strictly in arrival order."""
        task = asyncio.ensure_future(self._dispatch_in_order(msg))
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    async def _dispatch_in_order(self, msg: WireMessage | None) -> None:
        async with self._dispatch_lock:
            # Reap dead replicas first: cells they never started go back in line ahead of this one.
            await self.supervisor.check_now()
            while self._redo:
                await self._dispatch_safely(self._redo.popleft())
            if msg is not None:
                await self._dispatch_safely(msg)

    async def _dispatch_safely(self, msg: WireMessage) -> None:
        try:
            await self._dispatch(msg)
        except Exception as exc:
            log.exception("could not dispatch %s", msg.msg_id)
            await self._error_reply("shell", msg, "DispatchError", f"the kernel front could not run the cell: {exc}")

    async def _dispatch(self, msg: WireMessage) -> None:
        sup = self.supervisor
        shown = None
        if self.unavailable:
            await self._error_reply("shell", msg, "NoReplica", self.unavailable)
            return
        while True:
            if self.per_cell is None and not sup.has_quorum():
                await self._error_reply(
                    "shell", msg, "QuorumLost",
                    f"this kernel has lost quorum: {len(sup.live)} of {len(sup.members)} replicas are alive, so it "
                    "cannot commit state and refuses to run cells. The state as of the last committed cell is "
                    "intact on the surviving replica; restart the kernel to continue.")
                return
            views = [ReplicaView(h.id, h.status.get("host", ""), h.alive) for h in sup.members]
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
                if target is not None and target.alive:
                    break
                # The policy does not know yet that this replica died: give its GPUs back and ask again.
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
        await self._to_replica(sup.replicas[chosen], "shell",
                               msg.with_metadata({**msg.metadata, protocol.META_KEY: role}))
        if self.send_yield:
            await self._send_yields(msg, chosen)

    async def _migrate(self, msg: WireMessage, choice: Migrate) -> None:
        old = self.supervisor.replicas.get(choice.replica)
        if old is None or not old.alive:
            raise LookupError(f"cannot migrate replica {choice.replica}: it is not alive")
        await self._send_client("iopub", "stream", {
            "name": "stderr", "text": f"notebookos: moving replica {old.id} to host {choice.host_id or 'here'} "
                                      "where a GPU is free; the cell starts right after.\n"}, msg)
        new = await self.supervisor.migrate(old, choice.host_id, self.committed_seq)
        if self.last_executor == old.id:
            self.last_executor = None
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
        if msg_type in SUBSHELL_REQUESTS or msg_type == "debug_request":
            await self._error_reply("control", msg, "NotSupported",
                                    f"{msg_type} is not supported by the replicated kernel")
            return
        if msg_type == "notebookos_info_request":
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
            "replicas": [
                {**h.view(self.last_executor), "member": h.member, "connection_file": h.connection_file,
                 "raft_address": h.raft_address, "status": h.status}
                for h in sup.replicas.values()
            ],
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
            if msg_type == "comm_open":
                self.comm_owner[msg.content.get("comm_id")] = handle.id
            elif msg_type == "comm_close":
                self.comm_owner.pop(msg.content.get("comm_id"), None)
            await self._to_client("iopub", msg)
            if msg_type == "status" and msg.content.get("execution_state") == "idle":
                await self._cell_over(handle, parent_id, "idle")
            return
        if channel == "stdin":
            self.stdin_owner[msg.msg_id] = handle.id
            self.last_input_replica = handle.id
            await self._to_client("stdin", msg)
            return
        # A reply on shell or control.
        if msg_type == "execute_reply":
            queue = self.inflight.get(handle.id)
            if queue is not None:
                queue.pop(parent_id, None)
            meta = msg.metadata.get(protocol.META_KEY) or {}
            seq = meta.get("seq")
            if isinstance(seq, int):
                self.committed_seq = max(self.committed_seq, seq)
            self._colocate_leader(handle, meta.get("raft_leader"))
            await self.policy.cell_finished(handle.id)
        else:
            self.pending.pop(parent_id, None)
        if msg_type == "kernel_info_reply":
            content = dict(msg.content)
            content["supported_features"] = [f for f in content.get("supported_features", [])
                                             if f not in ("kernel subshells", "debugger")]
            msg = msg.with_content(content)
        await self._to_client(channel, msg)
        if msg_type == "execute_reply":
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

        self._tasks.append(asyncio.ensure_future(transfer()))

    async def _replica_replaced(self, dead: ReplicaHandle, new: ReplicaHandle) -> None:
        await self.policy.replica_added(new.id, new.host_id)

    async def _replica_lost(self, handle: ReplicaHandle) -> None:
        """End what the dead replica owed: its running cell fails, queued cells abort, other requests move."""
        await self.policy.replica_lost(handle.id)
        queue = list(self.inflight.pop(handle.id, OrderedDict()).values())
        started = [m for m in queue if m.msg_id in self.started]
        if not started:
            # Nothing reached the client from these cells, so none of them began: run them elsewhere, in order.
            for _ in queue:
                await self.policy.cell_finished(handle.id)
            self._redo.extend(queue)
            await self._execute(None)
        for i, msg in enumerate(queue if started else []):
            if i == 0:
                await self._error_reply(
                    "shell", msg, "ReplicaLost",
                    f"replica {handle.id} (pid {handle.pid}) running this cell died before committing it. The "
                    "cell's effects were not committed; the kernel's state is as of the last committed cell. "
                    "Run the cell again to continue on a surviving replica.")
            else:
                await self._error_reply("shell", msg, "ReplicaLost", "", status="aborted")
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
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=100)
