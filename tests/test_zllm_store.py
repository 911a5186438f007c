"""zLLM storage pipeline: byte-identical round trips, dedup, BitX, families, bad input, CLI, stats."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("zstandard")
pytest.importorskip("sklearn")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from experiments.storage.zllm import bitx  # noqa: E402
from experiments.storage.zllm.errors import (  # noqa: E402
    RestoreTargetError,
    SafetensorsFormatError,
    SourceError,
    StoreCorruptionError,
    StoreError,
    ZllmError,
)
from experiments.storage.zllm.pipeline import ingest, restore, stats  # noqa: E402
from experiments.storage.zllm.store import MANIFEST_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# --- synthetic hubs ---

def _weights(shapes: dict, seed: int, dtype) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(shape, generator=g) * 0.05).to(dtype) for name, shape in shapes.items()}


def _finetune(state: dict, seed: int, scale: float, frozen: tuple = ()) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if any(name.startswith(f) for f in frozen):
            out[name] = t.clone()  # bit-identical to the base: tensor dedup
        else:
            delta = torch.randn(t.shape, generator=g) * scale
            out[name] = (t.float() * (1 + delta)).to(t.dtype)
    return out


def _repo(root: Path, name: str, state: dict, metadata: dict | None = None) -> None:
    (root / name).mkdir(parents=True)
    save_file(state, str(root / name / "model.safetensors"), metadata=metadata)
    (root / name / "config.json").write_text(json.dumps({"model_type": "llama", "name": name.split("--")[0]}))


def make_hub(root: Path) -> dict[str, str]:
    """Families A and B (bf16, same shapes), C (fp16, other shapes); returns repo -> true family."""
    shared = {"layers.0.w": (64, 48), "layers.1.w": (64, 48), "norm": (48,), "head": (32, 48)}
    other = {"layers.0.w": (40, 40), "layers.1.w": (40, 40), "head": (16, 40)}
    truth = {}
    for fam, shapes, dtype, seed in (("A", shared, torch.bfloat16, 1), ("B", shared, torch.bfloat16, 2),
                                     ("C", other, torch.float16, 3)):
        base = _weights(shapes, seed, dtype)
        _repo(root, f"org{fam}--base", base)
        _repo(root, f"org{fam}--full", _finetune(base, seed + 10, 0.01))
        _repo(root, f"org{fam}--frozen", _finetune(base, seed + 20, 0.01, frozen=("layers.0", "norm")))
        _repo(root, f"org{fam}--small", _finetune(base, seed + 30, 0.002), metadata={"format": "pt"})
        truth.update({f"org{fam}--{kind}": fam for kind in ("base", "full", "frozen", "small")})
    shutil.copytree(root / "orgA--full", root / "mirror--orgA-full")  # an exact duplicate upload
    truth["mirror--orgA-full"] = "A"
    return truth


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def hub(tmp_path) -> Path:
    root = tmp_path / "hub"
    truth = make_hub(root)
    (root / "hub_truth.json").write_text(json.dumps({"repos": {r: {"family": f} for r, f in truth.items()}}))
    return root


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory) -> Path:
    hub_mod = pytest.importorskip("experiments.storage.zllm.hub")
    out = tmp_path_factory.mktemp("tiny") / "hub"
    hub_mod.generate_hub(out, "tiny", seed=0)
    return out


# --- round trips ---

def test_round_trip_synthetic_hub(hub, tmp_path):
    summary = ingest(hub, tmp_path / "store")
    assert summary["new_files"] == len(_hashes(hub)) and summary["duplicate_files"] >= 2
    result = restore(tmp_path / "store", tmp_path / "out")
    assert result["verified_sha256"] and _hashes(tmp_path / "out") == _hashes(hub)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_families_and_bases_recovered_on_synthetic_hub(hub, tmp_path):
    ingest(hub, tmp_path / "store")
    s = stats(tmp_path / "store")
    assert s["clustering"]["ari"] == 1.0
    assert sorted(f["base"] for f in s["families"]) == ["orgA--base", "orgB--base", "orgC--base"]
    assert s["codecs"]["bitx"]["objects"] > 0


def test_round_trip_and_clustering_on_tiny_generated_hub(tiny_hub, tmp_path):
    ingest(tiny_hub, tmp_path / "store")
    s = stats(tmp_path / "store")
    assert s["clustering"]["ari"] == 1.0, s["families"]
    assert s["clustering"]["bases_correct"] == s["clustering"]["true_families"]
    assert s["reduction"] > 0.3
    restore(tmp_path / "store", tmp_path / "out")
    assert _hashes(tmp_path / "out") == _hashes(tiny_hub)


def test_incremental_ingest_adds_to_the_store(hub, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for i, repo in enumerate(sorted(p for p in hub.iterdir() if p.is_dir())):
        shutil.copytree(repo, (first if i % 2 else second) / repo.name)
    shutil.copy(hub / "hub_truth.json", second)
    ingest(first, tmp_path / "store")
    again = ingest(first, tmp_path / "store")  # the same files again: nothing new
    assert again["new_files"] == 0 and again["objects_written"] == 0
    ingest(second, tmp_path / "store")
    assert stats(tmp_path / "store")["clustering"]["ari"] == 1.0
    restore(tmp_path / "store", tmp_path / "out")
    assert _hashes(tmp_path / "out") == _hashes(hub)


def test_conflicting_path_in_incremental_ingest_is_refused(hub, tmp_path):
    ingest(hub, tmp_path / "store")
    (hub / "orgA--base" / "config.json").write_text("{}")
    with pytest.raises(StoreError, match="different content"):
        ingest(hub, tmp_path / "store")


# --- dedup ---

def test_duplicate_file_is_stored_once(hub, tmp_path):
    ingest(hub, tmp_path / "s1")
    shutil.copytree(hub / "orgB--full", hub / "another--copy")
    ingest(hub, tmp_path / "s2")
    s1, s2 = stats(tmp_path / "s1"), stats(tmp_path / "s2")
    added = sum(p.stat().st_size for p in (hub / "another--copy").iterdir())
    assert s2["original_bytes"] == s1["original_bytes"] + added
    assert s2["after_bitx"] == s1["after_bitx"]  # not one blob byte more
    assert s2["reduction"] > s1["reduction"]


def test_frozen_tensors_are_stored_once(hub, tmp_path):
    ingest(hub, tmp_path / "store")
    s = stats(tmp_path / "store")
    assert s["after_tensor_dedup"] < s["after_file_dedup"]
    assert s["unique_tensors"] < s["tensors"]


# --- BitX ---

SPECIAL = {"BF16": [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0x0001, 0x807F, 0x3F80],
           "F16": [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x0001, 0x83FF, 0x3C00]}


def _roundtrip(fine: np.ndarray, base: np.ndarray | None, dtype: str) -> None:
    out = io.BytesIO()
    fine8 = fine.view(np.uint8)
    base8 = None if base is None else base.view(np.uint8)
    codec = bitx.CODEC_BITX if base is not None else bitx.CODEC_SPLIT16
    bitx.encode(out, fine8, dtype, codec, None if base8 is None else (lambda s, e: base8[s:e]), b"k" * 32)
    base_fn = None if base8 is None else (lambda s, e: base8[s:e])
    chunks = list(bitx.decode_chunks(out.getvalue(), "test", base_fn))
    restored = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    assert restored.tobytes() == fine8.tobytes()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["BF16", "F16"]), st.lists(st.integers(0, 0xFFFF), max_size=300),
       st.lists(st.integers(0, 0xFFFF), max_size=300), st.booleans())
def test_bitx_round_trips_any_bit_pattern(dtype, a, b, with_base):
    n = min(len(a), len(b))
    fine = np.array(a[:n] + SPECIAL[dtype], dtype=np.uint16)
    base = np.array(b[:n] + SPECIAL[dtype][::-1], dtype=np.uint16)
    _roundtrip(fine, base if with_base else None, dtype)
    assert np.array_equal(bitx.join_words(bitx.split_words(fine, dtype), dtype), fine)


def test_bitx_round_trips_across_chunks():
    rng = np.random.default_rng(0)
    n = bitx.CHUNK_BYTES // 2 * 2 + 12345  # three chunks, the last one partial
    base = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    fine = base ^ rng.integers(0, 4, n, dtype=np.uint16)
    for dtype in ("BF16", "F16"):
        _roundtrip(fine, base, dtype)


def test_split_keeps_exponent_bits_together():
    words = np.array([0b1_10101010_1100110, 0b0_00000001_0000000], dtype=np.uint16)
    exponent, sign_mantissa = bitx.split_words(words, "BF16")
    assert list(exponent) == [0b10101010, 0b00000001] and list(sign_mantissa) == [0b11100110, 0]
    words16 = np.array([0b1_10101_1100110011], dtype=np.uint16)
    exponent, hi, lo = bitx.split_words(words16, "F16")
    assert list(exponent) == [0b10101] and list(hi) == [0b111] and list(lo) == [0b00110011]


def test_bitx_beats_plain_zstd_on_a_finetune():
    base = (torch.randn(1 << 16) * 0.05).to(torch.bfloat16)
    fine = (base.float() * (1 + torch.randn(1 << 16) * 0.001)).to(torch.bfloat16)
    b, f = base.view(torch.uint16).numpy(), fine.view(torch.uint16).numpy()
    out = io.BytesIO()
    size = bitx.encode(out, f.view(np.uint8), "BF16", bitx.CODEC_BITX, lambda s, e: b.view(np.uint8)[s:e])
    import zstandard

    assert size < 0.8 * len(zstandard.ZstdCompressor(level=3).compress(f.tobytes()))


# --- bad input ---

def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    if how == "truncated":
        path.write_bytes(data[:-100])
    elif how == "header_length":
        path.write_bytes(struct.pack("<Q", len(data) * 10) + data[8:])
    elif how == "json":
        path.write_bytes(data[:8] + b"{" + b" " * (header_len - 1) + data[8 + header_len:])
    elif how == "offsets":
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"] = [0, 10 ** 9]
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + header_len:])
    elif how == "tiny":
        path.write_bytes(b"\x01\x02")


@pytest.mark.parametrize("how", ["truncated", "header_length", "json", "offsets", "tiny"])
def test_corrupt_safetensors_is_refused_and_nothing_written(hub, tmp_path, how):
    bad = hub / "orgB--small" / "model.safetensors"
    _corrupt(bad, how)
    with pytest.raises(SafetensorsFormatError) as info:
        ingest(hub, tmp_path / "store")
    assert "orgB--small/model.safetensors" in str(info.value)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*"))


def test_failed_ingest_keeps_previous_manifest_and_blobs(hub, tmp_path, monkeypatch):
    first = tmp_path / "first"
    shutil.copytree(hub / "orgA--base", first / "orgA--base")
    store = tmp_path / "store"
    ingest(first, store)
    manifest_before = (store / MANIFEST_NAME).read_bytes()
    blobs_before = sorted(p.name for p in (store / "objects").rglob("*") if p.is_file())
    calls = {"n": 0}
    real_encode = bitx.encode

    def failing_encode(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (simulated)")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(bitx, "encode", failing_encode)
    with pytest.raises(OSError, match="simulated"):
        ingest(hub, store)
    assert calls["n"] >= 5
    assert (store / MANIFEST_NAME).read_bytes() == manifest_before
    assert sorted(p.name for p in (store / "objects").rglob("*") if p.is_file()) == blobs_before
    monkeypatch.setattr(bitx, "encode", real_encode)
    restore(store, tmp_path / "out")
    assert _hashes(tmp_path / "out") == _hashes(first)


def _some_blob(store: Path, codec: str) -> Path:
    import zstandard

    manifest = json.loads(zstandard.ZstdDecompressor().decompress((store / MANIFEST_NAME).read_bytes()))
    key = next(k for k, o in sorted(manifest["objects"].items()) if o["codec"] == codec)
    return store / "objects" / key[:2] / key


@pytest.mark.parametrize("damage", ["missing", "flipped", "truncated"])
def test_damaged_store_gives_named_error_and_no_output(hub, tmp_path, damage):
    store = tmp_path / "store"
    ingest(hub, store)
    blob = _some_blob(store, "bitx")
    if damage == "missing":
        blob.unlink()
    elif damage == "flipped":
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        data[-1] ^= 0x55
        blob.write_bytes(bytes(data))
    else:
        blob.write_bytes(blob.read_bytes()[:60])
    with pytest.raises(StoreCorruptionError, match="re-ingest"):
        restore(store, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_restore_into_non_empty_directory_is_refused(hub, tmp_path):
    ingest(hub, tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RestoreTargetError):
        restore(tmp_path / "store", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    restore(tmp_path / "store", out)  # an empty directory is fine
    assert _hashes(out) == _hashes(hub)


def test_bad_source_and_bad_store(tmp_path):
    with pytest.raises(SourceError):
        ingest(tmp_path / "missing", tmp_path / "store")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError):
        ingest(tmp_path / "empty", tmp_path / "store")
    with pytest.raises(StoreError):
        stats(tmp_path / "nostore")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / MANIFEST_NAME).write_bytes(b"not zstd")
    with pytest.raises(StoreError, match="unreadable manifest"):
        restore(tmp_path / "junk", tmp_path / "out")
    assert issubclass(StoreCorruptionError, ZllmError)


# --- stats and CLI ---

def test_stats_keys(hub, tmp_path):
    ingest(hub, tmp_path / "store")
    s = stats(tmp_path / "store")
    for key in ("original_bytes", "stored_bytes", "reduction", "after_file_dedup", "after_tensor_dedup",
                "after_bitx", "stages", "families", "clustering", "codecs"):
        assert key in s
    assert s["original_bytes"] >= s["after_file_dedup"] >= s["after_tensor_dedup"] >= s["after_bitx"]
    assert s["reduction"] == pytest.approx(1 - s["stored_bytes"] / s["original_bytes"])
    json.dumps(s)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.storage.zllm", *args], capture_output=True,
                          text=True, cwd=ROOT, env=os.environ.copy(), timeout=300)


def test_cli_round_trip_and_errors(hub, tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    r = _cli("ingest", str(hub), str(store))
    assert r.returncode == 0, r.stderr
    r = _cli("stats", str(store), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["clustering"]["ari"] == 1.0
    r = _cli("stats", str(store))
    assert r.returncode == 0 and "reduction" in r.stdout
    assert _cli("restore", str(store), str(out)).returncode == 0
    assert _hashes(out) == _hashes(hub)
    r = _cli("restore", str(store), str(out))
    assert r.returncode == 2 and "not an empty directory" in r.stderr and "Traceback" not in r.stderr
    _corrupt(hub / "orgC--base" / "model.safetensors", "json")
    r = _cli("ingest", str(hub), str(tmp_path / "store2"))
    assert r.returncode == 2 and "orgC--base/model.safetensors" in r.stderr and "Traceback" not in r.stderr
    r = _cli("stats", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "not a zLLM store" in r.stderr


def test_clustering_matches_scikit_learn_average_linkage():
    from sklearn.cluster import AgglomerativeClustering

    from experiments.storage.zllm import families

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 40))
        points = rng.random((n, 2)) * rng.random() * 3
        matrix = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        names = [f"m{i:03d}" for i in range(n)]
        labels = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                         distance_threshold=0.3).fit_predict(matrix)
        groups: dict = {}
        for name, label in zip(names, labels, strict=True):
            groups.setdefault(label, []).append(name)
        assert families.cluster(names, matrix, 0.3) == sorted(groups.values(), key=lambda g: g[0])


def test_padding_trailing_bytes_odd_dtypes_and_empty_files_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "m").mkdir(parents=True)
    rng = np.random.default_rng(1)
    tensors = {"a": ("BF16", (3, 5)), "b": ("F32", (7,)), "c": ("I64", (2, 2)), "d": ("U8", (0,)),
               "e": ("F16", (9,)), "f": ("BOOL", (3,))}
    sizes = {"BF16": 2, "F32": 4, "I64": 8, "U8": 1, "F16": 2, "BOOL": 1}
    header, blobs, offset = {"__metadata__": {"note": "padded"}}, [], 0
    for name, (dtype, shape) in tensors.items():
        n = int(np.prod(shape)) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        blobs.append(rng.integers(0, 256, n, dtype=np.uint8).tobytes() + b"\0" * 3)  # 3 bytes of padding
        offset += n + 3
    raw = json.dumps(header).encode() + b"   "  # header padded with spaces, as writers align it
    data = struct.pack("<Q", len(raw)) + raw + b"".join(blobs) + b"trailing garbage"
    (src / "m" / "model.safetensors").write_bytes(data)
    (src / "m" / "empty.txt").write_bytes(b"")
    (src / "notes.md").write_text("hello\n" * 100)
    ingest(src, tmp_path / "store")
    restore(tmp_path / "store", tmp_path / "out")
    assert _hashes(tmp_path / "out") == _hashes(src)


def test_cli_hub_refuses_a_non_empty_directory(tmp_path):
    pytest.importorskip("experiments.storage.zllm.hub")
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "x").write_text("x")
    r = _cli("hub", str(tmp_path / "hub"), "--preset", "tiny", "--seed", "0")
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr


def test_orphans_of_a_killed_ingest_are_swept_by_the_next(hub, tmp_path):
    store = tmp_path / "store"
    ingest(hub, store)
    orphan = store / "objects" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a killed ingest")
    (orphan.parent / ".abc.tmp").write_bytes(b"half written")
    ingest(hub, store)
    assert not orphan.exists() and not (orphan.parent / ".abc.tmp").exists()
    restore(store, tmp_path / "out")
    assert _hashes(tmp_path / "out") == _hashes(hub)


def test_a_second_writer_is_refused_while_an_ingest_holds_the_store(hub, tmp_path):
    import fcntl

    store = tmp_path / "store"
    ingest(hub, store)
    with open(store / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StoreError, match="another ingest"):
            ingest(hub, store)
    assert ingest(hub, store)["new_files"] == 0  # lock released: fine again
