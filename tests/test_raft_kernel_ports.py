"""A real notebookos kernel keeps running cells while a stranger attacks its executor's Raft port.

The attack is the one from the issue: a 4-byte frame length of 2 GiB, then junk streamed for seconds, plus idle
connections that never authenticate. Before the transport limits, the executor's tick thread spent itself
buffering the junk, its commit timed out, it marked itself diverged and every later cell failed with
ReplicaDiverged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .conftest import Kernel
from .test_raft_transport import ATTACKER


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_cells_keep_committing_while_junk_floods_the_executors_raft_port():
    k = Kernel()
    try:
        reply, _ = k.execute("n = 0")
        assert reply["status"] == "ok", reply
        info = k.info()
        executor = next(r for r in info["replicas"] if r["id"] == info["last_executor"])
        host, port = executor["raft_address"].rsplit(":", 1)
        rss_before = rss_of(executor["pid"])
        attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, host, port, "5", "10"],
                                    stdout=subprocess.PIPE, text=True)
        cells = 0
        while attacker.poll() is None or cells < 5:
            reply, _ = k.execute("n += 1", timeout=60)
            cells += 1
            assert reply["status"] == "ok", reply  # ReplicaDiverged (or a commit timeout) fails here
            time.sleep(0.05)
        report = json.loads(attacker.communicate(timeout=60)[0])
        assert report["closed_by_victim"] > 0 and report["ended_by_timer"] <= 1, report
        assert report["idle_closed"] == 10, report
        assert k.value("n") == cells
        info = k.info()
        assert not any(r["diverged"] for r in info["replicas"]), info["replicas"]
        assert info["last_executor"] == executor["id"]  # the attacked replica kept executing
        assert rss_of(executor["pid"]) - rss_before < 32 * 2**20
    finally:
        k.shutdown()
