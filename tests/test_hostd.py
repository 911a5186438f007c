"""The host daemon: real replica processes launched and stopped over its REST API; shutdown; `notebookos up`."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

from tests.test_scheduler_service import (
    REPO,
    Proc,
    api,
    ok,
    pid_alive,
    pids_with,
    replica_body,
    start_hostd,
    start_scheduler,
    wait_for,
    wait_hosts,
)


def kernel_info(connection: dict, pid: int, log: Path, timeout: float = 30.0) -> dict:
    """The kernel_info reply content of the kernel at ``connection``, run by process ``pid``, which may be starting.

    Not ``wait_for_ready``: a client without a KernelManager judges a kernel by heartbeats, and takes one that has not
    bound its heartbeat port within ``time_to_dead`` (1 s) of ``start_channels`` for dead. A replica that is still
    importing on a busy host takes longer than that. The request waits in the client's queue until the kernel listens;
    whether the kernel died is read from its process instead.
    """
    client = BlockingKernelClient()
    client.load_connection_info(connection)
    client.start_channels(hb=False)
    try:
        msg_id = client.kernel_info()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert pid_alive(pid), f"the replica (pid {pid}) died before replying to kernel_info:\n{log.read_text()}"
            try:
                reply = client.get_shell_msg(timeout=0.5)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]
        raise TimeoutError(f"no kernel_info reply from the replica (pid {pid}) in {timeout}s:\n{log.read_text()}")
    finally:
        client.stop_channels()


@pytest.fixture
def hostd(tmp_path):
    """A host daemon without a scheduler, 2 virtual GPUs."""
    info = tmp_path / "hostd.json"
    proc = Proc(["-m", "notebookos.scheduler.hostd", "--virtual-gpus", "2", "--no-nvml", "--host-id", "solo",
                 "--info-file", str(info), "--runtime-dir", str(tmp_path / "run")], tmp_path / "hostd.log")
    try:
        wait_for(lambda: info.exists() or proc.popen.poll() is not None, 20, "the host daemon")
        assert info.exists(), proc.output()
        yield json.loads(info.read_text())["url"], proc
    finally:
        proc.stop()


def test_gpus_and_bad_input(hostd, tmp_path):
    url, _ = hostd
    gpus = ok("GET", f"{url}/api/gpus")
    assert gpus["host_id"] == "solo" and [g["index"] for g in gpus["gpus"]] == [0, 1]
    assert all(g["virtual"] for g in gpus["gpus"])
    assert api("GET", f"{url}/api/gpus", token=None)[0] == 403
    assert api("POST", f"{url}/api/replicas", replica_body(tmp_path), token="nope")[0] == 403

    def bad(body=None, raw=None) -> str:
        code, answer = api("POST", f"{url}/api/replicas", body, raw=raw)
        assert code == 400, (body, code, answer)
        return answer["error"]

    assert "malformed JSON" in bad(raw=b"{nope")
    body = replica_body(tmp_path)
    assert "'connection'" in bad({k: v for k, v in body.items() if k != "connection"})
    assert "'raft_secret'" in bad({**body, "raft_secret": ""})
    assert "'kernel_id'" in bad({**body, "kernel_id": "../etc"})
    assert "'replica_id'" in bad({**body, "replica_id": "one"})
    assert "'connection.shell_port'" in bad({**body, "connection": {**body["connection"], "shell_port": 70000}})
    assert "'connection.key'" in bad({**body, "connection": {k: v for k, v in body["connection"].items()
                                                              if k != "key"}})
    assert "'config'" in bad({**body, "config": [1]})
    assert "'hash_seed'" in bad({**body, "hash_seed": -1})
    code, answer = api("DELETE", f"{url}/api/replicas/k1/7")
    assert code == 404 and "no replica 7" in answer["error"]
    assert ok("GET", f"{url}/api/replicas")["replicas"] == []


def test_launch_and_stop_replica(hostd, tmp_path):
    url, _ = hostd
    body = replica_body(tmp_path)
    launched = ok("POST", f"{url}/api/replicas", body, 201)
    pid = launched["pid"]
    assert launched["kernel_id"] == "k1" and launched["replica_id"] == 1 and pid_alive(pid)
    assert f"-m notebookos.kernel.replica -f {tmp_path / 'run' / 'kernel-k1' / 'replica-1.json'}" in \
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"NOTEBOOKOS_RAFT_SECRET={body['raft_secret']}".encode() in env and b"PYTHONHASHSEED=1234" in env
    assert not any(e.startswith(b"NOTEBOOKOS_SCHEDULER_TOKEN=") for e in env)  # user code must not see it
    assert b"CUDA_DEVICE_ORDER=PCI_BUS_ID" in env  # device ids are NVML indices
    conn_file = tmp_path / "run" / "kernel-k1" / "replica-1.json"
    assert conn_file.stat().st_mode & 0o777 == 0o600

    code, answer = api("POST", f"{url}/api/replicas", body)
    assert code == 409 and "already running" in answer["error"]
    [listed] = ok("GET", f"{url}/api/replicas")["replicas"]
    assert listed["pid"] == pid and listed["alive"] is True and listed["exit_code"] is None

    # It is a working kernel: it answers kernel_info on the connection we gave.
    assert kernel_info(body["connection"], pid, Path(launched["log"]))["status"] == "ok"

    stopped = ok("DELETE", f"{url}/api/replicas/k1/1")
    assert stopped["pid"] == pid and stopped["exit_code"] is not None
    assert not pid_alive(pid) and not Path(f"/proc/{pid}").exists()  # reaped, not a zombie
    assert not conn_file.exists()
    assert ok("GET", f"{url}/api/replicas")["replicas"] == []


def test_prewarmed_processes_become_replicas(tmp_path):
    info = tmp_path / "hostd.json"
    proc = Proc(["-m", "notebookos.scheduler.hostd", "--virtual-gpus", "1", "--no-nvml", "--host-id", "warm",
                 "--prewarm", "2", "--info-file", str(info), "--runtime-dir", str(tmp_path / "run")],
                tmp_path / "hostd.log")
    try:
        wait_for(lambda: info.exists() or proc.popen.poll() is not None, 20, "the host daemon")
        url = json.loads(info.read_text())["url"]
        # Warm: imports done (a process counts as waiting from the moment it is started).
        pool = wait_for(lambda: (p := ok("GET", f"{url}/api/replicas")["prewarm"])["ready"] == 2 and p, 20,
                        "two prewarmed processes")
        assert pool["waiting"] == 2
        waiting = set(pool["pids"])
        seed = int(Path(f"/proc/{min(waiting)}/environ").read_bytes().split(b"PYTHONHASHSEED=")[1].split(b"\0")[0])

        # A request with the pool's seed gets a waiting process, which becomes a working replica.
        body = {**replica_body(tmp_path, "kw"), "hash_seed": seed}
        launched = ok("POST", f"{url}/api/replicas", body, 201)
        pid = launched["pid"]
        assert pid in waiting
        assert kernel_info(body["connection"], pid, Path(launched["log"]))["status"] == "ok"
        assert "notebookos.kernel.replica" not in Path(f"/proc/{pid}/cmdline").read_text()  # not a fresh start
        assert (tmp_path / "run" / "kernel-kw" / "replica-1.log").exists()
        # The pool refills; a request with another seed cannot use it and gets a fresh process.
        pool = wait_for(lambda: (p := ok("GET", f"{url}/api/replicas")["prewarm"])["waiting"] == 2 and p, 20,
                        "the pool to refill")
        assert pool["handed_out"] == 1 and pid not in pool["pids"]
        other = ok("POST", f"{url}/api/replicas", {**replica_body(tmp_path, "kx"), "hash_seed": seed + 1}, 201)
        assert other["pid"] not in set(pool["pids"]) | waiting
        ok("DELETE", f"{url}/api/replicas/kw/1")
        ok("DELETE", f"{url}/api/replicas/kx/1")
        everything = [pid, *pool["pids"]]
        assert proc.stop(signal.SIGTERM) == 0, proc.output()
        assert not any(pid_alive(p) for p in everything)  # waiting processes go with the daemon
    finally:
        proc.stop()


def test_shutdown_stops_replicas_and_deregisters(tmp_path):
    scheduler, url = start_scheduler(tmp_path)
    host = start_hostd(tmp_path, url, "d1", 1, "--stop-grace", "1")
    try:
        [view] = wait_hosts(url, {"d1"})
        pid = ok("POST", f"{view['url']}/api/replicas", replica_body(tmp_path, "k2"), 201)["pid"]
        wait_for(lambda: ok("GET", f"{view['url']}/api/replicas")["replicas"][0]["uptime_s"] > 0.5, 10, "uptime")
        assert pid_alive(pid)
        assert host.stop(signal.SIGTERM) == 0, host.output()
        assert not pid_alive(pid)
        assert ok("GET", f"{url}/api/hosts")["hosts"] == []
        assert "deregistered" in host.output()
    finally:
        host.stop()
        scheduler.stop()


def test_hostd_exits_when_registration_is_refused(tmp_path):
    scheduler, url = start_scheduler(tmp_path)
    try:
        proc = Proc(["-m", "notebookos.scheduler.hostd", "--scheduler-url", url, "--virtual-gpus", "1",
                     "--no-nvml"], tmp_path / "bad.log", env={"NOTEBOOKOS_SCHEDULER_TOKEN": "wrong"})
        assert proc.popen.wait(20) == 1
        assert "could not register" in proc.output() and "403" in proc.output()
    finally:
        scheduler.stop()


def test_up_no_lab_leaves_nothing_behind(tmp_path):
    runtime = tmp_path / "up"
    up = subprocess.Popen([sys.executable, "-m", "notebookos.scheduler.up", "--no-lab", "--hosts", "2",
                           "--gpus-per-host", "1", "--policy", "tests.test_scheduler_service:TinyPolicy",
                           "--replicas-per-kernel", "2", "--runtime-dir", str(runtime)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    recorded: list[int] = []
    try:
        line = ""
        deadline = time.monotonic() + 30
        while "cluster ready" not in line and time.monotonic() < deadline:
            line = up.stdout.readline()
            assert line or up.poll() is None, "up exited early"
        assert "cluster ready" in line, line
        info = json.loads((runtime / "cluster.json").read_text())
        assert (runtime / "cluster.json").stat().st_mode & 0o777 == 0o600
        url, token = info["url"], info["token"]
        recorded = [info["scheduler_pid"], *info["host_pids"]]
        assert all(pid_alive(p) for p in recorded)
        code, status = api("GET", f"{url}/api/status", token=token)
        assert code == 200 and status["hosts"] == 2 and status["gpus"]["online"] == 2
        assert api("GET", f"{url}/api/status")[0] == 403  # its own random token, not ours
        code, placed = api("POST", f"{url}/api/kernels", {"kernel_id": "kup"}, token=token)
        assert code == 201 and len(placed["replicas"]) == 2
        # A replica launched through one of its hosts must go too.
        host_url = placed["replicas"][0]["host_url"]
        # As a front does: with the kernel's own token, which the placement answered with.
        code, launched = api("POST", f"{host_url}/api/replicas", replica_body(tmp_path, "kup"),
                             token=placed["kernel_token"])
        assert code == 201, launched
        recorded.append(launched["pid"])
        assert len(pids_with(str(runtime))) >= 4  # scheduler, 2 hosts, the replica
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    wait_for(lambda: not any(pid_alive(p) for p in recorded), 5, "every process up started to exit")
    assert not pids_with(str(runtime))


def test_hostd_command_line_is_the_applications_aliases_and_flags(tmp_path):
    """`notebookos hostd --help` lists the daemon's options with the help of the traits they set; an option sets
    its trait (one name, one place), and a config file loads with the command line winning over it."""
    help_text = subprocess.run([sys.executable, "-m", "notebookos", "hostd", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    for option, trait in (("--scheduler-url", "HostDaemon.scheduler_url"), ("--store-root", "HostDaemon.store_root"),
                          ("--token-stdin", "HostDaemon.token_stdin"), ("--no-nvml", "HostDaemon.use_nvml")):
        assert option in help_text and trait in help_text, (option, help_text[:2000])
    from notebookos.scheduler.hostd import HostDaemon

    config = tmp_path / "hostd_config.json"
    config.write_text(json.dumps({"HostDaemon": {"heartbeat_interval": 2.5, "stop_grace": 7.0}}))
    app = HostDaemon()
    app.initialize(["--port", "0", "--no-nvml", "--virtual-gpus=3", f"--config={config}", "--stop-grace=1"])
    assert (app.port, app.use_nvml, app.virtual_gpus) == (0, False, 3)
    assert app.heartbeat_interval == 2.5 and app.stop_grace == 1.0
