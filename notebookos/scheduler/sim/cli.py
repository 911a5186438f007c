"""``notebookos sim``: run scheduling policies over a trace in simulated time and compare them.

``main(argv)`` runs it standalone (``python -m notebookos.scheduler.sim``); ``add_parser(subparsers)`` registers
the ``sim`` subcommand on the ``notebookos`` command's subparsers (handler in ``func``, parser in ``parser``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DESCRIPTION = """\
Replay notebook sessions against each scheduling policy in simulated time (discrete events: no sleeping, no
sockets) and compare GPU-hours provisioned and committed, cell start delays, migrations and autoscaling.

Workloads (--format): 'tiresias' (Tiresias job CSV job_id,num_gpu,submit_time,iterations,model_name,duration,
interval; minutes; each job is a one-cell session), 'sessions' (CSV session_id,event,time_s,gpus,duration_s with
events start/cell/stop; seconds), or 'synthetic' (seeded generator; the default without --trace). The formats are
described in notebookos/scheduler/sim/traces.py. With --trace and no --format the format is read off the header.

Writes to --out: summary.json (per policy: gpu_hours_provisioned, gpu_hours_committed, interactivity_delay_p50_s,
interactivity_delay_p99_s, immediate_start_fraction, migrations, scale_outs, scale_ins, events, wall_seconds, ...),
events_<policy>.csv, delay_cdf.png and gpus_<policy>.png. The same inputs and seed give the same summary (but
wall_seconds) and the same event files. A trace that cannot be read exits with status 2 and names the file, the
line and the problem."""

EPILOG = """\
examples:
  notebookos sim --days 30 --sessions 2000 --out sim-month
  notebookos sim --trace philly.csv --format tiresias --policies notebookos,reservation --max-hosts 128
  notebookos sim --trace sessions.csv --initial-hosts 1 --host-gpus 2 --scale-out-delay 0"""


def _float(minimum: float = 0.0, strict: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value != value or (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g}, got {text}")
        return value
    return parse


def _int(minimum: int = 0):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _gpu_mix(text: str) -> tuple[tuple[int, float], ...]:
    try:
        pairs = tuple((int(g), float(p)) for g, p in (item.split(":") for item in text.split(",") if item))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPUS:PROB,GPUS:PROB,... got {text!r}") from None
    if not pairs or abs(sum(p for _, p in pairs) - 1.0) > 1e-6 or any(g < 0 or p < 0 for g, p in pairs):
        raise argparse.ArgumentTypeError(f"GPU counts >= 0 and probabilities >= 0 summing to 1, got {text!r}")
    return pairs


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .traces import TRACE_FORMATS

    io = p.add_argument_group("input and output")
    io.add_argument("--trace", metavar="PATH", help="Trace file (tiresias or sessions CSV). Without it, a synthetic "
                    "workload is generated.")
    io.add_argument("--format", choices=TRACE_FORMATS, default=None,
                    help="Trace format (default: read off the trace's header; synthetic without --trace).")
    io.add_argument("--policies", default="notebookos,reservation,batch", metavar="NAMES",
                    help="Comma-separated policies to compare, from the notebookos.scheduler_policies entry points "
                    "(default: %(default)s).")
    io.add_argument("--out", default="sim-out", metavar="DIR", help="Output directory (default: %(default)s).")
    io.add_argument("--no-plots", action="store_true", help="Do not draw the plots.")
    io.add_argument("--quiet", "-q", action="store_true", help="Print nothing but errors.")

    syn = p.add_argument_group("synthetic workload (--format synthetic)")
    syn.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    syn.add_argument("--sessions", type=_float(0), default=2000.0,
                     help="Expected number of sessions over the period: arrivals are a Poisson process of rate "
                     "sessions/period (default: %(default)g).")
    span = syn.add_mutually_exclusive_group()
    span.add_argument("--days", type=_float(0, strict=True), default=None,
                      help="Length of the arrival period in days (default: 30).")
    span.add_argument("--hours", type=_float(0, strict=True), default=None,
                      help="Length of the arrival period in hours.")
    syn.add_argument("--cells-per-session", type=_float(1), default=6.0,
                     help="Mean cells per session (geometric, >= 1; default: %(default)g).")
    syn.add_argument("--think-time", type=_float(0), default=1800.0, metavar="SECONDS",
                     help="Mean think time before each cell (exponential; default: %(default)g s).")
    syn.add_argument("--cell-median", type=_float(0, strict=True), default=300.0, metavar="SECONDS",
                     help="Median cell duration (lognormal; default: %(default)g s = 5 min).")
    syn.add_argument("--cell-mean", type=_float(0, strict=True), default=3300.0, metavar="SECONDS",
                     help="Mean cell duration (lognormal, >= median; default: %(default)g s = 55 min).")
    syn.add_argument("--linger", type=_float(0), default=3600.0, metavar="SECONDS",
                     help="Mean time a notebook stays open after its last cell (exponential; default: %(default)g s).")
    syn.add_argument("--gpu-mix", type=_gpu_mix, default="1:0.49,4:0.20,8:0.31", metavar="G:P,...",
                     help="GPUs per session and their probabilities (default: %(default)s).")

    cl = p.add_argument_group("cluster model")
    cl.add_argument("--host-gpus", type=_int(1), default=8, help="GPUs per host (default: %(default)s).")
    cl.add_argument("--initial-hosts", type=_int(0), default=3, help="Hosts online at the start (default: "
                    "%(default)s).")
    cl.add_argument("--min-hosts", type=_int(0), default=None,
                    help="Scale-in never goes below this (default: --initial-hosts).")
    cl.add_argument("--max-hosts", type=_int(1), default=64,
                    help="Scale-out never goes above this; past it cells queue (default: %(default)s).")
    cl.add_argument("--scale-out-delay", type=_float(0), default=120.0, metavar="SECONDS",
                    help="From a scale-out decision to the new host being online (default: %(default)g s).")
    cl.add_argument("--scale-in-delay", "--idle-limit", dest="scale_in_delay", type=_float(0), default=1800.0,
                    metavar="SECONDS", help="A host with no replicas this long is removed (default: %(default)g s).")
    cl.add_argument("--replica-start", type=_float(0), default=5.0, metavar="SECONDS",
                    help="Start-up of a kernel's replicas after placement; a cell submitted earlier waits "
                    "(default: %(default)g s; 0 models a prewarmed pool).")
    cl.add_argument("--migration-cost", type=_float(0), default=30.0, metavar="SECONDS",
                    help="Delay a migration adds to the cell (new replica starts and catches up; default: "
                    "%(default)g s).")
    cl.add_argument("--process-start", type=_float(0), default=15.0, metavar="SECONDS",
                    help="batch policy: start of a fresh process per cell, added to its start (default: "
                    "%(default)g s).")
    cl.add_argument("--subscription-ratio", type=_float(0, strict=True), default=7.0,
                    help="notebookos policy: most GPUs that replicas on a host may request, as a multiple of its "
                    "GPUs (default: %(default)g).")
    cl.add_argument("--placement", choices=("spread", "pack"), default="spread",
                    help="notebookos policy: replicas to the least subscribed hosts (spread) or to the most "
                    "subscribed that still fit (pack: fewer GPU-hours, more migrations; default: %(default)s).")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sim`` on the ``notebookos`` command."""
    p = subparsers.add_parser("sim", help="Compare scheduling policies on a trace in simulated time.",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run, parser=p)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="notebookos sim", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def _policy_config(cls, args: argparse.Namespace) -> dict:
    traits = cls.class_trait_names()
    config = {"max_hosts": args.max_hosts, "host_gpus": args.host_gpus}
    if "max_subscription_ratio" in traits:
        config["max_subscription_ratio"] = args.subscription_ratio
    if "process_start_seconds" in traits:
        config["process_start_seconds"] = args.process_start
    if "placement" in traits:
        config["placement"] = args.placement
    return config


def _error(message: str) -> int:
    print(f"notebookos sim: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """The ``sim`` handler: returns the exit status."""
    from ..policy import available_policies
    from . import report
    from .engine import SimConfig, Simulation
    from .traces import TraceError, load_trace

    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    policies = available_policies()
    unknown = [n for n in names if n not in policies]
    if not names or unknown:
        return _error(f"unknown polic{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown) or '(none)'}; "
                      f"available: {', '.join(sorted(policies))}")
    if len(set(names)) != len(names):
        return _error("a policy is named twice in --policies")
    try:
        config = SimConfig(host_gpus=args.host_gpus, initial_hosts=args.initial_hosts, min_hosts=args.min_hosts,
                           max_hosts=args.max_hosts, scale_out_delay=args.scale_out_delay,
                           scale_in_delay=args.scale_in_delay, replica_start=args.replica_start,
                           migration_cost=args.migration_cost)
    except ValueError as e:
        return _error(str(e))
    hours = args.hours if args.hours is not None else (args.days if args.days is not None else 30.0) * 24.0
    fmt = args.format
    if fmt is None and args.trace is None:
        fmt = "synthetic"
    synthetic_args = dict(seed=args.seed, sessions=args.sessions, hours=hours,
                          cells_per_session=args.cells_per_session, think_time_s=args.think_time,
                          cell_median_s=args.cell_median, cell_mean_s=args.cell_mean, linger_s=args.linger,
                          gpu_mix=tuple(args.gpu_mix) if not isinstance(args.gpu_mix, str) else _gpu_mix(args.gpu_mix))
    try:
        sessions = load_trace(args.trace, fmt, **synthetic_args)
    except TraceError as e:
        return _error(str(e))
    except ValueError as e:
        return _error(str(e))
    if fmt is None:
        from .traces import sniff_format
        fmt = sniff_format(args.trace)

    instances = []
    for name in names:
        cls = policies[name]
        try:
            policy = cls(**_policy_config(cls, args))
        except Exception as e:  # a traitlets validation error
            return _error(f"policy {name!r}: {e}")
        if policy.replicas_per_kernel > config.max_hosts:
            return _error(f"policy {name!r} places {policy.replicas_per_kernel} replicas per kernel on distinct "
                          f"hosts but --max-hosts is {config.max_hosts}")
        instances.append(policy)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet and sys.stderr.isatty()
    results = []
    for policy in instances:
        results.append(Simulation(policy, sessions, config, progress=progress).run())
    for r in results:
        report.write_events(out / f"events_{r.policy}.csv", r.events)
    trace_info = {"format": fmt, "path": os.fspath(args.trace) if args.trace else None,
                  "sessions": len(sessions), "cells": sum(len(s.cells) for s in sessions)}
    if fmt == "synthetic":
        trace_info["synthetic"] = {k: (list(map(list, v)) if k == "gpu_mix" else v)
                                   for k, v in synthetic_args.items()}
    from dataclasses import asdict
    cluster_info = {**asdict(config), "process_start": args.process_start,
                    "subscription_ratio": args.subscription_ratio}
    report.write_summary(out / "summary.json", results, trace_info, cluster_info)
    if not args.no_plots:
        t = time.perf_counter()
        report.plot_delay_cdf(out / "delay_cdf.png", results)
        for r in results:
            report.plot_gpus(out / f"gpus_{r.policy}.png", r)
        plot_s = time.perf_counter() - t
    if not args.quiet:
        print(f"{len(sessions)} sessions, {trace_info['cells']} cells ({fmt})")
        print(report.format_table(results))
        print(f"wrote {out / 'summary.json'}, events_<policy>.csv"
              + ("" if args.no_plots else f", delay_cdf.png, gpus_<policy>.png ({plot_s:.1f} s)"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)
