"""The ``notebookos`` command.

Subcommands are registered in :data:`COMMANDS`: each entry is a function that adds one subcommand's
parser to the ``subparsers`` action. To add a subcommand (``up``, ``scheduler``, ``hostd``, ``sim``...),
write an ``_add_<name>(subparsers)`` function that calls ``subparsers.add_parser(...)`` and
``set_defaults(func=<handler>, parser=<that parser>)``, and append it to ``COMMANDS``. A handler gets the
parsed namespace and returns an exit status. Subcommands that pass unrecognised arguments through to
another program (``lab``) also set ``passthrough=True``; their handler finds those arguments in
``args.extra``. Keep heavy imports inside handlers so ``notebookos --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from notebookos import __version__
from notebookos import kernelspec as ks
from notebookos.kernel.front.options import MAX_REPLICAS
from notebookos.scheduler import app_cli

#: The jupyter_server trait that picks the kernel for new notebooks (``GET /api/kernelspecs`` reports it
#: as ``default``). It is defined on ``jupyter_client.multikernelmanager.MultiKernelManager``; the
#: server's ``AsyncMappingKernelManager`` inherits it, and traitlets applies config set on a base class.
DEFAULT_KERNEL_FLAG = f"--MultiKernelManager.default_kernel_name={ks.KERNEL_NAME}"


# --------------------------------------------------------------------------------------------- helpers


def _replicas_arg(value: str) -> int:
    """argparse type for ``--replicas``: what ``validate_replicas`` accepts."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_REPLICAS}, got {value!r}") from None
    try:
        return ks.validate_replicas(n)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _in_virtual_env() -> bool:
    """True inside a virtualenv/venv or a conda environment."""
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        return True
    if (Path(sys.prefix) / "conda-meta").is_dir():
        return True
    conda_prefix = os.environ.get("CONDA_PREFIX")
    return bool(conda_prefix) and os.path.realpath(conda_prefix) == os.path.realpath(sys.prefix)


def _can_write_sys_prefix() -> bool:
    """True if this user can create ``sys.prefix/share/jupyter/kernels/notebookos``."""
    path = Path(sys.prefix) / "share" / "jupyter" / "kernels" / ks.KERNEL_NAME
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)


def default_install_scope() -> str:
    """``"sys-prefix"`` inside a virtualenv/conda env or when sys.prefix is writable, else ``"user"``."""
    if _in_virtual_env() or _can_write_sys_prefix():
        return "sys-prefix"
    return "user"


def _install_target(args: argparse.Namespace) -> tuple[bool, str | None, str]:
    """(user, prefix, description) from ``--user``/``--sys-prefix``/``--prefix`` or the default."""
    if getattr(args, "prefix", None):
        return False, os.path.abspath(args.prefix), f"--prefix {args.prefix}"
    scope = getattr(args, "scope", None) or default_install_scope()
    if scope == "user":
        return True, None, "--user"
    return False, sys.prefix, "--sys-prefix"


def _install(user: bool, prefix: str | None, replicas: int | None) -> str:
    try:
        return ks.install_kernelspec(user=user, prefix=prefix, replicas=replicas)
    except OSError as e:
        where = "your user directory" if user else (prefix or "the system directory")
        hint = "" if user else " (try --user)"
        raise SystemExit(f"notebookos: could not install the kernelspec in {where}: {e}{hint}") from e


def _describe(path: str, replicas: int | None) -> str:
    extra = f", replicas={replicas}" if replicas is not None else ""
    return f"Installed kernelspec '{ks.KERNEL_NAME}' ({ks.DISPLAY_NAME}{extra}) in {path}"


def _add_location_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--user",
        dest="scope",
        action="store_const",
        const="user",
        help="install for the current user (~/.local/share/jupyter)",
    )
    group.add_argument(
        "--sys-prefix",
        dest="scope",
        action="store_const",
        const="sys-prefix",
        help=f"install into this Python's prefix ({sys.prefix})",
    )
    group.add_argument("--prefix", metavar="PATH", help="install into PATH/share/jupyter/kernels")


def _add_replicas_option(p: argparse.ArgumentParser, help_suffix: str = "") -> None:
    p.add_argument(
        "--replicas",
        type=_replicas_arg,
        metavar="N",
        help="number of kernel replicas (>= 1); default: the provisioner's default" + help_suffix,
    )


# ---------------------------------------------------------------------------------- kernelspec command


def _cmd_kernelspec_install(args: argparse.Namespace) -> int:
    user, prefix, _ = _install_target(args)
    path = _install(user, prefix, args.replicas)
    print(_describe(path, args.replicas))
    if prefix is not None and prefix != sys.prefix:
        print(f"Jupyter finds it when JUPYTER_PATH includes {Path(prefix) / 'share' / 'jupyter'}")
    return 0


def _cmd_kernelspec_remove(args: argparse.Namespace) -> int:
    removed = ks.remove_kernelspec(prefix=os.path.abspath(args.prefix) if args.prefix else None)
    if removed is None:
        where = f" under {args.prefix}" if args.prefix else ""
        print(f"notebookos: no '{ks.KERNEL_NAME}' kernelspec is installed{where}", file=sys.stderr)
        return 1
    print(f"Removed kernelspec '{ks.KERNEL_NAME}' from {removed}")
    if not args.prefix:
        remaining = ks.find_kernelspec()
        if remaining:
            print(f"Another copy is still installed in {remaining}; run this command again to remove it.")
    return 0


def _cmd_kernelspec_show(args: argparse.Namespace) -> int:
    print(json.dumps(ks.kernel_json(args.replicas), indent=1))
    return 0


def _add_kernelspec(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kernelspec",
        help="install, remove or show the replicated kernel's Jupyter kernelspec",
        description=f"Manage the '{ks.KERNEL_NAME}' Jupyter kernelspec ({ks.DISPLAY_NAME}).",
    )
    sub = p.add_subparsers(dest="kernelspec_command", metavar="ACTION", required=True)

    inst = sub.add_parser(
        "install",
        help="install the kernelspec",
        description=(
            "Install the kernelspec so Jupyter clients can start the replicated kernel "
            f"(--kernel {ks.KERNEL_NAME}). Default location: --sys-prefix inside a virtualenv/conda env "
            "or when this Python's prefix is writable, otherwise --user."
        ),
    )
    _add_location_options(inst)
    _add_replicas_option(inst)
    inst.set_defaults(func=_cmd_kernelspec_install, parser=inst)

    rm = sub.add_parser(
        "remove",
        help="remove the installed kernelspec",
        description=(
            "Remove the kernelspec Jupyter would use (the first found on the Jupyter data path), "
            "or the one under --prefix."
        ),
    )
    rm.add_argument("--prefix", metavar="PATH", help="remove PATH/share/jupyter/kernels/notebookos only")
    rm.set_defaults(func=_cmd_kernelspec_remove, parser=rm)

    show = sub.add_parser(
        "show",
        help="print the kernel.json that would be installed",
        description="Print the kernel.json that 'notebookos kernelspec install' would write.",
    )
    _add_replicas_option(show)
    show.set_defaults(func=_cmd_kernelspec_show, parser=show)


# ----------------------------------------------------------------------------------------- lab command


def lab_command(extra_args: Sequence[str] = ()) -> list[str]:
    """The JupyterLab command line ``notebookos lab`` runs: the replicated kernel is the default kernel
    for new notebooks, and ``extra_args`` are passed through to JupyterLab unchanged (after the default
    kernel flag, so a ``--MultiKernelManager.default_kernel_name=...`` given by the user wins)."""
    return [sys.executable, "-m", "jupyterlab", DEFAULT_KERNEL_FLAG, *extra_args]


def _cmd_lab(args: argparse.Namespace) -> int:
    user, prefix, _ = _install_target(args)
    replicas = args.replicas
    if replicas is None:
        # Keep a setting made earlier with `notebookos kernelspec install --replicas N`.
        replicas = ks.read_replicas(ks.kernelspec_dir(user=user, prefix=prefix))
    path = _install(user, prefix, replicas)
    print(_describe(path, replicas), flush=True)
    cmd = lab_command(args.extra)
    print("Starting JupyterLab: " + " ".join(cmd[1:]), flush=True)
    os.execvp(cmd[0], cmd)
    return 0  # pragma: no cover - execvp does not return


def _add_lab(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lab",
        help="install the kernelspec and start JupyterLab with the replicated kernel as default",
        description=(
            f"Install the '{ks.KERNEL_NAME}' kernelspec (--sys-prefix inside a virtualenv/conda env or when "
            "this Python's prefix is writable, otherwise --user), then run JupyterLab with "
            f"'{ks.DISPLAY_NAME}' as the default kernel for new notebooks. Every argument not listed "
            "below is passed to JupyterLab unchanged, e.g. 'notebookos lab --port 8899 --no-browser'. "
            "Put JupyterLab arguments that clash with these after '--'."
        ),
        allow_abbrev=False,
    )
    _add_replicas_option(p, "; an earlier 'kernelspec install --replicas' setting is kept")
    p.set_defaults(func=_cmd_lab, passthrough=True, parser=p)


# ---------------------------------------------------------------------------------------------- parser

#: Functions that each add one subcommand to the ``notebookos`` parser, in the order ``--help`` lists them.
def _add_sim(subparsers: argparse._SubParsersAction) -> None:
    from notebookos.scheduler.sim.cli import add_parser

    add_parser(subparsers)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_kernelspec,
    _add_lab,
    app_cli.add_up_parser,
    app_cli.add_scheduler_parser,
    app_cli.add_hostd_parser,
    _add_sim,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notebookos",
        description=(
            "notebookos: replicated Jupyter kernels (three replicas kept identical through Raft) that bind "
            "GPUs only while a cell runs."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "passthrough", False):
        if "--" in extra:  # the separator itself is not an argument for the other program
            extra.remove("--")
        args.extra = extra
    elif extra:
        getattr(args, "parser", parser).error("unrecognized arguments: " + " ".join(extra))
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
