"""A replica's object store when hosts are separate machines: a local directory that fills itself from other hosts.

Each host keeps the blobs of a kernel in a directory of its own (``HostDaemon.store_root``). The executor writes a
value there; a replica on another host that needs it finds it missing, asks *its own* host daemon to fetch it
(``POST /api/objects/{kernel}/{digest}/fetch``), and the daemon copies it from whichever host in the cluster has it
(``GET /api/objects/{kernel}/{digest}``) into the local directory, verifying its digest; the replica then maps it
like any local blob. Deleting (garbage, a superseded batch state) deletes on every host, through the daemon
(``POST /api/objects/{kernel}/delete``). The replica authenticates with its kernel's Raft secret, never the cluster token, which user
code must not see.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

from .base import ObjectNotFound, check_digest
from .local import LocalDirectoryStore

log = logging.getLogger(__name__)

#: The environment variable holding the kernel's Raft secret (notebookos.kernel.protocol.RAFT_SECRET_ENV).
SECRET_ENV = "NOTEBOOKOS_RAFT_SECRET"


class HostFetchStore(LocalDirectoryStore):
    """``LocalDirectoryStore`` under ``root`` that asks the host daemon at ``fetch_url`` for blobs it lacks."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, fetch_url: str, kernel_id: str,
                 secret: str | None = None, timeout: float = 600.0, **kwargs: Any):
        super().__init__(root, **kwargs)
        self.fetch_url = fetch_url.rstrip("/")
        self.kernel_id = kernel_id
        self.secret = secret if secret is not None else os.environ.get(SECRET_ENV, "")
        self.timeout = timeout
        self.fetched = 0

    def get_sync(self, digest: str) -> tuple[bytes, list[memoryview]]:
        try:
            return super().get_sync(digest)
        except ObjectNotFound:
            self.fetch(digest)
            return super().get_sync(digest)

    def _unlink_all(self, digests) -> list[str]:
        """Delete here, then have the host daemon delete the copies other hosts hold (fetched or written there):
        garbage is garbage on every host, as in a single machine's one store."""
        gone = super()._unlink_all(digests)
        if digests:
            url = f"{self.fetch_url}/api/objects/{self.kernel_id}/delete"
            request = urllib.request.Request(url, data=json.dumps({"digests": list(digests)}).encode(), method="POST",
                                             headers={"Authorization": f"token {self.secret}",
                                                      "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60.0) as response:
                    response.read()
            except (urllib.error.URLError, OSError) as exc:
                log.warning("could not delete %d object(s) on the other hosts through %s: %s", len(digests),
                            self.fetch_url, exc)
        return gone

    def fetch(self, digest: str) -> None:
        """Have this host's daemon copy the blob here from another host; ObjectNotFound if no host has it."""
        check_digest(digest)
        url = f"{self.fetch_url}/api/objects/{self.kernel_id}/{digest}/fetch"
        request = urllib.request.Request(url, data=b"{}", method="POST", headers={
            "Authorization": f"token {self.secret}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise ObjectNotFound(digest, f"{self.location} or any host of the cluster") from None
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):  # the daemon answers {"error": ...}; else raw text
                detail = json.loads(detail).get("error", detail)
            raise OSError(f"fetching object {digest} through {self.fetch_url} failed: {exc.code} {detail}") from None
        self.fetched += 1
