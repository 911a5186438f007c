"""A host daemon's share of the object store when hosts are separate machines (see objectstore/hostfetch.py).

With ``HostDaemon.store_root`` set, each kernel's replicas on this host keep their blobs in
``store_root/kernel-<id>``. This module serves them to other hosts and fetches, for a local replica, the blobs that
another host's replica wrote:

``GET /api/objects/{kernel_id}/{digest}`` -> the blob file (cluster token, for other host daemons; or the kernel's
    Raft secret). 404 when this host does not have it.
``DELETE /api/objects/{kernel_id}`` -> ``{"kernel_id", "removed"}``: the kernel ended (the scheduler tells every
    host, with the kernel's token); its directory goes unless a replica of it still runs here. Until then the
    directory outlives the kernel's replicas here: its blobs may be the only copies.
``POST /api/objects/{kernel_id}/delete`` ``{digests, spread?}`` -> ``{"kernel_id", "deleted"}``: delete blobs here
    and (``spread``, the default; the kernel's Raft secret: a replica collecting garbage) on every other host.
``POST /api/objects/{kernel_id}/{digest}/fetch`` -> ``{"digest", "from"}`` once the blob is in this host's directory
    (the kernel's Raft secret: the replica asks). The daemon tries every other host the scheduler knows, copies the
    first answer to a temporary file, and publishes it only after its content digest checks out. 404 when no host
    has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..objectstore.base import CorruptObject, ObjectNotFound, check_digest
from ..objectstore.local import LocalDirectoryStore
from .http import APIError, JSONHandler, bearer, check_token

log = logging.getLogger(__name__)

_CHUNK = 4 << 20


@dataclass
class KernelStore:
    root: Path
    secret: str
    replicas: set[int]


class HostObjects:
    """The kernels' store directories on this host, and copying blobs between hosts."""

    def __init__(self, store_root: str, daemon: Any):
        self.store_root = Path(store_root)
        self.daemon = daemon  # for token, scheduler_url, url
        self.kernels: dict[str, KernelStore] = {}
        self._fetching: dict[tuple[str, str], asyncio.Future] = {}

    def attach(self, kernel_id: str, replica_id: int, secret: str) -> Path:
        """A replica of ``kernel_id`` starts here: the directory its store uses."""
        store = self.kernels.get(kernel_id)
        if store is None:
            root = self.store_root / f"kernel-{kernel_id}"
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            store = self.kernels[kernel_id] = KernelStore(root, secret, set())
        store.secret = secret
        store.replicas.add(replica_id)
        return store.root

    def detach(self, kernel_id: str, running: set[int]) -> None:
        """A replica stopped; ``running`` are the kernel's replicas still running here (one that died without
        being stopped counts as gone). The kernel's directory stays, served to other hosts, until the kernel ends
        (:meth:`forget`): its blobs may be the only copies (a replica that migrated away; under batch, every cell's
        replica is its last one here and leaves the state for the next cell's)."""
        store = self.kernels.get(kernel_id)
        if store is not None:
            store.replicas &= running

    def forget(self, kernel_id: str) -> bool:
        """The kernel ended: remove its directory here, unless one of its replicas still runs. True if removed."""
        store = self.kernels.get(kernel_id)
        if store is None or store.replicas:
            return False
        del self.kernels[kernel_id]
        shutil.rmtree(store.root, ignore_errors=True)
        return True

    def path(self, kernel_id: str, digest: str) -> Path:
        store = self.kernels.get(kernel_id)
        if store is None:
            raise APIError(404, f"no replica of kernel {kernel_id!r} runs on this host")
        return LocalDirectoryStore(store.root).path(check_digest(digest))

    def authorize(self, kernel_id: str, header: str, cluster_ok: bool) -> None:
        store = self.kernels.get(kernel_id)
        if cluster_ok and check_token(header, self.daemon.token):
            return
        if store is not None and check_token(header, store.secret):
            return
        raise APIError(403, "missing or wrong token for this kernel's objects")

    async def delete(self, kernel_id: str, digests: list[str], spread: bool) -> list[str]:
        """Delete blobs of the kernel here and, with ``spread``, on every other host: a kernel's garbage (and a
        superseded batch state) is garbage everywhere, as it is in the one store of a single machine."""
        store = self.kernels.get(kernel_id)
        gone = []
        if store is not None:
            gone = await LocalDirectoryStore(store.root).delete_many([check_digest(d) for d in digests])
        if not spread:
            return gone
        from ..common.client import SchedulerClient

        hosts = await SchedulerClient(self.daemon.scheduler_url, self.daemon.token).hosts()
        client = AsyncHTTPClient()
        body = json.dumps({"digests": digests, "spread": False})
        for host in hosts:
            if host.get("id") == self.daemon.host_id or not host.get("url"):
                continue
            url = f"{host['url'].rstrip('/')}/api/objects/{quote(kernel_id, safe='')}/delete"
            try:
                await client.fetch(HTTPRequest(url, method="POST", body=body, request_timeout=30.0, headers={
                    "Authorization": f"token {self.daemon.token}", "Content-Type": "application/json"}))
            except (HTTPClientError, OSError) as exc:
                log.warning("could not delete %d object(s) of kernel %s on host %s: %s", len(digests), kernel_id,
                            host.get("id"), exc)
        return gone

    async def fetch(self, kernel_id: str, digest: str) -> str:
        """Make sure the blob is here; return the host it came from ('' when it was here already)."""
        key = (kernel_id, digest)
        running = self._fetching.get(key)
        if running is None:
            running = self._fetching[key] = asyncio.ensure_future(self._fetch(kernel_id, digest))
            running.add_done_callback(lambda _: self._fetching.pop(key, None))
        return await asyncio.shield(running)

    async def _fetch(self, kernel_id: str, digest: str) -> str:
        final = self.path(kernel_id, digest)
        if final.is_file():
            return ""
        from ..common.client import SchedulerClient

        hosts = await SchedulerClient(self.daemon.scheduler_url, self.daemon.token).hosts()
        store = LocalDirectoryStore(final.parent.parent, verify=True)
        client = AsyncHTTPClient()
        for host in hosts:
            if host.get("id") == self.daemon.host_id or not host.get("url"):
                continue
            url = f"{host['url'].rstrip('/')}/api/objects/{quote(kernel_id, safe='')}/{digest}"
            fd, tmp = tempfile.mkstemp(prefix="fetch-", dir=final.parent.parent / "tmp")
            try:
                with open(fd, "wb") as out:

                    def write(chunk: bytes, out=out) -> None:  # tornado awaits whatever the callback returns
                        out.write(chunk)

                    await client.fetch(HTTPRequest(url, headers={"Authorization": f"token {self.daemon.token}"},
                                                   streaming_callback=write, request_timeout=3600.0))
                final.parent.mkdir(mode=0o700, exist_ok=True)
                os.replace(tmp, final)
            except HTTPClientError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if exc.code != 404:
                    log.warning("fetching %s of kernel %s from %s: %s", digest, kernel_id, host["id"], exc)
                continue
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                log.warning("fetching %s of kernel %s from %s: %s", digest, kernel_id, host["id"], exc)
                continue
            try:
                await asyncio.to_thread(store.get_sync, digest)  # re-hashes the whole blob
            except (CorruptObject, ObjectNotFound) as exc:
                log.error("object %s from host %s is corrupt (%s); trying other hosts", digest, host["id"], exc)
                final.unlink(missing_ok=True)
                continue
            log.info("copied object %s of kernel %s from host %s", digest, kernel_id, host["id"])
            return host["id"]
        raise APIError(404, f"no host of the cluster has object {digest} of kernel {kernel_id!r}")


class _ObjectsHandler(JSONHandler):
    owner: Any  # HostDaemon

    def prepare(self) -> None:
        """No cluster-token check here: each handler authorises per kernel (its Raft secret, or the cluster
        token for other host daemons) through :meth:`HostObjects.authorize`."""

    @property
    def objects(self) -> HostObjects:
        if self.owner.objects is None:
            raise APIError(404, "this host daemon keeps no per-host object stores (set --store-root)")
        return self.owner.objects


class ObjectHandler(_ObjectsHandler):
    async def get(self, kernel_id: str, digest: str) -> None:
        self.objects.authorize(kernel_id, self.request.headers.get("Authorization", ""), cluster_ok=True)
        path = self.objects.path(kernel_id, digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise APIError(404, f"object {digest} of kernel {kernel_id!r} is not on this host") from None
        with f:
            self.set_header("Content-Type", "application/octet-stream")
            self.set_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            while chunk := f.read(_CHUNK):
                self.write(chunk)
                await self.flush()
        self.finish()


class ObjectFetchHandler(_ObjectsHandler):
    async def post(self, kernel_id: str, digest: str) -> None:
        self.objects.authorize(kernel_id, self.request.headers.get("Authorization", ""), cluster_ok=False)
        source = await self.objects.fetch(kernel_id, digest)
        self.send_json({"digest": digest, "from": source})


class ObjectDeleteHandler(_ObjectsHandler):
    async def post(self, kernel_id: str) -> None:
        body = self.json_body()
        digests = body.get("digests")
        if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
            raise APIError(400, "field 'digests' must be a list of object digests")
        spread = bool(body.get("spread", True))
        # The replica (its Raft secret) asks for its kernel everywhere; another host daemon only here.
        self.objects.authorize(kernel_id, self.request.headers.get("Authorization", ""), cluster_ok=not spread)
        try:
            gone = await self.objects.delete(kernel_id, digests, spread)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        self.send_json({"kernel_id": kernel_id, "deleted": gone})


class KernelObjectsHandler(_ObjectsHandler):
    kernel_scoped = True

    def delete(self, kernel_id: str) -> None:
        """The kernel ended (the scheduler says so, with the kernel's token): drop its directory here."""
        token = bearer(self.request.headers.get("Authorization", ""))
        if self.owner.authorize(self, token or "") not in ("admin", ("kernel", kernel_id)):
            raise APIError(403, f"missing or wrong token for kernel {kernel_id!r}")
        self.send_json({"kernel_id": kernel_id, "removed": self.objects.forget(kernel_id)})


def routes(owner: Any) -> list[tuple[str, type[web.RequestHandler], dict[str, Any]]]:
    a = {"owner": owner}
    return [(r"/api/objects/([^/]+)", KernelObjectsHandler, a),
            (r"/api/objects/([^/]+)/delete", ObjectDeleteHandler, a),
            (r"/api/objects/([^/]+)/([0-9a-f]{64})", ObjectHandler, a),
            (r"/api/objects/([^/]+)/([0-9a-f]{64})/fetch", ObjectFetchHandler, a)]
