"""A replica process started ahead of demand: interpreter up and modules imported, waiting to be told which replica
it is.

A host daemon keeps a pool of these (``HostDaemon.prewarm``) so that starting a kernel's replica skips the
interpreter start and the imports of ipykernel, IPython, pyzmq, PySyncObj, numpy and cloudpickle, about 0.25-0.35 s
of each replica's start on our development VM. When a replica is needed the daemon writes one JSON line to the
process's stdin::

    {"argv": [...ReplicaKernelApp arguments...], "env": {...}, "cwd": "...", "log": "/path/replica-1.log"}

and the process becomes that replica exactly as ``python -m notebookos.kernel.replica ARGV`` would, with ``env``
added to its environment, ``cwd`` as its directory and its output going to ``log``. It exits quietly if stdin
closes first (the daemon stopped, or shrank its pool).

Once its imports are done it writes one byte to the file descriptor named by ``$NOTEBOOKOS_PREWARM_READY_FD`` (a
pipe from the pool) and closes it, so the pool knows which of its processes are warm and hands those out first.

What cannot change after start is the hash seed (``PYTHONHASHSEED``): the pool is started with the cluster's seed,
and the daemon starts a fresh process instead for a request with another.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

# The point of this process: pay for these imports before anyone waits for them.
import numpy  # noqa: F401

from notebookos.kernel import replica

READY_FD_ENV = "NOTEBOOKOS_PREWARM_READY_FD"


def signal_ready() -> None:
    """Tell the pool this process is warm (and keep the descriptor and its variable from the replica)."""
    fd = os.environ.pop(READY_FD_ENV, "")
    if not fd.isdigit():
        return
    try:
        with contextlib.suppress(OSError):  # the pool already handed this process out, or stopped
            os.write(int(fd), b"1")
    finally:
        with contextlib.suppress(OSError):
            os.close(int(fd))


def become_replica(order: dict) -> None:
    os.environ.update(order.get("env") or {})
    if order.get("cwd") and os.path.isdir(order["cwd"]):
        os.chdir(order["cwd"])
    if order.get("log"):
        fd = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    # ipykernel reads its streams and kernel arguments only once the app starts.
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    sys.argv = [sys.argv[0], *order["argv"]]
    replica.main()


def main() -> None:
    signal_ready()
    line = sys.stdin.readline()
    if not line.strip():
        return
    become_replica(json.loads(line))


if __name__ == "__main__":
    main()
