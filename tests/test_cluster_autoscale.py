"""The notebookos policy's autoscaler live, under ``notebookos up --max-hosts 4``: it adds a host when the GPUs
in use call for one, moves an idle kernel's replica there in the background so the kernel has room for its next
cell, and when the cluster is idle again moves the replica off and removes the host through the host provider;
a cell run during a move keeps its state and every replica ends with the same namespace."""

from __future__ import annotations

import pytest

from .conftest import Kernel, stream_text
from .test_cluster import _up
from .test_scheduler_service import api


@pytest.fixture
def autoscaled_cluster(tmp_path_factory):
    yield from _up(tmp_path_factory, 3, 3, "--max-hosts", "4", "--NotebookOSPolicy.committed_autoscale=True",
                   "--NotebookOSPolicy.consolidate_after=1", "--SchedulerService.autoscale_interval=0.5",
                   "--SchedulerService.front_lease=3")


def test_idle_replicas_move_in_the_background_and_the_emptied_host_is_removed(autoscaled_cluster):
    url, token, host_token = (autoscaled_cluster[k] for k in ("url", "token", "host_token"))

    def scheduler(method, path, body=None):
        code, answer = api(method, f"{url}{path}", body, token=token)
        assert code in (200, 201), (path, code, answer)
        return answer

    def replicas(kernel_id):
        return {r["replica_id"]: r for r in scheduler("GET", f"/api/kernels/{kernel_id}")["replicas"]}

    k = Kernel()
    try:
        reply, _ = k.execute("import os, numpy as np\nx = 41\nbig = np.arange(300_000)")
        assert reply["status"] == "ok", reply
        kernel_id = k.km.kernel_id
        fixed = set(autoscaled_cluster["hosts"])
        assert {r["host_id"] for r in replicas(kernel_id).values()} == fixed
        # Three other kernels' cells take the three GPUs (scheduler records only): the GPUs in use call for a
        # fourth host, and the idle kernel, with no room left for its next cell, gets a replica there.
        fakes = ["f1", "f2", "f3"]
        for fake in fakes:
            scheduler("POST", "/api/kernels", {"kernel_id": fake, "request": {"gpus": 1}})
            assert scheduler("POST", f"/api/kernels/{fake}/execute")["action"] == "run"

        def moved_to_new_host():
            rows = replicas(kernel_id)
            added = {r["host_id"] for r in rows.values()} - fixed
            return len(rows) == 3 and all(r["ready"] for r in rows.values()) and added and added.pop()

        new_host = k.wait_for(moved_to_new_host, timeout=90, what="a replica moved to a host the autoscaler added")
        hosts = {h["id"]: h for h in scheduler("GET", "/api/hosts")["hosts"]}
        assert hosts[new_host]["managed"]
        on_new = api("GET", f"{hosts[new_host]['url']}/api/replicas", token=host_token)[1]["replicas"]
        assert [(r["kernel_id"], r["alive"]) for r in on_new] == [(kernel_id, True)]
        status = scheduler("GET", "/api/status")
        assert status["background_moves"]["done"] == 1 and status["autoscaler"], status

        # The cluster goes idle: the autoscaler moves the replica off the added host and removes the host. A cell
        # that runs while the move is under way keeps its state.
        for fake in fakes:
            scheduler("POST", f"/api/kernels/{fake}/finished")
            scheduler("DELETE", f"/api/kernels/{fake}")
        k.wait_for(lambda: len(replicas(kernel_id)) == 4, timeout=60, interval=0.05,
                   what="the move off the added host to be ordered")
        reply, outputs = k.execute("import time\ntime.sleep(2)\nx += 1\nprint(x, int(big.sum()))", timeout=120)
        assert reply["status"] == "ok", reply
        assert stream_text(outputs, "stdout") == f"42 {sum(range(300_000))}\n"
        assert stream_text(outputs, "stderr") == ""  # it started at once: no wait, no move on its path

        def host_removed():
            ids = {h["id"] for h in scheduler("GET", "/api/hosts")["hosts"]}
            return new_host not in ids and len(replicas(kernel_id)) == 3

        k.wait_for(host_removed, timeout=90, what="the emptied host to be removed")
        assert {r["host_id"] for r in replicas(kernel_id).values()} == fixed
        status = scheduler("GET", "/api/status")
        assert status["background_moves"]["done"] == 2 and status["scale_ins"] == 1, status
        assert status["hosts"] == 3 and status["gpus"]["committed"] == 0

        def daemon_gone():
            try:
                api("GET", f"{hosts[new_host]['url']}/api/replicas", token=host_token, timeout=2)
            except OSError:
                return True
            return False

        k.wait_for(daemon_gone, timeout=30, what="the removed host's daemon to stop")
        # The kernel kept its state on every replica, and runs cells as before.
        def same_everywhere():
            d = [r.get("digests") for r in k.digests().values()]
            return len(d) == 3 and d[0] and all(x == d[0] for x in d) and {"x", "big"} <= set(d[0])

        k.wait_for(same_everywhere, timeout=30, what="every replica to hold the same namespace")
        reply, outputs = k.execute("print(x + 1)")
        assert reply["status"] == "ok" and stream_text(outputs) == "43\n", reply
    finally:
        k.shutdown()
