"""``notebookos scheduler``: the cluster's scheduler as a JSON REST service (tornado).

One per cluster. It holds a :class:`~notebookos.scheduler.cluster.Cluster` (hosts, GPUs, kernels and where their
replicas are) and a :class:`~notebookos.scheduler.policy.SchedulerPolicy`, and answers the kernel fronts (where
to place a new kernel's replicas, which replica runs each cell) and the host daemons (register, deregister). It
grows and shrinks the cluster through a :class:`~notebookos.scheduler.providers.HostProvider`.

Every endpoint needs ``Authorization: token TOKEN`` (``Bearer`` is accepted too); anything else gets 403. Bodies
and answers are JSON; an error is ``{"error": "what was wrong"}`` with a 4xx/5xx status.

Endpoints (``{id}`` path parts are URL-encoded ids):

``POST /api/hosts``  ``{id, gpus, cpus, memory_mb, url, devices?, heartbeat_s?}`` -> 201 host view plus the
    cluster's ``hash_seed`` and ``prewarm_pool_size`` (see hostd's ``prewarm``). ``gpus`` is a
    count (or the list of GPU dicts, then ``devices`` is taken from it). Registering an id again with the same
    ``url`` (a host daemon that restarted) replaces the old record, whose replicas are dropped as lost; another
    ``url`` -> 409. A host that declares ``heartbeat_s`` must then send heartbeats, or is dropped (liveness.py).
``POST /api/hosts/{id}/heartbeat`` -> ``{"host_id"}``; 404 when the scheduler does not know the host (register again).
``GET /api/hosts`` -> ``{"hosts": [host view...]}``;  ``GET /api/hosts/{id}`` -> host view.
``DELETE /api/hosts/{id}`` -> ``{"host_id", "lost_replicas": [{"kernel_id", "replica_id"}]}``: a host leaving
    takes its replicas with it (its daemon stops them), so their records are removed (a cell running on one is
    released).
``POST /api/kernels`` ``{kernel_id, request: {gpus, cpus, memory_mb}}`` -> 201
    ``{"kernel_id", "replicas": [{"replica_id", "host_id", "host_url"}], "hash_seed", "per_cell_replicas"}`` (launch
    the replicas with that PYTHONHASHSEED: the cluster's, which host daemons' prewarmed processes have). With
    ``per_cell_replicas`` (batch) there are none: each ``run`` names a replica to start for that cell only. When the policy finds no room it
    scales out through the host provider and tries again; when the cluster is at ``max_hosts`` -> 503.
``POST /api/kernels/{id}/execute`` ``{wait?: seconds}`` -> one of
    ``{"action": "run", "replica_id", "host_id", "host_url", "devices": [int], "device_uuids": [str]}``
    (the GPUs are committed: call ``finished`` when the cell ends),
    ``{"action": "wait", "position": n, "reason": str, "retry_after": s}`` (queued for GPUs, or a scale-out is
    in progress), ``{"action": "migrate", "replica_id", "to_host", "to_host_url"}`` (start a replica on
    ``to_host``, let it join the Raft group, retire ``replica_id``, report with ``POST .../replicas``, then ask
    again). With ``wait > 0`` the request is held until the answer is not ``wait`` or ``wait`` seconds pass
    (capped by ``max_execute_wait``): a long poll, so a queued cell starts as soon as GPUs free.
    409 while the kernel already runs a cell.
``POST /api/kernels/{id}/finished`` -> ``{"released": bool}`` (releases the cell's GPUs; idempotent).
``POST /api/kernels/{id}/lease`` -> ``{"lease_s"}``: the front is alive; renew its lease (``front_lease``; placing the
    kernel starts it, and its answer carries ``lease_s``). An expired lease ends the kernel as if its front removed it.
``POST /api/kernels/{id}/replicas`` ``{old_replica_id: int|null, new_replica_id, host_id}`` -> kernel view: a
    migration (or a replacement of a lost replica, ``old_replica_id`` null) is done.
``DELETE /api/kernels/{id}/replicas/{replica_id}`` -> kernel view: a replica was lost; forget it.
``POST /api/kernels/{id}/placement`` -> ``{"kernel_id", "replicas": [...], "added": [{"replica_id", "host_id",
    "host_url"}]}``: place the replicas the kernel is missing (after a loss), scaling out like ``POST /api/kernels``.
    The scheduler assigns replica ids (new ids, never reused): the front uses them when it launches the replicas.
``DELETE /api/kernels/{id}`` -> ``{"kernel_id", "removed": true}``.
``GET /api/kernels`` -> ``{"kernels": [kernel view...]}``;  ``GET /api/kernels/{id}`` -> kernel view.
``GET /api/status`` -> hosts, GPUs online/committed/free, the queue, scale-out state, reclaimed kernels.

A kernel reclaimed for idleness answers 410 on every kernel endpoint.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import secrets
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Bool, Dict, Float, Int, Unicode, default
from traitlets.config import Application

from .cluster import Cluster, Host, KernelRecord, ResourceRequest
from .http import (  # noqa: F401 - the env names and write_private_json are part of this module's API too
    SCHEDULER_TOKEN_ENV,
    SCHEDULER_URL_ENV,
    APIError,
    JSONHandler,
    NotFoundHandler,
    kernel_of,
    kernel_token,
    req_dict,
    req_int,
    req_num,
    req_str,
    same_token,
    write_private_json,
)
from .liveness import HostLiveness
from .policy import Migrate, Queue, Run, ScaleOut, SchedulerPolicy, load_policy

# ------------------------------------------------------------------------------------------------- service


#: The bundled policies, resolvable by name even where the installed package metadata predates their entry
#: points (an editable install made before they were added).
BUNDLED_POLICIES = {
    "notebookos": "notebookos.scheduler.policies.notebookos:NotebookOSPolicy",
    "reservation": "notebookos.scheduler.policies.reservation:ReservationPolicy",
    "batch": "notebookos.scheduler.policies.batch:BatchPolicy",
}


def resolve_policy_class(name: str) -> type[SchedulerPolicy] | None:
    """``module:Class`` imports a policy class directly; anything else is an entry point name (None here)."""
    if ":" not in name:
        from .policy import available_policies

        if name in BUNDLED_POLICIES and name not in available_policies():
            return resolve_policy_class(BUNDLED_POLICIES[name])
        return None
    module_name, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import scheduling policy {name!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, SchedulerPolicy)):
        raise ValueError(f"{name!r} is not a SchedulerPolicy subclass")
    return cls


class SchedulerService(Application):
    """The scheduler service: cluster state, a policy, a host provider, and the REST API over them."""

    name = "notebookos-scheduler"
    description = "notebookos cluster scheduler: GPU placement, executor choice, migration, autoscaling."

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
    oversubscription_ratio = Float(7.0, help="Most GPUs the replicas placed on a host may request, as a multiple "
                                   "of its GPUs (the policy's max_subscription_ratio).").tag(config=True)
    max_hosts = Int(64, help="Largest cluster size; scale-out stops there, and cells queue, new kernels get 503."
                    ).tag(config=True)
    min_hosts = Int(0, help="Scale-in never takes the cluster below this many hosts.").tag(config=True)
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
    scale_out_timeout = Float(120.0, help="Seconds a new host may take to register before scale-out fails."
                              ).tag(config=True)
    max_execute_wait = Float(300.0, help="Longest long-poll an execute request may ask for (seconds)."
                             ).tag(config=True)
    policy_config = Dict(help="Extra keyword arguments for the policy's constructor.").tag(config=True)
    provider_config = Dict(help="Extra keyword arguments for the host provider's constructor.").tag(config=True)

    @default("log_format")
    def _log_format_default(self) -> str:
        return "[%(name)s %(asctime)s %(levelname)s] %(message)s"

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
        self.cluster = Cluster()
        self.policy_obj: SchedulerPolicy | None = None
        self.provider = None
        self.host_urls: dict[str, str] = {}
        self.host_devices: dict[str, list[dict]] = {}
        self.managed_hosts: set[str] = set()
        self.liveness = HostLiveness()
        #: kernels told to wait, in order of their first wait
        self.waiting: OrderedDict[str, float] = OrderedDict()
        self.reclaimed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.pending_hosts = 0
        self.last_scale_out_error: tuple[float, str] | None = None
        self._changed: asyncio.Event | None = None
        self._place_lock: asyncio.Lock | None = None
        self._server: HTTPServer | None = None
        self._housekeeping: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self.url = ""

    # -- setup --------------------------------------------------------------------------------------------------
    def make_policy(self) -> SchedulerPolicy:
        kwargs: dict[str, Any] = {"max_subscription_ratio": self.oversubscription_ratio,
                                  "max_hosts": self.max_hosts, "host_gpus": self.host_gpus, **self.policy_config}
        if self.replicas_per_kernel is not None:
            kwargs["replicas_per_kernel"] = self.replicas_per_kernel
        cls = resolve_policy_class(self.policy)
        if cls is not None:
            return cls(parent=self, **kwargs)
        return load_policy(self.policy, parent=self, **kwargs)

    def make_provider(self):
        from .providers import load_host_provider

        return load_host_provider(self.host_provider, parent=self, scheduler_url=self.url,
                                  token=self.host_token or self.token,
                                  **self.provider_config)

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
        a = {"owner": self}
        return web.Application([
            (r"/api/hosts", HostsHandler, a),
            (r"/api/hosts/([^/]+)", HostHandler, a),
            (r"/api/hosts/([^/]+)/heartbeat", HostHeartbeatHandler, a),
            (r"/api/kernels", KernelsHandler, a),
            (r"/api/kernels/([^/]+)", KernelHandler, a),
            (r"/api/kernels/([^/]+)/execute", ExecuteHandler, a),
            (r"/api/kernels/([^/]+)/finished", FinishedHandler, a),
            (r"/api/kernels/([^/]+)/lease", LeaseHandler, a),
            (r"/api/kernels/([^/]+)/replicas", KernelReplicasHandler, a),
            (r"/api/kernels/([^/]+)/placement", PlacementHandler, a),
            (r"/api/kernels/([^/]+)/replicas/([^/]+)", KernelReplicaHandler, a),
            (r"/api/status", StatusHandler, a),
        ], default_handler_class=NotFoundHandler, default_handler_args=a)

    async def listen(self) -> str:
        """Bind, create policy and provider, start housekeeping; returns the service URL."""
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
        self.policy_obj = self.make_policy()
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
    @staticmethod
    def now() -> float:
        return time.monotonic()

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

    def kernel(self, kernel_id: str) -> KernelRecord:
        record = self.cluster.kernels.get(kernel_id)
        if record is not None:
            return record
        if kernel_id in self.reclaimed:
            raise APIError(410, f"kernel {kernel_id!r} was reclaimed: {self.reclaimed[kernel_id]['why']}")
        raise APIError(404, f"no such kernel: {kernel_id!r}")

    def host(self, host_id: str) -> Host:
        try:
            return self.cluster.hosts[host_id]
        except KeyError:
            raise APIError(404, f"no such host: {host_id!r}") from None

    def host_view(self, host: Host) -> dict[str, Any]:
        now = self.now()
        return {
            "id": host.id,
            "url": self.host_urls.get(host.id),
            "gpus": host.gpus,
            "free_gpus": host.free_gpus,
            "committed": {str(d): {"kernel_id": k, "replica_id": r} for d, (k, r) in sorted(host.committed.items())},
            "subscribed_gpus": host.subscribed_gpus,
            "subscription_ratio": host.subscription_ratio if host.gpus else None,
            "cpus": host.cpus,
            "cpus_used": host.cpus_used,
            "memory_mb": host.memory_mb,
            "memory_used_mb": host.memory_used_mb,
            "replicas": [{"kernel_id": k, "replica_id": r} for k, r in sorted(host.replicas)],
            "idle_s": None if host.idle_since is None else round(now - host.idle_since, 3),
            "draining": host.draining,
            "managed": host.id in self.managed_hosts,
            "devices": self.host_devices.get(host.id, []),
        }

    def replica_views(self, record: KernelRecord) -> list[dict[str, Any]]:
        return [{"replica_id": rid, "host_id": r.host_id, "host_url": self.host_urls.get(r.host_id)}
                for rid, r in sorted(record.replicas.items())]

    def kernel_view(self, record: KernelRecord) -> dict[str, Any]:
        running = None
        if record.running is not None:
            rid, devices = record.running
            running = {"replica_id": rid, "host_id": record.replicas[rid].host_id, "devices": list(devices)}
        return {
            "kernel_id": record.id,
            "request": {"gpus": record.request.gpus, "cpus": record.request.cpus,
                        "memory_mb": record.request.memory_mb},
            "replicas": self.replica_views(record),
            "running": running,
            "last_executor": record.last_executor,
            "idle_s": round(self.now() - record.last_active, 3),
            "waiting": self.queue_position(record.id) if record.id in self.waiting else None,
        }

    def refresh_policy(self, host_ids: list[str] | None = None) -> None:
        """Tell the policy about cluster changes made outside it (policies with an index offer ``refresh``)."""
        refresh = getattr(self.policy_obj, "refresh", None)
        if refresh is not None:
            refresh(self.cluster, host_ids)

    def withdraw(self, kernel_id: str) -> None:
        """The kernel no longer waits (removed, reclaimed): take it out of the service's and the policy's queue."""
        self.waiting.pop(kernel_id, None)
        withdraw = getattr(self.policy_obj, "withdraw", None)
        if withdraw is not None:
            withdraw(self.cluster, kernel_id)

    def queue_position(self, kernel_id: str) -> int:
        return list(self.waiting).index(kernel_id) + 1

    def can_grow(self) -> bool:
        return len(self.cluster.hosts) + self.pending_hosts < self.max_hosts

    # -- hosts --------------------------------------------------------------------------------------------------
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
        lost: list[dict[str, Any]] = []
        if host_id in self.cluster.hosts:
            if self.host_urls.get(host_id) != url.rstrip("/"):
                raise APIError(409, f"host {host_id!r} is already registered with url {self.host_urls.get(host_id)!r}")
            self.log.warning("host %s registered again (its daemon restarted): dropping its old replicas", host_id)
            lost = self._drop_host(host_id)
        now = self.now()
        self.cluster.add_host(Host(host_id, gpus=gpus, cpus=cpus, memory_mb=memory_mb, online_since=now,
                                   idle_since=now))
        self.host_urls[host_id] = url.rstrip("/")
        self.host_devices[host_id] = devices or []
        self.liveness.registered(host_id, heartbeat_s, now)
        self.refresh_policy([host_id])
        self.log.info("host %s registered: %d GPU(s), %g CPUs, %d MiB, %s", host_id, gpus, cpus, memory_mb, url)
        self.notify()
        view = self.host_view(self.cluster.hosts[host_id])
        view.update(hash_seed=self.hash_seed, prewarm_pool_size=self.prewarm_pool_size,
                    kernel_token_key=self.kernel_token_key)
        if lost:
            view["lost_replicas"] = lost
        return view

    def _drop_host(self, host_id: str) -> list[dict[str, Any]]:
        """Remove a host and the records of the replicas on it (they went with their host)."""
        now = self.now()
        host = self.cluster.hosts[host_id]
        lost = sorted(host.replicas)
        for kernel_id, replica_id in lost:
            self.cluster.remove_replica(kernel_id, replica_id, now)
        self.cluster.remove_host(host_id)
        self.host_urls.pop(host_id, None)
        self.host_devices.pop(host_id, None)
        self.managed_hosts.discard(host_id)
        self.liveness.forget(host_id)
        self.refresh_policy([host_id])
        if lost:
            self.log.warning("host %s left with %d replica(s): %s", host_id, len(lost), lost)
        return [{"kernel_id": k, "replica_id": r} for k, r in lost]

    @property
    def standing_replicas(self) -> bool:
        """False under a policy that starts a replica per cell (batch): a kernel then has none between cells."""
        return self.policy_obj.replicas_per_kernel > 0

    def host_heartbeat(self, host_id: str) -> dict[str, Any]:
        self.host(host_id)  # 404 tells a daemon the scheduler has forgotten it: it registers again
        self.liveness.heartbeat(host_id, self.now())
        return {"host_id": host_id}

    def drop_silent_hosts(self) -> None:
        """Drop hosts whose daemon stopped sending heartbeats (killed, or its machine is gone)."""
        for host_id, silent_s in self.liveness.silent(self.now(), self.host_timeout):
            managed = host_id in self.managed_hosts
            lost = self._drop_host(host_id)
            self.log.warning("host %s sent no heartbeat for %.1f s: taken for dead, dropped with %d replica(s)",
                             host_id, silent_s, len(lost))
            if managed:  # let the provider clean up what is left of it (a local provider reaps the process)
                self.spawn(self._remove_host(host_id))
            self.notify()

    def deregister_host(self, host_id: str) -> dict[str, Any]:
        self.host(host_id)
        lost = self._drop_host(host_id)
        self.log.info("host %s deregistered", host_id)
        self.notify()
        return {"host_id": host_id, "lost_replicas": lost}

    # -- kernels ------------------------------------------------------------------------------------------------
    async def place_kernel(self, body: dict[str, Any]) -> dict[str, Any]:
        kernel_id = req_str(body, "kernel_id")
        req = req_dict(body, "request", required=False) or {}
        request = ResourceRequest(
            gpus=req_int(req, "gpus", "request.gpus", required=False, default=1),
            cpus=req_num(req, "cpus", "request.cpus", required=False, default=1.0),
            memory_mb=req_int(req, "memory_mb", "request.memory_mb", required=False, default=2048),
        )
        if kernel_id in self.cluster.kernels:
            raise APIError(409, f"kernel {kernel_id!r} already exists")
        async with self._place_lock:
            if kernel_id in self.cluster.kernels:
                raise APIError(409, f"kernel {kernel_id!r} already exists")
            self.reclaimed.pop(kernel_id, None)
            self.cluster.add_kernel(kernel_id, request, self.now())
            try:
                added = await self._place_replicas(kernel_id)
            except BaseException:
                if kernel_id in self.cluster.kernels:
                    touched = [r.host_id for r in self.cluster.kernels[kernel_id].replicas.values()]
                    self.cluster.remove_kernel(kernel_id, self.now())
                    self.withdraw(kernel_id)
                    self.refresh_policy(touched)
                raise
        record = self.cluster.kernels[kernel_id]
        self.log.info("kernel %s placed on %s", kernel_id, ", ".join(r["host_id"] for r in added))
        record.lease_renewed = self.now()
        return {"kernel_id": kernel_id, "replicas": self.replica_views(record), "hash_seed": self.hash_seed,
                "per_cell_replicas": not self.standing_replicas, "lease_s": self.front_lease,
                "kernel_token": kernel_token(self.kernel_token_key, kernel_id)}

    async def top_up(self, kernel_id: str) -> dict[str, Any]:
        """Place the replicas a kernel is missing (after ``DELETE .../replicas/{id}`` reported one lost)."""
        self.kernel(kernel_id)
        async with self._place_lock:
            self.kernel(kernel_id)
            added = await self._place_replicas(kernel_id)
        record = self.kernel(kernel_id)
        if added:
            self.log.info("kernel %s: replacement replica(s) placed: %s", kernel_id, added)
        return {"kernel_id": kernel_id, "replicas": self.replica_views(record), "added": added}

    async def _place_replicas(self, kernel_id: str) -> list[dict[str, Any]]:
        """Ask the policy for hosts (scaling out while it finds none), place what it did not place itself, and
        return the replicas that are new."""
        record = self.cluster.kernels[kernel_id]
        before = set(record.replicas)
        hosts = await self._place_or_grow(kernel_id, record.request)
        missing = [h for h in hosts if not any(r.host_id == h for r in record.replicas.values())]
        for host_id in missing:  # the bundled policies place the replicas themselves; place the rest
            self.cluster.place_replica(kernel_id, host_id)
        if missing:
            self.refresh_policy(missing)
        record.last_active = self.now()
        self.notify()
        return [r for r in self.replica_views(record) if r["replica_id"] not in before]

    async def _place_or_grow(self, kernel_id: str, request: ResourceRequest) -> list[str]:
        while True:
            hosts = self.policy_obj.place(self.cluster, kernel_id, self.now())
            if hosts is not None:
                unknown = [h for h in hosts if h not in self.cluster.hosts]
                if unknown:
                    raise APIError(500, f"policy {self.policy!r} placed replicas on unknown hosts {unknown}")
                return list(hosts)
            room = self.max_hosts - len(self.cluster.hosts) - self.pending_hosts
            if room <= 0:
                raise APIError(503, f"no room for kernel {kernel_id!r} ({self.policy_obj.replicas_per_kernel} "
                               f"replica(s) of {request.gpus} GPU(s) on distinct hosts, oversubscription "
                               f"{self.oversubscription_ratio:g}) and the cluster is at its maximum size "
                               f"(max_hosts={self.max_hosts}, {len(self.cluster.hosts)} hosts"
                               f"{f', {self.pending_hosts} starting' if self.pending_hosts else ''})")
            hosts_needed = getattr(self.policy_obj, "hosts_needed", None)
            count = max(1, min(room, hosts_needed(self.cluster, kernel_id) if hosts_needed else 1))
            self.log.info("no room for kernel %s: scaling out by %d host(s)", kernel_id, count)
            self.pending_hosts += count  # now: an execute that looks meanwhile sees them coming
            results = await asyncio.gather(*(self.scale_out(max(self.host_gpus, request.gpus), reserved=True)
                                             for _ in range(count)), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            if kernel_id not in self.cluster.kernels:
                raise APIError(409, f"kernel {kernel_id!r} was removed while it was being placed")

    def remove_kernel(self, kernel_id: str) -> dict[str, Any]:
        touched = [r.host_id for r in self.kernel(kernel_id).replicas.values()]
        self.spawn(self._forget_objects(kernel_id))
        self.cluster.remove_kernel(kernel_id, self.now())
        self.withdraw(kernel_id)
        self.refresh_policy(touched)
        self.log.info("kernel %s removed", kernel_id)
        self.notify()
        return {"kernel_id": kernel_id, "removed": True}

    async def execute(self, kernel_id: str, wait: float) -> dict[str, Any]:
        deadline = self.now() + min(wait, self.max_execute_wait)
        while True:
            changed = self._changed
            answer = self.decide(kernel_id)
            remaining = deadline - self.now()
            if answer["action"] != "wait" or remaining <= 0:
                return answer
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass

    def decide(self, kernel_id: str) -> dict[str, Any]:
        record = self.kernel(kernel_id)
        # Under a reserving policy (reservation) the kernel holds its GPUs between cells: that is not a running cell.
        if record.running is not None and not getattr(self.policy_obj, "reserves_at_placement", False):
            raise APIError(409, f"kernel {kernel_id!r} already runs a cell on replica {record.running[0]}; "
                           "POST .../finished when it ends")
        if not record.replicas and self.standing_replicas:
            raise APIError(409, f"kernel {kernel_id!r} has no replicas left; POST .../placement to place new ones")
        now = self.now()
        record.last_active = now
        decision = self.policy_obj.schedule_cell(self.cluster, kernel_id, now)
        if isinstance(decision, Run):
            self.waiting.pop(kernel_id, None)
            devices = list(decision.devices)
            known = {d.get("index"): d.get("uuid") for d in self.host_devices.get(decision.host_id, [])}
            return {"action": "run", "replica_id": decision.replica_id, "host_id": decision.host_id,
                    "host_url": self.host_urls.get(decision.host_id), "devices": devices,
                    "device_uuids": [known.get(d) for d in devices]}
        if isinstance(decision, Migrate):
            self.waiting.pop(kernel_id, None)
            if decision.to_host not in self.cluster.hosts:
                raise APIError(500, f"policy {self.policy!r} migrates to unknown host {decision.to_host!r}")
            return {"action": "migrate", "replica_id": decision.replica_id, "to_host": decision.to_host,
                    "to_host_url": self.host_urls.get(decision.to_host)}
        self.waiting.setdefault(kernel_id, now)
        if isinstance(decision, Queue):
            return self._wait(decision.position, "all GPUs the kernel could use are busy; the cell is queued")
        if isinstance(decision, ScaleOut):
            position = self.queue_position(kernel_id)
            if self.pending_hosts:
                return self._wait(position, "no GPU is free; waiting for a new host (scale-out in progress)")
            recent_failure = self.last_scale_out_error and now - self.last_scale_out_error[0] < 10.0
            if recent_failure:
                return self._wait(position, f"no GPU is free and scale-out failed: {self.last_scale_out_error[1]}")
            if self.can_grow():
                self.pending_hosts += 1  # now, so the next execute sees the scale-out in progress
                self.spawn(self._scale_out_quietly(max(decision.gpus, record.request.gpus)))
                return self._wait(position, "no GPU is free; adding a host (scale-out started)")
            return self._wait(position, f"no GPU is free and the cluster is at its maximum size "
                              f"(max_hosts={self.max_hosts}); the cell is queued")
        raise APIError(500, f"policy {self.policy!r} returned an unknown decision {decision!r}")

    @staticmethod
    def _wait(position: int, reason: str) -> dict[str, Any]:
        return {"action": "wait", "position": position, "reason": reason, "retry_after": 1.0}

    def finished(self, kernel_id: str) -> dict[str, Any]:
        record = self.kernel(kernel_id)
        was_running = record.running is not None
        self.policy_obj.cell_finished(self.cluster, kernel_id, self.now())
        record.last_active = self.now()
        if was_running:
            self.notify()
        return {"released": was_running}

    def renew_lease(self, kernel_id: str) -> dict[str, Any]:
        self.kernel(kernel_id).lease_renewed = self.now()
        return {"lease_s": self.front_lease}

    def replicas_changed(self, kernel_id: str, body: dict[str, Any]) -> dict[str, Any]:
        record = self.kernel(kernel_id)
        old = req_int(body, "old_replica_id", required=False)
        new = req_int(body, "new_replica_id")
        host_id = req_str(body, "host_id")
        self.host(host_id)
        if old is not None and old not in record.replicas:
            raise APIError(404, f"kernel {kernel_id!r} has no replica {old}")
        if new in record.replicas:
            raise APIError(409, f"kernel {kernel_id!r} already has a replica {new}")
        clash = [rid for rid, r in record.replicas.items() if r.host_id == host_id and rid != old]
        if clash:
            raise APIError(409, f"kernel {kernel_id!r} already has replica {clash[0]} on host {host_id!r}")
        if old is not None and record.running is not None and record.running[0] == old:
            raise APIError(409, f"replica {old} of kernel {kernel_id!r} runs a cell; finish it before moving it")
        now = self.now()
        touched = [host_id]
        if old is not None:
            touched.append(record.replicas[old].host_id)
            self.cluster.remove_replica(kernel_id, old, now)
        self.cluster.place_replica(kernel_id, host_id, new)
        self.refresh_policy(touched)
        record.last_active = now
        self.log.info("kernel %s: replica %s -> %d on %s", kernel_id, old, new, host_id)
        self.notify()
        return self.kernel_view(record)

    def replica_lost(self, kernel_id: str, replica_id: int) -> dict[str, Any]:
        record = self.kernel(kernel_id)
        if replica_id not in record.replicas:
            raise APIError(404, f"kernel {kernel_id!r} has no replica {replica_id}")
        host_id = record.replicas[replica_id].host_id
        self.cluster.remove_replica(kernel_id, replica_id, self.now())
        self.refresh_policy([host_id])
        self.notify()
        return self.kernel_view(record)

    def status(self) -> dict[str, Any]:
        now = self.now()
        online, committed = self.cluster.gpus_online, self.cluster.gpus_committed
        return {
            "url": self.url,
            "policy": self.policy,
            "hosts": len(self.cluster.hosts),
            "hosts_starting": self.pending_hosts,
            "max_hosts": self.max_hosts,
            "gpus": {"online": online, "committed": committed, "free": online - committed,
                     "subscribed": sum(h.subscribed_gpus for h in self.cluster.hosts.values())},
            "kernels": len(self.cluster.kernels),
            "running": sorted(k.id for k in self.cluster.kernels.values() if k.running is not None),
            "queue": [{"kernel_id": k, "position": i + 1, "waiting_s": round(now - t, 3)}
                      for i, (k, t) in enumerate(self.waiting.items())],
            "last_scale_out_error": self.last_scale_out_error[1] if self.last_scale_out_error else None,
            "reclaimed": [{"kernel_id": k, **v} for k, v in self.reclaimed.items()],
            "prewarm_pool": {"size_per_host": self.prewarm_pool_size},
        }

    # -- scaling ------------------------------------------------------------------------------------------------
    async def scale_out(self, gpus: int, reserved: bool = False) -> str:
        """Add one host through the provider and wait until it registered; raises APIError(503) on failure.
        ``reserved``: the caller already counted it in ``pending_hosts``."""
        if not reserved:
            self.pending_hosts += 1
        try:
            host_id = await asyncio.wait_for(self.provider.add_host(gpus), self.scale_out_timeout)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.last_scale_out_error = (self.now(), message)
            self.log.error("scale-out failed: %s", message)
            raise APIError(503, f"scale-out failed: {message}") from exc
        finally:
            self.pending_hosts -= 1
            self.notify()
        self.last_scale_out_error = None
        if host_id not in self.cluster.hosts:
            raise APIError(503, f"scale-out: host {host_id!r} was started but has not registered")
        self.managed_hosts.add(host_id)
        self.log.info("scaled out: host %s added (%d hosts)", host_id, len(self.cluster.hosts))
        return host_id

    async def _scale_out_quietly(self, gpus: int) -> None:
        try:
            await self.scale_out(gpus, reserved=True)
        except APIError:
            pass

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.housekeeping()
            except Exception:
                self.log.exception("housekeeping pass failed")

    async def housekeeping(self) -> None:
        self.drop_silent_hosts()
        now = self.now()
        if self.front_lease > 0:
            for record in list(self.cluster.kernels.values()):
                silent = now - record.lease_renewed
                if silent > self.front_lease:
                    self.reclaim(record, f"its front did not renew its lease for {silent:.1f} s (front_lease "
                                         f"{self.front_lease:g} s): taken for dead", stop=True)
        if self.session_idle_limit > 0:
            for record in list(self.cluster.kernels.values()):
                idle = now - record.last_active
                if record.running is None and idle >= self.session_idle_limit:
                    self.reclaim(record, f"{idle:.1f} s without activity (session_idle_limit "
                                         f"{self.session_idle_limit:g} s)", stop=self.reclaim_stops_replicas)
        if self.host_idle_limit > 0:
            idle_hosts = [h for h in self.policy_obj.idle_hosts(self.cluster, now, self.host_idle_limit)
                          if h in self.managed_hosts]
            for host_id in idle_hosts:
                if len(self.cluster.hosts) <= self.min_hosts:
                    break
                host = self.cluster.hosts[host_id]
                if host.replicas or host.committed:
                    continue
                self.cluster.remove_host(host_id)  # first, so nothing is placed there while it stops
                self.host_urls.pop(host_id, None)
                self.host_devices.pop(host_id, None)
                self.managed_hosts.discard(host_id)
                self.liveness.forget(host_id)
                self.refresh_policy([host_id])
                self.log.info("scale-in: removing host %s (idle past %g s)", host_id, self.host_idle_limit)
                self.spawn(self._remove_host(host_id))

    async def _remove_host(self, host_id: str) -> None:
        try:
            await self.provider.remove_host(host_id)
        except Exception:
            self.log.exception("scale-in: the provider could not remove host %s", host_id)

    def reclaim(self, record: KernelRecord, why: str, stop: bool) -> None:
        """End a kernel nobody will end (its front is idle past the limit, or dead): free what it holds, and with
        ``stop`` have its host daemons stop its replicas. Its front, if alive, gets 410 saying ``why``."""
        targets = [(self.host_urls.get(r.host_id), r.replica_id) for r in record.replicas.values()]
        touched = [r.host_id for r in record.replicas.values()]
        self.cluster.remove_kernel(record.id, self.now())  # releases the GPUs of a running cell too
        self.withdraw(record.id)
        self.refresh_policy(touched)
        self.reclaimed[record.id] = {"why": why, "reclaimed_at": time.time()}
        while len(self.reclaimed) > 1000:
            self.reclaimed.popitem(last=False)
        self.log.warning("kernel %s reclaimed: %s", record.id, why)
        if stop:
            self.spawn(self._stop_replicas(record.id, targets))
        self.spawn(self._forget_objects(record.id))
        self.notify()

    async def _forget_objects(self, kernel_id: str) -> None:
        """Tell every host the kernel ended, so each drops its copy of the kernel's object store (hostobjects.py:
        a host keeps it past the kernel's last replica there). Hosts without per-host stores answer 404."""
        from .client import HostClient, SchedulerError

        token = kernel_token(self.kernel_token_key, kernel_id)
        for url in list(self.host_urls.values()):
            try:
                await HostClient(url, token).request("DELETE", f"/api/objects/{quote(kernel_id, safe='')}")
            except SchedulerError as exc:
                if exc.status != 404:
                    self.log.warning("kernel %s ended: host %s could not drop its objects: %s", kernel_id, url, exc)
            except Exception as exc:
                self.log.warning("kernel %s ended: host %s could not drop its objects: %s", kernel_id, url, exc)

    async def _stop_replicas(self, kernel_id: str, targets: list[tuple[str | None, int]]) -> None:
        from .client import HostClient, SchedulerError

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


# ------------------------------------------------------------------------------------------------- handlers


class _SchedulerHandler(JSONHandler):
    owner: SchedulerService
    #: method -> the scopes besides admin that may call it (see SchedulerService.authorize)
    allow: dict[str, tuple[str, ...]] = {}


class HostsHandler(_SchedulerHandler):
    allow = {"GET": ("host",), "POST": ("host",)}

    def get(self) -> None:
        self.send_json({"hosts": [self.owner.host_view(h) for h in self.owner.cluster.hosts.values()]})

    def post(self) -> None:
        self.send_json(self.owner.register_host(self.json_body()), 201)


class HostHandler(_SchedulerHandler):
    allow = {"GET": ("host",), "DELETE": ("host",)}

    def get(self, host_id: str) -> None:
        self.send_json(self.owner.host_view(self.owner.host(host_id)))

    def delete(self, host_id: str) -> None:
        self.send_json(self.owner.deregister_host(host_id))


class HostHeartbeatHandler(_SchedulerHandler):
    allow = {"POST": ("host",)}

    def post(self, host_id: str) -> None:
        self.send_json(self.owner.host_heartbeat(host_id))


class KernelsHandler(_SchedulerHandler):
    allow = {"POST": ("launcher",)}

    def get(self) -> None:
        self.send_json({"kernels": [self.owner.kernel_view(k) for k in self.owner.cluster.kernels.values()]})

    async def post(self) -> None:
        self.send_json(await self.owner.place_kernel(self.json_body()), 201)


class KernelHandler(_SchedulerHandler):
    allow = {"GET": ("kernel",), "DELETE": ("kernel",)}

    def get(self, kernel_id: str) -> None:
        self.send_json(self.owner.kernel_view(self.owner.kernel(kernel_id)))

    def delete(self, kernel_id: str) -> None:
        self.send_json(self.owner.remove_kernel(kernel_id))


class ExecuteHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    _closed = False

    def on_connection_close(self) -> None:
        self._closed = True

    async def post(self, kernel_id: str) -> None:
        wait = req_num(self.json_body(), "wait", required=False, default=0.0)
        answer = await self.owner.execute(kernel_id, wait)
        if self._closed and answer["action"] == "run":
            # The front gave up on this long poll: it will never run the cell, so do not keep its GPUs.
            self.owner.log.warning("kernel %s: execute client went away; releasing its GPUs", kernel_id)
            self.owner.finished(kernel_id)
            return
        self.send_json(answer)


class FinishedHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    def post(self, kernel_id: str) -> None:
        self.json_body()
        self.send_json(self.owner.finished(kernel_id))


class LeaseHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    def post(self, kernel_id: str) -> None:
        self.json_body()
        self.send_json(self.owner.renew_lease(kernel_id))


class PlacementHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    async def post(self, kernel_id: str) -> None:
        self.json_body()
        self.send_json(await self.owner.top_up(kernel_id))


class KernelReplicasHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    def post(self, kernel_id: str) -> None:
        self.send_json(self.owner.replicas_changed(kernel_id, self.json_body()))


class KernelReplicaHandler(_SchedulerHandler):
    allow = {"DELETE": ("kernel",)}

    def delete(self, kernel_id: str, replica_id: str) -> None:
        try:
            rid = int(replica_id)
        except ValueError:
            raise APIError(400, f"replica id must be an integer, got {replica_id!r}") from None
        self.send_json(self.owner.replica_lost(kernel_id, rid))


class StatusHandler(_SchedulerHandler):
    def get(self) -> None:
        self.send_json(self.owner.status())


def main(argv: list[str] | None = None) -> int:
    from .app_cli import scheduler_main

    return scheduler_main(argv)


if __name__ == "__main__":
    sys.exit(main())
