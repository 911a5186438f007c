"""The scheduler's REST API: its endpoints (below) and their thin handlers, which parse a request, call the
service's :class:`~notebookos.scheduler.core.SchedulerCore` (or the service, for what needs the network) and answer.

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
``POST /api/kernels/{id}/lease`` -> ``{"lease_s", "moves": [{"replica_id", "new_replica_id", "to_host",
    "to_host_url"}]}``: the front is alive; renew its lease (``front_lease``; placing the kernel starts it, and its
    answer carries ``lease_s``). An expired lease ends the kernel as if its front removed it. ``moves``: background
    moves the policy's autoscaler wants of this idle kernel (migrate ``replica_id`` to ``to_host`` as
    ``new_replica_id``, already placed there), listed until the front reports each done (``POST .../replicas``) or
    failed (``DELETE .../replicas/{new_replica_id}``).
``POST /api/kernels/{id}/replicas`` ``{old_replica_id: int|null, new_replica_id, host_id}`` -> kernel view: a
    migration (or a replacement of a lost replica, ``old_replica_id`` null) is done.
``DELETE /api/kernels/{id}/replicas/{replica_id}`` -> kernel view: a replica was lost (or a background move's new
    replica did not come up: the move is cancelled); forget it.
``POST /api/kernels/{id}/placement`` -> ``{"kernel_id", "replicas": [...], "added": [{"replica_id", "host_id",
    "host_url"}]}``: place the replicas the kernel is missing (after a loss), scaling out like ``POST /api/kernels``.
    The scheduler assigns replica ids (new ids, never reused): the front uses them when it launches the replicas.
``DELETE /api/kernels/{id}`` -> ``{"kernel_id", "removed": true}``.
``GET /api/kernels`` -> ``{"kernels": [kernel view...]}``;  ``GET /api/kernels/{id}`` -> kernel view.
``GET /api/status`` -> hosts, GPUs online/committed/free, the waiting queue (the policy's one queue: cells told to
    wait for GPUs or for a scale-out, first in line first), scale-out state, reclaimed kernels.

A kernel reclaimed for idleness answers 410 on every kernel endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .http import APIError, JSONHandler, req_int, req_num, req_str

if TYPE_CHECKING:
    from .service import SchedulerService


def routes(service: SchedulerService) -> list[tuple[str, type, dict[str, Any]]]:
    a = {"owner": service}
    return [
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
    ]


class _SchedulerHandler(JSONHandler):
    owner: SchedulerService
    #: method -> the scopes besides admin that may call it (see SchedulerService.authorize)
    allow: dict[str, tuple[str, ...]] = {}


class HostsHandler(_SchedulerHandler):
    allow = {"GET": ("host",), "POST": ("host",)}

    def get(self) -> None:
        core = self.owner.core
        self.send_json({"hosts": [core.host_view(h) for h in core.cluster.hosts.values()]})

    def post(self) -> None:
        self.send_json(self.owner.register_host(self.json_body()), 201)


class HostHandler(_SchedulerHandler):
    allow = {"GET": ("host",), "DELETE": ("host",)}

    def get(self, host_id: str) -> None:
        self.send_json(self.owner.core.host_view(self.owner.core.host(host_id)))

    def delete(self, host_id: str) -> None:
        self.send_json(self.owner.core.deregister_host(host_id))


class HostHeartbeatHandler(_SchedulerHandler):
    allow = {"POST": ("host",)}

    def post(self, host_id: str) -> None:
        self.send_json(self.owner.core.heartbeat(host_id))


class KernelsHandler(_SchedulerHandler):
    allow = {"POST": ("launcher",)}

    def get(self) -> None:
        core = self.owner.core
        self.send_json({"kernels": [core.kernel_view(k) for k in core.cluster.kernels.values()]})

    async def post(self) -> None:
        self.send_json(await self.owner.place_kernel(self.json_body()), 201)


class KernelHandler(_SchedulerHandler):
    allow = {"GET": ("kernel",), "DELETE": ("kernel",)}

    def get(self, kernel_id: str) -> None:
        self.send_json(self.owner.core.kernel_view(self.owner.core.kernel(kernel_id)))

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
            self.owner.core.finished(kernel_id)
            return
        self.send_json(answer)


class FinishedHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    def post(self, kernel_id: str) -> None:
        self.json_body()
        self.send_json(self.owner.core.finished(kernel_id))


class LeaseHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    def post(self, kernel_id: str) -> None:
        self.json_body()
        self.send_json(self.owner.core.renew_lease(kernel_id))


class PlacementHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    async def post(self, kernel_id: str) -> None:
        self.json_body()
        self.send_json(await self.owner.top_up(kernel_id))


class KernelReplicasHandler(_SchedulerHandler):
    allow = {"POST": ("kernel",)}

    def post(self, kernel_id: str) -> None:
        self.owner.core.kernel(kernel_id)  # 404/410 before the body's checks
        body = self.json_body()
        old = req_int(body, "old_replica_id", required=False)
        new = req_int(body, "new_replica_id")
        host_id = req_str(body, "host_id")
        self.send_json(self.owner.core.replicas_changed(kernel_id, old, new, host_id))


class KernelReplicaHandler(_SchedulerHandler):
    allow = {"DELETE": ("kernel",)}

    def delete(self, kernel_id: str, replica_id: str) -> None:
        try:
            rid = int(replica_id)
        except ValueError:
            raise APIError(400, f"replica id must be an integer, got {replica_id!r}") from None
        self.send_json(self.owner.core.replica_lost(kernel_id, rid))


class StatusHandler(_SchedulerHandler):
    def get(self) -> None:
        self.send_json(self.owner.status())
