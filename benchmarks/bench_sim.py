"""Scheduling policies: simulator throughput, decision latency, and a synthetic month side by side.

Measures and prints:

1. simulator throughput: logged events per second of simulated work, per policy, over a synthetic month
   (``--sessions`` sessions over ``--days`` days; target >= 100,000 events/s per policy), ``notebookos`` also with
   its autoscaler on (``committed_autoscale``: a pass every 30 s of simulated time);
2. decision latency of ``schedule_cell`` (and ``place``), p50/p99/max, per policy, on a cluster of ``--hosts``
   hosts of 8 GPUs with ``--kernels`` kernels registered, GPUs kept ``--load`` busy by running cells (target
   p99 <= 5 ms). Each decision is applied the way the service would (a Migrate moves the replica; a Queue is
   withdrawn so that the next decision is not stuck behind it), untimed. With the autoscaler, a decision is one
   second and every 30th is followed by a pass (timed on its own: ``autoscale p99``) whose background moves
   complete 30 s later and whose emptied hosts are removed;
3. the comparison table of the three policies on that synthetic month (GPU-hours provisioned and committed, cell
   start delay p50/p99, immediate starts, migrations, scale-outs/ins).

Usage: ``python benchmarks/bench_sim.py [--quick] [--json OUT]``. Needs ``pip install -e .``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from notebookos.scheduler.cluster import Cluster, Host, ResourceRequest
from notebookos.scheduler.policy import Migrate, Move, Queue, Run, ScaleOut, load_policy
from notebookos.scheduler.sim import SimConfig, Simulation, synthetic
from notebookos.scheduler.sim.report import format_table

#: (label, policy, options) of the throughput and latency rows
VARIANTS = (("notebookos", "notebookos", {}),
            ("nbos autoscale", "notebookos", {"committed_autoscale": True}),
            ("reservation", "reservation", {}),
            ("batch", "batch", {}))
GPU_MIX = ((1, 0.49), (4, 0.20), (8, 0.31))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def decision_latency(name: str, hosts: int, kernels: int, decisions: int, load: float, seed: int,
                     options: dict | None = None) -> dict:
    rng = random.Random(seed)
    cluster = Cluster()
    for i in range(hosts):
        cluster.add_host(Host(f"h{i:04d}", gpus=8))
    policy = load_policy(name, max_hosts=hosts, **(options or {}))
    gpus_of = [g for g, _ in GPU_MIX]
    weights = [p for _, p in GPU_MIX]
    place_ns: list[int] = []
    idle: list[str] = []
    for k in range(kernels):
        kid = f"k{k:05d}"
        cluster.add_kernel(kid, ResourceRequest(gpus=rng.choices(gpus_of, weights)[0]))
        t = time.perf_counter_ns()
        placed = policy.place(cluster, kid, 0.0)
        place_ns.append(time.perf_counter_ns() - t)
        if placed is None:
            cluster.remove_kernel(kid)
        else:
            idle.append(kid)
    registered = len(idle)
    total = hosts * 8
    running: list[str] = []
    busy = 0
    lat_ns: list[int] = []
    counts = {"run": 0, "migrate": 0, "scale_out": 0, "queue": 0, "moves": 0, "added": 0, "removed": 0}
    pass_ns: list[int] = []
    moving: list[tuple[float, Move]] = []
    now = 0.0
    for n in range(decisions):
        now += 1.0
        if n % 30 == 0:
            autoscale_step(policy, cluster, now, moving, pass_ns, counts)
        while running and busy >= load * total:
            kid = running.pop(rng.randrange(len(running)))
            busy -= cluster.kernels[kid].request.gpus
            policy.cell_finished(cluster, kid, now)
            idle.append(kid)
        i = rng.randrange(len(idle))
        kid = idle[i]
        t = time.perf_counter_ns()
        d = policy.schedule_cell(cluster, kid, now)
        lat_ns.append(time.perf_counter_ns() - t)
        if isinstance(d, Run):
            counts["run"] += 1
            idle[i] = idle[-1]
            idle.pop()
            running.append(kid)
            busy += cluster.kernels[kid].request.gpus
        elif isinstance(d, Migrate):
            counts["migrate"] += 1
            old = cluster.kernels[kid].replicas[d.replica_id].host_id
            cluster.place_replica(kid, d.to_host)
            cluster.remove_replica(kid, d.replica_id, now)
            policy.refresh(cluster, [old, d.to_host])
        elif isinstance(d, ScaleOut):
            counts["scale_out"] += 1
        elif isinstance(d, Queue):
            counts["queue"] += 1
            policy.withdraw(cluster, kid)
    ms = [x / 1e6 for x in lat_ns]
    pms = [x / 1e6 for x in place_ns]
    passes = [x / 1e6 for x in pass_ns] or [0.0]
    return {"autoscale_p99_ms": percentile(passes, 99), "autoscale_max_ms": max(passes), "passes": len(pass_ns),
            "policy": name, "hosts": hosts, "kernels_registered": registered, "decisions": decisions,
            "schedule_p50_ms": percentile(ms, 50), "schedule_p99_ms": percentile(ms, 99), "schedule_max_ms": max(ms),
            "schedule_mean_ms": statistics.fmean(ms), "place_p50_ms": percentile(pms, 50),
            "place_p99_ms": percentile(pms, 99), **counts}


def autoscale_step(policy, cluster: Cluster, now: float, moving: list, pass_ns: list[int], counts: dict) -> None:
    """Finish the background moves that are 30 s old, then run (and time) one autoscaler pass and apply it."""
    while moving and moving[0][0] <= now:
        _, move = moving.pop(0)
        kernel = cluster.kernels[move.kernel_id]
        if move.replica_id in kernel.replicas and move.new_replica_id in kernel.replicas:
            old = kernel.replicas[move.replica_id].host_id
            if kernel.running is not None and kernel.running[0] == move.replica_id:
                moving.append((now + 30.0, move))  # it runs a cell: it moves once the cell is done
                continue
            cluster.remove_replica(move.kernel_id, move.replica_id, now)
            policy.refresh(cluster, [old])
    t = time.perf_counter_ns()
    rebalance = policy.autoscale(cluster, now, 0)
    if rebalance is None:
        return
    pass_ns.append(time.perf_counter_ns() - t)
    for _ in range(rebalance.add_hosts):
        counts["added"] += 1
        cluster.add_host(Host(f"a{counts['added']:05d}", gpus=8))
    for move in rebalance.moves:
        cluster.kernels[move.kernel_id].replicas[move.new_replica_id].ready_at = now + 30.0
        moving.append((now + 30.0, move))
        counts["moves"] += 1
    for host_id in rebalance.remove_hosts:
        cluster.remove_host(host_id)
        counts["removed"] += 1
    if rebalance.add_hosts or rebalance.remove_hosts:
        policy.refresh(cluster, None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="Smaller runs (a week, 10,000 decisions).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sessions", type=float, default=None, help="Sessions in the synthetic period (2000).")
    ap.add_argument("--days", type=float, default=None, help="Synthetic period in days (30).")
    ap.add_argument("--max-hosts", type=int, default=64)
    ap.add_argument("--hosts", type=int, default=1000, help="Hosts for the decision latency (1000).")
    ap.add_argument("--kernels", type=int, default=3000, help="Kernels for the decision latency (3000).")
    ap.add_argument("--decisions", type=int, default=None, help="Timed decisions per policy (50,000).")
    ap.add_argument("--load", type=float, default=0.7, help="Fraction of GPUs kept busy (0.7).")
    ap.add_argument("--json", metavar="OUT", help="Also write the results as JSON.")
    args = ap.parse_args(argv)
    days = args.days if args.days is not None else (7 if args.quick else 30)
    sessions_n = args.sessions if args.sessions is not None else 2000 * days / 30
    decisions = args.decisions if args.decisions is not None else (10_000 if args.quick else 50_000)

    print(f"# synthetic workload: {sessions_n:g} sessions over {days:g} days, seed {args.seed}", flush=True)
    t = time.perf_counter()
    sessions = synthetic(seed=args.seed, sessions=sessions_n, hours=days * 24)
    gen_s = time.perf_counter() - t
    print(f"{len(sessions)} sessions, {sum(len(s.cells) for s in sessions)} cells (generated in {gen_s:.2f} s)")
    config = SimConfig(max_hosts=args.max_hosts)
    results, labels = [], []
    for label, name, options in VARIANTS:
        policy = load_policy(name, max_hosts=args.max_hosts, **options)
        labels.append(label)
        results.append(Simulation(policy, sessions, config).run())

    print("\n## simulator throughput (target >= 100,000 events/s per policy)")
    for label, r in zip(labels, results, strict=True):
        m = r.metrics
        print(f"{label:15s} {m['events']:8d} events in {m['wall_seconds']:6.3f} s = "
              f"{m['events'] / m['wall_seconds']:10,.0f} events/s")

    print(f"\n## schedule_cell decision latency: {args.hosts} hosts x 8 GPUs, {args.kernels} kernels, "
          f"{args.load:.0%} of GPUs busy, {decisions} decisions (target p99 <= 5 ms)")
    lat = []
    header = (f"{'policy':15s} {'kernels':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'place p99':>9s} "
              f"{'autoscale p99':>13s}  decisions (run/migrate/scale-out/queue; moves, hosts added/removed)")
    print(header)
    for label, name, options in VARIANTS:
        d = decision_latency(name, args.hosts, args.kernels, decisions, args.load, args.seed, options)
        d["label"] = label
        lat.append(d)
        passes = f"{d['autoscale_p99_ms']:13.3f}" if d["passes"] else f"{'-':>13s}"
        print(f"{label:15s} {d['kernels_registered']:7d} {d['schedule_p50_ms']:8.4f} {d['schedule_p99_ms']:8.4f} "
              f"{d['schedule_max_ms']:8.3f} {d['place_p99_ms']:9.4f} {passes}  "
              f"{d['run']}/{d['migrate']}/{d['scale_out']}/{d['queue']}"
              + (f"; {d['moves']}, {d['added']}/{d['removed']}" if d["passes"] else ""), flush=True)

    print(f"\n## policies on the synthetic {days:g} days (max {args.max_hosts} hosts of 8 GPUs)")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"throughput": {label: r.metrics for label, r in zip(labels, results, strict=True)},
                       "latency": lat,
                       "python": sys.version.split()[0]}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
