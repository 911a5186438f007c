"""How a replica process is started, by a front (standalone) or a host daemon (cluster): its command line, and
the free ports it is given."""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def replica_command(connection_file: Path, config_file: Path, python: str = sys.executable,
                    log_level: str = "WARN") -> list[str]:
    """The command line of every replica process, here or on a host daemon."""
    return [python, "-m", "notebookos.kernel.replica", "-f", str(connection_file), f"--config={config_file}",
            f"--IPKernelApp.log_level={log_level}"]


def free_ports(host: str, count: int) -> list[int]:
    """``count`` TCP ports free on ``host`` just now (bound and released; a replica that loses the race to another
    process fails to bind and is replaced)."""
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports
