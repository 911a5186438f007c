"""The ``notebookos-provisioner`` kernel provisioner (entry point group ``jupyter_client.kernel_provisioners``).

Jupyter Server, nbclient, papermill and jupyter console start the ``notebookos`` kernelspec through this class and
need nothing else. In standalone mode it launches the kernel's front as the kernel process; the front starts and
supervises the replicas, so liveness, SIGKILL and restart of the kernel are those of the front, and the replicas
die with it. Options come from the kernelspec (``metadata.kernel_provisioner.config``) or from Jupyter config
(``c.NotebookOSProvisioner.replicas = 3``); an unknown option, or a value that cannot work (``front/options.py``:
a ``commit_timeout`` <= 0, an unwritable ``store_dir``, a ``raft_host`` that is not an address of this machine, bad
``gpus``, an ``executor_policy_class`` that does not import, an absurd ``replicas`` count), is an error that names
it, raised when Jupyter creates the provisioner: before any process or directory exists.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Float, Int, TraitError, Unicode, default

from .front.options import check_options
from .scratch import default_store_dir


class UnknownKernelOption(ValueError):
    """A kernelspec or kernel metadata option this provisioner does not know (or, as :class:`BadKernelOption`,
    one whose value cannot work)."""


class BadKernelOption(UnknownKernelOption):
    """A known kernel option with a value that cannot work."""


_WHERE = ("the kernelspec's metadata.kernel_provisioner.config (`notebookos kernelspec show`) or "
          "c.NotebookOSProvisioner in your Jupyter config")


class NotebookOSProvisioner(LocalProvisioner):
    """Launches a replicated kernel: a front process that owns the replicas."""

    replicas = Int(3, help="Replicas per kernel (Raft tolerates the loss of a minority).").tag(config=True)
    commit_timeout = Float(10.0, help="Seconds a cell's commit may wait for a Raft quorum.").tag(config=True)
    store_dir = Unicode("", help="Object store directory for values over 1 MiB (default: per kernel, "
                        "removed at shutdown).").tag(config=True)
    collect_garbage = Bool(None, allow_none=True, help="Delete stored values nothing refers to any more (default: "
                           "only for the per-kernel store, not a store_dir you configure).").tag(config=True)
    raft_host = Unicode("127.0.0.1", help="Address the replicas' Raft ports bind to.").tag(config=True)
    replace_lost_replicas = Bool(True, help="Start a replacement when a replica dies.").tag(config=True)
    gpus = Unicode("", help="Standalone: comma-separated GPU device ids a cell gets while it runs.").tag(config=True)
    executor_policy_class = Unicode("", help="Import path of the front's ExecutorPolicy (default: the "
                                    "standalone last-executor policy).").tag(config=True)
    scheduler_url = Unicode(help="Cluster mode: the scheduler's URL (default $NOTEBOOKOS_SCHEDULER_URL, which "
                            "`notebookos up` sets); the token comes from $NOTEBOOKOS_SCHEDULER_TOKEN.").tag(config=True)
    gpu_request = Int(1, help="Cluster mode: GPUs a cell of this kernel needs (a notebook's metadata "
                      "`notebookos.gpus` overrides it).").tag(config=True)
    cpu_request = Float(1.0, help="Cluster mode: CPUs each replica holds (notebook metadata `notebookos.cpus`).").tag(
        config=True)
    memory_request_mb = Int(2048, help="Cluster mode: memory each replica holds, MB (notebook metadata "
                            "`notebookos.memory_mb`).").tag(config=True)
    send_yield = Bool(True, help="Send the replicas that do not run a cell a 'yield' copy of its request.").tag(
        config=True)

    _FRONT_OPTIONS = ("replicas", "commit_timeout", "store_dir", "collect_garbage", "raft_host", "replace_lost_replicas", "send_yield",
                      "gpus", "executor_policy_class", "scheduler_url", "gpu_request", "cpu_request",
                      "memory_request_mb")

    def __init__(self, **kwargs: Any):
        known = set(self.class_trait_names()) | {"kernel_id", "kernel_spec", "parent", "config", "log"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise UnknownKernelOption(
                f"unknown notebookos kernel option(s) {', '.join(map(repr, unknown))} in the kernelspec's "
                f"metadata.kernel_provisioner.config; known options: {', '.join(self._FRONT_OPTIONS)}. "
                "Fix the kernelspec (`notebookos kernelspec show`) and start the kernel again."
            )
        try:
            super().__init__(**kwargs)
        except TraitError as exc:  # a value of the wrong type; traitlets' message names the option
            raise BadKernelOption(f"bad notebookos kernel option: {exc} Fix it in {_WHERE} and start the kernel "
                                  "again.") from None
        self._store: Path | None = None
        self.check_options()

    def check_options(self) -> None:
        """Raise :class:`BadKernelOption` naming every option whose value cannot work."""
        problems = check_options({name: getattr(self, name) for name in self._FRONT_OPTIONS})
        if problems:
            raise BadKernelOption(f"bad notebookos kernel option{'s' if len(problems) > 1 else ''}: "
                                  f"{'; '.join(problems)}. Fix {'them' if len(problems) > 1 else 'it'} in {_WHERE} "
                                  "and start the kernel again.")

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        # Before anything is written: a notebook with bad metadata must not leave a store or a connection file.
        self._apply_notebook_request(kwargs.get("env") or {}, kwargs.get("cwd"))
        kwargs = await super().pre_launch(**kwargs)
        if not self.store_dir and self._store is None:
            # Chosen here, not in the front, so the store is removed even if the front is SIGKILLed (cleanup()).
            self._store = default_store_dir(self.kernel_id)
        kwargs["cmd"] = list(kwargs["cmd"]) + self.front_arguments()
        return kwargs

    def _apply_notebook_request(self, env: dict[str, str], cwd: str | None) -> None:
        """Take the resource request from the notebook's metadata (``{"notebookos": {"gpus": 2}}``), if any.

        Jupyter Server names the notebook a kernel is started for in ``JPY_SESSION_NAME``; kernels started any other
        way (console, nbclient without it) keep the kernelspec's request.
        """
        notebook = notebook_path(env.get("JPY_SESSION_NAME", ""), cwd)
        if notebook is None:
            return
        for trait, value in notebook_request(notebook).items():
            setattr(self, trait, value)

    @default("scheduler_url")
    def _scheduler_url_default(self) -> str:
        return os.environ.get("NOTEBOOKOS_SCHEDULER_URL", "")

    def front_arguments(self) -> list[str]:
        """This provisioner's options as the front's command-line config."""
        values = {name: getattr(self, name) for name in self._FRONT_OPTIONS}
        for name in ("executor_policy_class", "collect_garbage"):  # unset: the front's default applies
            if values[name] in ("", None):
                del values[name]
        if values["scheduler_url"]:
            values["kernel_id"] = self.kernel_id
        if self._store is not None:
            values.update(store_dir=str(self._store), remove_store=True)
        return [f"--NotebookOSFront.{name}={value}" for name, value in values.items()]

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        if self._store is not None:
            shutil.rmtree(self._store, ignore_errors=True)
            self._store = None


# Notebook metadata key -> (provisioner trait, type). The notebook says what it needs, not how the kernel runs.
NOTEBOOK_REQUEST_KEYS = {"gpus": ("gpu_request", int), "cpus": ("cpu_request", float),
                         "memory_mb": ("memory_request_mb", int)}


def notebook_path(session_name: str, cwd: str | None) -> Path | None:
    """The notebook file a Jupyter Server session names (absolute, or relative to the kernel's directory)."""
    if not session_name.endswith(".ipynb"):
        return None
    path = Path(session_name)
    for candidate in ([path] if path.is_absolute() else [Path(cwd or ".") / path.name, Path(cwd or ".") / path]):
        if candidate.is_file():
            return candidate
    return None


def notebook_request(path: Path) -> dict[str, Any]:
    """Provisioner traits from ``metadata.notebookos`` of the notebook at ``path``; raises UnknownKernelOption."""
    try:
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata") or {}
    except (OSError, ValueError, AttributeError):
        return {}  # not a notebook we can read (yet): the kernelspec's request applies
    request = metadata.get("notebookos")
    if request is None:
        return {}
    where = f"the notebook metadata 'notebookos' of {path}"
    if not isinstance(request, dict):
        raise UnknownKernelOption(f"{where} must be an object like {{\"gpus\": 1}}, got {request!r}")
    unknown = sorted(set(request) - set(NOTEBOOK_REQUEST_KEYS))
    if unknown:
        raise UnknownKernelOption(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; known keys: "
                                  f"{', '.join(NOTEBOOK_REQUEST_KEYS)}. Fix it in Lab's notebook metadata editor.")
    traits = {}
    for key, value in request.items():
        trait, kind = NOTEBOOK_REQUEST_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or kind(value) != value:
            raise UnknownKernelOption(f"{key!r} in {where} must be a non-negative "
                                      f"{'integer' if kind is int else 'number'}, got {value!r}")
        traits[trait] = kind(value)
    return traits
