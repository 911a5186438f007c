"""Object-store garbage collection: blobs nothing refers to any more are deleted, and only those."""

from __future__ import annotations

from pathlib import Path

from notebookos.kernel.garbage import BlobLedger
from notebookos.kernel.namespace import ValueRef

from .test_failover import executor_of, kill_replica, live_ids


def blob(digest: str) -> ValueRef:
    return ValueRef("blob", digest, None, 2 << 20)


def test_ledger_counts_references_and_lists_unreferenced_blobs():
    ledger = BlobLedger()
    ledger.rebind(None, blob("a"), 1)  # x = A
    ledger.rebind(None, blob("a"), 1)  # y = x (same content)
    ledger.rebind(None, ValueRef("inline", "i", b"", 3), 1)  # inline values are not the store's
    ledger.rebind(blob("a"), blob("a"), 2)  # x rebound to equal content: still referenced
    assert ledger.pending() == []
    ledger.rebind(blob("a"), blob("b"), 3)  # x = B
    assert ledger.pending() == []  # y still holds A
    ledger.rebind(blob("a"), None, 4)  # del y
    assert ledger.pending() == ["a"]
    ledger.rebind(blob("b"), None, 5)  # del x
    assert ledger.pending() == ["a", "b"]  # oldest garbage first
    ledger.rebind(None, blob("a"), 6)  # A comes back before it was collected: keep it
    assert ledger.pending() == ["b"]
    ledger.collected(["b"])
    assert ledger.pending() == []
    # A snapshot carries the garbage; the counts follow from the refs it holds.
    ledger.rebind(blob("a"), None, 7)
    restored = BlobLedger.from_state([blob("c")], ledger.state())
    assert restored.pending() == ["a"] and restored.refs == {"c": 1}
    assert BlobLedger.from_state([blob("a")], {"a": 7}).pending() == []


def store_blobs(store: Path) -> set[str]:
    return {p.name for p in store.glob("??/*") if p.is_file()}


def test_rebound_values_leave_the_store_and_replicas_still_agree(kernel):
    store = kernel.km.provisioner._store
    reply, _ = kernel.execute("import numpy as np\nx = np.full(300_000, 1.0)")  # 2.4 MB: a blob
    assert reply["status"] == "ok", reply
    (ones,) = store_blobs(store)
    kernel.execute("x = np.full(300_000, 2.0)")
    assert ones in store_blobs(store)  # deleted by the next cell, not while followers may still load it
    kernel.execute("y = 1")
    (twos,) = store_blobs(store)
    assert twos != ones

    # The same content again is written again, and the value it replaced goes the same way.
    kernel.execute("x = np.full(300_000, 1.0)")
    kernel.execute("y = 2")
    assert store_blobs(store) == {ones}

    # A value shown as a cell's output stays in Out, so its blob stays after the name moves on.
    kernel.execute("z = np.full(300_000, 3.0)\nz")
    kernel.execute("z = None")
    kernel.execute("y = 3")
    assert len(store_blobs(store)) == 2
    assert kernel.value("(float(Out[max(Out)][0]), float(x[0]))") == (3.0, 1.0)

    digests = kernel.wait_for(
        lambda: (d := [r["digests"] for r in kernel.digests().values()]) and all(v == d[0] for v in d) and d,
        what="all replicas to hold the same values")
    assert {"x", "y", "z", "np"} <= set(digests[0])

    # A replacement replays the log from its start (no snapshot yet) and meets blobs that are gone: it must end
    # with the same namespace, with nothing reported missing.
    victim = next(i for i in live_ids(kernel) if i != executor_of(kernel))
    kill_replica(kernel, victim)

    def settled():
        rows = [r for r in kernel.info()["replicas"] if r["alive"] and r["member"]]
        if len(rows) != 3 or victim in [r["id"] for r in rows]:
            return None
        statuses = [r.get("status") or {} for r in rows]
        if not all("missing_values" in s for s in statuses) or any(s.get("applied_index", 0) < statuses[0].get("applied_index", 1) for s in statuses):
            return None
        d = [r["digests"] for r in kernel.digests().values()]
        return statuses if len(d) == 3 and all(v == d[0] for v in d) and "x" in d[0] else None

    statuses = kernel.wait_for(settled, timeout=60, what="a replacement with the same namespace")
    for status in statuses:
        assert status.get("missing_values") == [] and status.get("apply_errors") == [], status


def test_a_configured_store_directory_is_not_collected(tmp_path):
    # A directory the user names may be shared by several kernels: one kernel's garbage may be another's value.
    from .conftest import Kernel

    kernel = Kernel(store_dir=str(tmp_path))
    try:
        kernel.execute("import numpy as np\nx = np.full(300_000, 1.0)")
        kernel.execute("x = np.full(300_000, 2.0)")
        kernel.execute("y = 1")
        assert len(store_blobs(tmp_path)) == 2
    finally:
        kernel.shutdown()
