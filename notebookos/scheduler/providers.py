"""Host providers: how the scheduler adds and removes GPU servers (scale-out and scale-in).

Like jupyter_client's kernel provisioners, a provider is a small class with a few async methods, found by name
through the entry point group ``notebookos.host_providers``::

    [project.entry-points."notebookos.host_providers"]
    local = "notebookos.scheduler.providers:LocalHostProvider"

The scheduler creates one provider (``c.SchedulerService.host_provider = "local"``, extra constructor arguments in
``c.SchedulerService.provider_config``), sets its ``scheduler_url`` and ``token``, and calls ``add_host(gpus)`` when
a kernel or a cell finds no room and the cluster is below ``max_hosts``; ``remove_host(host_id)`` when a host it
added stayed without replicas past ``host_idle_limit`` (the scheduler forgets the host first, so nothing is placed
there while it goes away); ``shutdown()`` when the scheduler stops. Only hosts a provider added are ever removed
by scale-in.
"""

from __future__ import annotations

import abc
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from traitlets import Float, List, Unicode
from traitlets.config import LoggingConfigurable

from .. import plugins
from ..parentdeath import term_with_parent

ENTRY_POINT_GROUP = "notebookos.host_providers"


class _ProviderMeta(abc.ABCMeta, type(LoggingConfigurable)):
    """ABCMeta and traitlets' metaclass together (as jupyter_client's KernelProvisionerMeta does)."""


class HostProvider(LoggingConfigurable, metaclass=_ProviderMeta):
    """Adds and removes hosts (GPU servers running ``notebookos hostd``) for the scheduler."""

    scheduler_url = Unicode(help="URL of the scheduler new hosts register with (set by the scheduler).").tag(
        config=True)
    token = Unicode(help="Token new hosts use with the scheduler (set by the scheduler).").tag(config=True)
    registration_timeout = Float(120.0, help="Seconds a new host may take to register.").tag(config=True)

    @abc.abstractmethod
    async def add_host(self, gpus: int) -> str:
        """Start a host with ``gpus`` GPUs whose daemon registers with the scheduler; return its host id once it
        has registered (see :meth:`wait_registered`). Raise if it cannot be started."""

    @abc.abstractmethod
    async def remove_host(self, host_id: str) -> None:
        """Stop a host this provider added (its daemon stops its replicas and deregisters)."""

    @abc.abstractmethod
    async def hosts(self) -> list[str]:
        """Ids of the hosts this provider added and has not removed."""

    async def shutdown(self) -> None:
        """Remove every host this provider added (the scheduler is stopping)."""
        await asyncio.gather(*(self.remove_host(h) for h in await self.hosts()), return_exceptions=True)

    async def is_registered(self, host_id: str) -> bool:
        cluster = getattr(self.parent, "cluster", None)
        if cluster is not None:  # running inside the scheduler: look, do not ask over HTTP
            return host_id in cluster.hosts
        from ..common.client import SchedulerClient, SchedulerError

        try:
            await SchedulerClient(self.scheduler_url, self.token).host(host_id)
        except SchedulerError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def wait_registered(self, host_id: str, timeout: float | None = None, check=None) -> None:
        """Wait until ``host_id`` has registered with the scheduler. ``check()`` is called on every poll and may
        raise to stop waiting early (a host that died while booting)."""
        deadline = time.monotonic() + (self.registration_timeout if timeout is None else timeout)
        while not await self.is_registered(host_id):
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"host {host_id!r} did not register within {timeout or self.registration_timeout:g} s")
            await asyncio.sleep(0.05)


class LocalHostProvider(HostProvider):
    """Adds hosts on this machine: each is a ``notebookos hostd`` process with virtual GPUs.

    For a single machine (development, ``notebookos up``, tests): a "host" is only a daemon process with its own
    virtual GPUs, so scale-out adds scheduling slots, not hardware.

    A cloud provider plugs in the same way: subclass :class:`HostProvider`, register the class under the entry
    point group ``notebookos.host_providers``, and select it with ``c.SchedulerService.host_provider``.
    Its ``add_host(gpus)`` must

    1. boot a machine (VM, bare-metal node, Kubernetes pod of a DaemonSet-like pool) with at least ``gpus`` GPUs,
       whose start-up runs ``notebookos hostd --scheduler-url {self.scheduler_url} --host-id ID --ip 0.0.0.0
       --public-url http://ADDRESS:PORT`` with ``NOTEBOOKOS_SCHEDULER_TOKEN={self.token}`` in its environment
       (pass the token through the cloud's secret mechanism, not on the command line or in user data that other
       tenants can read); NVML on the node reports its real GPUs;
    2. choose the host id itself (so it knows what to wait for) and ``await self.wait_registered(host_id)``,
       raising when the machine fails to boot (pass ``check=`` to notice that early);
    3. return the host id.

    ``remove_host(host_id)`` terminates that machine (its daemon gets SIGTERM on shutdown, stops its replicas and
    deregisters; the scheduler has already forgotten the host), and ``hosts()`` lists the machines it started.
    """

    ip = Unicode("127.0.0.1", help="Address the host daemons listen on.").tag(config=True)
    python = Unicode(sys.executable, help="Python interpreter that runs the host daemons.").tag(config=True)
    runtime_dir = Unicode("", help="Directory for the daemons' logs and replica files (default: a new "
                          "temporary directory).").tag(config=True)
    stop_timeout = Float(10.0, help="Seconds a daemon gets to stop its replicas after SIGTERM before its "
                         "process group is killed.").tag(config=True)
    extra_args = List(Unicode(), help="Extra command-line arguments for each host daemon.").tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.processes: dict[str, subprocess.Popen] = {}
        self._dir: Path | None = None

    def _runtime_dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(self.runtime_dir or tempfile.mkdtemp(prefix="notebookos-hosts-"))
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self._dir

    def command(self, host_id: str, gpus: int, host_dir: Path) -> list[str]:
        return [self.python, "-m", "notebookos.scheduler.hostd", "--scheduler-url", self.scheduler_url,
                "--host-id", host_id, "--ip", self.ip, "--port", "0", "--virtual-gpus", str(gpus), "--no-nvml",
                "--runtime-dir", str(host_dir), "--token-stdin", *self.extra_args]

    async def add_host(self, gpus: int) -> str:
        if not self.scheduler_url:
            raise RuntimeError("LocalHostProvider.scheduler_url is not set")
        host_id = f"local-{secrets.token_hex(4)}"
        host_dir = self._runtime_dir() / host_id
        host_dir.mkdir(mode=0o700)
        log_path = host_dir / "hostd.log"
        # The token goes through a pipe: in the daemon's environment, kernel code on the host could read it.
        env = {k: v for k, v in os.environ.items() if k != "NOTEBOOKOS_SCHEDULER_TOKEN"}
        with open(log_path, "ab") as log_file:
            # Its own process group, so removal can kill the daemon and anything it left behind at once.
            process = subprocess.Popen(self.command(host_id, gpus, host_dir), env=env, stdin=subprocess.PIPE,
                                       stdout=log_file, stderr=subprocess.STDOUT, process_group=0,
                                       preexec_fn=term_with_parent)
        process.stdin.write(f"{self.token}\n".encode())
        process.stdin.close()
        self.processes[host_id] = process
        self.log.info("starting host %s (pid %d, %d virtual GPUs)", host_id, process.pid, gpus)

        def check() -> None:
            if process.poll() is not None:
                self.processes.pop(host_id, None)
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"host daemon {host_id} exited with {process.returncode}:\n{tail}")

        try:
            await self.wait_registered(host_id, check=check)
        except BaseException:
            await self.remove_host(host_id)
            raise
        return host_id

    async def remove_host(self, host_id: str) -> None:
        process = self.processes.pop(host_id, None)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        try:  # whatever is left in its group: the daemon if it hung, replicas if it could not stop them
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if process.poll() is None:
            process.wait()
        self.log.info("host %s stopped (exit %s)", host_id, process.returncode)

    async def hosts(self) -> list[str]:
        return list(self.processes)


def load_host_provider(name: str, **config: Any) -> HostProvider:
    """The host provider ``name`` (an entry point name, ``local``, or ``module:Class``), constructed with
    ``config``."""
    return plugins.load_class(ENTRY_POINT_GROUP, name, HostProvider, "host provider",
                              {"local": LocalHostProvider})(**config)
