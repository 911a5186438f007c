"""GPUs are bound to the executor only while a cell runs: gpus(), device(), CUDA_VISIBLE_DEVICES, waiting."""

from __future__ import annotations

import queue
import time

from .conftest import Kernel, stream_text

PROBE = """
import os, subprocess, sys, notebookos.kernel
child = subprocess.check_output([sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"])
print(notebookos.kernel.gpus(), repr(os.environ["CUDA_VISIBLE_DEVICES"]), child.decode().strip(),
      notebookos.kernel.device())
"""


def test_devices_are_bound_for_the_cell_only():
    k = Kernel(gpus="2,3")
    try:
        msg_id = k.client.execute(PROBE)
        reply = k.reply(msg_id, timeout=60)
        assert reply["status"] == "ok", reply
        # What the executor reported in the reply's metadata (the lab panel shows it).
        k.client.execute("pass")
        outputs = []
        while True:
            msg = k.client.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                outputs.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" \
                    and msg["parent_header"].get("msg_id") != msg_id:
                break
        assert stream_text(outputs) == "[2, 3] '2,3' 2,3 cuda:0\n"
        # After the reply the devices are released: a thread started by a cell looks after the cell ended.
        k.execute("import threading, time, os, notebookos.kernel\nseen = []\n"
                  "def look():\n    time.sleep(1.0)\n    seen.append((notebookos.kernel.gpus(), "
                  "os.environ['CUDA_VISIBLE_DEVICES'], str(notebookos.kernel.device())))\n"
                  "threading.Thread(target=look).start()")
        time.sleep(2.0)
        assert k.value("seen") == [([], "", "cpu")]
    finally:
        k.shutdown()


def test_reply_metadata_names_replica_and_devices():
    k = Kernel(gpus="1")
    try:
        msg_id = k.client.execute("x = 1")
        while True:
            reply = k.client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        meta = reply["metadata"]["notebookos"]
        assert meta["devices"] == [1]
        assert meta["replica"] == k.info()["last_executor"]
    finally:
        k.shutdown()


def test_a_cell_waiting_for_a_gpu_says_so_and_runs_when_granted():
    k = Kernel(executor_policy_class="tests.gpu_policies.WaitTwicePolicy")
    try:
        msg_id = k.client.execute("import notebookos.kernel\nprint(notebookos.kernel.gpus())")
        # While the cell waits, the kernel still answers other requests.
        info = k.client.kernel_info(reply=True, timeout=30)
        assert info["content"]["status"] == "ok"
        outputs, idle = [], False
        deadline = time.monotonic() + 60
        while not idle and time.monotonic() < deadline:
            try:
                msg = k.client.get_iopub_msg(timeout=5)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                idle = msg["content"]["execution_state"] == "idle"
            else:
                outputs.append(msg)
        err = stream_text(outputs, "stderr")
        assert "waiting for a GPU (position 1 in the queue" in err, err
        assert err.count("waiting for a GPU") == 1, "the message is repeated only when the position changes"
        assert stream_text(outputs, "stdout") == "[0]\n"
        assert k.reply(msg_id)["status"] == "ok"
    finally:
        k.shutdown()


def test_migration_moves_a_replica_process_and_keeps_the_variables():
    import os

    k = Kernel(executor_policy_class="tests.gpu_policies.MigrateFirstPolicy")
    try:
        k.execute("import numpy as np\nweights = np.arange(500_000)  # 4 MB: through the object store\nstep = 7")
        before = {r["id"]: r["pid"] for r in k.info()["replicas"] if r["alive"]}
        moved = min(before)
        reply, outputs = k.execute("print(step, int(weights.sum()))")
        assert reply["status"] == "ok", reply
        assert "moving replica" in stream_text(outputs, "stderr")
        assert stream_text(outputs, "stdout") == f"7 {sum(range(500_000))}\n"
        rows = {r["id"]: r for r in k.info()["replicas"]}
        assert not rows[moved]["alive"] and not rows[moved]["member"]
        new_ids = [i for i, r in rows.items() if i not in before and r["alive"] and r["member"]]
        assert len(new_ids) == 1
        assert k.info()["last_executor"] == new_ids[0] or k.info()["last_executor"] in before
        k.wait_for(lambda: not os.path.exists(f"/proc/{before[moved]}") or
                   open(f"/proc/{before[moved]}/stat").read().split()[2] == "Z", what="old replica process to exit")
        digests = k.wait_for(lambda: _same(k.digests()), what="replicas to agree")
        assert set(map(int, digests)) == (set(before) - {moved}) | set(new_ids)
    finally:
        k.shutdown()


def _same(replicas):
    values = [r.get("digests") for r in replicas.values()]
    return replicas if values and values[0] and all(v == values[0] for v in values) else None
