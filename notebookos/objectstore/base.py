"""The object store interface: where the replicas of a kernel keep values too large for the Raft log.

A value travels as what :func:`notebookos.kernel.serialize.dumps` produces: the pickle bytes plus the
out-of-band buffers of pickle protocol 5 (numpy arrays and the like, never copied into the pickle). A store
keeps one such value per *content digest*, so the Raft log carries only the digest, the same value put twice
is stored once, and a blob never changes once written.

Implementations register under the ``notebookos.object_stores`` entry point group and are found by
:func:`load_store`, the way Jupyter finds kernel provisioners.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import re
import struct
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pickle import PickleBuffer
from typing import Any

from blake3 import blake3

from .. import plugins

ENTRY_POINT_GROUP = "notebookos.object_stores"
log = logging.getLogger(__name__)

# BLAKE3: a cryptographic hash (a digest is a value's identity on every replica, so no practical collisions may
# exist) that runs several times faster per core than sha256 even with SHA-NI, because it hashes with the CPU's
# vector units. A training cell re-hashes everything the optimiser changed, so the hash is on the cell's critical
# path (README, "Replicated state at training scale").
DIGEST_ALGORITHM = "blake3"
DIGEST_RE = re.compile(r"[0-9a-f]{64}")

# The digest is a two-level hash: each part (the pickle bytes, each buffer) is cut into leaves of LEAF_SIZE
# bytes, the leaves are hashed in parallel (blake3 releases the GIL), and the root hashes the lengths of the
# parts and the leaf digests. That lets a store hash *before* writing and skip the write when the value is
# already there (the common case: a large value a cell only reads).
LEAF_SIZE = 16 << 20
# Binds the digest to how the bytes split into pickle and buffers, so two different values whose parts
# concatenate to the same bytes cannot share a digest. v2: blake3 (v1 was sha256).
_DIGEST_DOMAIN = b"notebookos-object-v2/blake3-16MiB-leaves\0"
# Below this, threads cost more than they save.
_PARALLEL_MIN = 2 * LEAF_SIZE
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class ObjectNotFound(KeyError):
    """No value with this digest in the store (never written, deleted, or a different store directory)."""

    def __init__(self, digest: str, location: str):
        super().__init__(digest)
        self.digest = digest
        self.location = location

    def __str__(self) -> str:
        return f"object {self.digest} not found in object store {self.location}"


class CorruptObject(ValueError):
    """A stored blob is unreadable: truncated, not a blob, or (when verified) its content does not match."""


def as_bytes_view(buffer: Any) -> memoryview:
    """A flat, byte-format view of one out-of-band buffer without copying it."""
    if isinstance(buffer, PickleBuffer):
        # raw() also accepts Fortran-contiguous buffers, which memoryview.cast refuses.
        return buffer.raw()
    view = memoryview(buffer)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    return view.cast("B") if view.c_contiguous else PickleBuffer(view).raw()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = max(
                1,
                min(
                    len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity")
                    else (os.cpu_count() or 1),
                    8,
                ),
            )
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="notebookos-digest")
        return _pool


def _leaf_digest(view: memoryview) -> bytes:
    return blake3(view).digest()


def content_digest(header: bytes | memoryview, buffers: Iterable[Any] = ()) -> str:
    """The digest of a value (pickle bytes and out-of-band buffers): what a store files it under, and what the
    tracker compares for values kept inline, so both kinds compare alike."""
    parts = [memoryview(header).cast("B"), *(as_bytes_view(b) for b in buffers)]
    leaves = [p[i : i + LEAF_SIZE] for p in parts for i in range(0, max(p.nbytes, 1), LEAF_SIZE)]
    if sum(p.nbytes for p in parts) >= _PARALLEL_MIN:
        leaf_digests = list(_hash_pool().map(_leaf_digest, leaves))
    else:
        leaf_digests = [_leaf_digest(leaf) for leaf in leaves]
    lengths = [p.nbytes for p in parts]
    root = blake3(_DIGEST_DOMAIN + struct.pack(f"<Q{len(lengths)}Q", len(lengths), *lengths))
    root.update(b"".join(leaf_digests))
    return root.hexdigest()


def check_digest(digest: str) -> str:
    """Refuse anything but a digest: it comes from the Raft log and becomes a file or key name."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not an object digest: {digest!r}")
    return digest


class ObjectStore(abc.ABC):
    """A content-addressed store of serialised values, shared by the replicas of a kernel.

    Values are immutable once put; ``put`` of content already present is cheap and changes nothing. Readers
    must never observe a partially written value.
    """

    #: A human-readable location (directory, URL) used in error messages.
    location: str = "?"

    @abc.abstractmethod
    async def put(self, header: bytes, buffers: Sequence[Any], digest: str | None = None) -> tuple[str, int]:
        """Store one value (pickle bytes and its out-of-band buffers); return ``(digest, total_size)``.

        ``digest``, when given, is :func:`content_digest` of the same parts, which the caller computed already:
        the store may use it instead of hashing the value again.
        """

    @abc.abstractmethod
    async def get(self, digest: str) -> tuple[bytes, list[memoryview]]:
        """The pickle bytes and buffers of a value, ready for ``serialize.loads``.

        Raises :class:`ObjectNotFound` or :class:`CorruptObject`.
        """

    @abc.abstractmethod
    async def exists(self, digest: str) -> bool:
        """Whether a value with this digest is stored."""

    @abc.abstractmethod
    async def delete(self, digest: str) -> None:
        """Remove a value; a missing one is not an error. Values already loaded from it stay valid."""

    async def delete_many(self, digests: Sequence[str]) -> list[str]:
        """Remove several values; return the digests now gone (a failure is logged and leaves its value)."""
        results = await asyncio.gather(*(self.delete(d) for d in digests), return_exceptions=True)
        gone = []
        for digest, result in zip(digests, results, strict=True):
            if isinstance(result, Exception):
                log.warning("could not delete object %s from %s: %s", digest, self.location, result)
            else:
                gone.append(digest)
        return gone


#: Built in, also for a source checkout that was never pip-installed (no entry points yet).
_BUILTIN_STORES = {"local": "notebookos.objectstore.local:LocalDirectoryStore",
                   "hostfetch": "notebookos.objectstore.hostfetch:HostFetchStore"}


def available_stores() -> list[str]:
    """Names :func:`load_store` accepts: registered entry points and the built-in stores."""
    return plugins.available(ENTRY_POINT_GROUP, _BUILTIN_STORES)


def load_store(name: str, **kwargs: Any) -> ObjectStore:
    """The object store registered as ``name`` (or ``module:Class``), made with ``kwargs``:
    ``load_store("local", root=...)``."""
    return plugins.load_class(ENTRY_POINT_GROUP, name, ObjectStore, "object store", _BUILTIN_STORES)(**kwargs)
