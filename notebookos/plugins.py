"""One way to find a pluggable class: scheduling policies, host providers, object stores.

Each kind is an abstract base with implementations registered under an entry point group, the way jupyter_client
finds kernel provisioners. A name is either an entry point name (``"notebookos"``, ``"local"``), one of the kind's
built-ins (which also work from a source checkout whose package metadata is stale), or ``"module:Class"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any


def available(group: str, builtins: Mapping[str, Any] | None = None) -> list[str]:
    """The names :func:`load_class` accepts for ``group`` (besides ``module:Class``)."""
    return sorted({ep.name for ep in entry_points(group=group)} | set(builtins or {}))


def load_class(group: str, name: str, base: type, what: str, builtins: Mapping[str, Any] | None = None) -> type:
    """The ``base`` subclass named ``name``; a ValueError naming ``what`` and the choices if there is none.

    ``builtins`` maps names to classes or ``module:Class`` strings, used when no entry point has the name.
    """
    if ":" in name:
        target: Any = name
    else:
        matches = [ep for ep in entry_points(group=group) if ep.name == name]
        if matches:
            try:
                target = matches[0].load()
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"cannot load {what} {name!r} (entry point {matches[0].value}): {exc}") from exc
        elif builtins and name in builtins:
            target = builtins[name]
        else:
            raise ValueError(f"unknown {what} {name!r}; available: {', '.join(available(group, builtins)) or 'none'}"
                             f" (entry point group {group!r}, or give 'module:Class')")
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import {what} {target!r}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, base)):
        raise ValueError(f"{what} {name!r} is {target!r}, not a {base.__name__} subclass")
    return target
