"""``notebookos up``: a whole cluster on this machine, then JupyterLab.

Starts the scheduler, ``--hosts`` host daemons with ``--gpus-per-host`` virtual GPUs each, waits until every host
registered, and runs JupyterLab with the ``notebookos`` kernel as the default for new notebooks and
``NOTEBOOKOS_SCHEDULER_URL`` / ``NOTEBOOKOS_SCHEDULER_TOKEN`` in the environment its kernels inherit.

A host daemon that dies (killed, crashed) does not stop the cluster: ``up`` logs it and starts it again on the same
port with the same host id (``--no-restart-hosts``: leaves it down). The scheduler then drops the old record and
its replicas; each kernel's front notices its lost replica and asks the scheduler where to place a replacement.
The scheduler or JupyterLab exiting stops the cluster.

Every child runs in its own process group and gets SIGTERM if this process dies (``PR_SET_PDEATHSIG``). Ctrl-C
(SIGINT) or SIGTERM stops JupyterLab first (it shuts its kernels down), then the host daemons (each stops its
replicas and deregisters), then the scheduler, each with SIGTERM and a grace period and then SIGKILL to its whole
process group; a second Ctrl-C skips the grace periods. The cluster's URL, token and pids are written to
``RUNTIME_DIR/cluster.json`` (mode 0600).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..common.secrets import (
    SCHEDULER_TOKEN_ENV,
    SCHEDULER_TOKEN_FILE_ENV,
    SCHEDULER_URL_ENV,
    write_private_json,
)
from ..parentdeath import term_with_parent

#: A host daemon that died is restarted at most this many times within the window, then left down.
HOST_RESTARTS = 5
HOST_RESTART_WINDOW_S = 300.0


class Stop(Exception):
    """Ctrl-C / SIGTERM while starting up."""


class Child:
    def __init__(self, name: str, cmd: list[str], log_path: Path | None, env: dict[str, str],
                 secret: str | None = None):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.secret = secret
        out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if secret else subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT if out else None, process_group=0,
                                            preexec_fn=term_with_parent)
        finally:
            if out:
                out.close()
        if secret:
            # Through a pipe: in no environment (kernel code runs as the same user and could read it there).
            self.process.stdin.write(secret.encode() + b"\n")
            self.process.stdin.close()
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float) -> None:
        """SIGTERM, wait ``grace``, then SIGKILL the whole process group (stragglers included)."""
        if self.alive():
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


class Cluster:
    """The processes ``notebookos up`` started, stopped in reverse order of importance."""

    def __init__(self) -> None:
        self.scheduler: Child | None = None
        self.hosts: list[Child] = []
        self.lab: Child | None = None
        self.stop_requested = 0
        self.restarts: dict[str, list[float]] = {}  # host daemon name -> when it was restarted
        self.down: list[Child] = []  # host daemons that died and were left down

    def restart_host(self, dead: Child, info_file: Path) -> Child | None:
        """Start ``dead`` again on its old port (its URL is the scheduler's key for it); None once it has been
        restarted too often lately, or if its port is unknown."""
        now = time.monotonic()
        recent = [t for t in self.restarts.get(dead.name, []) if now - t < HOST_RESTART_WINDOW_S]
        if len(recent) >= HOST_RESTARTS:
            return None
        try:
            port = json.loads(info_file.read_text())["url"].rsplit(":", 1)[1].rstrip("/")
        except (OSError, ValueError, KeyError, IndexError):
            return None
        cmd = [a for a in dead.cmd]
        if "--port" in cmd:
            cmd[cmd.index("--port") + 1] = port
        else:
            cmd += ["--port", port]
        self.restarts[dead.name] = [*recent, now]
        dead.stop(0)  # reap it, and anything of its process group still there (its replicas die with it)
        new = Child(dead.name, cmd, dead.log_path, dead.env, dead.secret)
        self.hosts[self.hosts.index(dead)] = new
        return new

    def children(self) -> list[Child]:
        return [c for c in (self.lab, *self.hosts, self.scheduler) if c is not None]

    def dead_child(self) -> Child | None:
        return next((c for c in self.children() if not c.alive()), None)

    def check(self) -> None:
        if self.stop_requested:
            raise Stop
        dead = self.dead_child()
        if dead is not None:
            raise RuntimeError(f"{dead.name} exited with {dead.process.returncode} while starting:\n{dead.log_tail()}")

    def shutdown(self) -> None:
        fast = lambda: self.stop_requested > 1  # noqa: E731 - a second Ctrl-C skips the grace periods
        if self.lab is not None:
            self.lab.stop(0 if fast() else 15.0)
        for host in self.hosts:  # SIGTERM to all first: they stop their replicas in parallel
            if host.alive():
                try:
                    host.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for host in self.hosts:
            host.stop(0 if fast() else 10.0)
        for host in self.down:
            host.stop(0)
        if self.scheduler is not None:
            self.scheduler.stop(0 if fast() else 10.0)


def _get_json(url: str, token: str, timeout: float = 2.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own http:// URL
        return json.loads(response.read())


def _wait_for(cluster: Cluster, predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        cluster.check()
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _ensure_kernelspec() -> None:
    from notebookos import kernelspec as ks

    if ks.find_kernelspec():
        return
    from notebookos.cli import default_install_scope

    user = default_install_scope() == "user"
    path = ks.install_kernelspec(user=user, prefix=None if user else sys.prefix)
    print(f"Installed kernelspec '{ks.KERNEL_NAME}' in {path}", flush=True)


def _route_options(extra: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Split ``up``'s unlisted arguments: ``--SchedulerService.x=v`` and the bundled policies' ``--NotebookOSPolicy.x=v``
    (``--ReservationPolicy``, ``--BatchPolicy``; another policy's or a provider's own ``--<Class>.x=v`` given as
    ``--scheduler:<Class>.x=v``) go to the scheduler, ``--HostDaemon.x=v`` to every host
    daemon, the rest to JupyterLab."""
    lab, scheduler, hostd = [], [], []
    for arg in extra:
        if arg == "--oversubscription" or arg.startswith("--oversubscription="):
            raise SystemExit("notebookos up: --oversubscription is gone; the GPU subscription cap is the policy's: "
                             "--NotebookOSPolicy.max_subscription_ratio=N")
        if arg.startswith(("--SchedulerService.", "--NotebookOSPolicy.", "--ReservationPolicy.", "--BatchPolicy.")):
            scheduler.append(arg)
        elif arg.startswith("--scheduler:"):
            scheduler.append("--" + arg[len("--scheduler:"):])
        elif arg.startswith("--HostDaemon."):
            hostd.append(arg)
        else:
            lab.append(arg)
    return lab, scheduler, hostd


def up(args: argparse.Namespace) -> int:
    if args.hosts < 1:
        raise SystemExit("notebookos up: --hosts must be >= 1")
    if args.gpus_per_host < 0:
        raise SystemExit("notebookos up: --gpus-per-host must be >= 0")
    max_hosts = args.max_hosts if args.max_hosts is not None else args.hosts
    if max_hosts < args.hosts:
        raise SystemExit("notebookos up: --max-hosts must be >= --hosts")
    own_dir = not args.runtime_dir
    runtime = Path(args.runtime_dir or tempfile.mkdtemp(prefix="notebookos-up-")).resolve()
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Three credentials, each as narrow as its holder: the admin token stays here and in the scheduler (and in
    # cluster.json, mode 0600, for the admin); host daemons get the hosts' token; JupyterLab a launcher token that
    # only places kernels, each of which then gets a token for itself alone. Tokens travel through pipes and a
    # 0600 file, never environments that kernel code inherits or could read in an ancestor's /proc/PID/environ.
    token, host_token, launcher_token = (secrets.token_hex(24) for _ in range(3))
    env = {k: v for k, v in os.environ.items() if k not in (SCHEDULER_TOKEN_ENV, SCHEDULER_TOKEN_FILE_ENV)}
    py = sys.executable
    cluster = Cluster()

    def on_signal(signum: int, frame: Any) -> None:
        cluster.stop_requested += 1
        if cluster.stop_requested == 1:
            print("\nnotebookos up: stopping (Ctrl-C again to kill at once)", file=sys.stderr, flush=True)

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        info_file = runtime / "scheduler.json"
        cmd = [py, "-m", "notebookos.scheduler.service", "--ip", "127.0.0.1", "--port", str(args.scheduler_port),
               "--info-file", str(info_file), "--policy", args.policy, "--max-hosts", str(max_hosts),
               "--host-gpus", str(args.gpus_per_host), "--min-hosts", str(args.hosts),
               f"--LocalHostProvider.runtime_dir={runtime / 'scaled'}"]
        if args.replicas_per_kernel is not None:
            cmd += ["--replicas-per-kernel", str(args.replicas_per_kernel)]
        if args.prewarm:
            cmd += ["--prewarm-pool-size", str(args.prewarm)]
        extra, scheduler_extra, hostd_extra = _route_options(args.extra or [])
        args.extra = extra
        cmd += scheduler_extra
        cmd += ["--SchedulerService.tokens_stdin=True"]
        cluster.scheduler = Child("scheduler", cmd, runtime / "scheduler.log", env, json.dumps(
            {"token": token, "host_token": host_token, "launcher_token": launcher_token}))
        info = _wait_for(cluster, lambda: info_file.exists() and json.loads(info_file.read_text()), 30.0,
                         "the scheduler to listen")
        url = info["url"]
        for i in range(1, args.hosts + 1):
            cluster.hosts.append(Child(f"host daemon host-{i}", [
                py, "-m", "notebookos.scheduler.hostd", "--scheduler-url", url, "--host-id", f"host-{i}",
                "--virtual-gpus", str(args.gpus_per_host), "--no-nvml", "--runtime-dir", str(runtime / f"host-{i}"),
                "--info-file", str(runtime / f"host-{i}.json"), "--token-stdin", *hostd_extra,
            ], runtime / f"host-{i}.log", env, host_token))

        def registered() -> list[dict] | None:
            try:
                hosts = _get_json(f"{url}/api/hosts", token)["hosts"]
            except OSError:
                return None
            return hosts if len(hosts) >= args.hosts else None

        hosts = _wait_for(cluster, registered, 60.0, f"{args.hosts} host(s) to register")
        host_ids = [h["id"] for h in hosts]
        # For JupyterLab (below, or one started by hand with $NOTEBOOKOS_SCHEDULER_TOKEN_FILE pointing here).
        launcher_file = runtime / "launcher.token"
        fd = os.open(launcher_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(launcher_token)

        def write_info() -> None:
            write_private_json(runtime / "cluster.json", {
                "url": url, "token": token, "runtime_dir": str(runtime), "pid": os.getpid(),
                "scheduler_pid": cluster.scheduler.pid, "host_pids": [h.pid for h in cluster.hosts],
                "hosts": host_ids, "host_token": host_token, "launcher_token_file": str(launcher_file)})

        write_info()
        print(f"notebookos cluster ready: scheduler {url} ({args.policy} policy), {len(hosts)} host(s) x "
              f"{args.gpus_per_host} virtual GPU(s); token and pids in {runtime / 'cluster.json'}", flush=True)

        if not args.no_lab:
            _ensure_kernelspec()
            lab_env = {**env, SCHEDULER_URL_ENV: url, SCHEDULER_TOKEN_FILE_ENV: str(launcher_file)}
            from notebookos.cli import prepare_lab

            cmd = prepare_lab(args.extra or [], getattr(args, "notebook_dir", None), "notebookos up")
            cluster.lab = Child("JupyterLab", cmd, None, lab_env)

        while not cluster.stop_requested:
            dead = cluster.dead_child()
            if dead is not None:
                if dead in cluster.hosts:
                    name = dead.name.rsplit(" ", 1)[-1]
                    code = dead.process.returncode
                    new = cluster.restart_host(dead, runtime / f"{name}.json") if args.restart_hosts else None
                    if new is not None:
                        print(f"notebookos up: {dead.name} exited with {code}; restarted it (pid {new.pid}); its "
                              "kernels replace the replicas they lost there", file=sys.stderr, flush=True)
                        write_info()
                        continue
                    print(f"notebookos up: {dead.name} exited with {code}; left down (log: {dead.log_path}); the "
                          "cluster runs on without it", file=sys.stderr, flush=True)
                    dead.stop(0)
                    cluster.hosts.remove(dead)
                    cluster.down.append(dead)
                    write_info()
                    continue
                if dead is cluster.lab:
                    status = dead.process.returncode or 0
                    print(f"notebookos up: JupyterLab exited ({status}); stopping the cluster", file=sys.stderr)
                else:
                    status = 1
                    print(f"notebookos up: {dead.name} exited with {dead.process.returncode}; stopping:\n"
                          f"{dead.log_tail()}", file=sys.stderr)
                break
            time.sleep(0.2)
    except Stop:
        pass
    except RuntimeError as exc:
        print(f"notebookos up: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        cluster.shutdown()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if own_dir and status == 0:
            shutil.rmtree(runtime, ignore_errors=True)
        elif status:
            print(f"notebookos up: logs are in {runtime}", file=sys.stderr)
    print("notebookos up: stopped", file=sys.stderr, flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    from .app_cli import up_main

    return up_main(argv)


if __name__ == "__main__":
    sys.exit(main())
