"""Command-line entry points of the cluster services: ``notebookos scheduler``, ``notebookos hostd``, ``notebookos up``.

``add_scheduler_parser``, ``add_hostd_parser`` and ``add_up_parser`` each add one subcommand to the ``notebookos``
parser (``notebookos/cli.py`` lists them in ``COMMANDS``). Each sets ``func`` (the handler), ``parser`` and
``passthrough=True``: ``scheduler`` and ``hostd`` hand every argument to their traitlets application, so any
configurable can be set as ``--Class.trait=value`` (``--SchedulerService.check_interval=1``,
``--NotebookOSPolicy.max_subscription_ratio=3``); ``up`` passes its unknown arguments on to JupyterLab.

The same commands run standalone: ``python -m notebookos.scheduler.service``, ``python -m
notebookos.scheduler.hostd``, ``python -m notebookos.scheduler.up`` (``service.main``, ``hostd.main``,
:func:`up_main`). The scheduler's and the host daemon's options are their applications' traitlets aliases and
flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def up_arguments(p: argparse.ArgumentParser) -> None:
    from notebookos.cli import lab_directory

    from .up import HOST_RESTART_WINDOW_S, HOST_RESTARTS

    p.add_argument("--policy", default="notebookos", help="scheduling policy (default notebookos)")
    p.add_argument("--hosts", type=int, default=4, help="host daemons to start (default 4)")
    p.add_argument("--prewarm", type=int, default=0, help="replica processes each host keeps started ahead of "
                   "demand, so new kernels and replacements start sooner (default 0)")
    p.add_argument("--gpus-per-host", type=int, default=8, help="virtual GPUs per host (default 8)")
    p.add_argument("--max-hosts", type=int, help="let the scheduler add local hosts up to this many "
                   "(default: --hosts, no scale-out)")
    p.add_argument("--replicas-per-kernel", type=int, help="replicas per kernel (default: the policy's)")
    p.add_argument("--scheduler-port", type=int, default=0, help="scheduler port (default 0: a free port)")
    p.add_argument("--runtime-dir", help="directory for logs and the cluster info file "
                   "(default: a temporary directory, removed on exit)")
    p.add_argument("--no-lab", action="store_true", help="run only the cluster (scheduler and hosts), no JupyterLab")
    p.add_argument("--notebook-dir", type=lab_directory, metavar="DIR", help="directory JupyterLab serves and new "
                   "notebooks go to (default: the current directory)")
    p.add_argument("--no-restart-hosts", dest="restart_hosts", action="store_false",
                   help="leave a host daemon that died down (default: restart it on its old port, at most "
                   f"{HOST_RESTARTS} times in {HOST_RESTART_WINDOW_S:g} s; its kernels' replicas are replaced either "
                   "way)")


def run_scheduler(args: argparse.Namespace) -> int:
    from .service import main

    return main(args.extra or [])


def run_hostd(args: argparse.Namespace) -> int:
    from .hostd import main

    return main(args.extra or [])


def run_up(args: argparse.Namespace) -> int:
    from .up import up

    return up(args)


def add_scheduler_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    # Every argument, --help included, goes to the SchedulerService application: its aliases and flags are the
    # command line (`notebookos scheduler --help`), with the help strings of the traits they set.
    p = subparsers.add_parser(
        "scheduler", help="run the cluster scheduler (REST service; --help for its options)", add_help=False,
        description="Run the notebookos cluster scheduler.")
    p.set_defaults(func=run_scheduler, parser=p, passthrough=True)
    return p


def add_hostd_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    # Every argument, --help included, goes to the HostDaemon application: its aliases and flags are the
    # command line (`notebookos hostd --help`), with the help strings of the traits they set.
    p = subparsers.add_parser(
        "hostd", help="run a host daemon (one per GPU server; --help for its options)", add_help=False,
        description="Run the notebookos host daemon.")
    p.set_defaults(func=run_hostd, parser=p, passthrough=True)
    return p


def add_up_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "up", help="start a local cluster (scheduler, host daemons with virtual GPUs) and JupyterLab",
        description="Start a scheduler and N host daemons with virtual GPUs on this machine, wait until every "
        "host registered, then run JupyterLab with the notebookos kernel as default and the scheduler's URL "
        "and token in the kernels' environment. --SchedulerService.<trait>=<value> and "
        "--NotebookOSPolicy.<trait>=<value> (the GPU cap: --NotebookOSPolicy.max_subscription_ratio=N) options go to "
        "the scheduler (--scheduler:<Class>.<trait>=<value> for another policy's and the provider's), --HostDaemon.<trait>=<value> to "
        "every host daemon, other arguments not listed here to JupyterLab. Ctrl-C stops everything it started.",
        allow_abbrev=False)
    up_arguments(p)
    p.set_defaults(func=run_up, parser=p, passthrough=True)
    return p


def _standalone(prog: str, add: Any, argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    sp = add(sub)
    args, extra = sp.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if "--" in extra:
        extra.remove("--")
    args.extra = extra
    return int(args.func(args) or 0)


def up_main(argv: Sequence[str] | None = None) -> int:
    return _standalone("notebookos", add_up_parser, argv)
