"""``notebookos sim``: run scheduling policies over a trace in simulated time and compare them.

``main(argv)`` runs it standalone (``python -m notebookos.scheduler.sim``); ``add_parser(subparsers)`` registers
the ``sim`` subcommand on the ``notebookos`` command's subparsers (handler in ``func``, parser in ``parser``).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from traitlets.config import Config

DESCRIPTION = """\
Replay notebook sessions against each scheduling policy in simulated time (discrete events: no sleeping, no
sockets) and compare GPU-hours provisioned and committed, cell start delays, migrations and autoscaling.

Workloads (--format): 'tiresias' (Tiresias job CSV job_id,num_gpu,submit_time,iterations,model_name,duration,
interval; minutes; each job is a one-cell session, or with --group-sessions consecutive jobs are grouped back into
sessions), 'sessions' (CSV session_id,event,time_s,gpus,duration_s with events start/cell/stop; seconds),
'synthetic' (the default without --trace: seeded notebook sessions whose defaults match a real month, about 900
sessions and 31,000 cells in 30 days) or 'synthetic-legacy' (the earlier default generator: 2,000 sessions of 6
cells a month, for reproducing earlier results). The formats and generators are described in
notebookos/scheduler/sim/traces.py. With --trace and no --format the format is read off the header.

Writes to --out: summary.json (per policy: gpu_hours_provisioned, gpu_hours_committed, interactivity_delay_p50_s,
interactivity_delay_p99_s, immediate_start_fraction, migrations, scale_outs, scale_ins, events, wall_seconds, ...),
events_<policy>.csv, delay_cdf.png and gpus_<policy>.png. The same inputs and seed give the same summary (but
wall_seconds) and the same event files. A trace that cannot be read exits with status 2 and names the file, the
line and the problem."""

EPILOG = """\
examples:
  notebookos sim --days 30 --out sim-month
  notebookos sim --format synthetic-legacy --out sim-legacy    # the earlier default workload
  notebookos sim --trace jobs.csv --format tiresias --group-sessions --session-gap 30
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


#: generator keyword (synthetic_sessions or synthetic; also the option's dest) -> its option; --days/--hours
#: give ``hours``
GENERATOR_OPTIONS = {
    "seed": "--seed", "sessions": "--sessions", "cells_per_session": "--cells-per-session",
    "cells_median": "--cells-median", "gap_median_s": "--gap-median", "gap_mean_s": "--gap-mean",
    "busy_fraction": "--busy-fraction", "cell_median_s": "--cell-median", "gpu_mix": "--gpu-mix",
    "diurnal": "--diurnal", "diurnal_peak_hour": "--diurnal-peak", "carry_over_days": "--carry-over",
    "close_at_end": "--close-at-end",
    "think_time_s": "--think-time", "cell_mean_s": "--cell-mean", "linger_s": "--linger",
}


def _defaults(function) -> dict:
    """A generator's keyword defaults (the help text quotes them, run() fills in what was not given)."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .traces import DEFAULT_SESSION_GAP_S, SESSIONS_PER_DAY, TRACE_FORMATS, synthetic, synthetic_sessions

    io = p.add_argument_group("input and output")
    io.add_argument("--trace", metavar="PATH", help="Trace file (tiresias or sessions CSV). Without it, a synthetic "
                    "workload is generated.")
    io.add_argument("--format", choices=TRACE_FORMATS, default=None,
                    help="Trace format or generator (default: read off the trace's header; without --trace "
                    "'synthetic', the generator matched to a real month of notebook sessions; "
                    "'synthetic-legacy' is the earlier default generator, kept to reproduce earlier results).")
    io.add_argument("--group-sessions", action="store_true",
                    help="tiresias: group jobs back into sessions. In job_id order (numeric when all ids are "
                    "integers, else the file's order) a job joins the session of the job before it, unless its "
                    "submit time is earlier than that job's (the next session begins) or it comes more than "
                    "--session-gap minutes after that job's end (submit_time + duration). A session starts at its "
                    "first job's submit time, its cells are its jobs at their own submit times and durations, and "
                    "it asks for the largest num_gpu of its jobs (one kernel, one GPU request). Without it each "
                    "job is its own one-cell session.")
    io.add_argument("--session-gap", type=_float(0), default=None, metavar="MINUTES",
                    help="With --group-sessions: the longest pause from a job's end to the next job's submission "
                    f"within a session (default: {DEFAULT_SESSION_GAP_S / 60:g} min: in the default synthetic "
                    "workload, gaps of median 3 min and mean 28 min, 92%% of the gaps within a session are "
                    "shorter, so an hour splits sessions only at the long pauses of their tail).")
    io.add_argument("--policies", default="notebookos,reservation,batch", metavar="NAMES",
                    help="Comma-separated policies to compare, from the notebookos.scheduler_policies entry points "
                    "(default: %(default)s).")
    io.add_argument("--out", default="sim-out", metavar="DIR", help="Output directory (default: %(default)s).")
    io.add_argument("--no-plots", action="store_true", help="Do not draw the plots.")
    io.add_argument("--quiet", "-q", action="store_true", help="Print nothing but errors.")

    # Defaults are None here and filled in from the generator's own keyword defaults by run(), so the two cannot
    # drift apart, and so that an option of the other generator can be told apart and refused.
    new, old = _defaults(synthetic_sessions), _defaults(synthetic)
    syn = p.add_argument_group("synthetic workload (--format synthetic, the default without --trace; the options "
                               "marked 'both' also apply to --format synthetic-legacy)")
    syn.add_argument("--seed", dest="seed", type=_int(0), default=None, metavar="N",
                     help=f"Random seed; both (default: {new['seed']}).")
    syn.add_argument("--sessions", dest="sessions", type=_float(0), default=None, metavar="N",
                     help="Expected number of sessions over the period: arrivals are a Poisson process; both "
                     f"(default: synthetic {SESSIONS_PER_DAY:g} a day, {SESSIONS_PER_DAY * 30:g} over 30 days; "
                     f"synthetic-legacy {old['sessions']:g} whatever the period).")
    span = syn.add_mutually_exclusive_group()
    span.add_argument("--days", type=_float(0, strict=True), default=None,
                      help=f"Length of the period in days; both (default: {new['hours'] / 24:g}).")
    span.add_argument("--hours", type=_float(0, strict=True), default=None,
                      help="Length of the period in hours; both.")
    syn.add_argument("--cells-per-session", dest="cells_per_session", type=_float(1), default=None, metavar="N",
                     help="Mean cells per session; both (synthetic: lognormal count, heavy tailed, default "
                     f"{new['cells_per_session']:g}; synthetic-legacy: geometric, default "
                     f"{old['cells_per_session']:g}).")
    syn.add_argument("--cells-median", dest="cells_median", type=_float(1), default=None, metavar="N",
                     help="Median cells per session (lognormal count, <= --cells-per-session; default: "
                     f"{new['cells_median']:g}).")
    syn.add_argument("--gap-median", dest="gap_median_s", type=_float(0, strict=True), default=None,
                     metavar="SECONDS", help="Median gap from the end of a cell to the submission of the next "
                     "(lognormal; also the wait before the first cell and the time the notebook stays open after "
                     f"the last; default: {new['gap_median_s']:g} s = {new['gap_median_s'] / 60:g} min).")
    syn.add_argument("--gap-mean", dest="gap_mean_s", type=_float(0, strict=True), default=None,
                     metavar="SECONDS", help="Mean of that gap (>= --gap-median; default: "
                     f"{new['gap_mean_s']:g} s = {new['gap_mean_s'] / 60:g} min).")
    syn.add_argument("--busy-fraction", dest="busy_fraction", type=_float(0, strict=True), default=None,
                     metavar="F",
                     help="Fraction of the sessions' spans (start to end) their GPUs are busy, cells started at "
                     "once, below 1; sets the mean cell duration to F/(1-F) x (N+1)/N x --gap-mean, N being "
                     f"--cells-per-session (default: {new['busy_fraction']:g}: a mean cell of 56 min).")
    syn.add_argument("--cell-median", dest="cell_median_s", type=_float(0, strict=True), default=None,
                     metavar="SECONDS", help="Median cell duration (lognormal); both (default: "
                     f"{new['cell_median_s']:g} s = {new['cell_median_s'] / 60:g} min).")
    syn.add_argument("--gpu-mix", dest="gpu_mix", type=_gpu_mix, default=None, metavar="G:P,...",
                     help="GPUs per session and their probabilities; both (default: "
                     f"{','.join(f'{g}:{q:g}' for g, q in new['gpu_mix'])}).")
    syn.add_argument("--diurnal", dest="diurnal", type=_float(0), default=None, metavar="AMPLITUDE",
                     help="Daily shape of the arrival rate, 1 + AMPLITUDE x cos(time of day - peak), 0 to 1 "
                     f"(default: {new['diurnal']:g}, a flat rate: the month's statistics say nothing of the time "
                     "of day).")
    syn.add_argument("--diurnal-peak", dest="diurnal_peak_hour", type=_float(0), default=None, metavar="HOUR",
                     help="Hour of the day (0 to 24, time 0 is midnight) of the arrival rate's peak with "
                     f"--diurnal (default: {new['diurnal_peak_hour']:g}).")
    syn.add_argument("--carry-over", dest="carry_over_days", type=_float(0), default=None, metavar="DAYS",
                     help="The period is a window onto a steady stream of sessions: sessions also arrive in the DAYS "
                     "before it, and those still open at its start are in it from its start (0: it starts with no "
                     f"session open; default: {new['carry_over_days']:g}, about 60 sessions at the default rate).")
    syn.add_argument("--close-at-end", dest="close_at_end", action=argparse.BooleanOptionalAction, default=None,
                     help="Close the sessions still open at the end of the period: cells they would submit later "
                     "are dropped and a running one is cut there (default: on; --no-close-at-end lets them run to "
                     "their end, which can be months later with these tails).")

    leg = p.add_argument_group("legacy synthetic workload (--format synthetic-legacy only)")
    leg.add_argument("--think-time", dest="think_time_s", type=_float(0), default=None, metavar="SECONDS",
                     help=f"Mean think time before each cell (exponential; default: {old['think_time_s']:g} s).")
    leg.add_argument("--cell-mean", dest="cell_mean_s", type=_float(0, strict=True), default=None,
                     metavar="SECONDS", help="Mean cell duration (lognormal, >= median; default: "
                     f"{old['cell_mean_s']:g} s = {old['cell_mean_s'] / 60:g} min).")
    leg.add_argument("--linger", dest="linger_s", type=_float(0), default=None, metavar="SECONDS",
                     help="Mean time a notebook stays open after its last cell (exponential; default: "
                     f"{old['linger_s']:g} s).")

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
                    metavar="SECONDS", help="A host with no replicas this long is removed (default: %(default)g s). "
                    "Under a policy with its own autoscaler (--policy-option NotebookOSPolicy.committed_autoscale="
                    "True) it is instead the time from the autoscaler's decision to remove a host to the host being "
                    "gone (NotebookOS emulates 10 s).")
    cl.add_argument("--autoscale-interval", type=_float(0, strict=True), default=30.0, metavar="SECONDS",
                    help="How often a policy's own autoscaler is asked what it wants (default: %(default)g s).")
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
    cl.add_argument("--policy-option", action="append", default=[], metavar="CLASS.TRAIT=VALUE",
                    help="Any option of a policy, as in the scheduler's config "
                    "(c.NotebookOSPolicy.committed_autoscale = True is --policy-option "
                    "NotebookOSPolicy.committed_autoscale=True); repeatable, and it wins over the options above. "
                    "`notebookos scheduler --help-all` lists the policies' options.")


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


def policy_options(items: list[str], classes: list[type]) -> Config:
    """``--policy-option`` values as a traitlets Config; ValueError naming an option no chosen policy has."""
    from traitlets.config.loader import KVArgParseConfigLoader

    for item in items:
        name, eq, _ = item.partition("=")
        cls_name, dot, trait = name.partition(".")
        if not eq or not dot or not trait:
            raise ValueError(f"--policy-option {item!r}: expected CLASS.TRAIT=VALUE, e.g. "
                             "NotebookOSPolicy.hold_seconds=300")
        owners = [c for c in classes if cls_name in {k.__name__ for k in c.__mro__}]
        if not owners:
            raise ValueError(f"--policy-option {item!r}: no policy in --policies is a {cls_name} (they are "
                             f"{', '.join(c.__name__ for c in classes)})")
        if not any(trait in c.class_trait_names(config=True) for c in owners):
            known = sorted({t for c in owners for t in c.class_trait_names(config=True)})
            raise ValueError(f"--policy-option {item!r}: {cls_name} has no option {trait!r}; it has "
                             f"{', '.join(known)}")
    return KVArgParseConfigLoader(argv=[f"--{item}" for item in items]).load_config()


def _policy_config(cls, args: argparse.Namespace, options: Config | None = None) -> dict:
    traits = cls.class_trait_names()
    config = {"max_hosts": args.max_hosts, "host_gpus": args.host_gpus}
    if "max_subscription_ratio" in traits:
        config["max_subscription_ratio"] = args.subscription_ratio
    if "process_start_seconds" in traits:
        config["process_start_seconds"] = args.process_start
    if "placement" in traits:
        config["placement"] = args.placement
    if options:
        given = {t for k in cls.__mro__ if k.__name__ in options for t in options[k.__name__]}
        config = {k: v for k, v in config.items() if k not in given}
        config["config"] = options
    return config


def _error(message: str) -> int:
    print(f"notebookos sim: error: {message}", file=sys.stderr)
    return 2


def _generator_args(fmt: str, args: argparse.Namespace, hours: float) -> dict:
    """All keyword arguments of the ``fmt`` generator: the options given, else the generator's defaults. An option
    of the other generator is refused (ValueError) rather than silently ignored."""
    from .traces import GENERATORS, SESSIONS_PER_DAY

    defaults = _defaults(GENERATORS[fmt])
    given = {kw: getattr(args, kw) for kw in GENERATOR_OPTIONS if getattr(args, kw, None) is not None}
    foreign = [GENERATOR_OPTIONS[kw] for kw in given if kw not in defaults]
    if foreign:
        other = next(f for f in GENERATORS if f != fmt)
        raise ValueError(f"{', '.join(foreign)}: option(s) of --format {other}, not of {fmt}")
    params = {**defaults, **given, "hours": hours}
    if params["sessions"] is None:  # synthetic's default: a rate, so that --days 7 gives a week of it
        params["sessions"] = SESSIONS_PER_DAY * hours / 24.0
    return params


def run(args: argparse.Namespace) -> int:
    """The ``sim`` handler: returns the exit status."""
    from ..policy import available_policies
    from . import report
    from .engine import SimConfig, Simulation
    from .traces import DEFAULT_SESSION_GAP_S, GENERATORS, TraceError, load_trace, sniff_format

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
                           migration_cost=args.migration_cost, autoscale_interval=args.autoscale_interval)
    except ValueError as e:
        return _error(str(e))
    hours = args.hours if args.hours is not None else (args.days if args.days is not None else 30.0) * 24.0
    fmt = args.format
    if fmt is None and args.trace is None:
        fmt = "synthetic"
    synthetic_args = None
    if fmt in GENERATORS:
        try:
            synthetic_args = _generator_args(fmt, args, hours)
        except ValueError as e:
            return _error(str(e))
    if args.session_gap is not None and not args.group_sessions:
        return _error("--session-gap needs --group-sessions")
    group = dict(group_sessions=args.group_sessions, session_gap_s=(
        args.session_gap * 60.0 if args.session_gap is not None else DEFAULT_SESSION_GAP_S))
    try:
        sessions = load_trace(args.trace, fmt, **group, **(synthetic_args or {}))
    except TraceError as e:
        return _error(str(e))
    except ValueError as e:
        # the generators name the keyword that is wrong; say which option that is
        name = str(e).split(" ", 1)[0]
        option = GENERATOR_OPTIONS.get(name) if synthetic_args is not None else None
        return _error(f"{e} ({option})" if option else str(e))
    if fmt is None:
        fmt = sniff_format(args.trace)

    try:
        options = policy_options(args.policy_option, [policies[n] for n in names])
    except ValueError as e:
        return _error(str(e))
    instances = []
    for name in names:
        cls = policies[name]
        try:
            policy = cls(**_policy_config(cls, args, options))
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
    if synthetic_args is not None:  # the generator's parameters, all of them, so that the run can be repeated
        trace_info["synthetic"] = {k: (list(map(list, v)) if k == "gpu_mix" else v)
                                   for k, v in synthetic_args.items()}
    elif fmt == "tiresias":
        trace_info["group_sessions"] = group["group_sessions"]
        if args.group_sessions:
            trace_info["session_gap_s"] = group["session_gap_s"]
    from dataclasses import asdict
    cluster_info = {**asdict(config), "process_start": args.process_start,
                    "subscription_ratio": args.subscription_ratio,
                    "policy_options": list(args.policy_option)}
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
