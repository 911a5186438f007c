"""Baselines run on the same hub as zLLM, and BitX against zstd-3 on the fine-tuned tensors alone.

:func:`compare` returns one row per method: ``{method, stored_bytes, reduction, seconds, note}``:

* ``zstd-3 per file``: every file compressed whole with zstd level 3;
* ``tensor dedup (no compression)``: each unique tensor / header / other file once, raw;
* ``tensor dedup + zstd-3``: the same objects, each zstd-3 compressed;
* ``ZipNN per file``: PyPI ``zipnn`` (byte mode, dtype of the file's tensors) on every safetensors file,
  zstd-3 on the others; every output is decompressed and checked. ``ZipNN.compress`` rewrites its input
  buffer in place (even an immutable ``bytes``), which is why a naive check "decompress(compress(b)) == b"
  fails: ``b`` itself was changed. Given a private ``bytearray`` copy it round-trips byte-identically;
* ``tensor dedup + ZipNN``: the best earlier dedup + compression combination, per unique 16-bit tensor;
* ``zLLM``: this pipeline (file + tensor dedup, families, BitX).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import zstandard

from .ingestion import _list_files
from .report import stats
from .safetensors_io import MappedFile, is_safetensors_name, read_layout
from .store import ObjectStore

ZIPNN_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


def _files(src: Path) -> list[Path]:
    return [path for _, path in _list_files(src, exclude=None)]


def zstd3_per_file(src: Path, progress: bool = False) -> int:
    cctx = zstandard.ZstdCompressor(level=3, threads=-1)
    files = _files(src)
    bar = _bar(sum(p.stat().st_size for p in files), "zstd-3", progress)
    total = 0
    for path in files:
        with MappedFile(path) as mapped:
            total += len(cctx.compress(mapped.view(0, mapped.size))) if mapped.size else 0
        if bar is not None:
            bar.update(path.stat().st_size)
    if bar is not None:
        bar.close()
    return total


def _unique_objects(src: Path):
    """Yield (mapped file, start, end, dtype) for each unique file / header / tensor (by SHA-256)."""
    seen: set[str] = set()
    for path in _files(src):
        with MappedFile(path) as mapped:
            if is_safetensors_name(path):
                ranges = [(s.start, s.end, s.tensor.dtype if s.tensor else "")
                          for s in read_layout(path).segments]
            else:
                ranges = [(0, mapped.size, "")]
            for start, end, dtype in ranges:
                digest = hashlib.sha256(mapped.view(start, end)).hexdigest() + dtype
                if digest not in seen:
                    seen.add(digest)
                    yield mapped, start, end, dtype


def tensor_dedup(src: Path, compress: str | None) -> int:
    cctx = zstandard.ZstdCompressor(level=3)
    total = 0
    for mapped, start, end, dtype in _unique_objects(src):
        data = mapped.view(start, end)
        if compress is None or end == start:
            total += end - start
        elif compress == "zipnn" and dtype in ZIPNN_DTYPES:
            total += _zipnn_size(bytearray(data), ZIPNN_DTYPES[dtype])
        else:
            total += len(cctx.compress(data))
    return total


def _zipnn_size(buffer: bytearray, dtype: str) -> int:
    import zipnn

    expected = hashlib.sha256(buffer).digest()
    codec = zipnn.ZipNN(input_format="byte", bytearray_dtype=dtype, threads=os.cpu_count() or 1)
    compressed = codec.compress(buffer)  # rewrites ``buffer`` in place: it is a private copy
    if hashlib.sha256(bytes(codec.decompress(compressed))).digest() != expected:
        raise RuntimeError(f"zipnn {dtype} round trip is not byte-identical")
    return len(compressed)


def zipnn_per_file(src: Path, progress: bool = False) -> int:
    cctx = zstandard.ZstdCompressor(level=3)
    total = 0
    for path in _files(src):
        data = bytearray(path.read_bytes())  # ZipNN needs the whole buffer (and overwrites it)
        dtype = None
        if is_safetensors_name(path):
            dtypes = [t.dtype for t in read_layout(path).tensors]
            dtype = max(set(dtypes), key=dtypes.count) if dtypes else None
        if dtype in ZIPNN_DTYPES and data:
            total += _zipnn_size(data, ZIPNN_DTYPES[dtype])
        else:
            total += len(cctx.compress(bytes(data)))
    return total


def compare(src_dir: str | os.PathLike, work_dir: str | os.PathLike, progress: bool = False) -> list[dict]:
    """Run every method on ``src_dir`` (zLLM's store goes to ``work_dir/zllm_store``); one row per method."""
    from .ingestion import ingest

    src, work = Path(src_dir).absolute(), Path(work_dir).absolute()
    original = sum(p.stat().st_size for p in _files(src))
    rows = []

    def row(method: str, fn, note: str) -> None:
        started = time.perf_counter()
        try:
            stored = fn()
        except Exception as e:  # a baseline that cannot run is reported, not fatal
            rows.append({"method": method, "stored_bytes": None, "reduction": None, "seconds": None,
                         "note": f"FAILED: {e}"})
            return
        rows.append({"method": method, "stored_bytes": stored, "reduction": 1 - stored / original,
                     "seconds": time.perf_counter() - started, "note": note})

    row("original", lambda: original, "every file of the hub, hub_truth.json included")
    row("zstd-3 per file", lambda: zstd3_per_file(src, progress), "whole files, zstandard level 3")
    row("tensor dedup (no compression)", lambda: tensor_dedup(src, None), "SHA-256 per tensor/header/file")
    row("tensor dedup + zstd-3", lambda: tensor_dedup(src, "zstd"), "each unique object zstd-3")
    row("ZipNN per file", lambda: zipnn_per_file(src, progress),
        "zipnn 0.5.4 byte mode, round trip checked (input copied: compress rewrites it)")
    row("tensor dedup + ZipNN", lambda: tensor_dedup(src, "zipnn"),
        "zipnn per unique 16-bit tensor, zstd-3 for the rest")
    store = work / "zllm_store"
    shutil.rmtree(store, ignore_errors=True)

    def run_zllm() -> int:
        ingest(src, store, progress=progress)
        return stats(store)["stored_bytes"]

    row("zLLM (file+tensor dedup, families, BitX)", run_zllm, f"store at {store}")
    return rows


def bitx_vs_zstd(store_dir: str | os.PathLike, src_dir: str | os.PathLike) -> dict:
    """Compression ratio of BitX and of zstd-3 on exactly the tensors the store encoded with BitX."""
    store = ObjectStore(Path(store_dir).absolute())
    manifest = store.load_manifest()
    src = Path(src_dir).absolute()
    objects = manifest["objects"]
    cctx = zstandard.ZstdCompressor(level=3)
    done: set[str] = set()
    raw = bitx_bytes = zstd_bytes = 0
    for rel, entry in sorted(manifest["files"].items()):
        if entry.get("duplicate_of"):
            continue
        position = 0
        targets = []
        for seg in entry["segments"]:
            if seg["kind"] == "tensor" and objects[seg["key"]]["codec"] == "bitx" and seg["key"] not in done:
                done.add(seg["key"])
                targets.append((position, seg["size"], seg["key"]))
            position += seg["size"]
        if not targets:
            continue
        with MappedFile(src / rel) as mapped:
            for start, size, key in targets:
                raw += size
                bitx_bytes += objects[key]["stored_bytes"]
                zstd_bytes += len(cctx.compress(mapped.view(start, start + size)))
    return {"tensors": len(done), "raw_bytes": raw, "bitx_bytes": bitx_bytes, "zstd3_bytes": zstd_bytes,
            "bitx_ratio": raw / bitx_bytes if bitx_bytes else None,
            "zstd3_ratio": raw / zstd_bytes if zstd_bytes else None,
            "bitx_over_zstd3": (zstd_bytes / bitx_bytes) if bitx_bytes else None}
