"""GPU savings: the policies on a month of notebook sessions, GPU-hours against reservation's, in one run.

Runs ``reservation``, ``batch`` and ``notebookos`` (as configured by default, and with the variants in
:data:`VARIANTS`: soft holds, the committed-driven autoscaler) over the default session workload of
``notebookos sim`` (``synthetic_sessions``: a month shaped as real notebook sessions) on the same cluster model,
at a slow (120 s) and a fast (15 s, NotebookOS's emulated) scale-out delay, and prints per row: GPU-hours
provisioned, its ratio to reservation's and to the GPU-hours committed to running cells (1.0x is the physical
floor), the fraction of cells started within 1 s, the p99 start delay, migrations (on a cell's path and in the
background) and scale-outs.

Targets (issue 12): a notebookos row at <= 0.80x reservation's GPU-hours with a fraction started within 1 s no lower
than reservation's, at both delays; batch the fewest GPU-hours.

Usage: ``python benchmarks/bench_gpu_savings.py [--quick] [--seed N] [--json OUT]``. Needs ``pip install -e .``.
"""

from __future__ import annotations

import argparse
import json
import sys

from notebookos.scheduler.policy import load_policy
from notebookos.scheduler.sim.engine import SimConfig, Simulation
from notebookos.scheduler.sim.traces import synthetic_sessions

#: (label, policy, its options)
VARIANTS = (
    ("reservation", "reservation", {}),
    ("batch", "batch", {"process_start_seconds": 15.0}),
    ("notebookos (defaults)", "notebookos", {}),
    ("notebookos pack", "notebookos", {"placement": "pack"}),
    ("notebookos autoscale", "notebookos", {"committed_autoscale": True}),
    ("notebookos autoscale hold 30m", "notebookos", {"committed_autoscale": True, "hold_seconds": 1800.0}),
    ("notebookos autoscale pack", "notebookos", {"committed_autoscale": True, "placement": "pack"}),
    ("notebookos autoscale pack cap 10", "notebookos",
     {"committed_autoscale": True, "placement": "pack", "max_subscription_ratio": 10.0}),
)


def run(seed: int, days: float, scale_out_delay: float, scale_in_delay: float, max_hosts: int) -> list[dict]:
    sessions = synthetic_sessions(seed=seed, hours=days * 24)
    config = SimConfig(scale_out_delay=scale_out_delay, scale_in_delay=scale_in_delay, max_hosts=max_hosts)
    rows = []
    for label, name, options in VARIANTS:
        policy = load_policy(name, max_hosts=max_hosts, **options)
        m = Simulation(policy, sessions, config, record_events=False).run().metrics
        rows.append({"label": label, "scale_out_delay": scale_out_delay, **m})
    base = rows[0]["gpu_hours_provisioned"]
    for r in rows:
        r["vs_reservation"] = r["gpu_hours_provisioned"] / base
        r["vs_committed"] = r["gpu_hours_provisioned"] / r["gpu_hours_committed"]
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'policy':36s} {'GPU-h prov':>10s} {'vs resv':>8s} {'vs comm':>8s} {'<=1 s':>7s} {'p99 s':>7s} "
            f"{'mig':>6s} {'bg mig':>7s} {'scale-outs':>10s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['label']:36s} {r['gpu_hours_provisioned']:10,.0f} {r['vs_reservation']:7.2f}x "
                     f"{r['vs_committed']:7.2f}x {100 * r['immediate_start_fraction']:6.1f}% "
                     f"{r['interactivity_delay_p99_s']:7.0f} {r['migrations']:6d} {r['background_migrations']:7d} "
                     f"{r['scale_outs']:10d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="3 days, one delay (a smoke run)")
    ap.add_argument("--max-hosts", type=int, default=200)
    ap.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    days = 3.0 if args.quick else args.days
    delays = ((120.0, 60.0),) if args.quick else ((120.0, 60.0), (15.0, 10.0))
    everything = []
    for scale_out, scale_in in delays:
        rows = run(args.seed, days, scale_out, scale_in, args.max_hosts)
        everything.extend(rows)
        print(f"\n{days:g} days of sessions (seed {args.seed}), scale-out {scale_out:g} s, scale-in {scale_in:g} s")
        print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
