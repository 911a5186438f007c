"""Replicated kernel vs a plain ipykernel started in the same run.

Measures, and prints as a table with ratios:

- execute round trip of ``x = 1 + 1`` (client send -> execute_reply), p50 and p99 over ``--cells`` cells;
- kernel start until the first cell has run;
- state sync: time from the end of a cell that creates a 1/16/256 MiB array until every follower has applied it
  (followers are polled directly on their control channels), median of 3, as GB/s;
- idle CPU per process over ``--idle`` seconds (each replica and the front; the plain kernel);
- failover: executor SIGKILL -> reply of the next cell, against restarting a plain kernel and running a cell
  (what a user of a plain kernel does, losing the state).

Usage: ``python benchmarks/bench_kernel.py [--quick] [--json OUT]``. Needs ``pip install -e .``.

``--failover-under-load`` measures only failover, ``--kills`` times, while ``--hogs`` CPU-bound processes
(``while True: pass``, started and killed here) compete for the cores; with ``--baseline-rev REV`` it first runs
the same measure on a kernel whose processes import ``notebookos`` as of git revision REV (extracted with ``git
archive`` and put first on ``PYTHONPATH``), and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from notebookos.kernel import protocol
from notebookos.kernelspec import install_kernelspec

MiB = 1 << 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Bench:
    def __init__(self, name: str, env: dict[str, str] | None = None, cwd: str | None = None, **config):
        self.name = name
        self.km = KernelManager(kernel_name=name)
        if config:
            self.km.kernel_spec.metadata["kernel_provisioner"]["config"].update(config)
        started = time.perf_counter()
        kwargs = {"env": {**os.environ, **env}} if env else {}
        self.km.start_kernel(**kwargs, **({"cwd": cwd} if cwd else {}))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.run("1")
        self.start_seconds = time.perf_counter() - started

    def run(self, code: str, timeout: float = 300) -> dict:
        msg_id = self.kc.execute(code)
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        self.drain()
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{code!r} failed on {self.name}: {reply['content']}")
        return reply

    def drain(self) -> None:
        while True:
            try:
                self.kc.get_iopub_msg(timeout=0)
            except queue.Empty:
                return

    def value(self, expr: str):
        msg_id = self.kc.execute(f"print(repr({expr}))")
        text = ""
        while True:
            msg = self.kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                text += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return eval(text)  # noqa: S307 - our own kernel's repr of a float

    def control(self, msg_type: str) -> dict:
        msg = self.kc.session.msg(msg_type, {})
        self.kc.control_channel.send(msg)
        while True:
            reply = self.kc.control_channel.get_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]

    def pids(self) -> dict[str, int]:
        if self.name != "notebookos":
            return {"kernel": self.km.provisioner.process.pid}
        info = self.control("notebookos_info_request")
        pids = {"front": self.km.provisioner.process.pid}
        pids.update({f"replica {r['id']}": r["pid"] for r in info["replicas"] if r["alive"]})
        return pids

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_trips(bench: Bench, cells: int) -> list[float]:
    for _ in range(20):
        bench.run("x = 1 + 1")
    times = []
    for _ in range(cells):
        t = time.perf_counter()
        bench.run("x = 1 + 1")
        times.append(time.perf_counter() - t)
    return times


def idle_cpu(bench: Bench, seconds: float) -> dict[str, float]:
    time.sleep(1.0)
    pids = bench.pids()
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    time.sleep(seconds)
    return {k: 100 * (cpu_seconds(p) - before[k]) / seconds for k, p in pids.items()}


def follower_clients(bench: Bench, attempts: int = 4) -> dict[int, BlockingKernelClient]:
    """Clients of the followers' control channels, each answering. A replica listed while the kernel starts may be
    replaced meanwhile (its ports were taken: free_ports), so one that does not answer is looked up again."""
    clients: dict[int, BlockingKernelClient] = {}
    for attempt in range(attempts):
        info = bench.control("notebookos_info_request")
        followers = {row["id"]: row for row in info["replicas"]
                     if row["alive"] and row["id"] != info["last_executor"]}
        for rid in [r for r in clients if r not in followers]:
            clients.pop(rid).stop_channels()
        for rid, row in followers.items():
            if rid in clients:
                continue
            kc = BlockingKernelClient(connection_file=row["connection_file"])
            kc.load_connection_file()
            kc.start_channels(shell=False, iopub=False, stdin=False, hb=False)
            try:
                applied(kc, timeout=10 if attempt + 1 < attempts else 30)  # connect now: not counted as sync time
            except queue.Empty:
                kc.stop_channels()
                continue
            clients[rid] = kc
        if len(clients) == len(followers):
            return clients
        time.sleep(1.0)
    raise RuntimeError(f"followers {sorted(set(followers) - set(clients))} do not answer on their control channel")


def applied(kc: BlockingKernelClient, timeout: float = 30) -> int:
    msg = kc.session.msg(protocol.STATUS_REQUEST, {})
    kc.control_channel.send(msg)
    while True:
        reply = kc.control_channel.get_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply["content"]["applied_index"]


def wait_applied(followers: dict[int, BlockingKernelClient], seq: int, timeout: float = 120) -> None:
    pending = dict(followers)
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"followers {sorted(pending)} did not apply entry {seq} within {timeout:g} s")
        for rid, kc in list(pending.items()):
            if applied(kc) >= seq:
                del pending[rid]


def state_sync(bench: Bench, sizes_mib: list[int], repeats: int = 1) -> dict[int, float]:
    """Median over ``repeats`` of each size. Each repeat stores a new value, so it also pays for fresh store pages."""
    followers = follower_clients(bench)
    # Followers import numpy when they apply this cell: let them finish before anything is timed.
    reply = bench.run("import numpy as np, time")
    wait_applied(followers, reply["metadata"][protocol.META_KEY]["seq"])
    seconds = {}
    for size in sizes_mib:
        name = f"state_{size}"
        runs = []
        for i in range(repeats):
            # Touch the memory first so page faults of a fresh allocation are not counted as sync time.
            reply = bench.run(f"{name} = np.random.default_rng({size + i}).random({size * MiB // 8})\n"
                              "_t_end = time.time()")
            wait_applied(followers, reply["metadata"][protocol.META_KEY]["seq"])
            done = time.time()
            runs.append(done - bench.value("_t_end"))
            bench.run(f"del {name}")
        seconds[size] = statistics.median(runs)
    for kc in followers.values():
        kc.stop_channels()
    return seconds


def failover(bench: Bench, repeats: int, settle: float = 1.0) -> list[float]:
    bench.run("import numpy as np\nkept = np.arange(1000)")
    times = []
    for _ in range(repeats):
        info = bench.control("notebookos_info_request")
        victim = next(r["pid"] for r in info["replicas"] if r["id"] == info["last_executor"])
        t = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        bench.run("kept.sum()")
        times.append(time.perf_counter() - t)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for the replacement before the next kill
            rows = bench.control("notebookos_info_request")["replicas"]
            if sum(r["alive"] and r["member"] for r in rows) == 3:
                break
            time.sleep(0.2)
        time.sleep(settle)
    return times


def cpu_hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def failover_under_load(kills: int, hogs: int, settle: float, env: dict[str, str] | None = None) -> list[float]:
    """Failover ``kills`` times on a fresh kernel while ``hogs`` busy loops compete for the cores."""
    # Outside the checkout: ``python -m`` puts the working directory ahead of PYTHONPATH, which would shadow the
    # baseline's package with this one.
    bench = Bench("notebookos", env=env, cwd=tempfile.mkdtemp(prefix="notebookos-bench-cwd-"))
    source = bench.value("__import__('notebookos').__file__")
    expected = (env or {}).get("PYTHONPATH") or str(Path(__file__).resolve().parent.parent)
    if not source.startswith(expected):
        raise RuntimeError(f"the kernel imported notebookos from {source}, not from {expected}")
    busy = cpu_hogs(hogs)
    try:
        # Links between followers carry no traffic while a leader lives; PySyncObj counts a link idle for its
        # connection timeout (2.4 s) as dead. Settling longer than that between kills is what a user sees.
        return failover(bench, kills, settle=settle)
    finally:
        for p in busy:
            p.kill()
            p.wait()
        bench.shutdown()


def baseline_source(rev: str) -> str:
    """The ``notebookos`` package as of ``rev``, extracted into a temporary directory (for ``PYTHONPATH``)."""
    root = Path(__file__).resolve().parent.parent
    out = tempfile.mkdtemp(prefix=f"notebookos-{rev[:12]}-")
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "notebookos"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out


def main_failover_under_load(args: argparse.Namespace) -> dict:
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                     "kills": args.kills, "hogs": args.hogs,
                     "settle_s": args.settle}
    variants = {}
    if args.baseline_rev:
        variants[f"baseline {args.baseline_rev}"] = {"PYTHONPATH": baseline_source(args.baseline_rev)}
    variants["current"] = None
    for name, env in variants.items():
        times = failover_under_load(args.kills, args.hogs, args.settle, env)
        results[name] = {"median_s": statistics.median(times), "max_s": max(times), "times_s": times}
        print(f"{name:28} median {statistics.median(times):.3f} s  max {max(times):.3f} s  "
              f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)
    if args.baseline_rev:
        base, cur = results[f"baseline {args.baseline_rev}"], results["current"]
        print(f"ratio current/baseline: median {cur['median_s'] / base['median_s']:.2f}x, "
              f"max {cur['max_s'] / base['max_s']:.2f}x  (targets: median <= 0.5 s, max <= 2 s)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--failover-under-load", action="store_true",
                        help="only measure failover while --hogs busy loops compete for the CPUs")
    parser.add_argument("--kills", type=int, default=10, help="executor kills for --failover-under-load")
    parser.add_argument("--hogs", type=int, default=3, help="CPU-bound processes for --failover-under-load")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="with --failover-under-load: seconds between a replacement joining and the next kill")
    parser.add_argument("--baseline-rev", help="with --failover-under-load: also measure this git revision")
    args = parser.parse_args()
    sizes = [1, 16, 256]
    repeats = 3
    if args.quick:
        args.cells, args.idle, args.starts, sizes, repeats = 30, 1.0, 1, [1], 1

    prefix = tempfile.mkdtemp(prefix="notebookos-bench-")
    install_kernelspec(prefix=prefix)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [f"{prefix}/share/jupyter",
                                                                os.environ.get("JUPYTER_PATH")]))
    if args.failover_under_load:
        results = main_failover_under_load(args)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
        return
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}

    starts: dict[str, list[float]] = {"python3": [], "notebookos": []}
    for _ in range(args.starts):
        for name in starts:
            b = Bench(name)
            starts[name].append(b.start_seconds)
            b.shutdown()
    results["start_s"] = {k: statistics.median(v) for k, v in starts.items()}

    plain, repl = Bench("python3"), Bench("notebookos")
    try:
        rt = {"python3": round_trips(plain, args.cells), "notebookos": round_trips(repl, args.cells)}
        results["round_trip_ms"] = {k: {"p50": 1e3 * percentile(v, 50), "p99": 1e3 * percentile(v, 99)}
                                    for k, v in rt.items()}
        results["idle_cpu_percent"] = {"python3": idle_cpu(plain, args.idle), "notebookos": idle_cpu(repl, args.idle)}
        sync = state_sync(repl, sizes, repeats)
        results["state_sync"] = {f"{s} MiB": {"seconds": t, "GB_per_s": s * MiB / t / 1e9} for s, t in sync.items()}
        plain_restart = []
        for _ in range(repeats):
            t = time.perf_counter()
            plain.km.restart_kernel(now=True)
            plain.kc.wait_for_ready(timeout=60)
            plain.run("1")
            plain_restart.append(time.perf_counter() - t)
        results["failover_s"] = {"notebookos": statistics.median(failover(repl, repeats)),
                                 "python3 restart": statistics.median(plain_restart)}
    finally:
        plain.shutdown()
        repl.shutdown()

    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


def report(r: dict) -> None:
    rt, st, fo = r["round_trip_ms"], r["start_s"], r["failover_s"]
    rows = [
        ("execute round trip p50 (ms)", rt["python3"]["p50"], rt["notebookos"]["p50"], "<= 1.5x"),
        ("execute round trip p99 (ms)", rt["python3"]["p99"], rt["notebookos"]["p99"], "<= 2.0x"),
        ("start until first cell ran (s)", st["python3"], st["notebookos"], "<= 2.0x"),
        ("failover: SIGKILL -> next reply (s) [plain: restart]", fo["python3 restart"], fo["notebookos"], "<= 2 s"),
    ]
    print(f"\n{'measure':54} {'python3':>10} {'notebookos':>11} {'ratio':>7}  target")
    for name, base, ours, target in rows:
        print(f"{name:54} {base:10.3f} {ours:11.3f} {ours / base:6.2f}x  {target}")
    cpu = r["idle_cpu_percent"]
    print(f"\nidle CPU (% of one core): python3 kernel {cpu['python3']['kernel']:.2f}; "
          + ", ".join(f"{k} {v:.2f}" for k, v in cpu["notebookos"].items()) + "  (target <= 1 per replica)")
    print("state sync (cell end -> every follower applied):")
    for size, s in r["state_sync"].items():
        print(f"  {size:>8}: {1e3 * s['seconds']:8.1f} ms  {s['GB_per_s']:6.2f} GB/s  (target >= 1 GB/s at 256 MiB)")


if __name__ == "__main__":
    main()
