"""Failures with real processes: replicas are killed with SIGKILL while a real client drives the kernel."""

from __future__ import annotations

import os
import signal
import time

from .conftest import stream_text


def executor_of(kernel) -> int:
    return kernel.info()["last_executor"]


def kill_replica(kernel, replica_id: int) -> int:
    pid = kernel.replica_pid(replica_id)
    os.kill(pid, signal.SIGKILL)
    return pid


def live_ids(kernel) -> list[int]:
    return sorted(r["id"] for r in kernel.info()["replicas"] if r["alive"] and r["member"])


def test_executor_killed_between_cells(kernel):
    reply, _ = kernel.execute("import numpy as np\nx = 41\narr = np.arange(200_000)\ndef inc(v):\n    return v + 1")
    assert reply["status"] == "ok"
    first = executor_of(kernel)
    kill_replica(kernel, first)
    reply, outputs = kernel.execute("print(inc(x), int(arr.sum()))")
    assert reply["status"] == "ok", reply
    assert stream_text(outputs) == f"42 {sum(range(200_000))}\n"
    assert executor_of(kernel) != first


def test_executor_killed_during_a_cell(kernel):
    kernel.execute("committed = 'yes'")
    victim = executor_of(kernel)
    msg_id = kernel.client.execute("import time\nuncommitted = 1\ntime.sleep(30)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = kernel.client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            break
    time.sleep(0.3)
    kill_replica(kernel, victim)
    reply = kernel.client.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kernel.client.get_shell_msg(timeout=30)
    content = reply["content"]
    assert content["status"] == "error"
    assert content["ename"] == "ReplicaLost"
    assert "not committed" in content["evalue"] and "last committed cell" in content["evalue"]
    reply, outputs = kernel.execute("print(committed, 'uncommitted' in dir())")
    assert reply["status"] == "ok"
    assert stream_text(outputs) == "yes False\n"


def test_replacement_joins_and_catches_up(kernel):
    kernel.execute("import numpy as np\nbefore = np.ones(300_000)\nlabel = 'kept'")
    original = live_ids(kernel)
    victim = executor_of(kernel)
    kill_replica(kernel, victim)
    kernel.execute("after = 'written while a replica was down'")

    def replaced():
        ids = live_ids(kernel)
        return ids if len(ids) == 3 and victim not in ids else None

    ids = kernel.wait_for(replaced, timeout=60, what="a replacement replica")
    newcomer = max(ids)
    assert newcomer not in original
    rows = {r["id"]: r for r in kernel.info()["replicas"]}
    assert rows[newcomer]["alive"] and rows[newcomer]["pid"] != rows[victim]["pid"]

    def caught_up():
        digests = kernel.digests()
        if set(map(int, digests)) != set(ids):
            return None
        values = [d.get("digests") for d in digests.values()]
        return values if values[0] and all(v == values[0] for v in values) else None

    values = kernel.wait_for(caught_up, timeout=60, what="the newcomer's namespace to match")
    assert {"np", "before", "label", "after"} <= set(values[0])
    # The newcomer is a working member: kill the two originals one at a time and it still serves.
    survivors = [i for i in ids if i != newcomer]
    kill_replica(kernel, survivors[0])
    kernel.wait_for(lambda: len(live_ids(kernel)) == 3 and survivors[0] not in live_ids(kernel), timeout=60,
                    what="second replacement")
    kill_replica(kernel, survivors[1])
    reply, outputs = kernel.execute("print(label, before.shape, after[:7])")
    assert reply["status"] == "ok", reply
    assert stream_text(outputs) == "kept (300000,) written\n"


def test_two_of_three_lost_refuses_to_commit(tmp_path):
    from .conftest import Kernel

    kernel = Kernel(replace_lost_replicas=False)
    try:
        kernel.execute("state = 'committed'")
        ids = live_ids(kernel)
        keep = executor_of(kernel)
        for rid in ids:
            if rid != keep:
                kill_replica(kernel, rid)
        kernel.wait_for(lambda: len(live_ids(kernel)) == 1, what="two replicas dead")
        reply, outputs = kernel.execute("state = 'diverged'")
        assert reply["status"] == "error"
        assert reply["ename"] == "QuorumLost"
        assert "quorum" in reply["evalue"]
        digests = kernel.digests()
        assert list(digests) == [str(keep)]
        # The survivor's namespace was not touched by the refused cell.
        reply2 = kernel.control("notebookos_info_request")
        assert reply2["has_quorum"] is False
        # With every replica gone, a client connecting now still gets a kernel_info_reply it can read, saying why.
        kill_replica(kernel, keep)
        kernel.wait_for(lambda: not live_ids(kernel), what="the last replica dead")
        client = kernel.km.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=30)
            info = client.kernel_info(reply=True, timeout=30)["content"]
        finally:
            client.stop_channels()
        assert info["status"] == "error" and info["ename"] == "NoReplica"
        assert info["protocol_version"] and "no replica" in info["banner"]
    finally:
        kernel.shutdown()


def test_killing_the_front_leaves_no_replica_or_store_behind(kernel):
    kernel.execute("import numpy as np\nbig = np.ones(400_000)")  # > 1 MiB: written to the object store
    store = kernel.km.provisioner._store
    assert store is not None and any(store.rglob("*")), "the large value should be in the kernel's store"
    pids = [r["pid"] for r in kernel.info()["replicas"]]
    front = kernel.km.provisioner.process.pid
    os.kill(front, signal.SIGKILL)

    def all_gone():
        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            try:  # a zombie awaiting its reaper counts as gone
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split()[2] != "Z":
                        return False
            except FileNotFoundError:
                continue
        return True

    kernel.wait_for(all_gone, timeout=20, what="replicas to exit with their front")
    kernel.km.shutdown_kernel(now=True)  # what Jupyter Server does once it sees the kernel died
    assert not store.exists()


LAUNCH_AND_VANISH = """
import json, os
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name="notebookos")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=90)
print(json.dumps({"front": km.provisioner.process.pid}), flush=True)
os._exit(0)  # the Jupyter process dies without shutting its kernel down
"""


def test_a_kernel_whose_launcher_died_shuts_itself_down():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LAUNCH_AND_VANISH], capture_output=True, text=True, timeout=120,
                         env=os.environ.copy())
    front = json.loads(out.stdout.strip().splitlines()[-1])["front"]

    def gone(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 20
    while not gone(front) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(front), "the front outlived the process that started it"
