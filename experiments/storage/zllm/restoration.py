"""Restore every file of a zLLM store, byte-identical, checked by SHA-256 as it is written.

Files are rebuilt from their manifest segments into a hidden sibling directory that is renamed to the output
at the end (and deleted on any failure, so nothing half-written is left). Chunks are decoded on a thread
pool (zstd and numpy release the GIL) a bounded window ahead of the writer, which writes and hashes them in
order; a BitX chunk reads its base from the already-restored base file when there is one (base models'
files are restored first), otherwise decodes the base blob's chunk from the store. Duplicate files are
copied from their restored original.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import bitx
from .errors import RestoreTargetError, StoreCorruptionError
from .safetensors_io import MappedFile
from .store import ObjectStore

WINDOW_CHUNKS = 16  # decoded chunks in flight: bounds memory to ~16 MiB whatever the model size


class ChunkSource:
    """Decoded chunks of any stored object; BitX bases come from restored files when ``restored`` has them."""

    def __init__(self, store: ObjectStore, restored: dict[str, tuple[Path, int]]):
        self.store = store
        self.restored = restored  # key -> (restored file, offset of the tensor in it)
        self._blobs: dict[str, tuple] = {}
        self._files: dict[Path, int] = {}  # restored base files, open for reading
        self._lock = threading.Lock()

    def blob(self, key: str, where: str = ""):
        with self._lock:
            cached = self._blobs.get(key)
            if cached is None:
                blob = self.store.open_blob(key, where or f"object {key}")
                index = bitx.index_blob(blob, where or str(self.store.blob_path(key)))
                cached = self._blobs[key] = (blob, index)
                if len(self._blobs) > 64:  # keep the maps of recent blobs only (bounded resident memory)
                    self._blobs.pop(next(iter(self._blobs)))
            return cached

    def _restored_view(self, key: str, start: int, end: int) -> np.ndarray | None:
        location = self.restored.get(key)
        if location is None:
            return None
        path, offset = location
        with self._lock:
            fd = self._files.get(path)
            if fd is None:
                fd = self._files[path] = os.open(path, os.O_RDONLY)
        # pread, not mmap: a copy of 1 MiB costs little, and mapped base files would stay resident
        data = os.pread(fd, end - start, offset + start)
        if len(data) != end - start:
            raise StoreCorruptionError(f"{path}: restored base file is shorter than expected")
        return np.frombuffer(data, dtype=np.uint8)

    def chunk(self, key: str, i: int, where: str = "") -> np.ndarray:
        blob, index = self.blob(key, where)
        base_chunk = None
        if index.codec == bitx.CODEC_BITX:
            start, end, _ = index.chunks[i]
            base_key = index.base_hex
            base_chunk = self._restored_view(base_key, start, end)
            if base_chunk is None:
                base_chunk = self.chunk(base_key, i, f"base {base_key} of {where}")
        return bitx.decode_chunk(blob, index, i, where or str(self.store.blob_path(key)), base_chunk)

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        self._blobs.clear()


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RestoreTargetError(f"{out}: restore target exists and is not an empty directory; pass a new or "
                                 f"empty directory")


def restore(store_dir: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = False,
            workers: int = 2) -> dict:
    """Rebuild every stored file under ``out_dir`` (new or empty); returns a summary dict."""
    started = time.perf_counter()
    cpu_started = time.process_time()  # CPU of every thread of this process
    store = ObjectStore(Path(store_dir).absolute())
    manifest = store.load_manifest()
    out = Path(out_dir).absolute()
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.zllm-restore-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    files = manifest["files"]
    bases = {f["base"] for f in manifest.get("families", [])}
    order = sorted(files, key=lambda rel: (files[rel].get("duplicate_of") is not None,
                                           files[rel].get("model") not in bases, rel))
    total = sum(files[rel]["size"] for rel in order)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="zllm restore", unit="B", unit_scale=True, leave=False)
    restored: dict[str, tuple[Path, int]] = {}
    source = ChunkSource(store, restored)
    try:
        staging.mkdir()
        with ThreadPoolExecutor(workers) as pool:
            for rel in order:
                entry = files[rel]
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if entry.get("duplicate_of"):
                    digest = _copy_hashing(staging / entry["duplicate_of"], target)
                else:
                    digest = _write_file(source, pool, rel, entry, target, restored)
                if digest != entry["sha256"]:
                    raise StoreCorruptionError(
                        f"{store.root}: restored {rel} has SHA-256 {digest}, the manifest says "
                        f"{entry['sha256']}. The store is damaged: re-ingest the source into a fresh store.")
                if bar is not None:
                    bar.update(entry["size"])
        source.close()
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        source.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    return {"out": str(out), "files": len(order), "bytes": total, "seconds": seconds,
            "mb_per_s": total / 1e6 / seconds if seconds > 0 else None, "verified_sha256": True,
            "cpu_seconds": time.process_time() - cpu_started}


def _write_file(source: ChunkSource, pool: ThreadPoolExecutor, rel: str, entry: dict, target: Path,
                restored: dict) -> str:
    """Rebuild one file. Workers decode chunks and write each at its offset (``os.pwrite``, so writes run in
    parallel too); this thread hashes the chunks in file order, at most ``WINDOW_CHUNKS`` behind."""
    hasher = hashlib.sha256()
    offsets = {}
    pending: deque[Future] = deque()
    position = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def decode_and_write(key: str, i: int, at: int) -> np.ndarray:
        chunk = source.chunk(key, i, rel)
        os.pwrite(fd, chunk, at)
        return chunk

    try:
        for seg in entry["segments"]:
            if seg["kind"] == "tensor":
                offsets[seg["key"]] = position
            if not seg["size"]:
                continue
            # opened just before its chunks are queued, so the workers find the blob in the cache
            _, index = source.blob(seg["key"], f"{rel}: {seg['kind']} {seg.get('name', '')}".strip())
            if index.raw_bytes != seg["size"]:
                raise StoreCorruptionError(f"{rel}: blob {seg['key']} holds {index.raw_bytes} bytes, "
                                           f"the manifest says {seg['size']}; re-ingest into a fresh store")
            for i, (chunk_start, _, _) in enumerate(index.chunks):
                pending.append(pool.submit(decode_and_write, seg["key"], i, position + chunk_start))
                if len(pending) >= WINDOW_CHUNKS:
                    hasher.update(pending.popleft().result())
            position += seg["size"]
        while pending:
            hasher.update(pending.popleft().result())
        os.ftruncate(fd, position)
    finally:
        for future in pending:  # on an error, let queued writes finish before the file is closed
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()
        os.close(fd)
    for key, offset in offsets.items():
        restored.setdefault(key, (target, offset))
    return hasher.hexdigest()


def _copy_hashing(original: Path, target: Path) -> str:
    """Copy with the kernel's copy (no user-space buffers), then hash what was written."""
    shutil.copyfile(original, target)
    hasher = hashlib.sha256()
    with MappedFile(target) as mapped:
        for pos in range(0, mapped.size, 8 << 20):
            hasher.update(mapped.view(pos, min(pos + (8 << 20), mapped.size)))
    return hasher.hexdigest()
