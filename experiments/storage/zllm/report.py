"""``stats``: what a zLLM store holds, byte counts after each stage, and the family clustering.

Stages, each the bytes that would be stored if the pipeline stopped there:

* ``original``: every ingested file;
* ``after_file_dedup``: files whose whole-file SHA-256 was seen before are dropped;
* ``after_tensor_dedup``: every unique object (tensor, header, other file) once, uncompressed;
* ``after_bitx``: the blobs actually stored (BitX for paired tensors, byte-grouped zstd for the others, zstd
  for non-tensor bytes);
* ``stored``: ``after_bitx`` plus the manifest.

When a ``hub_truth.json`` (written by the hub generator) was among the ingested files, its content is decoded
here, only here, to score the clustering (adjusted Rand index); ingest never reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import bitx
from . import families as fam
from .store import ObjectStore

TRUTH_FILENAME = "hub_truth.json"


def stats(store_dir: str | os.PathLike) -> dict:
    store = ObjectStore(Path(store_dir).absolute())
    manifest = store.load_manifest()
    files, objects = manifest["files"], manifest["objects"]
    original = sum(f["size"] for f in files.values())
    after_file_dedup = sum(f["size"] for f in files.values() if not f.get("duplicate_of"))
    content = objects
    after_tensor_dedup = sum(o["raw_bytes"] for o in content.values())
    blobs = sum(o["stored_bytes"] for o in objects.values())
    manifest_bytes = store.manifest_path.stat().st_size
    stored = blobs + manifest_bytes
    by_codec: dict[str, dict] = {}
    for o in content.values():
        row = by_codec.setdefault(o["codec"], {"objects": 0, "raw_bytes": 0, "stored_bytes": 0})
        row["objects"] += 1
        row["raw_bytes"] += o["raw_bytes"]
        row["stored_bytes"] += o["stored_bytes"]
    for row in by_codec.values():
        row["ratio"] = row["raw_bytes"] / row["stored_bytes"] if row["stored_bytes"] else None
    tensors_total = sum(1 for f in files.values() if not f.get("duplicate_of")
                        for s in f["segments"] if s["kind"] == "tensor")
    result = {
        "store": str(store.root),
        "files": len(files),
        "duplicate_files": sum(1 for f in files.values() if f.get("duplicate_of")),
        "models": len(manifest["models"]),
        "tensors": tensors_total,
        "unique_objects": len(content),
        "unique_tensors": sum(1 for o in content.values() if o["kind"] == "tensor"),
        "original_bytes": original,
        "after_file_dedup": after_file_dedup,
        "after_tensor_dedup": after_tensor_dedup,
        "after_bitx": blobs,
        "manifest_bytes": manifest_bytes,
        "stored_bytes": stored,
        "reduction": 1 - stored / original if original else 0.0,
        "stages": {"original": original, "after_file_dedup": after_file_dedup,
                   "after_tensor_dedup": after_tensor_dedup, "after_bitx": blobs, "stored": stored},
        "codecs": by_codec,
        "families": [{"base": f["base"], "members": f["members"]} for f in manifest["families"]],
        "clustering": dict(manifest.get("clustering", {})),
        "ingests": len(manifest["ingests"]),
    }
    truth = _stored_truth(store, files)
    if truth is not None:
        result["clustering"].update(fam.score([f["members"] for f in manifest["families"]], truth))
        result["clustering"]["adjusted_rand_index"] = result["clustering"]["ari"]  # the long name, same value
        true_bases = {info.get("base_repo") for info in truth.get("repos", {}).values()}
        result["clustering"]["bases_correct"] = sum(1 for f in manifest["families"]
                                                    if f["base"] in true_bases)
    return result


def _stored_truth(store: ObjectStore, files: dict) -> dict | None:
    rels = sorted(rel for rel in files if rel.rsplit("/", 1)[-1] == TRUTH_FILENAME)
    if not rels:
        return None
    entry = files[rels[0]]
    segments = files[entry["duplicate_of"]]["segments"] if entry.get("duplicate_of") else entry["segments"]
    data = b"".join(chunk.tobytes() for seg in segments
                    for chunk in bitx.decode_chunks(store.open_blob(seg["key"], rels[0]), rels[0]))
    try:
        truth = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return truth if isinstance(truth, dict) else None
