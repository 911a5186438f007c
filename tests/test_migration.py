"""Migrations are transactions: one that fails is rolled back, one that succeeded is reported to the scheduler even
through a hiccup of the scheduler.

Real processes throughout: `notebookos up` (scheduler, host daemons, scale-out), a real kernel front and its Raft
replicas; the new replica is stalled with SIGSTOP (it joins the Raft group and never catches up), the scheduler with
SIGSTOP (it cannot answer for a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time

import pytest

from notebookos.common.client import SchedulerClient
from notebookos.kernel.front.cluster import HostdLauncher, SchedulerExecutorPolicy

from .conftest import Kernel, stream_text
from .test_cluster import _collect, _up
from .test_scheduler_service import TOKEN, api, ok, pid_alive, start_hostd, start_scheduler, wait_hosts


@pytest.fixture
def growing_cluster(tmp_path_factory):
    yield from _up(tmp_path_factory, 2, 2, "--max-hosts", "3")


def test_a_migration_whose_new_replica_never_catches_up_is_rolled_back(growing_cluster):
    """Both GPUs of the kernel's hosts are held, so the scheduler adds a host and moves a replica there; the new
    replica is stopped (SIGSTOP) as soon as its process exists, so it never catches up. The migration is rolled
    back: the new replica leaves the Raft group and its process is gone, the old replicas are the group and the
    scheduler's view, the cell ends with an error that says why, and the next cell runs with the kernel's state."""
    url, token = growing_cluster["url"], growing_cluster["token"]
    host_token = growing_cluster.get("host_token") or token  # what the host daemons take, where they have their own

    def scheduler(method, path, body=None):
        code, answer = api(method, f"{url}{path}", body, token=token)
        assert code in (200, 201), (path, code, answer)
        return answer

    k = Kernel(migrate_timeout=10)
    stalled: dict = {}
    try:
        reply, _ = k.execute("import numpy as np\nx = 41\nbig = np.arange(300_000)")
        assert reply["status"] == "ok", reply
        kernel_id = k.km.kernel_id
        before = {r["replica_id"]: r["host_id"] for r in scheduler("GET", f"/api/kernels/{kernel_id}")["replicas"]}
        rows = [r for r in k.info()["replicas"] if r["member"] and r["alive"]]
        assert sorted(r["id"] for r in rows) == sorted(before)
        addresses = sorted(r["raft_address"] for r in rows)
        hosts_before = {h["id"] for h in scheduler("GET", "/api/hosts")["hosts"]}
        for fake in ("f1", "f2"):  # other kernels' cells hold both GPUs of the kernel's hosts (records only)
            scheduler("POST", "/api/kernels", {"kernel_id": fake, "request": {"gpus": 1}})
            assert scheduler("POST", f"/api/kernels/{fake}/execute")["action"] == "run"

        done = threading.Event()

        def stall_the_new_replica() -> None:
            while not done.is_set():
                for host in scheduler("GET", "/api/hosts")["hosts"]:
                    if host["id"] in hosts_before:
                        continue
                    code, answer = api("GET", f"{host['url']}/api/replicas", token=host_token)
                    for row in answer.get("replicas", []) if code == 200 else []:
                        if row["kernel_id"] == kernel_id and row["alive"]:
                            os.kill(row["pid"], signal.SIGSTOP)
                            stalled.update(row, host_id=host["id"], host_url=host["url"])
                            return
                time.sleep(0.02)

        watcher = threading.Thread(target=stall_the_new_replica, daemon=True)
        watcher.start()
        msg_id = k.client.execute("print(x + 1, int(big.sum()))")
        outputs = _collect(k, msg_id, timeout=180)
        reply = k.reply(msg_id)
        done.set()
        watcher.join(10)
        assert stalled, ("no new replica was started on a new host", reply, stream_text(outputs))
        stderr = stream_text(outputs, "stderr")
        assert "moving replica" in stderr and "rolled back" in stderr and "Asking the scheduler again" in stderr
        # The scheduler asked for the move again (both GPUs are still held): the cell ends with why, not hanging.
        assert reply["status"] == "error", reply
        assert "did not catch up within 10 s" in reply["evalue"] and "rolled back" in reply["evalue"], reply
        assert stream_text(outputs, "stdout") == ""

        # The new replica's process is gone (stopped by its host daemon), and its host runs nothing of the kernel.
        k.wait_for(lambda: not pid_alive(stalled["pid"]), timeout=30, what="the new replica's process to end")
        code, answer = api("GET", f"{stalled['host_url']}/api/replicas", token=host_token)
        assert code == 200 and not [r for r in answer["replicas"] if r["kernel_id"] == kernel_id and r["alive"]]
        # The group is the old one: in the front, in every replica's Raft view, and in the scheduler.
        info = k.info()
        assert sorted(r["id"] for r in info["replicas"] if r["member"]) == sorted(before), info
        assert sorted(r["id"] for r in info["replicas"] if r["alive"]) == sorted(before), info
        gone = next(r for r in info["replicas"] if r["id"] == stalled["replica_id"])
        assert not gone["member"] and not gone["alive"]
        assert info["front"]["replica_handles"] == len(before), info["front"]

        def raft_members_are_the_old_ones():
            statuses = [r["status"] for r in k.info()["replicas"] if r["member"]]
            return all(s.get("raft_members") == addresses for s in statuses) and len(statuses) == len(before)

        k.wait_for(raft_members_are_the_old_ones, timeout=15, what="the replicas' Raft view of the old group")
        after = {r["replica_id"]: r["host_id"] for r in scheduler("GET", f"/api/kernels/{kernel_id}")["replicas"]}
        assert after == before

        # Once a GPU is free on the kernel's hosts, the next cell runs on an old replica with every variable.
        for fake in ("f1", "f2"):
            scheduler("POST", f"/api/kernels/{fake}/finished")
            scheduler("DELETE", f"/api/kernels/{fake}")
        reply, outputs = k.execute("print(x + 1, int(big.sum()))", timeout=120)
        assert reply["status"] == "ok", reply
        assert stream_text(outputs, "stdout") == f"42 {sum(range(300_000))}\n"
        assert k.info()["last_executor"] in before
    finally:
        if stalled and pid_alive(stalled["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(stalled["pid"], signal.SIGCONT)
        k.shutdown()


def test_a_migration_report_is_retried_through_a_scheduler_hiccup(tmp_path, caplog):
    """The front reports a migration that has happened while the scheduler is stopped (SIGSTOP for 3 s; the front's
    client gives up on a request after 1 s): the report is retried, not failed, and the scheduler then knows the
    replica moved, exactly once."""
    scheduler, url = start_scheduler(tmp_path, "--replicas-per-kernel", "1", "--max-hosts", "2")
    hosts = [start_hostd(tmp_path, url, f"m{i}") for i in (1, 2)]
    try:
        wait_hosts(url, {"m1", "m2"})
        placed = ok("POST", f"{url}/api/kernels", {"kernel_id": "k"}, 201)
        [row] = placed["replicas"]
        target = next(h for h in ("m1", "m2") if h != row["host_id"])
        token = placed.get("kernel_token") or TOKEN  # the kernel's own token where the scheduler gives one
        policy = SchedulerExecutorPolicy(SchedulerClient(url, token, timeout=1.0), "k", HostdLauncher("k", token, {}))
        os.kill(scheduler.pid, signal.SIGSTOP)
        resume = threading.Timer(3.0, os.kill, (scheduler.pid, signal.SIGCONT))
        resume.start()
        try:
            with caplog.at_level(logging.WARNING, logger="notebookos.kernel.front.cluster"):
                asyncio.run(policy.migrated(row["replica_id"], row["replica_id"] + 1, target))
        finally:
            resume.join()
            os.kill(scheduler.pid, signal.SIGCONT)
        assert "retrying" in caplog.text  # the scheduler did fail to answer at first
        view = ok("GET", f"{url}/api/kernels/k")
        assert view["replicas"] == [{"replica_id": row["replica_id"] + 1, "host_id": target,
                                     "host_url": next(h["url"] for h in ok("GET", f"{url}/api/hosts")["hosts"]
                                                      if h["id"] == target), "ready": True}], view
    finally:
        for h in hosts:
            h.stop()
        scheduler.stop()
