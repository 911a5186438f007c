"""How the front starts and stops replica processes: here (standalone) or through a host daemon (cluster).

A small abstract base in the style of jupyter_client's provisioners (the same async method names). The supervisor decides *what* to launch
(replica id, connection, Raft configuration, secret); a launcher only knows *where* and *how*.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...common.replicas import free_ports, replica_command
from ...parentdeath import kill_with_parent


@dataclass
class LaunchSpec:
    """Everything a replica process needs: its Jupyter connection, its ReplicaKernel config and environment."""

    replica_id: int
    connection: dict[str, Any]
    config: dict[str, Any]
    env: dict[str, str]
    runtime_dir: Path
    host_id: str | None = None  # where the scheduler placed it (cluster mode)


@dataclass
class Launched:
    """A replica process as its launcher knows it."""

    pid: int | None
    host: str
    state: dict[str, Any] = field(default_factory=dict)


class ReplicaLauncher(abc.ABC):
    """Starts, watches and stops one kernel's replica processes, in the vocabulary of jupyter_client's
    ``KernelProvisionerBase``: ``launch``, ``poll``, ``wait``, ``terminate``, ``kill``, ``cleanup``, all async.

    Each method takes the :class:`Launched` that ``launch`` returned. ``poll`` must be cheap: the supervisor asks
    it for every replica before each cell and several times a second.
    """

    #: seconds between polls in the default :meth:`wait`
    poll_interval = 0.02

    async def ports(self, host_id: str | None, count: int, local_ip: str) -> tuple[str, list[int]]:
        """The address a replica on ``host_id`` will listen on and ``count`` free ports there. Chosen where the
        replica runs: here, on this machine."""
        return local_ip, free_ports(local_ip, count)

    @abc.abstractmethod
    async def launch(self, spec: LaunchSpec) -> Launched:
        """Start the replica process described by ``spec``."""

    @abc.abstractmethod
    async def poll(self, launched: Launched) -> int | None:
        """The process's exit code if it has ended, else None (from what the launcher knows now; never blocks)."""

    async def wait(self, launched: Launched, timeout: float | None = None) -> int | None:
        """The exit code once the process has ended; None if it still runs after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := await self.poll(launched)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.poll_interval)
        return code

    @abc.abstractmethod
    async def terminate(self, launched: Launched) -> None:
        """Ask the process to exit (SIGTERM)."""

    @abc.abstractmethod
    async def kill(self, launched: Launched) -> None:
        """Stop the process now (SIGKILL)."""

    async def cleanup(self, launched: Launched) -> None:  # noqa: B027 - only remote launchers keep state
        """The kernel is ending: forget the replica, dead or alive (a host daemon then removes its files and,
        with its last replica of the kernel, the kernel's object store there)."""

    def exit_details(self, launched: Launched) -> str:
        """What the ended process last wrote, for the front's log ("" when this launcher cannot see it)."""
        return ""


def write_launch_files(spec: LaunchSpec) -> tuple[Path, Path]:
    """The replica's connection file and config file, private to this user."""
    conn_file = spec.runtime_dir / f"replica-{spec.replica_id}.json"
    conn_file.write_text(json.dumps(spec.connection))
    os.chmod(conn_file, 0o600)
    config_file = spec.runtime_dir / f"replica-{spec.replica_id}-config.json"
    config_file.write_text(json.dumps(spec.config))
    os.chmod(config_file, 0o600)
    return conn_file, config_file


class LocalLauncher(ReplicaLauncher):
    """Replicas as child processes of the front, on this machine."""

    async def launch(self, spec: LaunchSpec) -> Launched:
        conn_file, config_file = write_launch_files(spec)
        env = {**os.environ, **spec.env}
        log_path = spec.runtime_dir / f"replica-{spec.replica_id}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(replica_command(conn_file, config_file), env=env, stdin=subprocess.DEVNULL,
                                       stdout=log_file, stderr=log_file, preexec_fn=kill_with_parent,
                                       cwd=os.getcwd())
        return Launched(process.pid, spec.connection["ip"], {"process": process, "log": log_path})

    async def poll(self, launched: Launched) -> int | None:
        return launched.state["process"].poll()

    def exit_details(self, launched: Launched, lines: int = 12) -> str:
        # The runtime directory goes when the kernel shuts down; the front's log is what remains of a crash.
        try:
            tail = launched.state["log"].read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(tail)

    async def terminate(self, launched: Launched) -> None:
        if launched.state["process"].poll() is None:
            launched.state["process"].terminate()

    async def kill(self, launched: Launched) -> None:
        if launched.state["process"].poll() is None:
            launched.state["process"].kill()
