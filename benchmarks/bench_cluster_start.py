"""Kernel start in cluster mode, with and without the host daemons' prewarm pools, in the same run.

Starts ``notebookos up --no-lab`` twice (3 hosts with 1 virtual GPU each, 3 replicas per kernel): once with no
prewarm pool and once with ``--prewarm 1``, and on each starts kernels one after another, timing each from
``start_kernel`` until its first cell has run (the kernel is placed, its replicas are launched through the host
daemons, elect a Raft leader and run ``1``). A plain ``python3`` ipykernel started the same way is the baseline.
Prints medians and ratios.

    python benchmarks/bench_cluster_start.py [--kernels N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import KernelManager

from notebookos.kernelspec import install_kernelspec

ROOT = Path(__file__).resolve().parent.parent


def start_seconds(name: str) -> float:
    km = KernelManager(kernel_name=name)
    started = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        reply = kc.execute("1", reply=True, timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        return time.perf_counter() - started
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


class Cluster:
    def __init__(self, prewarm: int):
        self.runtime = Path(tempfile.mkdtemp(prefix="notebookos-bench-up-"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notebookos", "up", "--no-lab", "--hosts", "3", "--gpus-per-host", "1",
             "--replicas-per-kernel", "3", "--prewarm", str(prewarm), "--runtime-dir", str(self.runtime)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        info_file = self.runtime / "cluster.json"
        deadline = time.monotonic() + 90
        while not info_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"notebookos up did not start (logs in {self.runtime})")
            time.sleep(0.2)
        info = json.loads(info_file.read_text())
        os.environ["NOTEBOOKOS_SCHEDULER_URL"], os.environ["NOTEBOOKOS_SCHEDULER_TOKEN"] = info["url"], info["token"]

    def close(self) -> None:
        os.environ.pop("NOTEBOOKOS_SCHEDULER_URL", None)
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def measure(prewarm: int, kernels: int, settle: float) -> list[float]:
    cluster = Cluster(prewarm)
    try:
        time.sleep(settle)  # pools filled, imports warm in the page cache
        times = []
        for _ in range(kernels):
            times.append(start_seconds("notebookos"))
            time.sleep(settle)  # let the pools refill, as between two users opening notebooks
        return times
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=5, help="kernels started per configuration")
    parser.add_argument("--quick", action="store_true", help="2 kernels each, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    kernels = 2 if args.quick else args.kernels
    prefix = tempfile.mkdtemp(prefix="notebookos-bench-")
    install_kernelspec(prefix=prefix)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [f"{prefix}/share/jupyter",
                                                                os.environ.get("JUPYTER_PATH")]))
    plain = [start_seconds("python3") for _ in range(kernels)]
    # Between kernels: longer than a host daemon waits before refilling its pool, plus the refill itself.
    cold = measure(0, kernels, settle=4.0)
    warm = measure(1, kernels, settle=4.0)
    results = {"kernels": kernels, "python3_s": statistics.median(plain), "cold_s": statistics.median(cold),
               "prewarmed_s": statistics.median(warm), "runs": {"python3": plain, "cold": cold, "prewarmed": warm}}
    print(f"kernel start until its first cell ran, cluster mode (3 hosts, 3 replicas), median of {kernels}:")
    print(f"  plain python3 ipykernel      {results['python3_s']:.3f} s")
    print(f"  notebookos, no prewarm pool  {results['cold_s']:.3f} s  ({results['cold_s'] / results['python3_s']:.2f}x plain)")
    print(f"  notebookos, --prewarm 1      {results['prewarmed_s']:.3f} s  "
          f"({results['prewarmed_s'] / results['python3_s']:.2f}x plain, "
          f"{results['prewarmed_s'] / results['cold_s']:.2f}x no pool)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
