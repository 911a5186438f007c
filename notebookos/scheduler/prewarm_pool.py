"""A host daemon's pool of replica processes started ahead of demand (see ``notebookos/kernel/prewarm.py``).

Each pooled process has its interpreter started and the replica's modules imported, and waits on its stdin for the
one JSON line that tells it which replica to become. A process counts as warm (``ready`` in :meth:`PrewarmPool.view`)
once it has said so over a pipe; until then it is only started, and its imports still take up to a couple of seconds
on a busy host. :meth:`PrewarmPool.take` hands out a warm process first (a started one is still better than a fresh
one). The pool is refilled ``refill_delay`` seconds after a hand-out, because a new process importing at once would
compete for the cores with the replicas of the kernel that is starting (on our 2-core VM that ate the whole gain).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..parentdeath import kill_with_parent

log = logging.getLogger(__name__)

READY_FD_ENV = "NOTEBOOKOS_PREWARM_READY_FD"  # notebookos.kernel.prewarm.READY_FD_ENV


class PrewarmPool:
    """Up to ``size`` waiting processes, all started with ``env`` (which fixes their ``PYTHONHASHSEED``)."""

    def __init__(self, size: int, env: dict[str, str], log_path: Path, python: str = sys.executable,
                 refill_delay: float = 2.0):
        self.size = size
        self.refill_delay = refill_delay
        self._refill_after = 0.0
        self.env = env
        self.log_path = log_path
        self.python = python
        self.waiting: list[subprocess.Popen] = []
        self._ready_pipes: dict[subprocess.Popen, int] = {}  # read ends, until the process says it is warm
        self._warm: set[subprocess.Popen] = set()
        self.started = 0
        self.handed_out = 0
        self._failures: list[float] = []

    @property
    def hash_seed(self) -> str | None:
        return self.env.get("PYTHONHASHSEED")

    def fill(self) -> None:
        """Start processes until ``size`` wait (call on the event loop's thread: PR_SET_PDEATHSIG is per thread)."""
        for process in [p for p in self.waiting if p.poll() is not None]:
            self._forget(process)
        if time.monotonic() < self._refill_after:
            return
        # Processes that die while waiting (a broken environment) must not make the daemon fork in a loop.
        now = time.monotonic()
        self._failures = [t for t in self._failures if now - t < 60]
        if len(self._failures) >= 3:
            return
        with open(self.log_path, "ab") as out:
            while len(self.waiting) < self.size:
                ready_r, ready_w = os.pipe()
                try:
                    process = subprocess.Popen([self.python, "-m", "notebookos.kernel.prewarm"],
                                               env={**self.env, READY_FD_ENV: str(ready_w)}, pass_fds=(ready_w,),
                                               stdin=subprocess.PIPE, stdout=out, stderr=out,
                                               preexec_fn=kill_with_parent)
                except BaseException:
                    os.close(ready_r)
                    raise
                finally:
                    os.close(ready_w)
                os.set_blocking(ready_r, False)
                self._ready_pipes[process] = ready_r
                self.waiting.append(process)
                self.started += 1

    def is_warm(self, process: subprocess.Popen) -> bool:
        """Whether a waiting ``process`` has finished its imports (it wrote to its ready pipe)."""
        fd = self._ready_pipes.get(process)
        if fd is not None:
            try:
                signalled = os.read(fd, 1)
            except BlockingIOError:  # not yet
                return False
            # One byte: warm. End of file without it: the process exited (reap() counts that).
            del self._ready_pipes[process]
            os.close(fd)
            if signalled:
                self._warm.add(process)
        return process in self._warm

    def _forget(self, process: subprocess.Popen) -> None:
        """Drop ``process`` from the pool's books (handed out, or gone)."""
        if process in self.waiting:
            self.waiting.remove(process)
        self._warm.discard(process)
        fd = self._ready_pipes.pop(process, None)
        if fd is not None:
            os.close(fd)

    def reap(self) -> None:
        """Forget pooled processes that exited without being handed out (and count them as failures)."""
        for process in [p for p in self.waiting if p.poll() is not None]:
            self._forget(process)
            self._failures.append(time.monotonic())
            log.warning("a prewarmed process (pid %d) exited with %s while waiting; see %s", process.pid,
                        process.returncode, self.log_path)

    def take(self, hash_seed: str | None, order: dict[str, Any]) -> subprocess.Popen | None:
        """A waiting process, now turned into the replica ``order`` describes; None if none fits."""
        if hash_seed is not None and hash_seed != self.hash_seed:
            return None
        # Warm processes first: one still importing would make the replica wait for its imports.
        for process in sorted(self.waiting, key=lambda p: not self.is_warm(p)):
            self._forget(process)
            if process.poll() is not None:
                continue
            try:
                process.stdin.write(json.dumps(order).encode() + b"\n")
                process.stdin.close()
            except OSError:  # it died just now
                continue
            self.handed_out += 1
            self._refill_after = time.monotonic() + self.refill_delay
            return process
        return None

    def stop(self, grace: float = 3.0) -> None:
        processes = list(self.waiting)
        for process in processes:
            self._forget(process)
            with contextlib.suppress(OSError):  # already gone
                process.stdin.close()  # a waiting process exits when its stdin closes
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def view(self) -> dict[str, Any]:
        """``waiting``: processes started and not handed out; ``ready``: those of them that are warm."""
        return {"size": self.size, "waiting": len(self.waiting), "ready": sum(map(self.is_warm, self.waiting)),
                "started": self.started, "handed_out": self.handed_out, "pids": [p.pid for p in self.waiting]}


def pool_env(base: dict[str, str], hash_seed: str, drop: tuple[str, ...]) -> dict[str, str]:
    """The environment pooled processes start with: ``base`` minus ``drop``, with the pool's hash seed."""
    env = {k: v for k, v in base.items() if k not in drop}
    env["PYTHONHASHSEED"] = hash_seed
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env

