"""The default object store: one file per value in a local directory, shared by the replicas on one machine.

Blob files are named by their digest (``root/ab/abcdef...``) and laid out so a reader can map them instead of
reading them::

    fixed header   magic "NBOSBLOB", version, flags, number of buffers, pickle length   (24 bytes)
    lengths        one little-endian u64 per buffer
    pickle bytes   starting at a 64-byte boundary
    buffer i       each starting at a 64-byte boundary (zero padding between parts)

``put`` hashes first (leaves in parallel, see :func:`.base.content_digest`) and returns at once if the digest
is already stored, which is the common case of a large value that a cell mentions but does not change;
otherwise it writes a temporary file and renames it to the digest, so readers never see a partial blob.
``get`` maps the file copy-on-write: arrays rebuilt from it are writable and private, cost no read, and share
the page cache with every other replica on the machine until one writes to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import (
    CorruptObject,
    ObjectNotFound,
    ObjectStore,
    as_bytes_view,
    check_digest,
    content_digest,
    log,
)

MAGIC = b"NBOSBLOB"
VERSION = 1
_FIXED = struct.Struct("<8sHHIQ")  # magic, version, flags, number of buffers, pickle length
ALIGN = 64

# One write() of more than 2 GiB is cut short by Linux; stay well below.
_WRITE_CHUNK = 256 << 20
# Temporary files older than this were left by a crashed writer.
_STALE_TMP_S = 3600.0


def default_root() -> Path:
    """Where replicas of one user on one machine share values when no directory is configured."""
    return Path(tempfile.gettempdir()) / f"notebookos-objects-{os.getuid()}"


def _padding(pos: int) -> int:
    return -pos % ALIGN


def _layout(header_len: int, lengths: Sequence[int]) -> tuple[int, list[int], int]:
    """Offsets of the pickle bytes and of each buffer, and the file size."""
    pos = _FIXED.size + 8 * len(lengths)
    pos += _padding(pos)
    header_off = pos
    pos += header_len
    offsets = []
    for n in lengths:
        pos += _padding(pos)
        offsets.append(pos)
        pos += n
    return header_off, offsets, pos


def _write_all(f: Any, view: memoryview) -> None:
    pos = 0
    while pos < view.nbytes:
        n = f.write(view[pos : pos + _WRITE_CHUNK])
        if not n:
            raise OSError(f"short write to {f.name}")
        pos += n


class LocalDirectoryStore(ObjectStore):
    """Values as files under ``root`` (created if missing).

    ``fsync``: flush each blob to disk before it becomes visible (survives a machine crash; slower).
    ``verify``: re-hash each blob on ``get`` (reads the whole file; catches corruption, not just truncation).
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, *, fsync: bool = False, verify: bool = False
    ):
        self.root = Path(root) if root else default_root()
        self.fsync = fsync
        self.verify = verify
        self.location = str(self.root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._remove_stale_tmp()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def path(self, digest: str) -> Path:
        """The file holding this digest's blob (whether or not it exists)."""
        check_digest(digest)
        return self.root / digest[:2] / digest

    async def put(self, header: bytes, buffers: Sequence[Any], digest: str | None = None) -> tuple[str, int]:
        # Hashing and writing hundreds of MiB would stall the caller's event loop (heartbeats, requests).
        return await asyncio.to_thread(self.put_sync, header, buffers, digest)

    async def get(self, digest: str) -> tuple[bytes, list[memoryview]]:
        if self.verify:
            return await asyncio.to_thread(self.get_sync, digest)
        return self.get_sync(digest)

    async def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    async def delete(self, digest: str) -> None:
        await self.delete_many([digest])

    async def delete_many(self, digests: Sequence[str]) -> list[str]:
        # Freeing a large file's pages takes a while (33 ms for 256 MiB on tmpfs): not on the caller's event loop.
        # The thread starts at this coroutine's first step, so a caller can overlap it with other work.
        return await asyncio.to_thread(self._unlink_all, digests)

    def _unlink_all(self, digests: Sequence[str]) -> list[str]:
        gone = []
        for digest in digests:
            try:
                # Mappings of the file stay valid after unlink: values already loaded from it are unaffected.
                self.path(digest).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete object %s from %s: %s", digest, self.location, exc)
            else:
                gone.append(digest)
        return gone

    def put_sync(self, header: bytes, buffers: Sequence[Any], digest: str | None = None) -> tuple[str, int]:
        """``put`` for callers without an event loop."""
        views = [memoryview(header).cast("B"), *(as_bytes_view(b) for b in buffers)]
        total = sum(v.nbytes for v in views)
        # Hash first (in parallel, faster than writing): content already stored costs no write at all.
        digest = check_digest(digest) if digest is not None else content_digest(views[0], views[1:])
        final = self.path(digest)
        if final.is_file():
            return digest, total
        lengths = [v.nbytes for v in views[1:]]
        meta = _FIXED.pack(MAGIC, VERSION, 0, len(lengths), views[0].nbytes) + struct.pack(
            f"<{len(lengths)}Q", *lengths
        )
        fd, tmp = tempfile.mkstemp(prefix="put-", dir=self._tmp)
        try:
            with open(fd, "wb", buffering=0) as f:
                pos = len(meta)
                _write_all(f, memoryview(meta))
                for v in views:
                    pad = _padding(pos)
                    if pad:
                        _write_all(f, memoryview(bytes(pad)))
                    _write_all(f, v)
                    pos += pad + v.nbytes
                if self.fsync:
                    os.fsync(f.fileno())
            final.parent.mkdir(exist_ok=True, mode=0o700)
            # Atomic: readers see no file or the whole file. A concurrent put of the same content replaces it
            # with identical bytes; existing mappings keep the old inode.
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync:
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return digest, total

    def get_sync(self, digest: str) -> tuple[bytes, list[memoryview]]:
        """``get`` for callers without an event loop."""
        path = self.path(digest)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ObjectNotFound(digest, self.location) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < _FIXED.size:
                raise CorruptObject(f"object {digest} in {self.location} is truncated ({size} bytes)")
            # Copy-on-write: pages come from the page cache and are copied only if the user writes to them.
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            magic, version, _flags, nbuf, header_len = _FIXED.unpack_from(mm, 0)
            if magic != MAGIC:
                raise CorruptObject(f"{path} is not a notebookos object (bad magic {magic!r})")
            if version != VERSION:
                raise CorruptObject(f"{path} has unsupported blob version {version}")
            if size < _FIXED.size + 8 * nbuf:
                raise CorruptObject(f"object {digest} in {self.location} is truncated ({size} bytes)")
            lengths = struct.unpack_from(f"<{nbuf}Q", mm, _FIXED.size)
            header_off, offsets, end = _layout(header_len, lengths)
            if size != end:
                what = "truncated" if size < end else "longer than its header says"
                raise CorruptObject(
                    f"object {digest} in {self.location} is {what} ({size} bytes, expected {end})"
                )
            header = mm[header_off : header_off + header_len]
            if not nbuf:
                mm.close()
                buffers: list[memoryview] = []
            else:
                view = memoryview(mm)
                buffers = [view[off : off + n] for off, n in zip(offsets, lengths, strict=True)]
                # The slices keep the mapping alive (and unclosable) for as long as any value uses them.
                view.release()
            if self.verify and content_digest(header, buffers) != digest:
                raise CorruptObject(f"object {digest} in {self.location} does not match its digest")
            return header, buffers
        except BaseException:
            if not mm.closed:
                try:
                    mm.close()
                except BufferError:  # slices still exported; the mapping goes when they do
                    pass
            raise

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for p in self._tmp.glob("put-*"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
