"""The object store: content addressing, blob layout, copy-on-write mapping, errors, store discovery."""

from __future__ import annotations

import asyncio
import mmap
import os
import pickle

import numpy as np
import pytest

from notebookos import plugins
from notebookos.objectstore import (
    CorruptObject,
    LocalDirectoryStore,
    ObjectNotFound,
    ObjectStore,
    content_digest,
    load_store,
)


def run(coro):
    return asyncio.run(coro)


def dumps(obj):
    buffers = []
    header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return header, buffers


def load(store, digest):
    header, buffers = run(store.get(digest))
    return pickle.loads(header, buffers=buffers)


def mapped_base(arr: np.ndarray):
    while isinstance(arr, np.ndarray):
        arr = arr.base
    return arr


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "objects")


def test_roundtrip_mapped_copy_on_write(store):
    value = {
        "a": np.arange(300_000, dtype=np.float64),
        "f": np.asfortranarray(np.ones((50, 40))),
        "empty": np.zeros(0),
        "text": "hello",
    }
    header, buffers = dumps(value)
    assert len(buffers) == 3  # the arrays are out of band, not copied into the pickle
    digest, size = run(store.put(header, buffers))
    assert digest == content_digest(header, buffers)
    assert size == len(header) + sum(b.raw().nbytes for b in buffers)
    path = store.path(digest)
    assert path.parent.name == digest[:2] and path.name == digest
    on_disk = path.read_bytes()

    h2, bufs = run(store.get(digest))
    loaded = pickle.loads(h2, buffers=bufs)
    a = loaded["a"]
    assert np.array_equal(a, value["a"]) and np.array_equal(loaded["f"], value["f"])
    assert loaded["f"].flags.f_contiguous and loaded["text"] == "hello"
    # Backed by the mapping, not a copy, and each buffer is 64-byte aligned in it.
    assert not a.flags.owndata
    view = mapped_base(a)
    assert isinstance(view, memoryview) and isinstance(view.obj, mmap.mmap)
    assert a.ctypes.data % 64 == 0 and loaded["f"].ctypes.data % 64 == 0
    # Writable and private: writing changes neither the file nor another load of it.
    assert a.flags.writeable
    a[:10] = -1
    assert path.read_bytes() == on_disk
    assert np.array_equal(load(store, digest)["a"], value["a"])


def test_put_is_idempotent_and_leaves_no_temporary_files(store):
    header, buffers = dumps(np.arange(1000))
    d1, _ = run(store.put(header, buffers))
    inode = store.path(d1).stat().st_ino
    d2, _ = run(store.put(header, buffers))
    assert d1 == d2 and store.path(d1).stat().st_ino == inode  # not rewritten
    assert list((store.root / "tmp").iterdir()) == []
    d3, _ = run(store.put(*dumps(np.arange(1001))))
    assert d3 != d1


def test_large_put_hashes_leaves_in_parallel(store):
    arr = np.random.default_rng(0).random(5 << 20)  # 40 MiB: several leaves, hashed in parallel
    header, buffers = dumps(arr)
    digest, size = run(store.put(header, buffers))
    assert digest == content_digest(header, buffers) and size > arr.nbytes
    assert np.array_equal(load(store, digest), arr)


def test_value_without_buffers(store):
    digest, _ = run(store.put(*dumps(list(range(100)))))
    header, buffers = run(store.get(digest))
    assert buffers == [] and pickle.loads(header) == list(range(100))


def test_exists_and_delete_keep_loaded_values_valid(store):
    digest, _ = run(store.put(*dumps(np.arange(5000.0))))
    assert run(store.exists(digest))
    arr = load(store, digest)
    run(store.delete(digest))
    assert not run(store.exists(digest))
    assert arr.sum() == sum(range(5000))
    run(store.delete(digest))  # deleting a missing value is not an error


def test_missing_digest_names_digest_and_location(store):
    digest = "ab" * 32
    with pytest.raises(ObjectNotFound) as info:
        run(store.get(digest))
    assert isinstance(info.value, KeyError)
    assert digest in str(info.value) and str(store.root) in str(info.value)


def test_truncated_and_foreign_blobs_are_corrupt(store):
    digest, _ = run(store.put(*dumps(np.arange(10_000))))
    path = store.path(digest)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(CorruptObject, match="truncated"):
        run(store.get(digest))
    path.write_bytes(data[:10])
    with pytest.raises(CorruptObject, match="truncated"):
        run(store.get(digest))
    path.write_bytes(b"X" * len(data))
    with pytest.raises(CorruptObject, match="magic"):
        run(store.get(digest))


def test_verify_detects_changed_content(tmp_path):
    store = LocalDirectoryStore(tmp_path, verify=True)
    digest, _ = run(store.put(*dumps(np.arange(10_000))))
    path = store.path(digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject, match="does not match"):
        run(store.get(digest))


def test_digests_that_are_not_digests_are_refused(store):
    for bad in ["../../etc/passwd", "AB" * 32, "ab" * 31, ""]:
        with pytest.raises(ValueError):
            run(store.get(bad))


def test_fsync_option(tmp_path):
    store = LocalDirectoryStore(tmp_path, fsync=True)
    digest, _ = run(store.put(*dumps(np.arange(10))))
    assert run(store.exists(digest))


def test_load_store_by_name_with_and_without_entry_points(tmp_path, monkeypatch):
    store = load_store("local", root=tmp_path / "a")
    assert isinstance(store, LocalDirectoryStore) and isinstance(store, ObjectStore)
    # A source checkout that was never pip-installed has no entry points: the built-in still loads.
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    assert isinstance(load_store("local", root=tmp_path / "b"), LocalDirectoryStore)
    with pytest.raises(ValueError, match=r"'nope'.*available: hostfetch, local"):
        load_store("nope")
    # module:Class works too, and a class of the wrong kind is refused by name.
    assert isinstance(load_store("notebookos.objectstore.local:LocalDirectoryStore", root=tmp_path / "c"),
                      LocalDirectoryStore)
    with pytest.raises(ValueError, match=r"not a ObjectStore subclass"):
        load_store("pathlib:Path")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    store = LocalDirectoryStore("")
    assert store.root == tmp_path / f"notebookos-objects-{os.getuid()}"
