"""The ``notebookos`` kernelspec: how Jupyter finds and starts the replicated kernel.

The kernelspec names the ``notebookos-provisioner`` kernel provisioner (registered as a
``jupyter_client.kernel_provisioners`` entry point), which starts the kernel front and its replicas.
Any Jupyter client (JupyterLab, ``jupyter console``, nbclient, papermill) can then use
``--kernel notebookos`` unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

KERNEL_NAME = "notebookos"
DISPLAY_NAME = "Python 3 (replicated)"
PROVISIONER_NAME = "notebookos-provisioner"
FRONT_MODULE = "notebookos.kernel.front"

_LOGO_FILES = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")


def validate_replicas(replicas: Any) -> int:
    """Return ``replicas`` as an int, or raise ``ValueError`` unless it is an integer from 1 to MAX_REPLICAS."""
    from .kernel.front.options import MAX_REPLICAS

    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise ValueError(f"replicas must be an integer from 1 to {MAX_REPLICAS}, got {replicas!r}")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be an integer from 1 to {MAX_REPLICAS} (3 survives the loss of one "
                         f"replica, 5 of two), got {replicas}")
    return replicas


def kernel_json(replicas: int | None = None) -> dict[str, Any]:
    """The kernel.json dict for the replicated kernel.

    ``replicas`` (optional) is passed to the provisioner as ``{"replicas": N}``; when omitted the
    provisioner's own default applies.
    """
    config: dict[str, Any] = {}
    if replicas is not None:
        config["replicas"] = validate_replicas(replicas)
    return {
        "argv": [sys.executable, "-m", FRONT_MODULE, "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "debugger": False,
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": config},
        },
    }


def _copy_logos(dest: Path) -> None:
    """Copy ipykernel's Python logos so the JupyterLab launcher shows an icon."""
    try:
        import ipykernel
    except ImportError:  # pragma: no cover - ipykernel is a hard dependency
        return
    resources = Path(ipykernel.__file__).parent / "resources"
    for name in _LOGO_FILES:
        src = resources / name
        if src.is_file():
            shutil.copyfile(src, dest / name)


def write_kernelspec(path: str | os.PathLike[str], replicas: int | None = None) -> str:
    """Write the kernelspec directory (kernel.json and logos) to ``path``; return ``path``."""
    spec = kernel_json(replicas)  # validate before touching the filesystem
    dest = Path(path)
    dest.mkdir(parents=True, exist_ok=True)
    _copy_logos(dest)
    with open(dest / "kernel.json", "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=1)
        f.write("\n")
    return str(dest)


def install_kernelspec(user: bool = False, prefix: str | None = None, replicas: int | None = None) -> str:
    """Install the ``notebookos`` kernelspec and return the directory it was installed to.

    ``user=True`` installs for the current user; ``prefix`` installs to
    ``PREFIX/share/jupyter/kernels/notebookos`` (use ``sys.prefix`` inside a virtualenv or conda env);
    neither installs system-wide (which may need root). An existing ``notebookos`` kernelspec at the
    destination is replaced.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if user and prefix:
        raise ValueError("Can't specify both user and prefix. Please choose one or the other.")
    kernel_json(replicas)  # validate early
    with tempfile.TemporaryDirectory(suffix="_kernels") as tmp:
        src = write_kernelspec(Path(tmp) / KERNEL_NAME, replicas=replicas)
        return KernelSpecManager().install_kernel_spec(src, kernel_name=KERNEL_NAME, user=user, prefix=prefix)


def kernelspec_dir(user: bool = False, prefix: str | None = None) -> str:
    """Where :func:`install_kernelspec` with the same arguments puts the kernelspec."""
    from jupyter_client.kernelspec import KernelSpecManager

    return KernelSpecManager()._get_destination_dir(KERNEL_NAME, user=user, prefix=prefix)


def find_kernelspec() -> str | None:
    """The directory of the ``notebookos`` kernelspec Jupyter would use, or None if not installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    ksm.ensure_native_kernel = False
    return ksm.find_kernel_specs().get(KERNEL_NAME)


def read_replicas(spec_dir: str | os.PathLike[str]) -> int | None:
    """The ``replicas`` setting of the kernelspec in ``spec_dir``, or None if unset or unreadable."""
    try:
        with open(Path(spec_dir) / "kernel.json", encoding="utf-8") as f:
            spec = json.load(f)
        value = spec["metadata"]["kernel_provisioner"]["config"]["replicas"]
        return validate_replicas(value)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_kernelspec(prefix: str | None = None) -> str | None:
    """Remove the ``notebookos`` kernelspec and return the removed directory (None if none was found).

    Without ``prefix`` this removes the copy Jupyter would use (the first on the Jupyter data path); if
    copies are installed in several places, call it again to remove the next. With ``prefix`` it removes
    only ``PREFIX/share/jupyter/kernels/notebookos``.
    """
    if prefix is not None:
        target = Path(prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME
        if not target.exists():
            return None
        if target.is_symlink():
            target.unlink()
        else:
            shutil.rmtree(target)
        return str(target)

    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    try:
        return ksm.remove_kernel_spec(KERNEL_NAME)
    except KeyError:
        return None
