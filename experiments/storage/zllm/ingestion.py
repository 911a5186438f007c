"""Ingest a directory of model repos into a zLLM store: file dedup, tensor dedup, families, BitX, zstd.

Stages, in order (see :func:`ingest`):

1. validate every ``.safetensors`` header before anything is written (a bad file fails the whole ingest);
2. scan: SHA-256 of every file (file dedup) and of every tensor (tensor dedup), plus a small weight sample per
   model, two files at a time on a thread pool (hashlib releases the GIL);
3. cluster the models into families by bit distance of their samples and pick each family's base
   (``families``); the ground-truth file of a generated hub is stored like any other file and never read;
4. encode every object not yet in the store: family bases' tensors first (standalone ``split16``), then the
   other models' tensors as BitX against the base tensor of the same name, shape and dtype where there is one,
   headers and other files with zstd; a thread pool over objects, each object streamed chunk by chunk;
5. write the manifest atomically.

Ingest is incremental: a store that already holds a manifest gets the new files added, deduplicated against
everything stored. Stored families keep their base and members; the new models are clustered together with
the stored bases (whose samples are decoded back from the store), join the family of a base they cluster
with, or form new families around their own medoid. Stored blobs are never re-encoded. Re-ingesting an
identical file at the same path is a no-op; a different file at a stored path is an error. One ingest writes
to a store at a time (an exclusive ``flock`` on ``STORE/.lock``). If anything fails after blobs were
written, the blobs this ingest wrote are deleted and the previous manifest is left untouched. A process
killed outright can leave ``*.tmp`` files and blobs no manifest refers to; they are never read, and the next
ingest into the store deletes them before it starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import bitx
from . import families as fam
from .errors import SourceError, StoreError
from .safetensors_io import MappedFile, is_safetensors_name, read_layout
from .store import ObjectStore, tensor_key

LOCK_NAME = ".lock"
STORE_ENTRIES = {LOCK_NAME, "objects"}  # what a store without a manifest yet may hold
HASH_STEP = 8 << 20  # bytes per hashlib call: large, so that it releases the GIL and runs at full speed
WORKERS = max(1, min(4, os.cpu_count() or 1))


@dataclass
class ScannedFile:
    rel: str
    path: Path
    size: int
    sha256: str = ""
    segments: list[dict] = field(default_factory=list)  # kind, key, size, start (+ name, dtype, shape)
    samples: dict = field(default_factory=dict)
    is_safetensors: bool = False
    same_as: ScannedFile | None = None  # an earlier scanned file with the same SHA-256 (tensors not hashed)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


def _list_files(src: Path, exclude: Path | None) -> list[tuple[str, Path]]:
    out = []
    for path in sorted(src.rglob("*")):
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        if path.is_file():
            out.append((path.relative_to(src).as_posix(), path))
    return out


def _sha256_range(mapped: MappedFile, start: int, end: int, hasher=None):
    hasher = hasher or hashlib.sha256()
    for pos in range(start, end, HASH_STEP):
        hasher.update(mapped.view(pos, min(pos + HASH_STEP, end)))
    return hasher


def _scan_file(item: ScannedFile, tick: Callable[[int], None], seen: dict,
               lock: threading.Lock) -> ScannedFile:
    with MappedFile(item.path) as mapped:
        if mapped.size != item.size:
            raise SourceError(f"{item.path}: changed size during ingest; do not modify files being ingested")
        item.sha256 = _sha256_range(mapped, 0, mapped.size).hexdigest()
        tick(item.size // 2)
        with lock:
            item.same_as = seen.setdefault(item.sha256, item)
        if item.same_as is item:
            item.same_as = None
        else:  # a byte-identical copy: its tensors are the original's, no need to hash them again
            tick(item.size - item.size // 2)
            return item
        if not item.is_safetensors:
            item.segments = [{"kind": "file", "key": item.sha256, "size": item.size, "start": 0}]
            tick(item.size - item.size // 2)
            return item
        layout = read_layout(item.path)
        for seg in layout.segments:
            entry = {"kind": seg.kind, "size": seg.end - seg.start, "start": seg.start}
            digest = _sha256_range(mapped, seg.start, seg.end)
            if seg.tensor is None:
                entry["key"] = digest.hexdigest()
            else:
                t = seg.tensor
                entry.update(key=tensor_key(t.dtype, t.shape, digest), name=t.name, dtype=t.dtype,
                             shape=list(t.shape))
                sample = fam.sample_tensor(mapped.view(seg.start, seg.end), t.dtype, t.shape)
                if sample is not None:
                    item.samples[t.name] = (t.dtype, t.shape, sample)
            item.segments.append(entry)
        tick(item.size - item.size // 2)
        return item


class _Ticker:
    """Thread-safe progress updates (tqdm is not meant to be updated from several threads at once)."""

    def __init__(self, bar):
        self.bar, self.lock = bar, threading.Lock()

    def __call__(self, n: int) -> None:
        if self.bar is not None and n:
            with self.lock:
                self.bar.update(n)


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable, window: int):
    """``pool.map`` with at most ``window`` tasks in flight (bounded memory), results in order."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _StoreChunks:
    """Chunks of a stored blob decoded on demand, in order: the BitX base when it is only in the store."""

    def __init__(self, store: ObjectStore, key: str):
        from .restoration import ChunkSource

        self.source = ChunkSource(store, {})
        self.key = key

    def __call__(self, start: int, end: int) -> np.ndarray:
        return self.source.chunk(self.key, start // bitx.CHUNK_BYTES)


def ingest(src: str | os.PathLike, store_dir: str | os.PathLike, progress: bool = False,
           threshold: float = fam.DISTANCE_THRESHOLD, workers: int = WORKERS) -> dict:
    """Ingest every file under ``src`` into the store at ``store_dir`` (created if needed); a summary."""
    started = time.perf_counter()
    cpu_started = time.process_time()  # CPU of every thread of this process
    src, store_dir = Path(src).absolute(), Path(store_dir).absolute()
    if not src.is_dir():
        raise SourceError(f"{src}: no such directory to ingest")
    files = _list_files(src, exclude=store_dir)
    if not files:
        raise SourceError(f"{src}: no files to ingest")
    store = ObjectStore(store_dir)
    if store_dir.exists() and not store_dir.is_dir():
        raise StoreError(f"{store_dir}: exists and is not a directory; pass a new directory or a store")
    if (store_dir.is_dir() and not store.manifest_path.is_file()
            and any(p.name not in STORE_ENTRIES for p in store_dir.iterdir())):
        raise StoreError(f"{store_dir}: exists, is not empty and holds no zLLM manifest; pass an empty or "
                         f"new directory, or an existing store")
    created = not store_dir.exists()
    store_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(store_dir / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            # one writer at a time (the sweep below would delete another ingest's new blobs); the kernel
            # drops the lock if this process dies, so a killed ingest never blocks the next one
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{store_dir}: another ingest is writing to this store; wait for it") from None
        summary = _ingest_locked(store, src, files, threshold, workers, progress, started)
        summary["cpu_seconds"] = time.process_time() - cpu_started
        return summary
    except BaseException:
        if created:  # nothing half-written: a store this call created goes if it fails
            shutil.rmtree(store_dir, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def _ingest_locked(store: ObjectStore, src: Path, files: list[tuple[str, Path]], threshold: float,
                   workers: int, progress: bool, started: float) -> dict:
    store_dir = store.root
    manifest = store.load_manifest(must_exist=False)
    old_objects = set(manifest["objects"])
    store.sweep(keep=old_objects)

    phases: dict[str, float] = {}
    phase_start = time.perf_counter()
    # 1. validate before writing anything
    scanned = []
    for rel, path in files:
        is_st = is_safetensors_name(rel)
        if is_st:
            read_layout(path)
        scanned.append(ScannedFile(rel, path, path.stat().st_size, is_safetensors=is_st))
    total = sum(f.size for f in scanned)
    phases["validate"] = time.perf_counter() - phase_start
    phase_start = time.perf_counter()

    # 2. scan: file and tensor hashes, samples
    bar = _progress(total, "zllm scan", progress)
    tick = _Ticker(bar)
    seen: dict[str, ScannedFile] = {}
    seen_lock = threading.Lock()
    with ThreadPoolExecutor(workers) as pool:
        scanned = list(_bounded_map(pool, lambda f: _scan_file(f, tick, seen, seen_lock), scanned,
                                    2 * workers))
    for f in scanned:
        if f.same_as is not None:
            f.segments, f.samples = f.same_as.segments, f.same_as.samples
    phases["scan"] = time.perf_counter() - phase_start
    if bar is not None:
        bar.close()

    new_files: list[ScannedFile] = []
    for f in scanned:
        stored = manifest["files"].get(f.rel)
        if stored is None:
            new_files.append(f)
        elif stored["sha256"] != f.sha256:
            raise StoreError(f"{f.path}: {f.rel} is already in the store {store_dir} with different content; "
                             f"ingest into a fresh store or rename the file")
    try:
        return _ingest_new(store, manifest, old_objects, src, new_files, (len(scanned), total), threshold,
                           workers, progress, started, phases)
    except BaseException:
        store.rollback(keep=old_objects)
        raise


def _model_id(rel: str) -> str:
    parent = rel.rpartition("/")[0]
    return parent or "."


def _ingest_new(store: ObjectStore, manifest: dict, old_objects: set[str], src: Path,
                new_files: list[ScannedFile], scanned_count_bytes: tuple[int, int], threshold: float,
                workers: int, progress: bool, started: float, phases: dict) -> dict:
    files_scanned, scanned_bytes = scanned_count_bytes
    # file dedup: the first file (stored, then in path order) with a content hash is the one kept
    by_hash = {entry["sha256"]: rel for rel, entry in sorted(manifest["files"].items())
               if not entry.get("duplicate_of")}
    duplicate_of: dict[str, str] = {}
    for f in new_files:
        if f.sha256 in by_hash:
            duplicate_of[f.rel] = by_hash[f.sha256]
        else:
            by_hash[f.sha256] = f.rel

    phase_start = time.perf_counter()
    # models, their tensors and samples; of the models already stored only the family bases are sampled
    # again (decoded from the store), since new models join a family through its base
    tensors_of: dict[str, dict[str, dict]] = {}  # model -> tensor name -> segment (+ source path if new)
    for entry in manifest["files"].values():
        if entry.get("model"):
            original = entry.get("duplicate_of")
            for seg in manifest["files"][original]["segments"] if original else entry["segments"]:
                if seg["kind"] == "tensor":
                    tensors_of.setdefault(entry["model"], {})[seg["name"]] = dict(seg, path=None)
    old_bases = [f["base"] for f in manifest["families"]]
    samples: dict[str, dict] = {m: _samples_from_store(store, tensors_of.get(m, {})) for m in old_bases}
    new_models: set[str] = set()
    for f in new_files:
        if f.is_safetensors:
            model = _model_id(f.rel)
            new_models.add(model)
            samples.setdefault(model, {}).update(f.samples)
            for seg in f.segments:
                if seg["kind"] == "tensor":
                    tensors_of.setdefault(model, {})[seg["name"]] = dict(seg, path=f.path)

    # 3. families and bases: an old family keeps its base and members and gains the new models clustered with
    # its base; new models clustered without an old base form a new family around their medoid
    names, matrix = fam.distance_matrix(samples)
    dtype_of = {m: fam.majority_dtype(s) for m, s in samples.items()}
    families_out = [{"base": f["base"], "members": list(f["members"])} for f in manifest["families"]]
    family_of_base = {f["base"]: f for f in families_out}
    base_of: dict[str, str] = {m: f["base"] for f in families_out for m in f["members"]}
    for group in fam.cluster(names, matrix, threshold):
        joining = [m for m in group if m not in family_of_base and m not in base_of]
        if not joining:
            continue
        base = fam.choose_base(group, names, matrix, dtype_of, set(old_bases))
        if base not in family_of_base:
            family_of_base[base] = {"base": base, "members": []}
            families_out.append(family_of_base[base])
        family_of_base[base]["members"] = sorted(set(family_of_base[base]["members"]) | set(joining))
        for m in joining:
            base_of[m] = base
    families_out.sort(key=lambda f: f["members"][0])

    phases["cluster"] = time.perf_counter() - phase_start
    phase_start = time.perf_counter()
    # 4. plan the objects to write: bases' files first, so that base tensors are standalone
    objects = manifest["objects"]
    plan: dict[str, dict] = {}
    bases = set(base_of.values())
    order = sorted((f for f in new_files if f.rel not in duplicate_of),
                   key=lambda f: (_model_id(f.rel) not in bases, f.rel))
    for f in order:
        model = _model_id(f.rel) if f.is_safetensors else None
        for seg in f.segments:
            key = seg["key"]
            if key in objects or key in plan:
                continue
            job = {"key": key, "path": f.path, "start": seg["start"], "size": seg["size"],
                   "kind": seg["kind"], "dtype": seg.get("dtype", ""), "codec": bitx.CODEC_ZSTD, "base": None}
            if seg["kind"] == "tensor":
                job["codec"] = bitx.choose_codec(seg["dtype"], has_base=False)
                base_seg = tensors_of.get(base_of.get(model, ""), {}).get(seg["name"])
                if (model != base_of.get(model) and base_seg is not None and seg["dtype"] in bitx.BITX_DTYPES
                        and base_seg["dtype"] == seg["dtype"] and base_seg["shape"] == seg["shape"]
                        and base_seg["key"] != key and _is_standalone(base_seg["key"], objects, plan)):
                    job.update(codec=bitx.CODEC_BITX, base=base_seg)
            plan[key] = job

    # 4b. encode, a thread pool over objects
    bar = _progress(sum(j["size"] for j in plan.values()), "zllm encode", progress)
    tick = _Ticker(bar)
    def encode_job(job: dict) -> tuple[str, dict]:
        # Each job maps its source (and base) file for itself: the maps go when the job ends, so resident
        # memory stays at a few tensors instead of growing with every file touched.
        source = MappedFile(job["path"])
        data = source.view(job["start"], job["start"] + job["size"])
        base_fn, base_key, base_source = None, b"", None
        if job["base"] is not None:
            base_seg = job["base"]
            base_key = bytes.fromhex(base_seg["key"])
            if base_seg["path"] is not None:
                base_source = MappedFile(base_seg["path"])
                base_view = base_source.view(base_seg["start"], base_seg["start"] + base_seg["size"])
                base_fn = lambda s, e: base_view[s:e]  # noqa: E731
            else:
                base_fn = _StoreChunks(store, base_seg["key"])
        stored = store.put(job["key"], lambda out, d=data, b=base_fn: bitx.encode(
            out, d, job["dtype"], job["codec"], b, base_key))
        del data, base_fn
        source.close()
        if base_source is not None:
            del base_view
            base_source.close()
        tick(job["size"])
        return job["key"], {"codec": bitx.CODEC_NAMES[job["codec"]], "kind": job["kind"],
                            "raw_bytes": job["size"], "stored_bytes": stored,
                            "base": job["base"]["key"] if job["base"] is not None else None}

    try:
        with ThreadPoolExecutor(workers) as pool:
            for key, info in _bounded_map(pool, encode_job, plan.values(), 4 * workers):
                objects[key] = info
    finally:
        if bar is not None:
            bar.close()
    phases["encode"] = time.perf_counter() - phase_start

    phase_start = time.perf_counter()
    # 5. manifest
    for f in new_files:
        original = duplicate_of.get(f.rel)
        entry = {"sha256": f.sha256, "size": f.size, "duplicate_of": original,
                 "model": _model_id(f.rel) if f.is_safetensors else None}
        if not original:  # a duplicate is restored by copying its original: no segments to store twice
            entry["segments"] = [{k: v for k, v in s.items() if k != "start"} for s in f.segments]
        manifest["files"][f.rel] = entry
        if f.is_safetensors:
            model = manifest["models"].setdefault(_model_id(f.rel), {"files": []})
            model["dtype"] = dtype_of.get(_model_id(f.rel), "")
            if f.rel not in model["files"]:
                model["files"].append(f.rel)
    for model, info in manifest["models"].items():
        info["family"] = next(i for i, g in enumerate(families_out) if model in g["members"])
        info["base"] = base_of[model] == model
    manifest["families"] = families_out
    manifest["clustering"] = {"method": "average-linkage agglomerative on sign+exponent bit distance",
                              "threshold": threshold, "sample_words": fam.SAMPLE_WORDS}
    seconds = time.perf_counter() - started
    added_bytes = sum(objects[k]["stored_bytes"] for k in objects if k not in old_objects)
    summary = {"source": str(src), "files_scanned": files_scanned, "new_files": len(new_files),
               "duplicate_files": len(duplicate_of), "bytes_scanned": scanned_bytes,
               "new_bytes": sum(f.size for f in new_files), "objects_written": len(plan),
               "bitx_objects": sum(1 for j in plan.values() if j["codec"] == bitx.CODEC_BITX),
               "stored_bytes_added": added_bytes, "models": len(manifest["models"]),
               "families": len(families_out),
               "seconds": seconds, "mb_per_s": scanned_bytes / 1e6 / seconds if seconds > 0 else None,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    manifest["ingests"].append(summary)
    store.save_manifest(manifest)
    phases["manifest"] = time.perf_counter() - phase_start
    return dict(summary, store=str(store.root), phase_seconds=phases)


def _is_standalone(key: str, objects: dict, plan: dict) -> bool:
    """True when ``key`` is (or will be) stored without a base, so a BitX chain never gets deeper than 1."""
    if key in plan:
        return plan[key]["codec"] != bitx.CODEC_BITX
    if key in objects:
        return objects[key]["codec"] != "bitx"
    return False


def _samples_from_store(store: ObjectStore, tensors: dict[str, dict]) -> dict:
    """The weight samples of a stored model, decoding only the chunks that hold sampled elements."""
    from .restoration import ChunkSource

    source = ChunkSource(store, {})
    out = {}
    for name, seg in sorted(tensors.items()):
        if seg["dtype"] not in fam.SAMPLED_DTYPES or not seg["size"]:
            continue
        itemsize = 4 if seg["dtype"] == "F32" else 2
        positions = fam.sample_positions(seg["size"] // itemsize) * itemsize
        chunks = {}
        raw = np.empty((len(positions), itemsize), dtype=np.uint8)
        for j, byte in enumerate(positions):
            i = int(byte) // bitx.CHUNK_BYTES
            if i not in chunks:
                chunks[i] = source.chunk(seg["key"], i, f"tensor {name}")
            offset = int(byte) - i * bitx.CHUNK_BYTES
            raw[j] = chunks[i][offset:offset + itemsize]
        out[name] = (seg["dtype"], tuple(seg["shape"]), raw.reshape(-1).view(np.float32 if itemsize == 4
                                                                               else np.uint16).copy())
    source.close()
    return out
