"""How a replica process is started, by a front (standalone) or a host daemon (cluster): its command line, and
the free ports it is given."""

from __future__ import annotations

import heapq
import socket
import sys
import threading
import time
from pathlib import Path


def replica_command(connection_file: Path, config_file: Path, python: str = sys.executable,
                    log_level: str = "WARN") -> list[str]:
    """The command line of every replica process, here or on a host daemon."""
    return [python, "-m", "notebookos.kernel.replica", "-f", str(connection_file), f"--config={config_file}",
            f"--IPKernelApp.log_level={log_level}"]


#: How long a port handed out by :func:`free_ports` stays reserved at most for the replica it was chosen for.
PORT_HOLD_SECONDS = 120.0

_held: list[tuple[float, int, socket.socket]] = []  # a heap of (release time, fd, bound socket)
_held_lock = threading.Lock()


def free_ports(host: str, count: int, hold: float = PORT_HOLD_SECONDS) -> list[int]:
    """``count`` distinct TCP ports free on ``host``, each kept reserved until it listens, or ``hold`` seconds.

    A port chosen by binding port 0 and closing the socket is free again at once: the next ``bind(0)`` here or in
    any process on the machine (another replica's ports, a Jupyter connection file) may get it before the replica
    it was meant for binds it, and that replica's Raft or ZeroMQ listener then fails. So the socket stays bound
    (``SO_REUSEADDR``, not listening): the kernel gives its port to no other ``bind(0)``, no outgoing connection
    and no plain ``bind``, while the replica's own listeners, which set ``SO_REUSEADDR`` as ZeroMQ and PySyncObj
    do, bind it as if it were free. :func:`release_held` (called here, and by the front's and the host daemon's
    periodic loops) closes the holds of ports that listen by then, and of those past ``hold``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    release_held()
    now = time.monotonic()
    ports = []
    with _held_lock:
        for _ in range(count):
            sock = socket.socket(family)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, 0))
            except BaseException:
                sock.close()
                raise
            ports.append(sock.getsockname()[1])
            heapq.heappush(_held, (now + hold, sock.fileno(), sock))
    return ports


def release_held() -> int:
    """Close the holds whose port now listens (its replica bound it) or that expired; returns how many remain."""
    with _held_lock:
        if not _held:
            return 0
        now = time.monotonic()
        listening = _listening_ports()
        keep = []
        for entry in _held:
            if entry[0] <= now or entry[2].getsockname()[1] in listening:
                entry[2].close()
            else:
                keep.append(entry)
        heapq.heapify(keep)
        _held[:] = keep
        return len(_held)


def _listening_ports() -> set[int]:
    """TCP ports some socket of this network namespace listens on (Linux ``/proc/net/tcp``; empty elsewhere)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports
