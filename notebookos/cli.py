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


#: JupyterLab settings ``notebookos lab`` and ``notebookos up`` install (as ``overrides.d/notebookos.json`` in
#: JupyterLab's application settings directory). File > New > Notebook asks for no kernel name, and JupyterLab 4's
#: kernel dialog then preselects the first kernelspec by display name ("Python 3 (ipykernel)"): it reads the
#: server's default kernel only when the notebook tracker's ``autoStartDefaultKernel`` is on, and then starts that
#: kernel without asking. A user's own ``overrides.json`` or settings win over this file.
LAB_OVERRIDES = {"@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": True}}
LAB_OVERRIDES_FILE = "notebookos.json"


def _lab_option(args: Sequence[str], *names: str) -> str | None:
    """The last value given to JupyterLab for any of ``names`` (``--name=value`` or ``--name value``)."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg.startswith(name + "="):
                value = arg[len(name) + 1:]
            elif arg == name and i + 1 < len(args):
                value = args[i + 1]
    return value


def lab_settings_dir(extra_args: Sequence[str] = ()) -> Path:
    """JupyterLab's application settings directory (where it reads ``overrides.d/*.json``) for these arguments."""
    settings = _lab_option(extra_args, "--LabApp.app_settings_dir")
    if settings:
        return Path(settings).expanduser().resolve()
    app_dir = _lab_option(extra_args, "--app-dir", "--LabApp.app_dir")
    if not app_dir:
        from jupyterlab.commands import get_app_dir

        app_dir = get_app_dir()
    return Path(app_dir).expanduser().resolve() / "settings"


def install_lab_overrides(extra_args: Sequence[str] = ()) -> Path:
    """Write :data:`LAB_OVERRIDES` where the JupyterLab started with ``extra_args`` reads them; OSError if it cannot."""
    path = lab_settings_dir(extra_args) / "overrides.d" / LAB_OVERRIDES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(LAB_OVERRIDES, indent=1) + "\n")
    return path


def _needs_allow_root(extra_args: Sequence[str]) -> bool:
    """Running as root, where JupyterLab refuses to start without ``--allow-root``, which the user did not decide."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    return not any(a == "--allow-root" or a.startswith("--ServerApp.allow_root") for a in extra_args)


def lab_command(extra_args: Sequence[str] = (), notebook_dir: str | None = None) -> list[str]:
    """The JupyterLab command line ``notebookos lab`` and ``notebookos up`` run: the replicated kernel is the
    default kernel for new notebooks, Lab serves ``notebook_dir`` (None: the current directory), ``--allow-root``
    when running as root (unless the user set it), and ``extra_args`` are passed through to JupyterLab unchanged,
    last (so a ``--MultiKernelManager.default_kernel_name=...`` given by the user wins)."""
    cmd = [sys.executable, "-m", "jupyterlab", DEFAULT_KERNEL_FLAG]
    if notebook_dir is not None:
        cmd.append(f"--ServerApp.root_dir={os.path.abspath(notebook_dir)}")
    if _needs_allow_root(extra_args):
        cmd.append("--allow-root")
    return [*cmd, *extra_args]


def prepare_lab(extra_args: Sequence[str] = (), notebook_dir: str | None = None, who: str = "notebookos") -> list[str]:
    """Install the JupyterLab settings overrides, say what the Lab about to start does differently, and return its
    command line (:func:`lab_command`)."""
    cmd = lab_command(extra_args, notebook_dir)
    try:
        path = install_lab_overrides(extra_args)
        print(f"{who}: new notebooks start '{ks.DISPLAY_NAME}' (JupyterLab settings in {path})", flush=True)
    except OSError as exc:
        print(f"{who}: could not write JupyterLab's settings overrides ({exc}); File > New > Notebook will ask "
              f"for a kernel: choose '{ks.DISPLAY_NAME}'", flush=True)
    served = notebook_dir or _lab_option(extra_args, "--ServerApp.root_dir", "--notebook-dir",
                                         "--ServerApp.notebook_dir") or os.getcwd()
    print(f"{who}: JupyterLab serves {os.path.abspath(os.path.expanduser(served))} (--notebook-dir DIR to choose)",
          flush=True)
    if _needs_allow_root(extra_args):
        print(f"{who}: running as root: starting JupyterLab with --allow-root", flush=True)
    print("Starting JupyterLab: " + " ".join(cmd[1:]), flush=True)
    return cmd


def lab_directory(value: str) -> str:
    """argparse type for ``--notebook-dir``: an existing directory, made absolute."""
    path = os.path.abspath(os.path.expanduser(value))
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"not a directory: {value}")
    return path


def _cmd_lab(args: argparse.Namespace) -> int:
    user, prefix, _ = _install_target(args)
    replicas = args.replicas
    if replicas is None:
        # Keep a setting made earlier with `notebookos kernelspec install --replicas N`.
        replicas = ks.read_replicas(ks.kernelspec_dir(user=user, prefix=prefix))
    path = _install(user, prefix, replicas)
    print(_describe(path, replicas), flush=True)
    cmd = prepare_lab(args.extra, args.notebook_dir, "notebookos lab")
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
    p.add_argument("--notebook-dir", type=lab_directory, metavar="DIR",
                   help="directory JupyterLab serves and new notebooks go to (default: the current directory)")
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
