"""Async clients for the scheduler's and the host daemon's REST APIs (tornado ``AsyncHTTPClient``).

The kernel front uses :class:`SchedulerClient` (where to place replicas, which one runs a cell) and
:class:`HostClient` (start and stop replica processes on a host). Every method returns the decoded JSON answer or
raises :class:`SchedulerError` carrying the HTTP status and the service's error message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class SchedulerError(RuntimeError):
    """An error answer (``status`` >= 400, or 599 when the service could not be reached)."""

    def __init__(self, status: int, message: str, url: str = ""):
        super().__init__(f"{status}: {message}" + (f" ({url})" if url else ""))
        self.status = status
        self.message = message
        self.url = url


def _q(part: Any) -> str:
    return quote(str(part), safe="")


class _JSONClient:
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    async def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        url = self.url + path
        data = None
        if body is not None or method in ("POST", "PUT", "PATCH"):
            data = json.dumps(body if body is not None else {})
        request = HTTPRequest(url, method=method, body=data, request_timeout=timeout or self.timeout,
                              connect_timeout=min(10.0, timeout or self.timeout),
                              headers={"Authorization": f"token {self.token}",
                                       "Content-Type": "application/json"})
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            raise SchedulerError(599, str(exc), url) from exc
        text = response.body.decode(errors="replace") if response.body else ""
        if response.code >= 400 or response.code == 599:
            message = text
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                if response.error is not None and not text:
                    message = str(response.error)
            raise SchedulerError(response.code, message, url)
        return json.loads(text) if text else None


class SchedulerClient(_JSONClient):
    """The scheduler's API: ``SchedulerClient(url, token)``."""

    async def place(self, kernel_id: str, request: Any = None) -> dict[str, Any]:
        """Place a new kernel; ``request`` is a dict or a ResourceRequest. -> ``{kernel_id, replicas: [...]}``."""
        if is_dataclass(request):
            request = asdict(request)
        timeout = max(self.timeout, 180.0)  # may scale out first
        return await self.request("POST", "/api/kernels", {"kernel_id": kernel_id, "request": request or {}},
                                  timeout=timeout)

    async def execute(self, kernel_id: str, wait: float = 0.0) -> dict[str, Any]:
        """Which replica runs the next cell: ``{"action": "run"|"wait"|"migrate", ...}``. ``wait`` > 0 long-polls
        up to that many seconds while the answer would be ``wait``."""
        return await self.request("POST", f"/api/kernels/{_q(kernel_id)}/execute", {"wait": wait},
                                  timeout=self.timeout + wait)

    async def finished(self, kernel_id: str) -> dict[str, Any]:
        return await self.request("POST", f"/api/kernels/{_q(kernel_id)}/finished", {})

    async def renew_lease(self, kernel_id: str, timeout: float | None = None) -> dict[str, Any]:
        """This kernel's front is alive -> ``{"lease_s"}``."""
        return await self.request("POST", f"/api/kernels/{_q(kernel_id)}/lease", {}, timeout=timeout)

    async def report_migration(self, kernel_id: str, old_replica_id: int | None, new_replica_id: int,
                               host_id: str) -> dict[str, Any]:
        """A migration (or the replacement of a lost replica, ``old_replica_id=None``) is done."""
        return await self.request("POST", f"/api/kernels/{_q(kernel_id)}/replicas",
                                  {"old_replica_id": old_replica_id, "new_replica_id": new_replica_id,
                                   "host_id": host_id})

    async def top_up(self, kernel_id: str) -> dict[str, Any]:
        """Place the replicas the kernel is missing -> ``{kernel_id, replicas, added: [...]}``."""
        return await self.request("POST", f"/api/kernels/{_q(kernel_id)}/placement", {},
                                  timeout=max(self.timeout, 180.0))

    async def replica_lost(self, kernel_id: str, replica_id: int) -> dict[str, Any]:
        return await self.request("DELETE", f"/api/kernels/{_q(kernel_id)}/replicas/{_q(replica_id)}")

    async def remove(self, kernel_id: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/api/kernels/{_q(kernel_id)}")

    async def kernel(self, kernel_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/kernels/{_q(kernel_id)}")

    async def kernels(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/kernels"))["kernels"]

    async def hosts(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/hosts"))["hosts"]

    async def host(self, host_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/api/hosts/{_q(host_id)}")

    async def status(self) -> dict[str, Any]:
        return await self.request("GET", "/api/status")


class HostClient(_JSONClient):
    """A host daemon's API: ``HostClient(host_url, token)``."""

    async def gpus(self) -> dict[str, Any]:
        return await self.request("GET", "/api/gpus")

    async def launch_replica(self, kernel_id: str, replica_id: int, connection: dict[str, Any],
                             config: dict[str, Any], raft_secret: str, hash_seed: int | None = None,
                             cwd: str | None = None) -> dict[str, Any]:
        """Start a replica process; -> ``{"pid", "kernel_id", "replica_id", "log"}``."""
        body: dict[str, Any] = {"kernel_id": kernel_id, "replica_id": replica_id, "connection": connection,
                                "config": config, "raft_secret": raft_secret}
        if hash_seed is not None:
            body["hash_seed"] = hash_seed
        if cwd is not None:
            body["cwd"] = cwd
        return await self.request("POST", "/api/replicas", body)

    async def ports(self, count: int) -> dict[str, Any]:
        """``count`` free ports on the host and the address replicas listen on there: ``{"ip", "ports"}``."""
        return await self.request("POST", "/api/ports", {"count": count})

    async def stop_replica(self, kernel_id: str, replica_id: int) -> dict[str, Any]:
        return await self.request("DELETE", f"/api/replicas/{_q(kernel_id)}/{_q(replica_id)}")

    async def replicas(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/api/replicas"))["replicas"]

    async def replicas_after(self, version: int, wait: float, boot: str = "") -> dict[str, Any]:
        """Long poll: ``{"replicas", "version", "boot"}`` once they changed after ``version`` of the daemon's run
        ``boot``, or after ``wait`` s."""
        return await self.request("GET", f"/api/replicas?since={int(version)}&wait={wait:g}&boot={_q(boot)}",
                                  timeout=self.timeout + wait)
