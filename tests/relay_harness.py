"""A fast harness for the front's relay: the real :class:`Relay` and :class:`Supervisor` with fake replicas and a
fake scheduler, so that routing and dispatch rules are tested in milliseconds, without starting a process.

What is real: the relay (bound on TCP ports of 127.0.0.1), the supervisor (liveness by polling, replacement,
control requests to replicas), the executor policies (``LastExecutorPolicy``, and ``SchedulerExecutorPolicy`` with
its asynchronous GPU release) and a ``jupyter_client`` ``AsyncKernelClient`` on the client side.

What is fake, and why that is allowed: the relay's routing is under test, not ipykernel, Raft or the scheduler's
policies (the slow end-to-end tests cover those with real processes).

- :class:`FakeReplica` speaks the replica side of the protocol the relay expects, on real ZeroMQ sockets where
  ``Supervisor._connect`` connects (ROUTER shell/control/stdin, XPUB iopub): busy/idle on iopub with a
  ``kernel.<id>.<type>`` topic around every request, the front's own ones too (as ipykernel's control dispatch
  does), an ``execute_reply`` with ``notebookos`` metadata ``{role, replica, seq}``, answers to
  ``notebookos_status_request`` and ``notebookos_membership_request`` (always ``ok``: there is no Raft);
  ``role: yield`` notices are dropped, as replicas do. A cell's code is a little script (:func:`commands`), e.g. ``"print hi; sleep 20; error ValueError"``
  or ``"@1 die"`` (only replica 1 dies, on receipt). Every lead a fake replica receives runs at once, in its own
  task: a relay that dispatched a cell before the previous one replied shows up as overlapping cells
  (:attr:`FakeGroup.overlaps`) instead of being hidden by an ipykernel-like queue.
- :class:`FakeLauncher` is a ``ReplicaLauncher`` whose "processes" are fake replicas in this event loop; a replica
  that dies closes its sockets and reports an exit code, which the supervisor's poll finds.
- :class:`FakeScheduler` is a tornado app on 127.0.0.1 with the endpoints the front uses (``/execute``,
  ``/finished``, ``/replicas``, ``/placement``, ``/lease``). It records every call with its time and counts a
  second ``/execute`` of the kernel before the first cell's ``/finished`` as an overlap; ``finished_delay`` makes
  ``/finished`` slow, and ``choose`` scripts which replica runs each cell (or which one migrates first).

Not modelled: Raft itself (commits, a failed commit's QuorumLost/ReplicaDiverged and the retirement that follows,
leadership), a migration that fails and is rolled back, per-cell replicas (percell.py).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.session import Session

from notebookos.common.client import SchedulerClient
from notebookos.common.replicas import free_ports
from notebookos.kernel import protocol
from notebookos.kernel.front.cluster import SchedulerExecutorPolicy
from notebookos.kernel.front.executor import LastExecutorPolicy
from notebookos.kernel.front.launchers import Launched, LaunchSpec, ReplicaLauncher
from notebookos.kernel.front.relay import Relay
from notebookos.kernel.front.supervisor import Supervisor

CLIENT_KEY = "client-key"
NO_REPLY = {"comm_open", "comm_msg", "comm_close"}  # requests a kernel answers on iopub only


def commands(code: str, replica_id: int) -> Iterator[tuple[str, str]]:
    """A fake cell's script, as this replica runs it: ``;``-separated commands, each ``name [argument]``, and
    ``@N name ...`` for a command only replica N runs.

    ``print TEXT`` (stdout), ``sleep MS``, ``error ENAME`` (the cell fails), ``comm_open COMM_ID``,
    ``until_interrupt`` (runs until an interrupt_request, then fails with KeyboardInterrupt), ``input PROMPT``
    (asks the client on stdin and prints the answer), ``die`` (the process exits; as the first command, before it
    published anything, so the cell never started).
    """
    for part in code.replace("\n", ";").split(";"):
        words = part.split()
        if words and words[0].startswith("@"):
            if int(words[0][1:]) != replica_id:
                continue
            words = words[1:]
        if words:
            yield words[0], " ".join(words[1:])


class FakeGroup:
    """What the replicas of one kernel share (their "Raft log"): the committed sequence number, the execution
    count, and a record of which cells ran when."""

    def __init__(self) -> None:
        self.replicas: dict[int, FakeReplica] = {}
        self.seq = 0
        self.execution_count = 0
        self.running: set[str] = set()
        self.overlaps = 0  # a cell started while another was running
        self.log: list[tuple[float, str, int, str]] = []  # (time, "lead"|"reply", replica, msg_id)


class FakeReplica:
    """One replica "process": real sockets, scripted cells (see :func:`commands`)."""

    def __init__(self, spec: LaunchSpec, group: FakeGroup, context: zmq.asyncio.Context):
        self.id = spec.replica_id
        self.group = group
        c = spec.connection
        self.session = Session(key=c["key"].encode(), signature_scheme=c["signature_scheme"])
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        for channel, kind in (("shell", zmq.ROUTER), ("control", zmq.ROUTER), ("stdin", zmq.ROUTER),
                              ("iopub", zmq.XPUB)):
            sock = context.socket(kind)
            sock.bind(f"tcp://{c['ip']}:{c[channel + '_port']}")
            self.sockets[channel] = sock
        self.exit_code: int | None = None
        self.subscribed = asyncio.Event()  # the front's iopub SUB is connected: nothing published is lost
        self.interrupted = asyncio.Event()
        self.answers: asyncio.Queue[str] = asyncio.Queue()  # input_reply values
        self.received: list[tuple[str, str, str]] = []  # (channel, msg_type, msg_id) of every request
        self.leads: list[str] = []  # msg_ids of the cells it was told to run
        self.lead_meta: dict[str, dict[str, Any]] = {}  # their ``notebookos`` metadata (after_seq, fresh, ...)
        self.yielded: list[str] = []
        self.die_on: set[str] = set()  # request types on whose receipt this replica dies without answering
        self.die_after_reply = False  # dies after its next execute_reply, before the cell's idle status
        self.tasks = [asyncio.ensure_future(self._serve(ch)) for ch in ("shell", "control", "stdin")]
        self.tasks.append(asyncio.ensure_future(self._subscriptions()))

    def die(self, code: int = -9) -> None:
        """The process ends: its sockets close (what was sent still leaves) and the launcher reports ``code``."""
        if self.exit_code is not None:
            return
        self.exit_code = code
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=100)

    def got(self, msg_type: str) -> list[str]:
        return [msg_id for _, t, msg_id in self.received if t == msg_type]

    async def _subscriptions(self) -> None:
        while True:
            frames = await self.sockets["iopub"].recv_multipart()
            if frames[0][:1] == b"\x01":
                self.subscribed.set()

    async def _serve(self, channel: str) -> None:
        sock = self.sockets[channel]
        while True:
            idents, frames = self.session.feed_identities(await sock.recv_multipart())
            msg = self.session.deserialize(frames)
            msg_type, msg_id = msg["msg_type"], msg["header"]["msg_id"]
            role = (msg["metadata"].get(protocol.META_KEY) or {}).get("role")
            if role == protocol.ROLE_YIELD:
                self.yielded.append(msg_id)
                continue
            self.received.append((channel, msg_type, msg_id))
            if msg_type == "input_reply":
                self.answers.put_nowait(msg["content"]["value"])
            elif msg_type in self.die_on:
                self.die()
                return
            if msg_type == "execute_request":
                self.tasks.append(asyncio.ensure_future(self._run_cell(idents, msg)))
            else:
                await self._answer(channel, idents, msg)

    async def send(self, channel: str, msg_type: str, content: dict[str, Any], parent: dict[str, Any],
                   idents: list[bytes] | None = None, metadata: dict[str, Any] | None = None) -> None:
        if self.exit_code is not None:
            return
        if channel == "iopub":
            idents = [f"kernel.{self.id}.{msg_type}".encode()]
        msg = self.session.msg(msg_type, content, parent=parent["header"], metadata=metadata)
        await self.sockets[channel].send_multipart(self.session.serialize(msg, ident=idents))

    async def _answer(self, channel: str, idents: list[bytes], msg: dict[str, Any]) -> None:
        msg_type = msg["msg_type"]
        reply_type = msg_type.replace("_request", "_reply")
        content: dict[str, Any] = {"status": "ok", "replica": self.id}
        if msg_type == protocol.STATUS_REQUEST:
            content.update(id=self.id, host=f"host{self.id}", applied_index=self.group.seq, raft_role="follower")
        if msg_type == "interrupt_request":
            self.interrupted.set()
        if msg_type == "kernel_info_request":
            content.update(protocol_version="5.4", implementation="fake", implementation_version="0",
                           language_info={"name": "python"}, banner="", help_links=[],
                           supported_features=["kernel subshells", "debugger"])
        if msg_type == "shutdown_request":
            content["restart"] = msg["content"].get("restart", False)
        # Busy and idle for every request, the front's own status polls too (ipykernel's dispatch_control does).
        await self.send("iopub", "status", {"execution_state": "busy"}, msg)
        if msg_type not in NO_REPLY:
            await self.send(channel, reply_type, content, msg, idents)
        await self.send("iopub", "status", {"execution_state": "idle"}, msg)

    async def _run_cell(self, idents: list[bytes], msg: dict[str, Any]) -> None:
        group, msg_id, code = self.group, msg["header"]["msg_id"], msg["content"]["code"]
        self.leads.append(msg_id)
        self.lead_meta[msg_id] = msg["metadata"][protocol.META_KEY]
        group.log.append((time.monotonic(), "lead", self.id, msg_id))
        if group.running:
            group.overlaps += 1
        group.running.add(msg_id)
        error: str | None = None
        started = False
        try:
            for name, arg in commands(code, self.id):
                if name == "die":
                    await asyncio.sleep(0.005)  # what it published reaches the front first
                    self.die()
                    return
                if not started:
                    started = True
                    group.execution_count += 1
                    await self.send("iopub", "status", {"execution_state": "busy"}, msg)
                    await self.send("iopub", "execute_input", {"code": code,
                                                               "execution_count": group.execution_count}, msg)
                if name == "print":
                    await self.send("iopub", "stream", {"name": "stdout", "text": arg + "\n"}, msg)
                elif name == "sleep":
                    await asyncio.sleep(float(arg) / 1000)
                elif name == "comm_open":
                    await self.send("iopub", "comm_open", {"comm_id": arg, "target_name": "fake", "data": {}},
                                    msg)
                elif name == "input":
                    await self.send("stdin", "input_request", {"prompt": arg, "password": False}, msg, idents)
                    await self.send("iopub", "stream", {"name": "stdout", "text": await self.answers.get() + "\n"},
                                    msg)
                elif name == "until_interrupt":
                    self.interrupted.clear()
                    await self.interrupted.wait()
                    error = "KeyboardInterrupt"
                elif name == "error":
                    error = arg
                if error:
                    break
            if not started:
                group.execution_count += 1
                await self.send("iopub", "status", {"execution_state": "busy"}, msg)
            content: dict[str, Any] = {"status": "ok", "execution_count": group.execution_count,
                                       "user_expressions": {}, "payload": []}
            if error:
                failure = {"ename": error, "evalue": f"fake {error}", "traceback": [f"{error}: fake {error}"]}
                await self.send("iopub", "error", failure, msg)
                content.update(status="error", **failure)
            else:
                group.seq += 1
            meta = {protocol.META_KEY: {"role": protocol.ROLE_LEAD, "replica": self.id, "seq": group.seq}}
            group.log.append((time.monotonic(), "reply", self.id, msg_id))
            await self.send("shell", "execute_reply", content, msg, idents, metadata=meta)
            if self.die_after_reply:
                await asyncio.sleep(0.005)
                self.die()
                return
            await self.send("iopub", "status", {"execution_state": "idle"}, msg)
        finally:
            group.running.discard(msg_id)


class FakeLauncher(ReplicaLauncher):
    """Launches :class:`FakeReplica` s in this event loop; ``poll`` answers the fake's own exit code."""

    def __init__(self, context: zmq.asyncio.Context, group: FakeGroup):
        self.context = context
        self.group = group

    async def launch(self, spec: LaunchSpec) -> Launched:
        replica = FakeReplica(spec, self.group, self.context)
        self.group.replicas[spec.replica_id] = replica
        return Launched(None, spec.connection["ip"], {"replica": replica})

    async def poll(self, launched: Launched) -> int | None:
        return launched.state["replica"].exit_code

    async def terminate(self, launched: Launched) -> None:
        launched.state["replica"].die(-15)

    async def kill(self, launched: Launched) -> None:
        launched.state["replica"].die(-9)


class FakeScheduler:
    """The scheduler's REST endpoints the front calls for one kernel, answering at once (``/finished`` after
    ``finished_delay``). ``choose``: the answers to ``/execute`` in turn, a replica id to run the cell on or
    ``("migrate", replica id)``; then the last executor while alive, else the lowest live id."""

    def __init__(self, replica_ids: list[int], choose: list[int] | None = None, finished_delay: float = 0.0):
        self.alive = set(replica_ids)
        self.next_id = max(replica_ids) + 1
        self.choose = list(choose or [])
        self.finished_delay = finished_delay
        self.running: int | None = None
        self.last: int | None = None
        self.overlaps = 0
        self.calls: list[tuple[float, str, Any]] = []  # (time, what, detail)
        self.server: tornado.httpserver.HTTPServer | None = None
        self.url = ""

    def times(self, what: str) -> list[float]:
        return [t for t, w, _ in self.calls if w == what]

    def start(self) -> None:
        fake = self

        class Handler(tornado.web.RequestHandler):
            def done(self, answer: dict[str, Any]) -> None:
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps(answer))

        class Execute(Handler):
            def post(self, kernel_id: str) -> None:
                if fake.running is not None:
                    fake.overlaps += 1
                scripted = fake.choose.pop(0) if fake.choose else None
                if isinstance(scripted, tuple):  # ("migrate", replica id)
                    fake.calls.append((time.monotonic(), "migrate", scripted[1]))
                    self.done({"action": "migrate", "replica_id": scripted[1], "to_host": "elsewhere",
                               "to_host_url": "http://127.0.0.1:9"})
                    return
                rid = scripted or (fake.last if fake.last in fake.alive else min(fake.alive))
                fake.running = fake.last = rid
                fake.calls.append((time.monotonic(), "execute", rid))
                self.done({"action": "run", "replica_id": rid, "devices": [0]})

        class Finished(Handler):
            async def post(self, kernel_id: str) -> None:
                fake.calls.append((time.monotonic(), "finished-asked", fake.running))
                await asyncio.sleep(fake.finished_delay)
                fake.calls.append((time.monotonic(), "finished", fake.running))
                fake.running = None
                self.done({})

        class Replicas(Handler):
            def post(self, kernel_id: str) -> None:  # a migration or a replacement is reported
                body = json.loads(self.request.body)
                fake.alive.discard(body.get("old_replica_id"))
                fake.alive.add(body["new_replica_id"])
                fake.calls.append((time.monotonic(), "replicas", body))
                self.done({})

        class Lost(Handler):
            def delete(self, kernel_id: str, rid: str) -> None:
                fake.alive.discard(int(rid))
                fake.calls.append((time.monotonic(), "lost", int(rid)))
                self.done({})

        class Placement(Handler):
            def post(self, kernel_id: str) -> None:
                rid, fake.next_id = fake.next_id, fake.next_id + 1
                fake.alive.add(rid)
                fake.calls.append((time.monotonic(), "placement", rid))
                self.done({"added": [{"host_id": f"host{rid}", "replica_id": rid}]})

        class Lease(Handler):
            def post(self, kernel_id: str) -> None:
                self.done({"lease_s": 0})

        k = r"/api/kernels/([^/]+)"
        app = tornado.web.Application([(k + "/execute", Execute), (k + "/finished", Finished),
                                       (k + "/replicas", Replicas), (k + r"/replicas/(\d+)", Lost),
                                       (k + "/placement", Placement), (k + "/lease", Lease)])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class Harness:
    """``async with Harness() as h``: a relay with 3 fake replicas (standalone), or with ``cluster=True`` a relay
    whose executors come from :class:`FakeScheduler` through the real ``SchedulerExecutorPolicy``, and a client.

    Everything the client receives is collected with its arrival time: :meth:`reply`, :meth:`iopub`, :meth:`idle`.
    """

    def __init__(self, cluster: bool = False, replicas: int = 3, choose: list[int] | None = None,
                 finished_delay: float = 0.0, replace_lost: bool = True):
        self.cluster = cluster
        self.count = replicas
        self.scheduler = FakeScheduler(list(range(1, replicas + 1)), choose, finished_delay) if cluster else None
        self.replace_lost = replace_lost
        self.received: dict[str, list[tuple[float, dict[str, Any]]]] = {
            "shell": [], "control": [], "iopub": [], "stdin": []}
        self.sent: set[str] = set()  # msg_ids of the client's requests
        self._arrived = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Harness:
        self.context = zmq.asyncio.Context()
        ports = free_ports("127.0.0.1", 5)
        self.connection = {"transport": "tcp", "ip": "127.0.0.1", "key": CLIENT_KEY,
                           "signature_scheme": "hmac-sha256",
                           **{f"{ch}_port": p for ch, p in zip(("shell", "iopub", "stdin", "control", "hb"), ports,
                                                               strict=True)}}
        self.group = FakeGroup()
        self.supervisor = Supervisor(self.context, Path(tempfile.gettempdir()),
                                     Session(key=b"internal-key", signature_scheme="hmac-sha256"), "raft-secret", {},
                                     launcher=FakeLauncher(self.context, self.group))
        self.supervisor.replace_lost = self.replace_lost
        if self.scheduler is not None:
            self.scheduler.start()
            policy = SchedulerExecutorPolicy(SchedulerClient(self.scheduler.url, "token"), "k1",
                                             types.SimpleNamespace(host_urls={}))
        else:
            policy = LastExecutorPolicy()
        self.policy = policy
        self.relay = Relay(self.context, self.connection, Session(key=CLIENT_KEY.encode()), self.supervisor, policy)
        self.relay.bind()
        self.relay.start()
        await self.supervisor.start(self.count)
        self._tasks.append(asyncio.ensure_future(self.supervisor.watch(interval=0.005)))
        await asyncio.wait_for(asyncio.gather(*(r.subscribed.wait() for r in self.group.replicas.values())), 2)
        self.client = AsyncKernelClient(context=self.context)
        self.client.load_connection_info(self.connection)
        self.client.start_channels(hb=False)
        while (await self.client.get_iopub_msg(timeout=2))["msg_type"] != "iopub_welcome":
            pass
        for channel in self.received:
            self._tasks.append(asyncio.ensure_future(self._collect(channel)))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in self._tasks:
            task.cancel()
        self.client.stop_channels()
        self.supervisor.replace_lost = False
        await self.supervisor.stop_all(grace=0)
        await self.relay.close()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.context.destroy(linger=0)

    async def _collect(self, channel: str) -> None:
        get = getattr(self.client, f"get_{channel}_msg")
        while True:
            msg = await get()
            self.received[channel].append((time.monotonic(), msg))
            self._arrived.set()

    async def until(self, condition: Callable[[], Any], timeout: float = 2.0, what: str = "") -> Any:
        """Wait until ``condition()`` is truthy (checked as messages arrive and every 5 ms); return its value."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or condition}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), 0.005)
            except TimeoutError:
                pass
        return value

    # -- the client side ---------------------------------------------------------------------------------------
    def send(self, channel: str, msg_type: str, content: dict[str, Any] | None = None,
             **header: Any) -> str:
        """Send a request from the client; ``header`` adds header fields (e.g. ``subshell_id``)."""
        session = self.client.session
        msg = session.msg(msg_type, content or {})
        msg["header"].update(header)
        getattr(self.client, f"{channel}_channel").send(msg)
        self.sent.add(msg["header"]["msg_id"])
        return msg["header"]["msg_id"]

    def execute(self, code: str, **kwargs: Any) -> str:
        msg_id = self.client.execute(code, **kwargs)
        self.sent.add(msg_id)
        return msg_id

    def _find(self, channel: str, msg_id: str) -> tuple[float, dict[str, Any]] | None:
        return next(((t, m) for t, m in self.received[channel] if m["parent_header"].get("msg_id") == msg_id),
                    None)

    async def reply(self, msg_id: str, channel: str = "shell", timeout: float = 2.0) -> dict[str, Any]:
        """The reply to ``msg_id`` (the whole message)."""
        return (await self.until(lambda: self._find(channel, msg_id), timeout, f"the reply to {msg_id}"))[1]

    def reply_time(self, msg_id: str, channel: str = "shell") -> float:
        found = self._find(channel, msg_id)
        assert found is not None, f"no reply to {msg_id}"
        return found[0]

    async def replies(self, msg_ids: list[str], timeout: float = 2.0) -> list[dict[str, Any]]:
        """The execute_reply contents of ``msg_ids``, in order, once every one has arrived."""
        return [(await self.reply(m, timeout=timeout))["content"] for m in msg_ids]

    def strays(self) -> list[tuple[str, str]]:
        """iopub messages the client got that answer none of its requests (e.g. a replica's busy/idle for the
        front's own status poll): the relay must have dropped them."""
        return [(m["msg_type"], m["parent_header"].get("msg_id", "")) for _, m in self.received["iopub"]
                if m["parent_header"].get("msg_id") not in self.sent]

    def iopub(self, msg_id: str) -> list[dict[str, Any]]:
        return [m for _, m in self.received["iopub"] if m["parent_header"].get("msg_id") == msg_id]

    async def idle(self, msg_id: str, timeout: float = 2.0) -> list[dict[str, Any]]:
        """The iopub messages of ``msg_id`` up to its idle status."""
        def done():
            msgs = self.iopub(msg_id)
            return msgs if any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                               for m in msgs) else None
        return await self.until(done, timeout, f"idle of {msg_id}")

    def replica(self, rid: int) -> FakeReplica:
        return self.group.replicas[rid]

    def everywhere(self, msg_id: str) -> list[int]:
        """The fake replicas that received ``msg_id`` as a request (yield notices not counted)."""
        return sorted(r.id for r in self.group.replicas.values() if any(m == msg_id for _, _, m in r.received))


def harness_test(timeout: float = 5.0, **options: Any) -> Callable:
    """Turn ``async def test_x(h, ...)`` into a plain pytest test (the suite has no asyncio plugin) that runs in a
    fresh event loop with ``Harness(**options)`` as ``h``; a parameter ``cluster`` (parametrized) sets the mode."""

    def decorate(test: Callable) -> Callable:
        params = list(inspect.signature(test).parameters.values())[1:]

        @functools.wraps(test)
        def run(**kwargs: Any) -> None:
            async def scenario() -> None:
                async with Harness(**{**options, **{k: v for k, v in kwargs.items() if k == "cluster"}}) as h:
                    await test(h, **kwargs)

            asyncio.run(asyncio.wait_for(scenario(), timeout))

        run.__signature__ = inspect.Signature(params)  # what pytest passes: the parameters after ``h``
        return run

    return decorate
