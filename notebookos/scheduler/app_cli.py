"""Command-line entry points of the cluster services: ``notebookos scheduler``, ``notebookos hostd``, ``notebookos up``.

``add_scheduler_parser``, ``add_hostd_parser`` and ``add_up_parser`` each add one subcommand to the ``notebookos``
parser (``notebookos/cli.py`` lists them in ``COMMANDS``). Each sets ``func`` (the handler), ``parser`` and
``passthrough=True``: ``scheduler`` and ``hostd`` hand every argument they do not declare to traitlets, so any
configurable can be set as ``--Class.trait=value`` (``--SchedulerService.check_interval=1``,
``--NotebookOSPolicy.some_trait=...``); ``up`` passes its unknown arguments on to JupyterLab.

The same parsers run standalone: ``python -m notebookos.scheduler.service``, ``python -m
notebookos.scheduler.hostd``, ``python -m notebookos.scheduler.up`` (:func:`scheduler_main`, ``hostd.main``,
:func:`up_main`). The host daemon's options are its application's traitlets aliases and flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

TOKEN_HELP = ("token for the cluster API (default: $NOTEBOOKOS_SCHEDULER_TOKEN; prefer the environment: "
              "command lines are visible to every user of the machine)")

#: argparse dest -> SchedulerService trait
SCHEDULER_OPTIONS = {
    "ip": "ip", "port": "port", "public_url": "public_url", "token": "token", "info_file": "info_file",
    "policy": "policy", "replicas_per_kernel": "replicas_per_kernel",
    "oversubscription": "oversubscription_ratio", "max_hosts": "max_hosts", "min_hosts": "min_hosts",
    "host_gpus": "host_gpus", "host_provider": "host_provider", "host_idle_limit": "host_idle_limit",
    "session_idle_limit": "session_idle_limit", "prewarm_pool_size": "prewarm_pool_size",
    "check_interval": "check_interval", "host_timeout": "host_timeout", "log_level": "log_level",
}



def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="traitlets config file (.py or .json); command-line options win")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARN", "ERROR", "CRITICAL"], help="default INFO")


def scheduler_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ip", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8766; 0: a free port, see --info-file)")
    p.add_argument("--public-url", help="URL hosts and fronts reach the scheduler at (default http://IP:PORT)")
    p.add_argument("--token", help=TOKEN_HELP)
    p.add_argument("--info-file", help="write {url, token, pid} to FILE (mode 0600) once listening")
    p.add_argument("--policy", help="scheduling policy: notebookos, reservation, batch, or module:Class "
                   "(default notebookos)")
    p.add_argument("--replicas-per-kernel", type=int, help="replicas per kernel (default: the policy's)")
    p.add_argument("--oversubscription", type=float, help="max GPU subscription ratio per host (default 7)")
    p.add_argument("--max-hosts", type=int, help="largest cluster size scale-out may reach (default 64)")
    p.add_argument("--min-hosts", type=int, help="scale-in keeps at least this many hosts (default 0)")
    p.add_argument("--host-gpus", type=int, help="GPUs of a host added by scale-out (default 8)")
    p.add_argument("--host-provider", help="host provider for scale-out/in (default local)")
    p.add_argument("--host-idle-limit", type=float, help="seconds before an idle provider-added host is removed "
                   "(default 600; 0: never)")
    p.add_argument("--session-idle-limit", type=float, help="seconds before an idle kernel is reclaimed "
                   "(default 0: never)")
    p.add_argument("--prewarm-pool-size", type=int, help="replica processes each host keeps started ahead of "
                   "demand, unless the host sets --prewarm (default 0)")
    p.add_argument("--check-interval", type=float, help="seconds between housekeeping passes (default 5)")
    p.add_argument("--host-timeout", type=float, help="seconds without a heartbeat before a host daemon is taken for "
                   "dead and dropped with its replicas (default 30; 0: never)")
    _common(p)


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


def _traitlets_argv(cls_name: str, args: argparse.Namespace, options: dict[str, str]) -> list[str]:
    argv = []
    for dest, trait in options.items():
        value = getattr(args, dest, None)
        if value is None and dest == "log_level":
            value = "INFO"
        if value is not None:
            argv.append(f"--{cls_name}.{trait}={value}")
    return argv


def _configure(app: Any, args: argparse.Namespace, argv: list[str]) -> None:
    if getattr(args, "config", None):
        import os

        path = os.path.abspath(args.config)
        app.load_config_file(os.path.basename(path), path=os.path.dirname(path))
    app.parse_command_line(argv)


def run_scheduler(args: argparse.Namespace) -> int:
    from .service import SchedulerService

    app = SchedulerService()
    _configure(app, args, _traitlets_argv("SchedulerService", args, SCHEDULER_OPTIONS) + list(args.extra or []))
    try:
        app.start()
    except (ValueError, OSError) as exc:  # unknown policy or provider, address in use, ...
        print(f"notebookos scheduler: {exc}", file=sys.stderr)
        return 1
    return 0


def run_hostd(args: argparse.Namespace) -> int:
    from .hostd import main

    return main(args.extra or [])


def run_up(args: argparse.Namespace) -> int:
    from .up import up

    return up(args)


def add_scheduler_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "scheduler", help="run the cluster scheduler (REST service)",
        description="Run the notebookos cluster scheduler: placement, executor choice, GPU binding, migration, "
        "autoscaling. Other traitlets options: --SchedulerService.<trait>=<value>, --<Policy>.<trait>=<value>.",
        allow_abbrev=False)
    scheduler_arguments(p)
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
        "and token in the kernels' environment. --SchedulerService.<trait>=<value> options go to the scheduler "
        "(--scheduler:<Class>.<trait>=<value> for its policy's and provider's), --HostDaemon.<trait>=<value> to "
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


def scheduler_main(argv: Sequence[str] | None = None) -> int:
    return _standalone("notebookos", add_scheduler_parser, argv)


def up_main(argv: Sequence[str] | None = None) -> int:
    return _standalone("notebookos", add_up_parser, argv)
