"""Replicated state at the scale of deep-learning notebooks, against a plain ipykernel in the same run.

Measures, and prints with ratios:

- a cell that does not touch a large value: ``x = 1`` round trip (p50 over ``--cells``) with an empty namespace,
  and with a model of ``--model-mib`` MiB of parameters in it (the replicated kernel must not re-examine it);
- a training cell: ``--steps`` Adam steps on an MLP of ``--train-params`` million parameters, wall time on the
  plain kernel and on the replicated one (median of ``--repeats`` cells after ``--warmup`` ones), how long hashing
  and storing what changed and the Raft commit took, and how long after the reply every
  follower has applied the new parameters and optimiser state;
- failover under that state: executor SIGKILL -> reply of the next cell, and of the first training step after it.

Usage: ``python benchmarks/bench_state.py [--quick] [--json OUT]``. Needs ``pip install -e .[experiments]``
(torch). The issue's targets are for a GPU host with a 300M-parameter model; on CPU the defaults are smaller so
that three replicas, the store and the plain kernel fit in memory and a run takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_kernel import Bench, follower_clients, percentile, wait_applied  # noqa: E402

from notebookos.kernel import protocol  # noqa: E402
from notebookos.kernelspec import install_kernelspec  # noqa: E402

MODEL = """
import torch
torch.manual_seed(0)
torch.set_num_threads({threads})
width = {width}
model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range({layers})])
"""

TRAIN_SETUP = """
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
x = torch.randn(32, width)
y = torch.randn(32, width)
"""

TRAIN = """
for _ in range({steps}):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
"""


def round_trip_p50(bench: Bench, cells: int) -> float:
    for _ in range(10):
        bench.run("x = 1")
    times = []
    for _ in range(cells):
        t = time.perf_counter()
        bench.run("x = 1")
        times.append(time.perf_counter() - t)
    return percentile(times, 50)


def layers_for(params_millions: float, width: int) -> int:
    return max(1, round(params_millions * 1e6 / (width * width + width)))


def untouched(args, threads: int) -> dict:
    """x = 1 with and without a large model in the namespace, on the replicated kernel (and plain for scale)."""
    out = {}
    width = 2048
    layers = layers_for(args.model_mib * (1 << 20) / 4 / 1e6, width)
    for name in ("python3", "notebookos"):
        b = Bench(name)
        try:
            empty = round_trip_p50(b, args.cells)
            b.run(MODEL.format(threads=threads, width=width, layers=layers), timeout=900)
            if name == "notebookos":  # the model's own replication is not what is measured here
                followers = follower_clients(b)
                wait_applied(followers, b.run("1")["metadata"][protocol.META_KEY]["seq"], timeout=900)
                for kc in followers.values():
                    kc.stop_channels()
            loaded = round_trip_p50(b, args.cells)
            out[name] = {"empty_ms": 1e3 * empty, "with_model_ms": 1e3 * loaded}
        finally:
            b.shutdown()
    out["model_mib"] = layers * (width * width + width) * 4 / (1 << 20)
    return out


def training(args, threads: int) -> dict:
    width = 1024
    layers = layers_for(args.train_params, width)
    out: dict = {"params_millions": layers * (width * width + width) / 1e6, "steps": args.steps}
    for name in ("python3", "notebookos"):
        b = Bench(name)
        try:
            b.run(MODEL.format(threads=threads, width=width, layers=layers) + TRAIN_SETUP, timeout=900)
            followers = follower_clients(b) if name == "notebookos" else {}
            # Warm-up, not part of the steady state: Adam creates its state on the first step, and the store grows
            # to two generations of the parameters (the last cell's are collected when the next one starts).
            for _ in range(args.warmup):
                reply = b.run(TRAIN.format(steps=1), timeout=900)
                if followers:
                    wait_applied(followers, reply["metadata"][protocol.META_KEY]["seq"], timeout=900)
            cells, applied, timings = [], [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                reply = b.run(TRAIN.format(steps=args.steps), timeout=900)
                cells.append(time.perf_counter() - t)
                if followers:
                    meta = reply["metadata"][protocol.META_KEY]
                    timings.append(meta.get("timings") or {})
                    t = time.perf_counter()
                    wait_applied(followers, meta["seq"], timeout=900)
                    applied.append(time.perf_counter() - t)
            out[name] = {"cell_s": statistics.median(cells)}
            if followers:
                out[name]["followers_applied_after_reply_s"] = statistics.median(applied)
                for key in ("capture_s", "commit_s"):
                    out[name][key] = statistics.median(tm.get(key, float("nan")) for tm in timings)
                for kc in followers.values():
                    kc.stop_channels()
                info = b.control("notebookos_info_request")
                victim = next(r["pid"] for r in info["replicas"] if r["id"] == info["last_executor"])
                t = time.perf_counter()
                os.kill(victim, signal.SIGKILL)
                b.run("opt.param_groups[0]['params'][0] is model[0].weight or 1 / 0")
                out[name]["failover_next_cell_s"] = time.perf_counter() - t
                t = time.perf_counter()
                b.run(TRAIN.format(steps=1), timeout=900)
                out[name]["first_step_after_failover_s"] = time.perf_counter() - t
            else:
                t = time.perf_counter()
                b.run(TRAIN.format(steps=1), timeout=900)
                out[name]["one_step_s"] = time.perf_counter() - t
        finally:
            b.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--cells", type=int, default=200, help="x = 1 cells per measurement")
    parser.add_argument("--model-mib", type=float, default=1024, help="size of the untouched model")
    parser.add_argument("--train-params", type=float, default=50, help="millions of parameters trained")
    parser.add_argument("--steps", type=int, default=3, help="Adam steps per training cell")
    parser.add_argument("--repeats", type=int, default=5, help="training cells measured (the median is shown)")
    parser.add_argument("--warmup", type=int, default=3, help="training cells run first and not measured")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.cells, args.model_mib, args.train_params, args.steps, args.repeats, args.warmup = 20, 16, 2, 1, 1, 1

    prefix = tempfile.mkdtemp(prefix="notebookos-bench-")
    install_kernelspec(prefix=prefix)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [f"{prefix}/share/jupyter",
                                                                os.environ.get("JUPYTER_PATH")]))
    threads = max(1, (os.cpu_count() or 2) // 2)
    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch_threads": threads},
               "untouched": untouched(args, threads), "training": training(args, threads)}
    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


def report(r: dict) -> None:
    u, t = r["untouched"], r["training"]
    nb = u["notebookos"]
    print(f"\nx = 1 round trip p50 with a {u['model_mib']:.0f} MiB model in the namespace vs empty:")
    for name in ("python3", "notebookos"):
        row = u[name]
        print(f"  {name:10} empty {row['empty_ms']:7.2f} ms   with model {row['with_model_ms']:7.2f} ms   "
              f"{row['with_model_ms'] / row['empty_ms']:5.2f}x")
    print(f"  target: notebookos with model <= 1.2x of empty  -> {nb['with_model_ms'] / nb['empty_ms']:.2f}x")
    p, n = t["python3"], t["notebookos"]
    print(f"\ntraining cell ({t['params_millions']:.0f}M parameters, Adam, {t['steps']} steps):")
    print(f"  wall time: python3 {p['cell_s']:.3f} s, notebookos {n['cell_s']:.3f} s, "
          f"{n['cell_s'] / p['cell_s']:.2f}x  (target <= 1.3x)")
    print(f"    of which, after the cell ran: hashing and storing what changed {n['capture_s']:.3f} s, "
          f"Raft commit {n['commit_s']:.3f} s")
    print(f"  every follower applied the new state {n['followers_applied_after_reply_s']:.3f} s after the reply"
          "  (target <= 3 s on the GPU host)")
    print(f"  executor SIGKILL -> next cell's reply {n['failover_next_cell_s']:.3f} s  (target <= 2 s)")
    print(f"  first training step after the failover {n['first_step_after_failover_s']:.3f} s "
          f"(one step on python3: {p['one_step_s']:.3f} s)")


if __name__ == "__main__":
    main()
