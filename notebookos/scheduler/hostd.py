"""``notebookos hostd``: the host daemon, one per GPU server.

It reports the host's GPUs (NVML where present, virtual GPUs otherwise; see ``gpus.py``), CPUs and memory to the
scheduler, and launches and stops the replica processes of kernels on this host, exactly as the standalone front
does (``python -m notebookos.kernel.replica -f CONNECTION_FILE --config=CONFIG.json``, the group's Raft secret in
``$NOTEBOOKOS_RAFT_SECRET``, ``PR_SET_PDEATHSIG`` so no replica outlives the daemon).

REST API (every request needs ``Authorization: token TOKEN``, else 403; errors are ``{"error": ...}``). The
daemon's own token (the hosts' token) is good for everything; a kernel token (see ``http.py``) for that kernel's
replicas, ports and long polls only:

``GET /api/gpus`` -> ``{"host_id", "gpus": [{"index", "name", "memory_mb", "uuid", "virtual"}]}``
``POST /api/replicas`` ``{kernel_id, replica_id, connection, config, raft_secret, hash_seed?, cwd?}`` -> 201
    ``{"pid", "kernel_id", "replica_id", "log", "version", "boot"}``. ``connection`` is a Jupyter connection dict (``ip``,
    ``transport``, the five ``*_port``, ``key``, ``signature_scheme``); ``config`` the ``ReplicaKernel`` traits
    (``replica_id`` is filled in from the body; a dict with a ``"ReplicaKernel"`` key is taken as a whole
    traitlets config); ``hash_seed`` sets ``PYTHONHASHSEED`` (give the whole group one seed); ``cwd`` the
    replica's working directory when it exists here. 409 if that replica is already running.
``POST /api/ports`` ``{count}`` -> ``{"ip", "ports"}``: free ports on this machine and the address a replica
    launched here listens on (``replica_ip``); the front builds the replica's connection and Raft address from them.
``GET /api/replicas?since=V&wait=S&boot=B`` -> ``{"replicas": [{"kernel_id", "replica_id", "pid", "alive", "exit_code",
    "uptime_s"}], "version", "boot", "prewarm"}`` (``boot``: this run of the daemon); with ``since``, held until the replicas changed after version ``V``
    (started, exited: learnt at once from a pidfd, stopped) or ``S`` seconds passed (at once if ``B`` is not
    this run's ``boot``): each front long-polls the
    daemons of its replicas this way instead of asking repeatedly.
``DELETE /api/replicas/{kernel_id}/{replica_id}`` -> ``{"kernel_id", "replica_id", "pid", "exit_code"}``:
    SIGTERM, then SIGKILL after ``stop_grace`` seconds.

On start it registers with the scheduler (``POST /api/hosts``), retrying until the scheduler answers, then sends a
heartbeat every ``heartbeat_interval`` seconds (registering again if the scheduler answers 404); on SIGINT or
SIGTERM it deregisters, stops every replica it launched, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Float, Int, Unicode, default
from traitlets.config import Application

from ..common.replicas import free_ports, release_held, replica_command
from ..common.secrets import RAFT_SECRET_ENV, SCHEDULER_TOKEN_ENV, write_private_json
from ..parentdeath import kill_with_parent
from .gpus import GPUInfo, discover_gpus
from .hostobjects import HostObjects
from .hostobjects import routes as object_routes
from .http import (
    APIError,
    JSONHandler,
    NotFoundHandler,
    kernel_of,
    req_dict,
    req_int,
    req_str,
    same_token,
)
from .prewarm_pool import PrewarmPool, pool_env

KERNEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PORT_KEYS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class LaunchedReplica:
    kernel_id: str
    replica_id: int
    process: subprocess.Popen
    directory: Path
    log: Path
    started: float = field(default_factory=time.monotonic)

    def view(self) -> dict[str, Any]:
        code = self.process.poll()
        return {"kernel_id": self.kernel_id, "replica_id": self.replica_id, "pid": self.process.pid,
                "alive": code is None, "exit_code": code, "uptime_s": round(time.monotonic() - self.started, 3),
                "log": str(self.log)}


class HostDaemon(Application):
    """One GPU server's daemon: reports its GPUs and launches the replicas placed on it."""

    name = "notebookos-hostd"
    description = "notebookos host daemon: reports this server's GPUs and runs kernel replicas on it."

    scheduler_url = Unicode("", help="Scheduler to register with (empty: run without one).").tag(config=True)
    token = Unicode(help="This daemon's credential, for the scheduler (the hosts' token) and for its own API "
                    f"(default: the first line of stdin with --token-stdin, else ${SCHEDULER_TOKEN_ENV}). Kernel "
                    "code on this host can read the daemon's environment: prefer --token-stdin.").tag(config=True)
    token_stdin = Bool(False, help="Read the token from the first line of stdin (a pipe from whoever starts the "
                       "daemon: `notebookos up` does), so it is in no environment or file.").tag(config=True)
    host_id = Unicode("", help="This host's id in the cluster (default HOSTNAME:PORT).").tag(config=True)
    ip = Unicode("127.0.0.1", help="Address the REST API listens on.").tag(config=True)
    port = Int(0, help="Port the REST API listens on (0: a free port).").tag(config=True)
    public_url = Unicode("", help="URL the scheduler and fronts use to reach this daemon "
                         "(default http://IP:PORT).").tag(config=True)
    replica_ip = Unicode("", help="Address this host's replicas listen on for their Jupyter channels and Raft, and "
                         "fronts connect to (default: --ip, or 127.0.0.1 when --ip is a wildcard). Give the "
                         "cluster-network address when fronts and other hosts are on other machines.").tag(config=True)
    virtual_gpus = Int(None, allow_none=True, help="Virtual GPUs to report when NVML finds none "
                       "(default $NOTEBOOKOS_VIRTUAL_GPUS, else 8).").tag(config=True)
    use_nvml = Bool(True, help="Report the GPUs NVML finds (nvidia-ml-py); False: always virtual GPUs.").tag(
        config=True)
    runtime_dir = Unicode("", help="Directory for replicas' connection files, configs and logs "
                          "(default: a new temporary directory, removed on exit).").tag(config=True)
    store_root = Unicode("", help="Keep the object store of each kernel whose replicas run here in a directory "
                         "under this one, and copy blobs other hosts wrote on demand (hostobjects.py). Needed when "
                         "hosts are separate machines; empty: replicas use the directory the front names (one "
                         "machine).").tag(config=True)
    stop_grace = Float(3.0, help="Seconds a replica gets after SIGTERM before SIGKILL.").tag(config=True)
    register_timeout = Float(60.0, help="Seconds to keep retrying registration before giving up.").tag(config=True)
    prewarm = Int(None, allow_none=True, help="Replica processes to keep started ahead of demand, interpreter "
                  "and imports done, so a kernel's replica starts sooner (default: the scheduler's "
                  "prewarm_pool_size, else 0).").tag(config=True)
    prewarm_refill_delay = Float(2.0, help="Seconds after handing out a prewarmed process before starting its "
                                 "replacement, so that it does not slow the kernel that is starting.").tag(config=True)
    heartbeat_interval = Float(5.0, help="Seconds between heartbeats to the scheduler, which takes a host silent for "
                               "three of them (and at least its host_timeout) for dead. 0: no heartbeats, and the "
                               "scheduler never times this host out.").tag(config=True)
    python = Unicode(sys.executable, help="Python interpreter that runs replicas.").tag(config=True)
    replica_log_level = Unicode("WARN", help="IPKernelApp.log_level of the replicas.").tag(config=True)
    info_file = Unicode("", help="Write {url, host_id, pid} here (mode 0600) once listening.").tag(config=True)

    config_file = Unicode("", help="A traitlets config file (.py or .json) to load; the command line wins over it."
                          ).tag(config=True)

    # The command line: `notebookos hostd --help` lists these with the traits' help strings (as JupyterHub's app).
    aliases = {
        "scheduler-url": "HostDaemon.scheduler_url",
        "token": "HostDaemon.token",
        "host-id": "HostDaemon.host_id",
        "ip": "HostDaemon.ip",
        "port": "HostDaemon.port",
        "public-url": "HostDaemon.public_url",
        "store-root": "HostDaemon.store_root",
        "replica-ip": "HostDaemon.replica_ip",
        "virtual-gpus": "HostDaemon.virtual_gpus",
        "runtime-dir": "HostDaemon.runtime_dir",
        "stop-grace": "HostDaemon.stop_grace",
        "prewarm": "HostDaemon.prewarm",
        "heartbeat-interval": "HostDaemon.heartbeat_interval",
        "info-file": "HostDaemon.info_file",
        "config": "HostDaemon.config_file",
        "log-level": "Application.log_level",
    }
    flags = {
        "token-stdin": ({"HostDaemon": {"token_stdin": True}}, token_stdin.help),
        "no-nvml": ({"HostDaemon": {"use_nvml": False}}, "Report virtual GPUs even where NVML finds real ones."),
    }

    @default("log_format")
    def _log_format_default(self) -> str:
        return "[%(name)s %(asctime)s %(levelname)s] %(message)s"

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    def initialize(self, argv: list[str] | None = None) -> None:
        self.parse_command_line(argv)
        if self.config_file:
            path = Path(self.config_file).resolve()
            self.load_config_file(path.name, path=str(path.parent))
            self.update_config(self.cli_config)  # the command line wins over the file

    @default("token")
    def _token_default(self) -> str:
        if self.token_stdin:
            return sys.stdin.readline().strip()
        return os.environ.get(SCHEDULER_TOKEN_ENV, "")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        #: The scheduler's key for kernel tokens (from the registration): lets a kernel's front call this daemon
        #: for that kernel's replicas only.
        self.kernel_token_key = ""
        #: Bumped whenever a replica starts, exits or is stopped; fronts long-poll GET /api/replicas on it.
        self.replicas_version = 0
        self._replicas_changed = asyncio.Event()
        self.replica_polls = 0  # GET /api/replicas answered (to see that fronts do not poll in a loop)
        #: This run of the daemon: a front that sees another one knows its replicas here died with the last run.
        self.boot_id = os.urandom(8).hex()
        self.gpus: list[GPUInfo] = []
        self.replicas: dict[tuple[str, int], LaunchedReplica] = {}
        self.url = ""
        self.registered = False
        self.shutting_down = False
        self._server: HTTPServer | None = None
        self._own_runtime_dir = False
        self._reaper: asyncio.Task | None = None
        self._heartbeats: asyncio.Future | None = None
        self.pool: PrewarmPool | None = None
        self.objects: HostObjects | None = None
        # Replaced by the cluster's seed when the scheduler gives one; prewarmed processes are started with it.
        self.hash_seed = str(int.from_bytes(os.urandom(4), "little"))

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def listen(self) -> str:
        if not self.token:
            raise ValueError(f"hostd needs a token (--token-stdin, --token or ${SCHEDULER_TOKEN_ENV})")
        self.gpus = discover_gpus(self.virtual_gpus, use_nvml=self.use_nvml)
        if self.runtime_dir:
            Path(self.runtime_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            self.runtime_dir = tempfile.mkdtemp(prefix="notebookos-hostd-")
            self._own_runtime_dir = True
        sockets = bind_sockets(self.port, self.ip)
        port = sockets[0].getsockname()[1]
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        self.url = self.public_url.rstrip("/") or f"http://{host}:{port}"
        if not self.host_id:
            self.host_id = f"{socket.gethostname()}:{port}"
        if self.store_root:
            self.objects = HostObjects(self.store_root, self)
        a = {"owner": self}
        self._server = HTTPServer(web.Application([
            *object_routes(self),
            (r"/api/gpus", GPUsHandler, a),
            (r"/api/replicas", ReplicasHandler, a),
            (r"/api/ports", PortsHandler, a),
            (r"/api/replicas/([^/]+)/([^/]+)", ReplicaHandler, a),
        ], default_handler_class=NotFoundHandler, default_handler_args=a))
        self._server.add_sockets(sockets)
        self._reaper = asyncio.ensure_future(self._reap_loop())
        self.log.info("host daemon %s at %s: %d GPU(s) (%s)", self.host_id, self.url, len(self.gpus),
                      "virtual" if any(g.virtual for g in self.gpus) or not self.gpus else "NVML")
        if self.info_file:

            write_private_json(self.info_file, {"url": self.url, "host_id": self.host_id, "pid": os.getpid()})
        return self.url

    def allocate_ports(self, count: int) -> dict[str, Any]:
        """Free ports on this machine for a replica about to be launched here, and the address it will use."""
        ip = self.replica_ip or (self.ip if self.ip not in ("", "0.0.0.0", "::") else "127.0.0.1")
        try:
            return {"ip": ip, "ports": free_ports(ip, count)}
        except OSError as exc:
            raise APIError(500, f"cannot bind ports on {ip!r} (HostDaemon.replica_ip): {exc}") from None

    def registration(self) -> dict[str, Any]:
        return {"id": self.host_id, "url": self.url, "gpus": len(self.gpus), "cpus": cpu_count(),
                "memory_mb": memory_mb(), "devices": [g.to_dict() for g in self.gpus],
                "heartbeat_s": self.heartbeat_interval}

    def authorize(self, handler: Any, token: str) -> Any:
        """``"admin"`` for this daemon's own token (the scheduler, other host daemons, ``up``); ``("kernel", id)``
        for a kernel token the scheduler made (its key came with the registration) on endpoints a kernel's front
        uses, which then only touch that kernel's replicas; else None (403)."""
        if same_token(token, self.token):
            return "admin"
        kernel_id = kernel_of(self.kernel_token_key, token)
        if kernel_id is not None and getattr(handler, "kernel_scoped", False):
            return ("kernel", kernel_id)
        return None

    async def register(self) -> None:
        """Register with the scheduler, retrying while it cannot be reached (it may still be starting)."""
        from ..common.client import SchedulerClient, SchedulerError

        client = SchedulerClient(self.scheduler_url, self.token, timeout=10.0)
        deadline = time.monotonic() + self.register_timeout
        delay = 0.05
        while True:
            try:
                answer = await client.request("POST", "/api/hosts", self.registration()) or {}
                break
            except SchedulerError as exc:
                if exc.status != 599 or time.monotonic() > deadline:
                    raise RuntimeError(f"could not register with the scheduler at {self.scheduler_url}: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        self.registered = True
        self.log.info("registered with the scheduler at %s as %s", self.scheduler_url, self.host_id)
        if answer.get("hash_seed") is not None:
            self.hash_seed = str(answer["hash_seed"])
        self.kernel_token_key = str(answer.get("kernel_token_key") or "")
        self.start_pool(self.prewarm if self.prewarm is not None else int(answer.get("prewarm_pool_size") or 0))

    def start_pool(self, size: int) -> None:
        """(Re)start the prewarm pool with ``size`` processes and the current hash seed."""
        if self.pool is not None:
            if self.pool.size == size and self.pool.hash_seed == self.hash_seed:
                return
            self.pool.stop()
        self.pool = None
        if size > 0 and not self.shutting_down:
            env = pool_env(os.environ, self.hash_seed, drop=(SCHEDULER_TOKEN_ENV,))
            self.pool = PrewarmPool(size, env, Path(self.runtime_dir) / "prewarm.log", self.python,
                                    refill_delay=self.prewarm_refill_delay)
            self.pool.fill()
            self.log.info("prewarm pool: %d replica process(es) kept ready", size)

    async def heartbeat_loop(self) -> None:
        """Tell the scheduler this host is alive; register again if it has forgotten us (it restarted, or took us
        for dead while we were unreachable)."""
        from ..common.client import SchedulerClient, SchedulerError

        client = SchedulerClient(self.scheduler_url, self.token, timeout=max(self.heartbeat_interval, 1.0))
        path = f"/api/hosts/{quote(self.host_id, safe='')}/heartbeat"
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await client.request("POST", path, {})
            except SchedulerError as exc:
                if exc.status == 404 and not self.shutting_down:
                    self.log.warning("the scheduler no longer knows this host: registering again")
                    try:
                        await self.register()
                    except RuntimeError as err:
                        self.log.warning("%s", err)
                else:
                    self.log.warning("heartbeat to the scheduler failed: %s", exc)

    async def deregister(self) -> None:
        if not self.registered:
            return
        from ..common.client import SchedulerClient, SchedulerError

        try:
            await SchedulerClient(self.scheduler_url, self.token, timeout=5.0).request(
                "DELETE", f"/api/hosts/{quote(self.host_id, safe='')}")
            self.log.info("deregistered from the scheduler")
        except SchedulerError as exc:
            if exc.status != 404:  # 404: the scheduler removed us already (scale-in)
                self.log.warning("could not deregister: %s", exc)
        self.registered = False

    async def stop(self) -> None:
        self.shutting_down = True
        if self._heartbeats:
            self._heartbeats.cancel()
        if self.pool is not None:
            self.pool.stop(self.stop_grace)
            self.pool = None
        if self._server:
            self._server.stop()
        await self.deregister()
        await asyncio.gather(*(self.stop_replica(r) for r in list(self.replicas.values())))
        if self._reaper:
            self._reaper.cancel()
        if self._own_runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        if self.info_file:
            Path(self.info_file).unlink(missing_ok=True)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.listen()
        try:
            if self.scheduler_url:
                registering = asyncio.ensure_future(self.register())
                done, _ = await asyncio.wait([registering, asyncio.ensure_future(stop.wait())],
                                             return_when=asyncio.FIRST_COMPLETED)
                if registering in done:
                    registering.result()
                    if self.heartbeat_interval > 0:
                        self._heartbeats = asyncio.ensure_future(self.heartbeat_loop())
                else:
                    registering.cancel()
            else:
                self.start_pool(self.prewarm or 0)
            await stop.wait()
            self.log.info("shutting down")
        finally:
            await self.stop()

    def start(self) -> None:
        asyncio.run(self.serve())

    async def _reap_loop(self) -> None:
        """Reap exited replicas (no zombies) and log them: a backstop for :meth:`_watch_exit`."""
        while True:
            await asyncio.sleep(1.0)
            release_held()  # the ports our replicas listen on now need no hold
            for r in list(self.replicas.values()):
                self._reap(r)
            if self.pool is not None:
                self.pool.reap()
                self.pool.fill()

    def _reap(self, replica: LaunchedReplica) -> None:
        if replica.process.returncode is None and replica.process.poll() is not None:
            self.log.warning("replica %s/%d (pid %d) exited with %s", replica.kernel_id, replica.replica_id,
                             replica.process.pid, replica.process.returncode)
            self.replicas_changed()

    def replicas_changed(self) -> None:
        """A replica started, exited or was stopped: answer the long polls waiting for that."""
        self.replicas_version += 1
        self._replicas_changed.set()
        self._replicas_changed = asyncio.Event()

    async def replicas_after(self, version: int, wait: float) -> None:
        """Return once :attr:`replicas_version` is past ``version``, or after ``wait`` seconds."""
        if self.replicas_version > version or wait <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._replicas_changed.wait(), wait)

    def _watch_exit(self, replica: LaunchedReplica) -> None:
        """Learn of the replica's exit the moment it happens (a pidfd becomes readable), so a front long-polling
        this daemon hears of it at once; the reap loop covers systems without pidfds."""
        try:
            fd = os.pidfd_open(replica.process.pid)
        except (AttributeError, OSError):
            return
        loop = asyncio.get_running_loop()

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._reap(replica)

        loop.add_reader(fd, exited)

    # -- replicas -----------------------------------------------------------------------------------------------
    def launch(self, body: dict[str, Any]) -> LaunchedReplica:
        if self.shutting_down:
            raise APIError(503, "the host daemon is shutting down")
        kernel_id = req_str(body, "kernel_id")
        if not KERNEL_ID_RE.match(kernel_id):
            raise APIError(400, f"field 'kernel_id' must be 1-128 characters of letters, digits, '.', '_', '-' "
                           f"(starting with a letter or digit), got {kernel_id!r}")
        replica_id = req_int(body, "replica_id")
        connection = validate_connection(req_dict(body, "connection"))
        config = req_dict(body, "config", required=False) or {}
        raft_secret = req_str(body, "raft_secret")
        hash_seed = body.get("hash_seed")
        if hash_seed is not None:
            if isinstance(hash_seed, str) and hash_seed.isdigit():
                hash_seed = int(hash_seed)
            if isinstance(hash_seed, bool) or not isinstance(hash_seed, int) or not 0 <= hash_seed <= 4294967295:
                raise APIError(400, f"field 'hash_seed' must be an integer in [0, 4294967295], got {hash_seed!r}")
        cwd = body.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise APIError(400, f"field 'cwd' must be a string, got {cwd!r}")
        if "ReplicaKernel" in config:
            if not isinstance(config["ReplicaKernel"], dict):
                raise APIError(400, "field 'config.ReplicaKernel' must be a JSON object")
            full_config = json.loads(json.dumps(config))
        else:
            full_config = {"ReplicaKernel": dict(config)}
        full_config["ReplicaKernel"]["replica_id"] = replica_id
        full_config["ReplicaKernel"]["host_id"] = self.host_id  # what the replica calls its host (replicas())
        if self.objects is not None:
            root = self.objects.attach(kernel_id, replica_id, raft_secret)
            full_config["ReplicaKernel"].update(store_dir=str(root), store_name="hostfetch",
                                                store_options={"fetch_url": self.url, "kernel_id": kernel_id})
        key = (kernel_id, replica_id)
        existing = self.replicas.get(key)
        if existing is not None and existing.process.poll() is None:
            raise APIError(409, f"replica {replica_id} of kernel {kernel_id!r} is already running "
                           f"(pid {existing.process.pid})")

        directory = Path(self.runtime_dir) / f"kernel-{kernel_id}"
        directory.mkdir(mode=0o700, exist_ok=True)
        conn_file = directory / f"replica-{replica_id}.json"
        config_file = directory / f"replica-{replica_id}-config.json"
        _write_private(conn_file, json.dumps(connection))
        _write_private(config_file, json.dumps(full_config))
        log_path = directory / f"replica-{replica_id}.log"
        env = {**os.environ, RAFT_SECRET_ENV: raft_secret}
        env.pop(SCHEDULER_TOKEN_ENV, None)  # user code runs in the replica: it must not see the cluster token
        # The scheduler's device ids are NVML indices; CUDA numbers devices fastest-first unless told otherwise.
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        if hash_seed is not None:
            env["PYTHONHASHSEED"] = str(hash_seed)
        cmd = replica_command(conn_file, config_file, self.python, self.replica_log_level)
        workdir = cwd if cwd and os.path.isdir(cwd) else os.getcwd()
        process = None
        if self.pool is not None:
            process = self.pool.take(None if hash_seed is None else str(hash_seed), {
                "argv": cmd[3:], "env": {RAFT_SECRET_ENV: raft_secret}, "cwd": workdir, "log": str(log_path)})
        if process is None:
            with open(log_path, "ab") as log_file:
                # Popen on the event loop's thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits.
                process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                           preexec_fn=kill_with_parent, cwd=workdir)
        replica = LaunchedReplica(kernel_id, replica_id, process, directory, log_path)
        self.replicas[key] = replica
        self._watch_exit(replica)
        self.replicas_changed()
        self.log.info("started replica %s/%d (pid %d%s)", kernel_id, replica_id, process.pid,
                      ", prewarmed" if process.args[-1] == "notebookos.kernel.prewarm" else "")
        return replica

    async def stop_replica(self, replica: LaunchedReplica) -> int | None:
        process = replica.process
        if process.poll() is None:
            process.terminate()
            deadline = time.monotonic() + self.stop_grace
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if process.poll() is None:
                self.log.warning("replica %s/%d did not stop on SIGTERM: killing it", replica.kernel_id,
                                 replica.replica_id)
                process.kill()
                process.wait()
        if self.replicas.get((replica.kernel_id, replica.replica_id)) is replica:
            del self.replicas[(replica.kernel_id, replica.replica_id)]
            self.replicas_changed()
            if self.objects is not None:
                self.objects.detach(replica.kernel_id, {rid for (kid, rid), r in self.replicas.items()
                                                        if kid == replica.kernel_id and r.process.poll() is None})
        for path in (replica.directory / f"replica-{replica.replica_id}.json",
                     replica.directory / f"replica-{replica.replica_id}-config.json"):
            try:
                path.unlink()
            except OSError:
                pass
        self.log.info("stopped replica %s/%d (exit %s)", replica.kernel_id, replica.replica_id, process.returncode)
        return process.returncode


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def validate_connection(connection: dict[str, Any]) -> dict[str, Any]:
    """A Jupyter connection dict with every field a replica needs, or a 400 naming what is wrong."""
    out = dict(connection)
    out.setdefault("transport", "tcp")
    out.setdefault("signature_scheme", "hmac-sha256")
    if out["transport"] not in ("tcp", "ipc"):
        raise APIError(400, f"field 'connection.transport' must be 'tcp' or 'ipc', got {out['transport']!r}")
    req_str(out, "ip", "connection.ip")
    req_str(out, "signature_scheme", "connection.signature_scheme")
    if not isinstance(out.get("key"), str):
        raise APIError(400, "missing field 'connection.key'" if "key" not in out
                       else f"field 'connection.key' must be a string, got {out['key']!r}")
    for key in PORT_KEYS:
        req_int(out, key, f"connection.{key}", minimum=1, maximum=65535)
    return out


class _HostHandler(JSONHandler):
    owner: HostDaemon
    #: Whether a kernel token (good for one kernel's replicas only) may call this endpoint.
    kernel_scoped = False

    def own_kernel(self, kernel_id: str) -> None:
        """403 unless this request's token is good for ``kernel_id`` (the daemon's own token is good for all)."""
        if self.scope != "admin" and self.scope != ("kernel", kernel_id):
            raise APIError(403, f"this token is not good for kernel {kernel_id!r}")


class GPUsHandler(_HostHandler):
    def get(self) -> None:
        self.send_json({"host_id": self.owner.host_id, "gpus": [g.to_dict() for g in self.owner.gpus]})


class PortsHandler(_HostHandler):
    kernel_scoped = True

    def post(self) -> None:
        count = req_int(self.json_body(), "count", minimum=1, maximum=32)
        self.send_json(self.owner.allocate_ports(count))


class ReplicasHandler(_HostHandler):
    kernel_scoped = True

    async def get(self) -> None:
        """``?since=V&wait=S``: a long poll, answered once the replicas changed after version ``V`` (or after ``S``
        seconds, at most 60): how a front learns at once that one of its replicas exited."""
        try:
            since = int(self.get_query_argument("since", "-1"))
            wait = min(float(self.get_query_argument("wait", "0")), 60.0)
        except ValueError:
            raise APIError(400, "query arguments 'since' (an integer) and 'wait' (seconds) must be numbers") from None
        if self.get_query_argument("boot", self.owner.boot_id) != self.owner.boot_id:
            wait = 0  # the asker's version is from an earlier run of this daemon: what it knew is gone
        await self.owner.replicas_after(since, wait)
        self.owner.replica_polls += 1
        pool = self.owner.pool
        rows = [r.view() for r in self.owner.replicas.values()
                if self.scope == "admin" or ("kernel", r.kernel_id) == self.scope]  # a kernel sees its own only
        self.send_json({"replicas": rows, "version": self.owner.replicas_version, "boot": self.owner.boot_id,
                        "polls": self.owner.replica_polls,
                        "prewarm": pool.view() if pool is not None else {"size": 0, "waiting": 0, "ready": 0}})

    def post(self) -> None:
        body = self.json_body()
        self.own_kernel(str(body.get("kernel_id")))
        replica = self.owner.launch(body)
        self.send_json({"pid": replica.process.pid, "kernel_id": replica.kernel_id,
                        "replica_id": replica.replica_id, "log": str(replica.log),
                        "version": self.owner.replicas_version, "boot": self.owner.boot_id}, 201)


class ReplicaHandler(_HostHandler):
    kernel_scoped = True

    async def delete(self, kernel_id: str, replica_id: str) -> None:
        self.own_kernel(kernel_id)
        try:
            rid = int(replica_id)
        except ValueError:
            raise APIError(400, f"replica id must be an integer, got {replica_id!r}") from None
        replica = self.owner.replicas.get((kernel_id, rid))
        if replica is None:
            raise APIError(404, f"no replica {rid} of kernel {kernel_id!r} on this host")
        code = await self.owner.stop_replica(replica)
        self.send_json({"kernel_id": kernel_id, "replica_id": rid, "pid": replica.process.pid, "exit_code": code})


def main(argv: list[str] | None = None) -> int:
    """``notebookos hostd [options]``: run a host daemon until SIGINT/SIGTERM."""
    app = HostDaemon()
    try:
        app.initialize(sys.argv[1:] if argv is None else list(argv))
        app.start()
    except (RuntimeError, ValueError, OSError) as exc:  # registration refused, no token, address in use, ...
        print(f"notebookos hostd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
