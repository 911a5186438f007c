"""The batch policy's committed state between cells: it travels through the kernel's object store (percell.py).

Each cell runs in a fresh replica process on whichever host has a free GPU. The state the cell left is a blob in the
object store; the next cell's replica loads it, on another host by having its host daemon copy it. A state that
cannot be found is an error that says so, never an empty namespace.
"""

from __future__ import annotations

import time

import pytest

from notebookos.objectstore.local import LocalDirectoryStore

from .conftest import Kernel
from .test_cluster import _up
from .test_scheduler_service import TOKEN, api, start_hostd, start_scheduler, wait_hosts

BIG = 300_000  # np.arange(BIG): 2.4 MB, a blob in the store rather than inline in the state


def _cell(k: Kernel, code: str, timeout: float = 90) -> tuple[dict, dict, str]:
    """Run a cell; return its execute_reply content, the reply's notebookos metadata and its stream output."""
    msg_id = k.client.execute(code)
    text = ""
    deadline = time.monotonic() + timeout
    while True:
        msg = k.client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text += msg["content"]["text"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = k.client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.01))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], reply["metadata"].get("notebookos", {}), text


def _wait_output(k: Kernel, msg_id: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        msg = k.client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
        if msg["parent_header"].get("msg_id") == msg_id and text in msg["content"].get("text", ""):
            return


@pytest.fixture
def separate_hosts(tmp_path, monkeypatch):
    """Two hosts with one GPU each, as separate machines: each with its own object store and runtime directory."""
    scheduler, url = start_scheduler(tmp_path, "--policy", "batch")
    dirs = {h: {d: tmp_path / h / d for d in ("store", "runtime")} for h in ("s1", "s2")}
    hosts = []
    try:
        for h, d in dirs.items():
            for path in d.values():
                path.mkdir(parents=True)
            hosts.append(start_hostd(tmp_path, url, h, 1, "--store-root", str(d["store"]),
                                     "--runtime-dir", str(d["runtime"])))
        wait_hosts(url, set(dirs))
        monkeypatch.setenv("NOTEBOOKOS_SCHEDULER_URL", url)
        monkeypatch.setenv("NOTEBOOKOS_SCHEDULER_TOKEN", TOKEN)
        yield {"url": url, "token": TOKEN, "dirs": dirs}
    finally:
        for h in hosts:
            h.stop()
        scheduler.stop()


def _cells_on_alternating_hosts(k: Kernel, other: Kernel, url: str, token: str) -> tuple[list[str], list[str], str]:
    """Cells of ``k`` until one runs on another host than the cell before it; return the host and the state digest
    of each, and the first cell's output (the store's root).

    Every other cell both hosts are free and the scheduler picks (the batch policy prefers the host that has been
    free longest: the other one); in between, ``other`` holds a GPU with a running cell meanwhile, so ``k``'s cell
    runs on the host that ``other`` left free. Either way a switch comes soon.
    """
    reply, meta, root = _cell(k, f"import numpy as np\nbig = np.arange({BIG})\nx = 1\nnames = ['a']\n"
                                 "print(get_ipython().kernel.store.root)")
    assert reply["status"] == "ok", reply
    hosts, states = [meta["host"]], [meta["state"]]
    while hosts[-1] == hosts[0] and len(hosts) < 8:
        busy_id = None
        # The previous cell's GPU is given back just after its reply: wait, so the scheduler sees both hosts free.
        k.wait_for(lambda: api("GET", f"{url}/api/status", token=token)[1]["gpus"]["committed"] == 0,
                   what="the previous cell's GPU to be released")
        if len(hosts) % 2 == 0:
            busy_id = other.client.execute("print('holding', flush=True)\nimport time\ntime.sleep(4)")
            _wait_output(other, busy_id, "holding")
        reply, meta, text = _cell(k, "x += 1\nnames.append(x)\nprint(x, len(names), int(big.sum()), In[1][:9])")
        assert reply["status"] == "ok", reply
        n = len(hosts) + 1
        assert text == f"{n} {n} {sum(range(BIG))} import nu\n", (hosts, text)
        hosts.append(meta["host"])
        states.append(meta["state"])
        if busy_id is not None:
            assert other.reply(busy_id, timeout=60)["status"] == "ok"
    assert hosts[-1] != hosts[-2], hosts  # the state went from one host to the other
    assert len(set(states)) == len(states) and all(states), states
    return hosts, states, root.strip()


def test_batch_policy_on_two_hosts_with_separate_directories_keeps_state_across_cells(separate_hosts):
    k, other = Kernel(), Kernel()
    try:
        _, states, _ = _cells_on_alternating_hosts(k, other, separate_hosts["url"], separate_hosts["token"])
        # Each cell's replica deleted the state it started from: no store keeps a superseded one.
        blobs = {p.name for d in separate_hosts["dirs"].values() for p in d["store"].glob("kernel-*/??/*")}
        assert not blobs & set(states[:-1]), blobs
        # Each host kept the kernels' directories past their replicas there; they go when the kernels end.
        assert any(any(d["store"].glob("kernel-*")) for d in separate_hosts["dirs"].values())
        k.shutdown()
        other.shutdown()
        k.wait_for(lambda: not any(any(d["store"].glob("kernel-*")) for d in separate_hosts["dirs"].values()),
                   timeout=30, what="the ended kernels' store directories to be removed on every host")
    finally:
        for kernel in (k, other):
            if kernel.km.has_kernel:
                kernel.shutdown()


@pytest.fixture
def batch_up(tmp_path_factory):
    # Two hosts with a GPU each and their own runtime directories (one object store directory on this machine).
    yield from _up(tmp_path_factory, 2, 0, "--policy", "batch")


def test_batch_policy_keeps_state_in_the_store_across_cells_on_different_hosts(batch_up):
    k, other = Kernel(), Kernel()
    try:
        _, states, root = _cells_on_alternating_hosts(k, other, batch_up["url"], batch_up["token"])
        store = LocalDirectoryStore(root)
        assert store.path(states[-1]).is_file()
        assert not any(store.path(s).exists() for s in states[:-1]), "superseded states were not deleted"
    finally:
        k.shutdown()
        other.shutdown()


def test_a_missing_batch_state_is_an_error_not_an_empty_namespace(batch_up):
    k = Kernel()
    try:
        reply, meta, text = _cell(k, "x = 41\nprint(get_ipython().kernel.store.root)")
        assert reply["status"] == "ok", reply
        store = LocalDirectoryStore(text.strip())
        state = meta["state"]
        assert state and store.path(state).is_file()
        reply, meta, text = _cell(k, "x += 1\nprint(x)")
        assert reply["status"] == "ok" and text == "42\n", (reply, text)
        assert not store.path(state).exists()  # the superseded state was deleted
        state = meta["state"]
        store.path(state).unlink()  # lost between cells
        for _ in range(2):  # every later cell, not just the next one
            reply, meta, text = _cell(k, "print(x)")
            assert reply["status"] == "error" and reply["ename"] == "StateMissing", reply
            assert state in reply["evalue"] and "Restart the kernel" in reply["evalue"], reply
            assert "42" not in text
    finally:
        k.shutdown()
