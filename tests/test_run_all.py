"""JupyterLab's Run All: every cell is sent before the first reply arrives, and the kernel must run them one at a
time, in order, aborting the queue after an error exactly as ipykernel does (``stop_on_error``).

The same queued notebook runs on a plain ``python3`` kernel and on ``notebookos`` (standalone, and in cluster mode
under ``notebookos up``, where each cell's executor and GPU are asked of the scheduler), and every reply must match.
"""

from __future__ import annotations

import pytest

from .conftest import Kernel
from .test_cluster import _up

CELLS = [f"import time\ntime.sleep(0.05)\nx{i} = {i}" for i in range(10)]
CELLS[4] = "raise ValueError('cell 4 fails')"


def run_all(kernel: Kernel, cells: list[str], **kwargs) -> list[dict]:
    """Send every cell at once, as Run All does, and return their execute_reply contents in order."""
    ids = [kernel.client.execute(code, **kwargs) for code in cells]
    replies: dict[str, dict] = {}
    while len(replies) < len(ids):
        msg = kernel.client.get_shell_msg(timeout=120)
        parent = msg["parent_header"].get("msg_id")
        if parent in ids:
            assert parent not in replies, f"two replies to one cell: {msg['content']}"
            replies[parent] = msg["content"]
    return [replies[i] for i in ids]


def outcome(replies: list[dict]) -> list[tuple]:
    """Each reply's status, error name and execution count (counted from the first cell's)."""
    base = replies[0]["execution_count"]
    return [(r["status"], r.get("ename"), r["execution_count"] - base if r["status"] != "aborted" else None)
            for r in replies]


@pytest.fixture(scope="module")
def plain():
    k = Kernel("python3")
    yield k
    k.shutdown()


def check_run_all(kernel: Kernel, plain: Kernel) -> None:
    first = run_all(kernel, CELLS)
    expected = run_all(plain, CELLS)
    assert outcome(first) == outcome(expected)
    assert [r["status"] for r in first] == ["ok"] * 4 + ["error"] + ["aborted"] * 5
    assert first[4]["ename"] == "ValueError"
    assert kernel.value("sorted(n for n in dir() if n.startswith('x') and n[1:].isdigit())") == \
        ["x0", "x1", "x2", "x3"]
    # A new Run All after the failure runs everything (the abort ends with the queue it emptied).
    again = run_all(kernel, [c for i, c in enumerate(CELLS) if i != 4])
    assert [r["status"] for r in again] == ["ok"] * 9
    counts = [r["execution_count"] for r in again]
    assert counts == list(range(counts[0], counts[0] + 9)), counts
    assert kernel.value("[x0, x5, x9]") == [0, 5, 9]
    # stop_on_error=False (what papermill's "continue on error" and silent cells use): nothing is aborted.
    relaxed = run_all(kernel, ["1 / 0", "y = 2", "y"], stop_on_error=False)
    assert [r["status"] for r in relaxed] == ["error", "ok", "ok"]


def test_run_all_standalone(kernel, plain):
    check_run_all(kernel, plain)


@pytest.fixture
def cluster3(tmp_path_factory):
    yield from _up(tmp_path_factory, 3, 3)


def test_run_all_in_cluster_mode(cluster3, plain):
    k = Kernel()
    try:
        check_run_all(k, plain)
    finally:
        k.shutdown()
