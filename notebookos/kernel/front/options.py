"""Checks of a replicated kernel's options, made before anything starts.

The provisioner runs them when Jupyter creates it (so a bad kernelspec or Jupyter config fails the kernel start
with a message naming the key and saying what to do, and no process or directory is left behind); the front runs
them again when started by hand. Each check returns its problems as sentences; none means the option is usable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
from pathlib import Path
from typing import Any

#: More replicas than this is a typo, not a deployment: each is a full Python process, and every commit waits for
#: a majority of them. Raft groups are 3 (tolerates one loss), 5 (two) or 7 (three).
MAX_REPLICAS = 15


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_replicas(value: Any) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        return [f"replicas={value!r}: must be a whole number from 1 to {MAX_REPLICAS} (3 survives the loss of one "
                "replica, 5 of two). Set it with `notebookos kernelspec install --replicas N`"]
    return []


def check_commit_timeout(value: Any) -> list[str]:
    if not _number(value) or not math.isfinite(value) or value <= 0:
        return [f"commit_timeout={value!r}: must be a number of seconds greater than 0 (default 10): how long a "
                "cell's commit may wait for a Raft quorum. Set a positive value"]
    return []


def check_migrate_timeout(value: Any) -> list[str]:
    if not _number(value) or not math.isfinite(value) or value <= 0:
        return [f"migrate_timeout={value!r}: must be a number of seconds greater than 0 (default 60): how long a "
                "migration's new replica may take to start and catch up. Set a positive value"]
    return []


def check_unresponsive_timeout(value: Any) -> list[str]:
    if not _number(value) or not math.isfinite(value) or value < 0:
        return [f"unresponsive_timeout={value!r}: must be a number of seconds, 0 or more (default 120; 0: never): how "
                "long a replica may go without answering before it is taken for hung and killed. Set such a value"]
    return []


def check_store_dir(value: Any) -> list[str]:
    """The store directory must be (or be creatable as) a directory this user can write."""
    if not isinstance(value, str):
        return [f"store_dir={value!r}: must be a directory path, or empty for a per-kernel directory"]
    if not value:
        return []
    path = Path(value).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = "Set store_dir to a directory you can write, or leave it empty for a per-kernel directory"
    if not existing.is_dir():
        return [f"store_dir={value!r}: {existing} is not a directory. {fix}"]
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created ({existing} is not writable)"
        return [f"store_dir={value!r}: the directory {what}. {fix}"]
    try:  # access() trusts the mode bits (and root passes it); a read-only mount or /proc says no only to a write
        probe = existing / f".notebookos-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        what = "is not writable" if existing == path else f"cannot be created in {existing}"
        return [f"store_dir={value!r}: the directory {what} ({exc.strerror}). {fix}"]
    return []


def check_raft_host(value: Any, standalone: bool = True) -> list[str]:
    """An IPv4 address or host name (Raft addresses are ``host:port``); in standalone mode one of this machine."""
    fix = ("Set raft_host to an address of this machine the replicas can bind (127.0.0.1, the default; a cluster "
           "network address only if the replicas must be reachable from other hosts)")
    if not isinstance(value, str) or not value.strip():
        return [f"raft_host={value!r}: must be a host name or IPv4 address. {fix}"]
    with contextlib.suppress(ValueError):  # not an address literal: a host name, resolved below
        if ipaddress.ip_address(value).version == 6:
            return [f"raft_host={value!r}: IPv6 addresses are not supported (Raft and ZeroMQ addresses are "
                    f"written host:port). {fix}"]
    try:
        infos = socket.getaddrinfo(value, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return [f"raft_host={value!r}: not an address or a host name that resolves ({exc}). {fix}"]
    if not standalone:
        return []
    address = infos[0][4][0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            return [f"raft_host={value!r}: {address} is not an address of this machine ({exc.strerror}). {fix}"]
    return []


def check_gpus(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [f"gpus={value!r}: must be a string of comma-separated GPU device ids, like \"0,1\""]
    ids = [d.strip() for d in value.split(",") if d.strip()]
    digits = all(d.isascii() and d.isdigit() for d in ids)
    if not digits or len({int(d) for d in ids}) != len(ids):
        return [f"gpus={value!r}: must be distinct non-negative GPU device ids separated by commas, like \"0,1\" "
                "(empty: no GPU). Set it to the ids nvidia-smi lists"]
    return []


def check_executor_policy_class(value: Any) -> list[str]:
    """An import path of an ExecutorPolicy subclass (imported here, as the front would)."""
    if value in ("", None):
        return []
    from traitlets.utils.importstring import import_item

    from .executor import ExecutorPolicy

    fix = ("Set executor_policy_class to the import path of an ExecutorPolicy subclass "
           "(notebookos.kernel.front.executor.ExecutorPolicy), or leave it empty for the default")
    if not isinstance(value, str) or "." not in value:
        return [f"executor_policy_class={value!r}: not an import path like 'package.module.Class'. {fix}"]
    try:
        cls = import_item(value)
    except Exception as exc:  # ImportError, AttributeError, or whatever the module raises when imported
        return [f"executor_policy_class={value!r}: cannot be imported ({type(exc).__name__}: {exc}). {fix}"]
    if not (isinstance(cls, type) and issubclass(cls, ExecutorPolicy)):
        return [f"executor_policy_class={value!r}: {cls!r} is not an ExecutorPolicy subclass. {fix}"]
    return []


def check_requests(values: dict[str, Any]) -> list[str]:
    problems = []
    for name, kind in (("gpu_request", int), ("cpu_request", float), ("memory_request_mb", int)):
        if name not in values:
            continue
        value = values[name]
        if not _number(value) or not math.isfinite(value) or value < 0 or (kind is int and int(value) != value):
            problems.append(f"{name}={value!r}: must be a non-negative {'whole ' if kind is int else ''}number")
    return problems


def check_scheduler_url(value: Any) -> list[str]:
    if value in ("", None):
        return []
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        return [f"scheduler_url={value!r}: must be an http:// or https:// URL of a notebookos scheduler, or empty "
                "for a standalone kernel"]
    return []


def check_options(values: dict[str, Any]) -> list[str]:
    """Every problem with ``values`` (option name -> value; missing ones are not checked)."""
    standalone = not values.get("scheduler_url")
    problems: list[str] = []
    checks = {
        "replicas": check_replicas,
        "commit_timeout": check_commit_timeout,
        "migrate_timeout": check_migrate_timeout,
        "unresponsive_timeout": check_unresponsive_timeout,
        "gpus": check_gpus,
        "executor_policy_class": check_executor_policy_class,
        "scheduler_url": check_scheduler_url,
    }
    for name, check in checks.items():
        if name in values:
            problems += check(values[name])
    if "raft_host" in values:
        problems += check_raft_host(values["raft_host"], standalone)
    if "store_dir" in values and standalone:  # in cluster mode it names a directory on the replicas' hosts
        problems += check_store_dir(values["store_dir"])
    problems += check_requests(values)
    return problems
