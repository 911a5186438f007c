"""The ``notebookos-provisioner`` kernel provisioner (entry point group ``jupyter_client.kernel_provisioners``).

Jupyter Server, nbclient, papermill and jupyter console start the ``notebookos`` kernelspec through this class and
need nothing else. In standalone mode it launches the kernel's front as the kernel process; the front starts and
supervises the replicas, so liveness, SIGKILL and restart of the kernel are those of the front, and the replicas
die with it. Options come from the kernelspec (``metadata.kernel_provisioner.config``) or from Jupyter config
(``c.NotebookOSFront.replicas = 3``: the options are the front's own traits); an unknown option, or a value that cannot work (``front/options.py``:
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
from traitlets import TraitError

from ..common.secrets import write_private_json
from .front.options import check_options
from .scratch import default_store_dir


class UnknownKernelOption(ValueError):
    """A kernelspec or kernel metadata option this provisioner does not know (or, as :class:`BadKernelOption`,
    one whose value cannot work)."""


class BadKernelOption(UnknownKernelOption):
    """A known kernel option with a value that cannot work."""


_WHERE = ("the kernelspec's metadata.kernel_provisioner.config (`notebookos kernelspec show`) or "
          "c.NotebookOSProvisioner in your Jupyter config")


#: The front's traits a kernelspec, Jupyter config or notebook may set (the rest are the provisioner's to set).
FRONT_OPTIONS = ("replicas", "commit_timeout", "store_dir", "collect_garbage", "raft_host", "replace_lost_replicas",
                 "send_yield", "gpus", "executor_policy_class", "scheduler_url", "gpu_request", "cpu_request",
                 "memory_request_mb", "migrate_timeout", "unresponsive_timeout", "store_on_tmpfs")


class NotebookOSProvisioner(LocalProvisioner):
    """Launches a replicated kernel: a front process that owns the replicas.

    Its options are the front's own traits (:class:`~notebookos.kernel.front.app.NotebookOSFront`: one name, one
    help string, one default each), in :data:`FRONT_OPTIONS`: from Jupyter config (``c.NotebookOSFront.replicas =
    3``), overridden by the kernelspec's ``metadata.kernel_provisioner.config``, the resource request by the
    notebook's metadata. They reach the front as a config file (mode 0600, next to the connection file), as the
    supervisor hands replicas theirs.
    """

    def __init__(self, **kwargs: Any):
        own = {"kernel_id", "kernel_spec", "parent", "config", "log"}
        options = {name: kwargs.pop(name) for name in list(kwargs) if name not in own}
        unknown = sorted(set(options) - set(FRONT_OPTIONS))
        if unknown:
            raise UnknownKernelOption(
                f"unknown notebookos kernel option(s) {', '.join(map(repr, unknown))} in the kernelspec's "
                f"metadata.kernel_provisioner.config; known options: {', '.join(FRONT_OPTIONS)}. "
                "Fix the kernelspec (`notebookos kernelspec show`) and start the kernel again."
            )
        super().__init__(**kwargs)
        configured = {k: v for k, v in dict(self.config.get("NotebookOSFront", {})).items() if k in FRONT_OPTIONS}
        if not configured.get("scheduler_url") and os.environ.get("NOTEBOOKOS_SCHEDULER_URL"):
            configured["scheduler_url"] = os.environ["NOTEBOOKOS_SCHEDULER_URL"]  # `notebookos up` sets it
        self.front_options: dict[str, Any] = {}
        self._store: Path | None = None
        self._config_file: Path | None = None
        self.set_options({**configured, **options})

    def set_options(self, options: dict[str, Any]) -> None:
        """Take front options, checked as the front will check them; :class:`BadKernelOption` naming each bad one."""
        from .front.app import (
            NotebookOSFront,  # the server imports the front's code only when it starts a kernel
        )

        probe = NotebookOSFront()
        for name, value in {**self.front_options, **options}.items():
            try:
                setattr(probe, name, value)
            except (TraitError, ValueError) as exc:  # wrong type, or refused by the front's own check
                raise BadKernelOption(f"bad notebookos kernel option {name}: {exc}. Fix it in {_WHERE} and start "
                                      "the kernel again.") from None
        self.front_options.update(options)
        problems = check_options({name: getattr(probe, name) for name in FRONT_OPTIONS
                                  if name != "executor_policy_class"}
                                 | {"executor_policy_class": self.front_options.get("executor_policy_class", "")})
        if problems:
            raise BadKernelOption(f"bad notebookos kernel option{'s' if len(problems) > 1 else ''}: "
                                  f"{'; '.join(problems)}. Fix {'them' if len(problems) > 1 else 'it'} in {_WHERE} "
                                  "and start the kernel again.")

    def option(self, name: str) -> Any:
        """The front option ``name`` as this kernel's front will have it (set here, or the front's default)."""
        if name in self.front_options:
            return self.front_options[name]
        from .front.app import NotebookOSFront

        return NotebookOSFront.class_traits()[name].default()

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        # Before anything is written: a notebook with bad metadata must not leave a store or a connection file.
        notebook = notebook_path((kwargs.get("env") or {}).get("JPY_SESSION_NAME", ""), kwargs.get("cwd"))
        if notebook is not None:
            self.set_options(notebook_request(notebook))
        kwargs = await super().pre_launch(**kwargs)
        if not self.front_options.get("store_dir") and self._store is None:
            # Chosen here, not in the front, so the store is removed even if the front is SIGKILLed (cleanup()).
            self._store = default_store_dir(self.kernel_id, bool(self.option("store_on_tmpfs")))
        self._config_file = Path(self.parent.connection_file).with_suffix(".notebookos-config.json")
        write_private_json(self._config_file, {"NotebookOSFront": self.front_config()})
        kwargs["cmd"] = [*kwargs["cmd"], f"--config={self._config_file}"]
        return kwargs

    def front_config(self) -> dict[str, Any]:
        """The front's configuration: the options set, and what the provisioner decides for this kernel."""
        values = {k: v for k, v in self.front_options.items() if v not in ("", None) or k == "scheduler_url"}
        if values.get("scheduler_url"):
            values["kernel_id"] = self.kernel_id
        if self._store is not None:
            values.update(store_dir=str(self._store), remove_store=True)
        return values

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        if self._config_file is not None:
            self._config_file.unlink(missing_ok=True)
            self._config_file = None
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
