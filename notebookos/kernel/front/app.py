"""The front process: configuration, startup and shutdown of one replicated kernel.

Launched by the provisioner as the kernel process (``python -m notebookos.kernel.front -f CONNECTION_FILE``). It
binds the connection file's channels, starts the replicas, and runs the relay until a ``shutdown_request`` or a
signal; on the way out it stops every replica it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import zmq
import zmq.asyncio
from jupyter_client.session import Session
from traitlets import Bool, Float, Int, Type, Unicode, validate
from traitlets.config import Application

from ...common.client import SchedulerClient, SchedulerError
from ...common.secrets import SCHEDULER_TOKEN_ENV, SCHEDULER_TOKEN_FILE_ENV, read_secret
from ..scratch import default_store_dir
from .cluster import HostdLauncher, SchedulerExecutorPolicy
from .executor import ExecutorPolicy, LastExecutorPolicy
from .moves import BackgroundMoves
from .options import check_options
from .percell import PerCellReplicas
from .relay import Relay
from .supervisor import Supervisor


class NotebookOSFront(Application):
    """Front of a replicated kernel."""

    name = "notebookos-front"
    description = "The single endpoint of a replicated notebookos kernel: relays to its Raft-replicated replicas."

    connection_file = Unicode("", help="Connection file written by the Jupyter client (-f).").tag(config=True)
    config_file = Unicode("", help="JSON or Python config file to load (the provisioner writes one with this "
                          "kernel's options: --config=FILE); the command line wins over it.").tag(config=True)
    replicas = Int(3, help="Number of kernel replicas; Raft needs 3 to survive the loss of one.").tag(config=True)
    raft_host = Unicode("127.0.0.1", help="Address replicas bind their Raft ports to. Loopback unless the "
                        "replicas span hosts: Raft traffic carries pickles.").tag(config=True)
    store_dir = Unicode("", help="Object store directory for values over 1 MiB. Default: a per-kernel directory "
                        "on tmpfs (/dev/shm) when writable, else in the temporary directory, removed when the "
                        "kernel ends (see notebookos.kernel.scratch).").tag(config=True)
    store_on_tmpfs = Bool(True, help="Put the default per-kernel store on tmpfs (/dev/shm) when it is writable. "
                          "False: in the temporary directory, on disk (a container's /dev/shm is often 64 MB)."
                          ).tag(config=True)
    remove_store = Bool(False, help="Remove store_dir when the kernel ends (set by the provisioner for the store "
                        "it chose; a store_dir you configure is kept).").tag(config=True)
    collect_garbage = Bool(None, allow_none=True, help="Delete object-store blobs that no replicated name or Out "
                           "refers to any more. Default: only when the kernel owns its store directory (one you "
                           "configure may be shared by several kernels, which would delete each other's values)."
                           ).tag(config=True)
    commit_timeout = Float(10.0, help="Seconds a cell's commit may wait for a Raft quorum.").tag(config=True)
    replace_lost_replicas = Bool(True, help="Start a replacement when a replica dies.").tag(config=True)
    send_yield = Bool(True, help="Send the non-executing replicas a 'yield' copy of each execute_request.").tag(
        config=True)
    status_interval = Float(2.0, help="Seconds between status polls of the replicas (for replicas()).").tag(
        config=True)
    gpus = Unicode("", help="Standalone mode: comma-separated GPU device ids of this machine that a cell gets "
                   "(bound only while it runs). Empty: none.").tag(config=True)
    executor_policy_class = Type(LastExecutorPolicy, klass=ExecutorPolicy,
                                 help="Chooses the replica and GPUs of each cell.").tag(config=True)
    scheduler_url = Unicode("", help="Cluster mode: the scheduler's URL (the token that places the kernel from the "
                            "file named by $NOTEBOOKOS_SCHEDULER_TOKEN_FILE, else $NOTEBOOKOS_SCHEDULER_TOKEN). "
                            "Empty: standalone, every replica on this machine.").tag(config=True)
    kernel_id = Unicode("", help="This kernel's id, as the scheduler knows it (cluster mode).").tag(config=True)
    gpu_request = Int(1, help="Cluster mode: GPUs a cell of this kernel needs.").tag(config=True)
    cpu_request = Float(1.0, help="Cluster mode: CPUs each replica holds.").tag(config=True)
    memory_request_mb = Int(2048, help="Cluster mode: memory each replica holds (MB).").tag(config=True)
    start_stagger = Float(0.05, help="Standalone mode: seconds between starting the replicas of the first Raft "
                          "majority, so the first one (which answers kernel_info) is not slowed by the others.").tag(
        config=True)
    minority_start_delay = Float(0.3, help="Standalone mode: seconds after the majority before the remaining "
                                 "replicas start; the kernel runs cells without them meanwhile.").tag(config=True)
    compaction_entries = Int(200, help="Raft log entries between snapshots.").tag(config=True)
    unresponsive_timeout = Float(120.0, help="Seconds a live replica may go without answering the front's status "
                                 "requests (every status_interval) before it is taken for hung (stopped, swapping, "
                                 "deadlocked) and killed; it is then replaced like a replica that died (0: never)."
                                 ).tag(config=True)
    migrate_timeout = Float(60.0, help="Seconds a migration's new replica gets to start, join the Raft group and "
                            "catch up before the migration is rolled back (raise it for slow starts or large "
                            "states).").tag(config=True)

    aliases = {
        "f": "NotebookOSFront.connection_file",
        "config": "NotebookOSFront.config_file",
        "replicas": "NotebookOSFront.replicas",
        "store-dir": "NotebookOSFront.store_dir",
        "log-level": "Application.log_level",
    }

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file:
            path = Path(self.config_file)
            self.load_config_file(path.name, path=str(path.parent))
            self.update_config(self.cli_config)  # the command line wins over the file

    @validate("replicas")
    def _check_replicas(self, proposal):
        if proposal["value"] < 1:
            raise ValueError(f"replicas must be >= 1, got {proposal['value']}")
        return proposal["value"]

    def _make_policy(self) -> ExecutorPolicy:
        try:
            devices = tuple(int(d) for d in self.gpus.split(",") if d.strip())
        except ValueError:
            raise ValueError(f"gpus must be comma-separated device ids, got {self.gpus!r}") from None
        if self.executor_policy_class is LastExecutorPolicy:
            return LastExecutorPolicy(devices)
        return self.executor_policy_class()

    def start(self) -> None:
        if not self.connection_file:
            self.log.critical("no connection file: run as `python -m notebookos.kernel.front -f FILE`")
            self.exit(2)
        # The provisioner checked these already; a front started by hand checks them here, before binding anything.
        names = ("replicas", "commit_timeout", "raft_host", "gpus", "scheduler_url", "gpu_request", "cpu_request",
                 "memory_request_mb") + (("store_dir",) if self.store_dir and not self.remove_store else ())
        problems = check_options({name: getattr(self, name) for name in names})
        if problems:
            self.log.critical("bad option%s: %s", "s" if len(problems) > 1 else "", "; ".join(problems))
            self.exit(2)
        asyncio.run(self._run())

    async def _run(self) -> None:
        connection = json.loads(Path(self.connection_file).read_text())
        runtime_dir = Path(tempfile.mkdtemp(prefix="notebookos-kernel-"))
        # The provisioner normally chooses (and later removes) the store; run alone, the front does both.
        own_store = None if self.store_dir else default_store_dir(runtime_dir.name, self.store_on_tmpfs)
        if self.store_dir and self.remove_store:
            own_store = Path(self.store_dir)
        store_dir = self.store_dir or str(own_store)
        context = zmq.asyncio.Context()
        client_session = Session(key=connection.get("key", "").encode(),
                                 signature_scheme=connection.get("signature_scheme", "hmac-sha256"))
        internal_session = Session(key=secrets.token_hex(32).encode(), signature_scheme="hmac-sha256")
        supervisor = Supervisor(
            context, runtime_dir, internal_session, raft_secret=secrets.token_hex(32),
            replica_config={"store_dir": store_dir, "commit_timeout": self.commit_timeout,
                            "compaction_entries": self.compaction_entries,
                            "collect_garbage": own_store is not None if self.collect_garbage is None
                            else self.collect_garbage},
            host=self.raft_host,
        )
        supervisor.replace_lost = self.replace_lost_replicas
        supervisor.migrate_timeout = self.migrate_timeout
        supervisor.unresponsive_timeout = self.unresponsive_timeout
        scheduler = None
        unplaced: str | None = None
        hosts: list[str | None] | None = None
        ids: list[int] | None = None
        count = self.replicas
        if self.scheduler_url:
            scheduler = SchedulerClient(self.scheduler_url, scheduler_token())
            kernel_id = self.kernel_id or runtime_dir.name
            try:
                placement = await scheduler.place(kernel_id, {"gpus": self.gpu_request, "cpus": self.cpu_request,
                                                              "memory_mb": self.memory_request_mb})
            except SchedulerError as exc:
                # Dying here would show the user only "the kernel died"; stay up and answer every request with why.
                self.log.error("the scheduler could not place kernel %s: %s", kernel_id, exc)
                unplaced = (f"the scheduler could not place this kernel ({exc.message}). Shut down kernels you no "
                            "longer need or give the cluster more hosts, then restart this kernel.")
                placement = {"replicas": []}
            placed = placement["replicas"]
            if placement.get("kernel_token"):
                # From here on only this kernel's own token: good for its own requests, to the scheduler and to
                # the host daemons of its replicas, and nothing else.
                scheduler = SchedulerClient(self.scheduler_url, placement["kernel_token"])
            if placement.get("hash_seed") is not None:
                # One seed across the cluster lets host daemons hand out replicas they started ahead of demand.
                supervisor.hash_seed = str(placement["hash_seed"])
            launcher = HostdLauncher(kernel_id, scheduler.token, {r["host_id"]: r["host_url"] for r in placed})
            supervisor.launcher = launcher
            policy: ExecutorPolicy = SchedulerExecutorPolicy(scheduler, kernel_id, launcher)

            hosts, ids, count = [r["host_id"] for r in placed], [int(r["replica_id"]) for r in placed], len(placed)
        else:
            policy = self._make_policy()
        relay = Relay(context, connection, client_session, supervisor, policy, self.send_yield)
        relay.unavailable = unplaced
        if scheduler is not None and placement.get("per_cell_replicas"):
            relay.per_cell = PerCellReplicas(supervisor)
        relay.bind()
        supervisor.starting = True  # until start() below has launched the group: early requests wait for it
        _start_heartbeat(connection)
        relay.start()
        if scheduler is None:
            await supervisor.start(count, stagger=self.start_stagger, minority_delay=self.minority_start_delay)
        elif count:  # replicas on different hosts do not compete for cores
            await supervisor.start(count, hosts=hosts, ids=ids)
        else:
            supervisor.starting = False
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, relay.shutdown.set)
        # Interrupts arrive as messages (interrupt_mode: message); a stray SIGINT must not kill the kernel.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        tasks = [asyncio.ensure_future(supervisor.watch()),
                 asyncio.ensure_future(supervisor.poll_status(self.status_interval)),
                 asyncio.ensure_future(_exit_with_parent(relay.shutdown, self.log))]
        moves = None
        if scheduler is not None and not unplaced:

            def ended(why: str) -> None:
                supervisor.replace_lost = False
                relay.unavailable = f"the cluster scheduler ended this kernel ({why}); restart the kernel"

            moves = BackgroundMoves(relay, supervisor, policy)
            tasks.append(asyncio.ensure_future(policy.keep_lease(float(placement.get("lease_s") or 0), ended,
                                                                 on_move=moves.order)))
        try:
            await relay.shutdown.wait()
            await asyncio.sleep(0.05)  # let the shutdown_reply leave
        finally:
            supervisor.replace_lost = False
            for task in tasks:
                task.cancel()
            if moves is not None:
                moves.close()
            await supervisor.stop_all()
            if scheduler is not None:
                try:
                    await scheduler.remove(kernel_id)
                except Exception as exc:  # the scheduler may be gone first at cluster shutdown
                    self.log.warning("could not remove kernel %s from the scheduler: %s", kernel_id, exc)
            await relay.close()
            context.term()
            if not os.environ.get("NOTEBOOKOS_KEEP_RUNTIME"):
                shutil.rmtree(runtime_dir, ignore_errors=True)
                if own_store is not None:
                    shutil.rmtree(own_store, ignore_errors=True)


def scheduler_token() -> str:
    """The token this front places its kernel with: from the file ``$NOTEBOOKOS_SCHEDULER_TOKEN_FILE`` names
    (``notebookos up`` gives Jupyter a launcher token that way), else ``$NOTEBOOKOS_SCHEDULER_TOKEN``."""
    path = os.environ.get(SCHEDULER_TOKEN_FILE_ENV)
    if path:
        return read_secret(path)
    return os.environ.get(SCHEDULER_TOKEN_ENV, "")


async def _exit_with_parent(shutdown: asyncio.Event, log: logging.Logger, interval: float = 1.0) -> None:
    """Shut down when the process that started this kernel (a Jupyter server or client) is gone, as ipykernel's
    parent poller does: nobody could reach the kernel any more, and its replicas would run forever."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(interval)
        if os.getppid() != parent:
            log.warning("the process that started this kernel (pid %d) is gone; shutting down", parent)
            shutdown.set()
            return


def _start_heartbeat(connection: dict) -> None:
    """Echo heartbeats on a plain thread, so a busy event loop never looks like a dead kernel."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(f"{connection['transport']}://{connection['ip']}:{connection['hb_port']}")

    def echo() -> None:
        try:
            zmq.proxy(sock, sock)
        except zmq.ZMQError:
            pass

    threading.Thread(target=echo, name="notebookos-heartbeat", daemon=True).start()


def front_log_path(connection_file: str | os.PathLike) -> Path:
    """The front's log file: next to its connection file in Jupyter's runtime directory (``jupyter --runtime-dir``),
    ``kernel-ID.json`` -> ``kernel-ID-notebookos.log``. It outlives the kernel (the connection file does not)."""
    path = Path(connection_file)
    return path.with_name(f"{path.stem}-notebookos.log")


def main() -> None:
    """Run the front, logging to :func:`front_log_path` at ``$NOTEBOOKOS_LOG_LEVEL`` (default WARNING).

    Not to the stderr the front inherited from the Jupyter client or server: under ``jupyter console`` that is the
    terminal, and a warning such as "replica 1 exited with -9" would land on the prompt line. stderr keeps only
    fatal start-up errors (CRITICAL, and uncaught tracebacks), or everything if the log file cannot be opened. A
    log the kernel left empty is removed when the front exits."""
    level = logging.getLevelName(os.environ.get("NOTEBOOKOS_LOG_LEVEL", "WARNING").upper())
    if not isinstance(level, int):
        level = logging.WARNING
    app = NotebookOSFront.instance()
    app.initialize()
    stderr = logging.StreamHandler()
    handlers: list[logging.Handler] = [stderr]
    log_file = front_log_path(app.connection_file) if app.connection_file else None
    if log_file is not None:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
            stderr.setLevel(logging.CRITICAL)
        except OSError:
            log_file = None
    logging.basicConfig(level=level, handlers=handlers, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # Python warnings too, which would otherwise be printed to stderr
    app.log.handlers.clear()  # traitlets gave the application's own logger a stderr handler of its own
    app.log.propagate = True
    app.log.setLevel(level)
    try:
        app.start()
    finally:
        logging.shutdown()
        if log_file is not None:
            with contextlib.suppress(OSError):
                if log_file.stat().st_size == 0:
                    log_file.unlink()
