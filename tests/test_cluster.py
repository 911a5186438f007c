"""Cluster mode end to end: `notebookos up --no-lab` (scheduler + host daemons) and real replicated kernels.

Two hosts with one virtual GPU each: two kernels that hold both GPUs with running cells, and a third kernel whose
cell waits, says so in its output, and runs as soon as a GPU frees.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Kernel, stream_text
from .test_failover import executor_of, kill_replica
from .test_scheduler_service import api


def _up(tmp_path_factory, hosts: int, replicas: int, *extra: str):
    runtime = tmp_path_factory.mktemp("up")
    proc = subprocess.Popen([sys.executable, "-m", "notebookos", "up", "--no-lab", "--hosts", str(hosts),
                             "--gpus-per-host", "1", "--replicas-per-kernel", str(replicas),
                             "--runtime-dir", str(runtime), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    info_file = runtime / "cluster.json"
    deadline = time.monotonic() + 90
    while not info_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"notebookos up did not start:\n{out}")
        time.sleep(0.2)
    info = json.loads(info_file.read_text())
    saved = {k: os.environ.get(k) for k in ("NOTEBOOKOS_SCHEDULER_URL", "NOTEBOOKOS_SCHEDULER_TOKEN")}
    os.environ["NOTEBOOKOS_SCHEDULER_URL"], os.environ["NOTEBOOKOS_SCHEDULER_TOKEN"] = info["url"], info["token"]
    yield info
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    # Host daemons restarted meanwhile are in the file's latest version.
    pids = [info["scheduler_pid"], *info["host_pids"], *json.loads(info_file.read_text())["host_pids"]]
    assert all(not os.path.exists(f"/proc/{p}") or open(f"/proc/{p}/stat").read().split()[2] == "Z"
               for p in pids), "notebookos up left processes behind"


@pytest.fixture
def cluster(tmp_path_factory):
    yield from _up(tmp_path_factory, hosts=2, replicas=2)


@pytest.fixture
def cluster3(tmp_path_factory):
    # Replicas (and their replacements) come from the hosts' prewarm pools.
    yield from _up(tmp_path_factory, 3, 3, "--prewarm", "1")


def _collect(kernel: Kernel, msg_id: str, timeout: float = 90, until_output: bool = False) -> list[dict]:
    """The iopub messages of cell ``msg_id`` until it is idle (or, ``until_output``, until its first stream)."""
    outputs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kernel.client.get_iopub_msg(timeout=2)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return outputs
        if msg["msg_type"] != "status":
            outputs.append(msg)
            if until_output and msg["msg_type"] == "stream":
                return outputs
    raise TimeoutError(f"cell {msg_id} did not finish")


def test_kernels_share_two_gpus_and_a_third_waits(cluster, tmp_path):
    # A notebook whose metadata asks for no GPU (as Lab's notebook metadata editor would save it).
    notebook = tmp_path / "cpu-only.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {"notebookos": {"gpus": 0}}, "nbformat": 4,
                                    "nbformat_minor": 5}))
    kernels: list[Kernel] = []
    try:
        for _ in range(3):
            kernels.append(Kernel())
        a, b, c = kernels
        cpu_only = Kernel(env={"JPY_SESSION_NAME": str(notebook)})
        kernels.append(cpu_only)
        for k in kernels:
            reply, outputs = k.execute("import time, notebookos.kernel\nprint(len(notebookos.kernel.replicas()))")
            assert reply["status"] == "ok", reply
            assert stream_text(outputs) == "2\n"
        hold = "print(notebookos.kernel.gpus())\ntime.sleep(4)"
        first, second = a.client.execute(hold), b.client.execute(hold)
        time.sleep(1.5)  # both are running and hold the cluster's two GPUs
        third = c.client.execute("print('ran with', notebookos.kernel.gpus())")
        # Needing no GPU, the notebook's cell runs at once while both GPUs are held.
        reply, outputs = cpu_only.execute("import notebookos.kernel\nprint(notebookos.kernel.gpus())")
        assert reply["status"] == "ok" and stream_text(outputs) == "[]\n", outputs
        assert "waiting" not in stream_text(outputs, "stderr")
        outs = [_collect(a, first), _collect(b, second), _collect(c, third)]
        assert stream_text(outs[0], "stdout") == "[0]\n" and stream_text(outs[1], "stdout") == "[0]\n"
        assert "waiting for a GPU (position 1" in stream_text(outs[2], "stderr")
        assert stream_text(outs[2], "stdout") == "ran with [0]\n"
        assert c.reply(third)["status"] == "ok"
    finally:
        for k in kernels:
            k.shutdown()


def test_a_killed_replica_is_replaced_through_its_host_daemon(cluster3):
    k = Kernel()
    try:
        k.execute("import numpy as np\nkept = np.arange(300_000)\nlabel = 'still here'")
        victim = {"id": executor_of(k)}
        kill_replica(k, victim["id"])
        reply, outputs = k.execute("print(label, int(kept.sum()))")
        assert reply["status"] == "ok", reply
        assert stream_text(outputs) == f"still here {sum(range(300_000))}\n"

        def replaced():
            rows = [r for r in k.info()["replicas"] if r["alive"] and r["member"]]
            return rows if len(rows) == 3 and victim["id"] not in {r["id"] for r in rows} else None

        k.wait_for(replaced, timeout=60, what="a replacement started by the host daemon")
        # The replicas were prewarmed processes, handed their kernel's Raft secret when they became replicas.
        reply, outputs = k.execute("import os\nprint(bool(os.environ.get('NOTEBOOKOS_RAFT_SECRET')))")
        assert stream_text(outputs) == "True\n", outputs
        hosts = api("GET", f"{cluster3['url']}/api/hosts", token=cluster3["token"])[1]["hosts"]
        pools = [api("GET", f"{h['url']}/api/replicas", token=cluster3["host_token"])[1]["prewarm"] for h in hosts]
        assert sum(p["handed_out"] for p in pools) >= 3, pools
    finally:
        k.shutdown()


def test_fronts_long_poll_their_host_daemons(cluster3):
    """A front learns of its replicas' exits from one long poll per host daemon, not by asking in a loop."""
    k = Kernel()
    try:
        k.execute("x = 1")
        hosts = api("GET", f"{cluster3['url']}/api/hosts", token=cluster3["token"])[1]["hosts"]

        def polls() -> int:
            return sum(api("GET", f"{h['url']}/api/replicas", token=cluster3["host_token"])[1]["polls"]
                       for h in hosts)

        before = polls()
        time.sleep(3)
        # Our own 3 reads, and at most a few of the front's (a long poll is answered when a replica changes or
        # after 30 s); asking 10 times a second, as the front used to, is 90 in 3 s.
        assert polls() - before <= 3 + 6, polls() - before
        victim = executor_of(k)
        kill_replica(k, victim)
        reply, _ = k.execute("print(x)")
        assert reply["status"] == "ok", reply
    finally:
        k.shutdown()


def _live_rows(k: Kernel) -> list[dict]:
    return [r for r in k.info()["replicas"] if r["alive"] and r["member"]]


def test_a_killed_host_daemon_is_restarted_and_the_kernel_repaired(cluster3, tmp_path):
    """SIGKILL a host daemon: `notebookos up` keeps running and restarts it, and the kernel, which lost the replica
    that ran there, keeps its state and is back to 3 replicas on 3 live hosts, placed by the scheduler."""
    (tmp_path / "data.txt").write_text("relative paths work")
    k = Kernel(cwd=str(tmp_path))
    try:
        k.execute("import numpy as np, notebookos.kernel\nkept = np.arange(300_000)\nlabel = 'still here'")
        reply, outputs = k.execute("import os\nprint(open('data.txt').read(), os.getcwd())")
        assert stream_text(outputs) == f"relative paths work {tmp_path}\n", outputs  # the notebook's directory
        hosts = set(cluster3["hosts"])
        assert {r["host"] for r in k.value("notebookos.kernel.replicas()")} == hosts  # the scheduler's host ids
        runtime = Path(cluster3["runtime_dir"])
        daemons = {json.loads(f.read_text())["host_id"]: json.loads(f.read_text())["pid"]
                   for f in runtime.glob("host-*.json")}
        executor = executor_of(k)
        victim_host = next(r["host"] for r in k.info()["replicas"] if r["id"] != executor)
        victim = next(r["id"] for r in k.info()["replicas"] if r["host"] == victim_host)
        os.kill(daemons[victim_host], signal.SIGKILL)

        def repaired():
            rows = _live_rows(k)
            return rows if len(rows) == 3 and victim not in {r["id"] for r in rows} else None

        rows = k.wait_for(repaired, timeout=60, what="the lost replica to be replaced")
        assert {r["host"] for r in rows} == hosts, rows  # three replicas on three distinct live hosts
        os.kill(cluster3["pid"], 0)  # `notebookos up` still runs
        restarted = json.loads((runtime / f"{victim_host}.json").read_text())["pid"]
        assert restarted != daemons[victim_host]
        reply, outputs = k.execute("print(label, int(kept.sum()))")
        assert reply["status"] == "ok", reply
        assert stream_text(outputs) == f"still here {sum(range(300_000))}\n"
        kernel_view = api("GET", f"{cluster3['url']}/api/kernels", token=cluster3["token"])[1]["kernels"][0]
        assert sorted(r["replica_id"] for r in kernel_view["replicas"]) == sorted(r["id"] for r in rows), kernel_view
    finally:
        k.shutdown()


@pytest.fixture
def leased_cluster(tmp_path_factory):
    yield from _up(tmp_path_factory, 2, 2, "--SchedulerService.front_lease=3", "--SchedulerService.check_interval=0.5")


def test_a_killed_front_loses_its_lease_and_its_kernel_is_ended(leased_cluster):
    """A front killed with SIGKILL never removes its kernel: once its lease runs out the scheduler releases the GPU
    its running cell held and has the host daemons stop its replicas; a live front's kernel is untouched."""
    url, token = leased_cluster["url"], leased_cluster["token"]
    doomed, alive = Kernel(), Kernel()
    try:
        doomed.execute("x = 1")
        alive.execute("y = 2")
        pids = [r["pid"] for r in doomed.info()["replicas"]]
        running = doomed.client.execute("print('running', flush=True)\nimport time\ntime.sleep(120)")
        assert "running" in stream_text(_collect(doomed, running, until_output=True))
        assert api("GET", f"{url}/api/status", token=token)[1]["gpus"]["committed"] == 1  # held by the cell
        os.kill(doomed.km.provisioner.process.pid, signal.SIGKILL)

        def reclaimed():
            status = api("GET", f"{url}/api/status", token=token)[1]
            return any("did not renew its lease" in r["why"] for r in status["reclaimed"]) and status

        status = doomed.wait_for(reclaimed, timeout=30, what="the dead front's kernel to be reclaimed")
        assert status["gpus"]["committed"] == 0, status
        doomed.wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), timeout=30,
                        what="the dead front's replicas to be stopped")
        # The live front renews its lease: its kernel goes on well past the lease time.
        time.sleep(4)
        reply, outputs = alive.execute("print(y)")
        assert reply["status"] == "ok" and stream_text(outputs) == "2\n", reply
    finally:
        alive.shutdown()
        doomed.client.stop_channels()
        doomed.km.cleanup_resources()


@pytest.fixture
def reservation_cluster(tmp_path_factory):
    yield from _up(tmp_path_factory, 2, 1, "--policy", "reservation")


def test_reservation_policy_live(reservation_cluster):
    """Today's JupyterHub: one replica per kernel, its GPU held from placement to shutdown, idle or not."""
    kernels: list[Kernel] = []
    try:
        for _ in range(2):
            kernels.append(Kernel())
        for k in kernels:
            for _ in range(2):  # the same GPU for every cell, with the kernel idle in between
                reply, outputs = k.execute("import notebookos.kernel\nprint(notebookos.kernel.gpus(), "
                                           "len(notebookos.kernel.replicas()))")
                assert reply["status"] == "ok" and stream_text(outputs) == "[0] 1\n", outputs
        status = api("GET", f"{reservation_cluster['url']}/api/status", token=reservation_cluster["token"])[1]
        assert status["gpus"]["committed"] == 2  # both reserved while no cell runs
        # No GPU left to reserve: the third kernel stays up and says why on every request.
        third = Kernel()
        kernels.append(third)
        reply, _ = third.execute("print('never runs')")
        assert reply["status"] == "error" and reply["ename"] == "NoReplica"
        assert "could not place this kernel" in reply["evalue"] and "restart this kernel" in reply["evalue"]
    finally:
        for k in kernels:
            k.shutdown()


@pytest.fixture
def batch_cluster(tmp_path_factory):
    yield from _up(tmp_path_factory, 2, 0, "--policy", "batch")


def test_batch_policy_live(batch_cluster):
    """Batch: no process between cells; each cell runs in a fresh one that starts from the committed state."""
    k = Kernel()  # kernel_info is answered by the front: there is no replica to ask
    try:
        reply, outputs = k.execute("import os, numpy as np, notebookos.kernel\nbig = np.arange(300_000)\nx = 41\n"
                                   "def inc(v):\n    return v + 1\nprint(notebookos.kernel.gpus(), os.getpid())")
        assert reply["status"] == "ok", reply
        gpus, first_pid = stream_text(outputs).split(" ")
        assert gpus == "[0]"
        # Between cells: no replica, no GPU held; the front answers completion itself.
        k.wait_for(lambda: not k.info()["replicas"], what="the cell's replica to be retired")
        # The cell's reply goes out before the front releases its GPU with the scheduler (no round trip first).
        k.wait_for(lambda: api("GET", f"{batch_cluster['url']}/api/status",
                               token=batch_cluster["token"])[1]["gpus"]["committed"] == 0,
                   what="the cell's GPU to be released")
        complete = k.reply(k.client.complete("in", 2))
        assert complete["status"] == "ok" and complete["matches"] == []
        reply, outputs = k.execute("print(inc(x), int(big.sum()), os.getpid() != " + first_pid.strip() + ", In[1][:9])")
        assert reply["status"] == "ok", reply
        assert stream_text(outputs) == f"42 {sum(range(300_000))} True import os\n"
    finally:
        k.shutdown()


@pytest.fixture
def growing_cluster(tmp_path_factory):
    yield from _up(tmp_path_factory, 2, 2, "--max-hosts", "3")


def test_full_hosts_make_the_scheduler_scale_out_and_migrate_a_replica(growing_cluster):
    """The notebookos policy end to end: the kernel's hosts have no free GPU, so the scheduler adds a host and
    moves a replica there (a new process joins the Raft group, catches up, the old one leaves); the cell then
    runs there with every variable."""
    url, token, host_token = growing_cluster["url"], growing_cluster["token"], growing_cluster["host_token"]

    def scheduler(method, path, body=None):
        code, answer = api(method, f"{url}{path}", body, token=token)
        assert code in (200, 201), (path, code, answer)
        return answer

    k = Kernel()
    try:
        reply, _ = k.execute("import numpy as np, notebookos.kernel\nx = 41\nbig = np.arange(300_000)")
        assert reply["status"] == "ok", reply
        kernel_id = k.km.kernel_id
        before = {r["host_id"]: r["replica_id"] for r in scheduler("GET", f"/api/kernels/{kernel_id}")["replicas"]}
        assert len(before) == 2
        # Two other kernels' cells hold both GPUs of the kernel's two hosts (scheduler records only).
        for fake in ("f1", "f2"):
            scheduler("POST", "/api/kernels", {"kernel_id": fake, "request": {"gpus": 1}})
            assert scheduler("POST", f"/api/kernels/{fake}/execute")["action"] == "run"
        reply, outputs = k.execute("print(x + 1, int(big.sum()), notebookos.kernel.gpus())", timeout=120)
        assert reply["status"] == "ok", reply
        assert stream_text(outputs, "stdout") == f"42 {sum(range(300_000))} [0]\n"
        assert "waiting for a GPU" in stream_text(outputs, "stderr")
        after = {r["host_id"]: r["replica_id"] for r in scheduler("GET", f"/api/kernels/{kernel_id}")["replicas"]}
        [new_host] = set(after) - set(before)
        assert new_host.startswith("local-")  # added by the scale-out
        [moved] = set(before) - set(after)
        hosts = {h["id"]: h for h in scheduler("GET", "/api/hosts")["hosts"]}
        on_new = api("GET", f"{hosts[new_host]['url']}/api/replicas", token=host_token)[1]["replicas"]
        assert [(r["kernel_id"], r["alive"]) for r in on_new] == [(kernel_id, True)]
        k.wait_for(lambda: not [r for r in api("GET", f"{hosts[moved]['url']}/api/replicas", token=host_token)[1]["replicas"]
                                if r["kernel_id"] == kernel_id and r["alive"]], timeout=15,
                   what="the moved replica's old process to stop")
        for fake in ("f1", "f2"):
            scheduler("POST", f"/api/kernels/{fake}/finished")
            scheduler("DELETE", f"/api/kernels/{fake}")
    finally:
        k.shutdown()


def test_replicas_listen_where_their_host_daemon_says(tmp_path, monkeypatch):
    """Each host daemon chooses its replicas' ports and address (127.0.0.2 and 127.0.0.3 here, two loopback
    addresses standing for two machines): the front connects there and Raft runs between them."""
    from .test_scheduler_service import TOKEN, start_hostd, start_scheduler, wait_hosts

    scheduler, url = start_scheduler(tmp_path, "--policy", "notebookos", "--replicas-per-kernel", "2")
    hosts = [start_hostd(tmp_path, url, f"m{i}", 1, "--ip", f"127.0.0.{i}") for i in (2, 3)]
    try:
        wait_hosts(url, {"m2", "m3"})
        monkeypatch.setenv("NOTEBOOKOS_SCHEDULER_URL", url)
        monkeypatch.setenv("NOTEBOOKOS_SCHEDULER_TOKEN", TOKEN)
        k = Kernel()
        try:
            reply, outputs = k.execute("x = 6 * 7\nprint(x)")
            assert reply["status"] == "ok" and stream_text(outputs) == "42\n", outputs
            rows = k.info()["replicas"]
            assert sorted(r["raft_address"].rsplit(":", 1)[0] for r in rows) == ["127.0.0.2", "127.0.0.3"]
            k.wait_for(lambda: all(r["status"].get("raft_role") in ("leader", "follower") for r in k.info()["replicas"]),
                       what="both replicas in the Raft group")
        finally:
            k.shutdown()
    finally:
        for h in hosts:
            h.stop()
        scheduler.stop()


def test_hosts_with_separate_stores_copy_large_values_between_them(tmp_path, monkeypatch):
    """Hosts as separate machines: each keeps its own object store; a follower on another host gets a large value
    by having its host daemon copy it from the writer's host, and still has it after the writer dies."""
    from .test_scheduler_service import TOKEN, start_hostd, start_scheduler, wait_hosts

    scheduler, url = start_scheduler(tmp_path, "--policy", "notebookos", "--replicas-per-kernel", "3")
    roots = {h: tmp_path / f"store-{h}" for h in ("s1", "s2", "s3")}
    hosts = [start_hostd(tmp_path, url, h, 1, "--store-root", str(root)) for h, root in roots.items()]
    try:
        wait_hosts(url, set(roots))
        monkeypatch.setenv("NOTEBOOKOS_SCHEDULER_URL", url)
        monkeypatch.setenv("NOTEBOOKOS_SCHEDULER_TOKEN", TOKEN)
        k = Kernel()
        try:
            reply, _ = k.execute("import numpy as np\nbig = np.arange(300_000)")  # 2.4 MB: a blob
            assert reply["status"] == "ok", reply

            def same_everywhere():
                d = [r.get("digests") for r in k.digests().values()]
                return len(d) == 3 and d[0] and all(x == d[0] for x in d) and "big" in d[0]

            k.wait_for(same_everywhere, timeout=60, what="the follower to load the value from the other host")
            blobs = {h: {p.name for p in root.glob("kernel-*/??/*")} for h, root in roots.items()}
            assert blobs["s1"] == blobs["s2"] == blobs["s3"] and len(blobs["s1"]) == 1, blobs  # a copy per host
            kill_replica(k, executor_of(k))
            reply, outputs = k.execute("print(int(big.sum()))")
            assert reply["status"] == "ok", reply
            assert stream_text(outputs) == f"{sum(range(300_000))}\n"
        finally:
            k.shutdown()
        # A kernel's directory goes with its last replica on the host.
        k.wait_for(lambda: not any(list(root.glob("kernel-*")) for root in roots.values()), timeout=30,
                   what="the kernel's store directories to be removed")
    finally:
        for h in hosts:
            h.stop()
        scheduler.stop()
