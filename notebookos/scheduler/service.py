"""``notebookos scheduler``: the cluster's scheduler as a JSON REST service (tornado).

One per cluster. Its decisions are a :class:`~notebookos.scheduler.core.SchedulerCore` (the cluster's hosts, GPUs
and kernels, a :class:`~notebookos.scheduler.policy.SchedulerPolicy`, the waiting queue, scale-out accounting,
leases); this module is the service around it: the HTTP server (its endpoints and thin handlers are
:mod:`notebookos.scheduler.api`), token scopes, the traitlets application (``notebookos scheduler``: its options
are the traits, on the command line through ``aliases`` and ``flags``), and what needs the network: adding and removing hosts through a
:class:`~notebookos.scheduler.providers.HostProvider`, telling host daemons to stop replicas or drop objects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Dict, Float, Int, List, Unicode, default
from traitlets.config import Application

from ..common.secrets import SCHEDULER_TOKEN_ENV, write_private_json
from . import api
from .cluster import ResourceRequest
from .core import Chores, PendingHost, SchedulerCore
from .http import (
    APIError,
    NotFoundHandler,
    kernel_of,
    kernel_token,
    req_dict,
    req_int,
    req_num,
    req_str,
    same_token,
)
from .policies.batch import BatchPolicy
from .policies.notebookos import NotebookOSPolicy
from .policies.reservation import ReservationPolicy
from .policy import SchedulerPolicy, policy_class

#: What to say to someone who passes the subscription cap's old names.
OVERSUBSCRIPTION_GONE = ("--oversubscription (SchedulerService.oversubscription_ratio) is gone: the GPU subscription "
                         "cap is the policy's own option, --NotebookOSPolicy.max_subscription_ratio=N "
                         "(c.NotebookOSPolicy.max_subscription_ratio in a config file)")



def last_wins(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """``argv`` with only the last of repeated options that set one trait (``--policy A --policy B``, or
    ``--policy A --SchedulerService.policy=B``): traitlets refuses repeats, a command line built up in steps has them."""
    spans: list[tuple[str, int, int]] = []  # (trait, index, tokens)
    i = 0
    while i < len(argv) and argv[i] != "--":
        name, eq, _ = argv[i].partition("=")
        key = aliases.get(name[2:]) if name.startswith("--") else None
        if key is None and name.startswith("--") and "." in name:
            key = name[2:]
        if key is not None:
            n = 1 if eq or i + 1 >= len(argv) else 2
            spans.append((key, i, n))
            i += n
        else:
            i += 1
    last = {key: i for key, i, _ in spans}
    drop = {j for key, i, n in spans if last[key] != i for j in range(i, i + n)}
    return [a for j, a in enumerate(argv) if j not in drop]


# ------------------------------------------------------------------------------------------------- service


class SchedulerService(Application):
    """The scheduler service: cluster state, a policy, a host provider, and the REST API over them."""

    name = "notebookos-scheduler"
    description = ("notebookos cluster scheduler: GPU placement, executor choice, migration, autoscaling. The "
                   "policy's options are its own: --NotebookOSPolicy.max_subscription_ratio=N (the GPU subscription "
                   "cap, 7 by default), --NotebookOSPolicy.placement=pack, --BatchPolicy.process_start_seconds=S; "
                   "--help-all lists them.")

    ip = Unicode("127.0.0.1", help="Address the REST API listens on.").tag(config=True)
    port = Int(8766, help="Port the REST API listens on (0: a free port; see info_file).").tag(config=True)
    public_url = Unicode("", help="URL host daemons and fronts use to reach this service "
                         "(default http://IP:PORT).").tag(config=True)
    token = Unicode(help="The admin token, good for every request ('Authorization: token T'). Default: "
                    f"${SCHEDULER_TOKEN_ENV}, else a random token (logged, and written to info_file).").tag(config=True)
    host_token = Unicode("", help="Token host daemons use: register, heartbeat, deregister, list hosts; the scheduler "
                         "also uses it with the daemons (empty: hosts use the admin token).").tag(config=True)
    launcher_token = Unicode("", help="Token Jupyter servers' kernel provisioners use: place new kernels (POST "
                             "/api/kernels) and nothing else; each placement answers with a kernel token good for "
                             "that kernel's own requests only (empty: none; the admin token places kernels too)."
                             ).tag(config=True)
    tokens_stdin = Bool(False, help="Read the tokens from one JSON line on stdin ({\"token\", \"host_token\", "
                        "\"launcher_token\"}), a pipe from whoever starts the scheduler (`notebookos up` does): in "
                        "no environment or file that kernel code, running as the same user, could read.").tag(
        config=True)
    kernel_token_key = Unicode(help="Key of the kernel tokens (HMAC of the kernel id). Default: random at start, "
                               "so a restarted scheduler's kernels need new tokens; host daemons get it when they "
                               "register.").tag(config=True)
    info_file = Unicode("", help="Write {url, token, pid} here (mode 0600) once listening; "
                        "lets a launcher use port 0.").tag(config=True)

    policy = Unicode("notebookos", help="Scheduling policy: an entry point name in "
                     "'notebookos.scheduler_policies' (notebookos, reservation, batch) or 'module:Class'."
                     ).tag(config=True)
    replicas_per_kernel = Int(None, allow_none=True, help="Replicas per kernel, passed to the policy "
                              "(None: the policy's default).").tag(config=True)
    max_hosts = Int(64, help="Largest cluster size; scale-out stops there, and cells queue, new kernels get 503."
                    ).tag(config=True)
    min_hosts = Int(0, help="Scale-in never takes the cluster below this many hosts, and while fewer are "
                    "registered the policy's autoscaler counts the missing ones as starting (an admin's own hosts, "
                    "registering; `notebookos up` sets it to --hosts).").tag(config=True)
    host_gpus = Int(8, help="GPUs of a host added by scale-out (the policy's host_gpus).").tag(config=True)
    host_provider = Unicode("local", help="Host provider for scale-out/in: an entry point name in "
                            "'notebookos.host_providers' or 'module:Class'.").tag(config=True)
    host_idle_limit = Float(600.0, help="Seconds a host the provider added may go without replicas before "
                            "scale-in removes it (0: never scale in). Hosts not started by the provider "
                            "(registered by their own daemons) are never removed.").tag(config=True)
    session_idle_limit = Float(0.0, help="Seconds a kernel may go without activity (placement, execute, "
                               "finished, replica report) before it is reclaimed (0: never). A reclaimed "
                               "kernel is removed from the cluster (its GPU subscription, CPU and memory freed), "
                               "its replicas are stopped through their host daemons when "
                               "reclaim_stops_replicas, it is listed under 'reclaimed' in /api/status, and its "
                               "front gets 410 on every later call. A kernel running a cell is never reclaimed."
                               ).tag(config=True)
    front_lease = Float(30.0, help="Seconds a kernel's front may go without renewing its lease (POST "
                        ".../lease; fronts renew every third of it) before the scheduler takes it for dead (a front "
                        "killed with SIGKILL never removes its kernel): the kernel's GPUs are released, its replicas "
                        "stopped through their host daemons, and the kernel forgotten; the front, should it be "
                        "alive after all, gets 410 (0: no leases).").tag(config=True)
    reclaim_stops_replicas = Bool(True, help="When reclaiming an idle kernel, ask its hosts' daemons to stop "
                                  "its replica processes.").tag(config=True)
    prewarm_pool_size = Int(0, help="Replica processes each host daemon keeps started ahead of demand (interpreter "
                            "and imports done), unless the daemon sets its own --prewarm. Told to hosts when they "
                            "register.").tag(config=True)
    hash_seed = Unicode(help="PYTHONHASHSEED of every replica in the cluster (default: random at start). One seed "
                        "lets daemons start replicas ahead of demand, and replicas of a kernel must share one.").tag(
        config=True)
    host_timeout = Float(30.0, help="Seconds a host daemon that sends heartbeats may go silent (at least three of "
                         "its heartbeat intervals) before it is taken for dead and dropped with its replicas "
                         "(0: never).").tag(config=True)
    check_interval = Float(5.0, help="Seconds between housekeeping passes (idle hosts, idle sessions)."
                           ).tag(config=True)
    autoscale_interval = Float(30.0, help="Seconds between passes of the policy's own autoscaler, where it has one "
                               "(c.NotebookOSPolicy.committed_autoscale): hosts it adds, idle kernels' replicas it "
                               "moves in the background, emptied hosts it removes.").tag(config=True)
    move_timeout = Float(300.0, help="Seconds a kernel's front has to carry out a background move (it hears of it "
                         "in its next lease renewal) before the scheduler cancels it.").tag(config=True)
    scale_out_timeout = Float(120.0, help="Seconds a new host may take to register before scale-out fails."
                              ).tag(config=True)
    max_execute_wait = Float(300.0, help="Longest long-poll an execute request may ask for (seconds)."
                             ).tag(config=True)
    policy_config = Dict(help="Extra keyword arguments for the policy's constructor.").tag(config=True)
    provider_config = Dict(help="Extra keyword arguments for the host provider's constructor.").tag(config=True)

    config_file = Unicode("", help="A traitlets config file (.py or .json) to load; the command line wins over it."
                          ).tag(config=True)

    # The command line: `notebookos scheduler --help` lists these with the traits' help strings (as JupyterHub's
    # app). Any other trait is --Class.trait=value (--SchedulerService.front_lease=60,
    # --NotebookOSPolicy.max_subscription_ratio=3).
    aliases = {
        "ip": "SchedulerService.ip",
        "port": "SchedulerService.port",
        "public-url": "SchedulerService.public_url",
        "token": "SchedulerService.token",
        "info-file": "SchedulerService.info_file",
        "policy": "SchedulerService.policy",
        "replicas-per-kernel": "SchedulerService.replicas_per_kernel",
        "max-hosts": "SchedulerService.max_hosts",
        "min-hosts": "SchedulerService.min_hosts",
        "host-gpus": "SchedulerService.host_gpus",
        "host-provider": "SchedulerService.host_provider",
        "host-idle-limit": "SchedulerService.host_idle_limit",
        "session-idle-limit": "SchedulerService.session_idle_limit",
        "prewarm-pool-size": "SchedulerService.prewarm_pool_size",
        "check-interval": "SchedulerService.check_interval",
        "autoscale-interval": "SchedulerService.autoscale_interval",
        "host-timeout": "SchedulerService.host_timeout",
        "config": "SchedulerService.config_file",
        "log-level": "Application.log_level",
    }
    flags = {
        "tokens-stdin": ({"SchedulerService": {"tokens_stdin": True}}, tokens_stdin.help),
    }
    #: Listed by --help-all, so that their options (c.NotebookOSPolicy.max_subscription_ratio, ...) are documented.
    classes = List([NotebookOSPolicy, ReservationPolicy, BatchPolicy])

    @default("log_format")
    def _log_format_default(self) -> str:
        return "[%(name)s %(asctime)s %(levelname)s] %(message)s"

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    @default("token")
    def _token_default(self) -> str:
        return os.environ.get(SCHEDULER_TOKEN_ENV, "")

    @default("kernel_token_key")
    def _kernel_token_key_default(self) -> str:
        return secrets.token_hex(32)

    @default("hash_seed")
    def _hash_seed_default(self) -> str:
        return str(int.from_bytes(os.urandom(4), "little"))

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.core: SchedulerCore | None = None
        self.provider = None
        self._changed: asyncio.Event | None = None
        self._place_lock: asyncio.Lock | None = None
        self._server: HTTPServer | None = None
        self._housekeeping: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self.url = ""

    # -- setup --------------------------------------------------------------------------------------------------
    def initialize(self, argv: list[str] | None = None) -> None:
        """Parse the command line (and ``--config FILE``; the command line wins over it)."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if any(a == "--oversubscription" or a.startswith(("--oversubscription=", "--SchedulerService.oversub"))
               for a in argv):
            raise ValueError(OVERSUBSCRIPTION_GONE)
        self.parse_command_line(last_wins(argv, self.aliases))
        if self.config_file:
            path = Path(self.config_file).resolve()
            if not path.is_file():
                raise ValueError(f"--config {self.config_file}: no such file")
            self.load_config_file(path.name, path=str(path.parent))
            self.update_config(self.cli_config)  # the command line wins over the file
        if "oversubscription_ratio" in self.config.get("SchedulerService", {}):
            raise ValueError(OVERSUBSCRIPTION_GONE)

    def make_policy(self) -> SchedulerPolicy:
        kwargs: dict[str, Any] = {"max_hosts": self.max_hosts, "host_gpus": self.host_gpus, **self.policy_config}
        if self.replicas_per_kernel is not None:
            kwargs["replicas_per_kernel"] = self.replicas_per_kernel
        return policy_class(self.policy)(parent=self, **kwargs)

    def make_core(self) -> SchedulerCore:
        return SchedulerCore(
            self.make_policy(), max_hosts=self.max_hosts, min_hosts=self.min_hosts,
            host_idle_limit=self.host_idle_limit, session_idle_limit=self.session_idle_limit,
            front_lease=self.front_lease, reclaim_stops_replicas=self.reclaim_stops_replicas,
            host_timeout=self.host_timeout, move_timeout=self.move_timeout, log=self.log, error=APIError,
            on_change=self.notify)

    def make_provider(self):
        from .providers import load_host_provider

        return load_host_provider(self.host_provider, parent=self, scheduler_url=self.url,
                                  token=self.host_token or self.token,
                                  **self.provider_config)

    @property
    def cluster(self):
        return self.core.cluster

    @property
    def policy_obj(self) -> SchedulerPolicy:
        return self.core.policy

    def authorize(self, handler: Any, token: str) -> str | None:
        """What ``token`` may do on ``handler``'s endpoint: ``"admin"`` (everything), ``"host"``, ``"launcher"`` or
        ``"kernel"`` where the endpoint allows that scope for the request's method (``Handler.allow``); a kernel
        token only for its own kernel's endpoints. None: 403."""
        if same_token(token, self.token):
            return "admin"
        allowed = getattr(handler, "allow", {}).get(handler.request.method, ())
        if "host" in allowed and same_token(token, self.host_token):
            return "host"
        if "launcher" in allowed and same_token(token, self.launcher_token):
            return "launcher"
        if "kernel" in allowed:
            kernel_id = kernel_of(self.kernel_token_key, token)
            if kernel_id is not None and handler.path_args and handler.path_args[0] == kernel_id:
                return "kernel"
        return None

    def web_app(self) -> web.Application:
        return web.Application(api.routes(self), default_handler_class=NotFoundHandler,
                               default_handler_args={"owner": self})

    async def listen(self) -> str:
        """Bind, create core, policy and provider, start housekeeping; returns the service URL."""
        if self.tokens_stdin:
            line = sys.stdin.readline()
            try:
                tokens = json.loads(line)
            except ValueError:
                raise ValueError("--SchedulerService.tokens_stdin: stdin did not start with a JSON line of tokens"
                                 ) from None
            for key in ("token", "host_token", "launcher_token"):
                if tokens.get(key):
                    setattr(self, key, str(tokens[key]))
        if not self.token:
            self.token = secrets.token_hex(24)
            if not self.info_file:
                self.log.warning("no token configured; generated one: %s", self.token)
        self._changed = asyncio.Event()
        self._place_lock = asyncio.Lock()
        self.core = self.make_core()
        sockets = bind_sockets(self.port, self.ip)
        port = sockets[0].getsockname()[1]
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        self.url = self.public_url.rstrip("/") or f"http://{host}:{port}"
        self._server = HTTPServer(self.web_app())
        self._server.add_sockets(sockets)
        self.provider = self.make_provider()
        if self.info_file:
            write_private_json(self.info_file, {"url": self.url, "token": self.token, "pid": os.getpid()})
        self._housekeeping = asyncio.ensure_future(self._housekeeping_loop())
        self.log.info("notebookos scheduler at %s (policy %s, max %d hosts, host provider %s)", self.url,
                      self.policy, self.max_hosts, self.host_provider)
        return self.url

    async def stop(self) -> None:
        if self._housekeeping:
            self._housekeeping.cancel()
        if self._server:
            self._server.stop()
        for task in list(self._background):
            task.cancel()
        if self.provider is not None:
            try:
                await self.provider.shutdown()
            except Exception:
                self.log.exception("stopping the host provider's hosts")
        if self.info_file:
            Path(self.info_file).unlink(missing_ok=True)

    async def serve(self) -> None:
        """Run until SIGINT/SIGTERM."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.listen()
        await stop.wait()
        self.log.info("shutting down")
        await self.stop()

    def start(self) -> None:
        asyncio.run(self.serve())

    # -- helpers ------------------------------------------------------------------------------------------------
    def notify(self) -> None:
        """Wake long-polling execute requests: GPUs were released or the cluster changed."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def do(self, chores: Chores) -> None:
        """Carry out what the core left to the network, in the background."""
        for kernel_id, targets in chores.stop_replicas:
            self.spawn(self._stop_replicas(kernel_id, targets))
        for kernel_id in chores.ended_kernels:
            self.spawn(self._forget_objects(kernel_id))
        for host_id in chores.remove_hosts:
            self.spawn(self._remove_host(host_id))
        for pending in chores.add_hosts:
            self.spawn(self._scale_out_quietly(pending))

    # -- requests (bodies parsed here, decided by the core) -----------------------------------------------------
    def register_host(self, body: dict[str, Any]) -> dict[str, Any]:
        host_id = req_str(body, "id")
        url = req_str(body, "url")
        if not url.startswith(("http://", "https://")):
            raise APIError(400, f"field 'url' must be an http:// or https:// URL, got {url!r}")
        gpus_field = body.get("gpus")
        devices = body.get("devices")
        if isinstance(gpus_field, list):
            devices = gpus_field if devices is None else devices
            gpus = len(gpus_field)
        else:
            gpus = req_int(body, "gpus")
        if devices is not None and (not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices)):
            raise APIError(400, "field 'devices' must be a list of GPU objects")
        cpus = req_num(body, "cpus", required=False, default=float(os.cpu_count() or 1))
        memory_mb = req_int(body, "memory_mb", required=False, default=0)
        heartbeat_s = req_num(body, "heartbeat_s", required=False, default=0.0)
        view = self.core.register_host(host_id, url, gpus, cpus, memory_mb, devices, heartbeat_s)
        view.update(hash_seed=self.hash_seed, prewarm_pool_size=self.prewarm_pool_size,
                    kernel_token_key=self.kernel_token_key)
        return view

    async def place_kernel(self, body: dict[str, Any]) -> dict[str, Any]:
        kernel_id = req_str(body, "kernel_id")
        req = req_dict(body, "request", required=False) or {}
        request = ResourceRequest(
            gpus=req_int(req, "gpus", "request.gpus", required=False, default=1),
            cpus=req_num(req, "cpus", "request.cpus", required=False, default=1.0),
            memory_mb=req_int(req, "memory_mb", "request.memory_mb", required=False, default=2048),
        )
        core = self.core
        if kernel_id in core.cluster.kernels:
            raise APIError(409, f"kernel {kernel_id!r} already exists")
        async with self._place_lock:
            core.add_kernel(kernel_id, request)
            try:
                added = await self._place_replicas(kernel_id)
            except BaseException:
                if kernel_id in core.cluster.kernels:
                    core.remove_kernel(kernel_id)
                raise
        record = core.cluster.kernels[kernel_id]
        self.log.info("kernel %s placed on %s", kernel_id, ", ".join(r["host_id"] for r in added))
        core.renew_lease(kernel_id)
        return {"kernel_id": kernel_id, "replicas": core.replica_views(record), "hash_seed": self.hash_seed,
                "per_cell_replicas": not core.standing_replicas, "lease_s": self.front_lease,
                "kernel_token": kernel_token(self.kernel_token_key, kernel_id)}

    async def top_up(self, kernel_id: str) -> dict[str, Any]:
        """Place the replicas a kernel is missing (after ``DELETE .../replicas/{id}`` reported one lost)."""
        self.core.kernel(kernel_id)
        async with self._place_lock:
            self.core.kernel(kernel_id)
            added = await self._place_replicas(kernel_id)
        record = self.core.kernel(kernel_id)
        if added:
            self.log.info("kernel %s: replacement replica(s) placed: %s", kernel_id, added)
        return {"kernel_id": kernel_id, "replicas": self.core.replica_views(record), "added": added}

    async def _place_replicas(self, kernel_id: str) -> list[dict[str, Any]]:
        """Place through the core, adding the hosts it asks for while the policy finds no room."""
        while True:
            added = self.core.place(kernel_id)
            if added is not None:
                return added
            pending = self.core.hosts_for_placement(kernel_id)
            results = await asyncio.gather(*(self.scale_out(p) for p in pending), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise failed[0]

    def remove_kernel(self, kernel_id: str) -> dict[str, Any]:
        self.core.kernel(kernel_id)
        self.spawn(self._forget_objects(kernel_id))
        self.core.remove_kernel(kernel_id)
        self.log.info("kernel %s removed", kernel_id)
        return {"kernel_id": kernel_id, "removed": True}

    async def execute(self, kernel_id: str, wait: float) -> dict[str, Any]:
        """The core's answer, held while it is ``wait`` (a long poll of up to ``wait`` seconds)."""
        deadline = self.core.now() + min(wait, self.max_execute_wait)
        while True:
            changed = self._changed
            answer = self.decide(kernel_id)
            remaining = deadline - self.core.now()
            if answer["action"] != "wait" or remaining <= 0:
                return answer
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    def decide(self, kernel_id: str) -> dict[str, Any]:
        answer, new_host = self.core.decide(kernel_id)
        if new_host is not None:
            self.spawn(self._scale_out_quietly(new_host))
        return answer

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "policy": self.policy, **self.core.status(),
                "prewarm_pool": {"size_per_host": self.prewarm_pool_size}}

    # -- the network: host provider, host daemons ----------------------------------------------------------------
    async def scale_out(self, pending: PendingHost) -> str:
        """Have the provider add the host the core counts as ``pending`` and wait until it registered; raises
        APIError(503) on failure."""
        try:
            host_id = await asyncio.wait_for(self.provider.add_host(pending.gpus), self.scale_out_timeout)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.core.scale_out_failed(pending, message)
            raise APIError(503, f"scale-out failed: {message}") from exc
        except BaseException:
            self.core.scale_out_failed(pending, "cancelled")
            raise
        if host_id not in self.core.cluster.hosts:
            self.core.scale_out_failed(pending, f"host {host_id!r} was started but has not registered")
            raise APIError(503, f"scale-out: host {host_id!r} was started but has not registered")
        self.core.host_added(pending, host_id)
        return host_id

    async def _scale_out_quietly(self, pending: PendingHost) -> None:
        try:
            await self.scale_out(pending)
        except APIError:
            pass

    async def _housekeeping_loop(self) -> None:
        next_autoscale = self.core.now() + self.autoscale_interval
        while True:
            await asyncio.sleep(min(self.check_interval, self.autoscale_interval))
            try:
                await self.housekeeping()
                if self.core.now() >= next_autoscale:
                    next_autoscale = self.core.now() + self.autoscale_interval
                    self.do(self.core.autoscale())
            except Exception:
                self.log.exception("housekeeping pass failed")

    async def housekeeping(self) -> None:
        self.do(self.core.housekeeping())

    async def _remove_host(self, host_id: str) -> None:
        try:
            await self.provider.remove_host(host_id)
        except Exception:
            self.log.exception("scale-in: the provider could not remove host %s", host_id)

    async def _forget_objects(self, kernel_id: str) -> None:
        """Tell every host the kernel ended, so each drops its copy of the kernel's object store (hostobjects.py:
        a host keeps it past the kernel's last replica there). Hosts without per-host stores answer 404."""
        from ..common.client import HostClient, SchedulerError

        token = kernel_token(self.kernel_token_key, kernel_id)
        for url in list(self.core.host_urls.values()):
            try:
                await HostClient(url, token).request("DELETE", f"/api/objects/{quote(kernel_id, safe='')}")
            except SchedulerError as exc:
                if exc.status != 404:
                    self.log.warning("kernel %s ended: host %s could not drop its objects: %s", kernel_id, url, exc)
            except Exception as exc:
                self.log.warning("kernel %s ended: host %s could not drop its objects: %s", kernel_id, url, exc)

    async def _stop_replicas(self, kernel_id: str, targets: list[tuple[str | None, int]]) -> None:
        from ..common.client import HostClient, SchedulerError

        for url, replica_id in targets:
            if not url:
                continue
            try:
                await HostClient(url, kernel_token(self.kernel_token_key, kernel_id)).stop_replica(kernel_id, replica_id)
            except SchedulerError as exc:
                if exc.status != 404:  # 404: not launched through that daemon (standalone front)
                    self.log.warning("reclaim %s: stopping replica %d at %s: %s", kernel_id, replica_id, url, exc)
            except Exception as exc:
                self.log.warning("reclaim %s: stopping replica %d at %s: %s", kernel_id, replica_id, url, exc)


def main(argv: list[str] | None = None) -> int:
    """``notebookos scheduler [options]``: run the scheduler until SIGINT/SIGTERM."""
    app = SchedulerService()
    try:
        app.initialize(sys.argv[1:] if argv is None else list(argv))
        app.start()
    except (ValueError, OSError) as exc:  # unknown policy or provider, address in use, an option that is gone, ...
        print(f"notebookos scheduler: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
