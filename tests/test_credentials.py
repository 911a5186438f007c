"""Credentials in cluster mode: each holder gets the narrowest token that does its job.

- Kernel code finds no cluster token in its environment or in any ancestor's (``/proc/PID/environ``).
- A kernel token touches its own kernel only, at the scheduler and at host daemons; a launcher token only places
  kernels; a host token only does what host daemons do.
- A request without a good token is refused before its body is read; malformed or too deeply nested JSON is a 400.
- A replica refuses to start without a Raft secret.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from .conftest import Kernel, stream_text
from .test_cluster import _up
from .test_scheduler_service import TOKEN, api, replica_body, start_scheduler, wait_hosts

SCAN = r"""
import os
def environ(pid):
    try:
        return open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        return ""
def parent(pid):
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
found, pid, chain = [], os.getpid(), []
while pid > 1:
    chain.append(pid)
    env = environ(pid)
    found += [(pid, t) for t in TOKENS if t in env]
    found += [(pid, "NOTEBOOKOS_SCHEDULER_TOKEN=") for _ in [0] if "NOTEBOOKOS_SCHEDULER_TOKEN=" in env]
    pid = parent(pid)
print(len(chain) > 2, found)
"""


@pytest.fixture
def cluster2(tmp_path_factory):
    yield from _up(tmp_path_factory, 2, 2)


def test_kernel_code_finds_no_cluster_token(cluster2):
    launcher = Path(cluster2["launcher_token_file"])
    # Started as JupyterLab under `notebookos up` starts kernels: with the launcher token's file, not a token.
    k = Kernel(env={"NOTEBOOKOS_SCHEDULER_TOKEN_FILE": str(launcher), "NOTEBOOKOS_SCHEDULER_TOKEN": ""})
    try:
        tokens = [cluster2["token"], launcher.read_text().strip()]
        reply, outputs = k.execute(f"TOKENS = {tokens!r}\n{SCAN}")
        assert reply["status"] == "ok", reply
        assert stream_text(outputs) == "True []\n", outputs
    finally:
        k.shutdown()


def _raw_post(url: str, path: str, headers: str, body: bytes = b"", read_timeout: float = 10.0) -> bytes:
    """Send a request by hand (so the body can be withheld) and return what the server answers first."""
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port), timeout=read_timeout) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\n{headers}\r\n".encode() + body)
        return sock.recv(65536)


def test_tokens_are_scoped(tmp_path):
    launcher, hosts = "launch-" + secrets.token_hex(8), "hosts-" + secrets.token_hex(8)
    scheduler, url = start_scheduler(tmp_path, "--replicas-per-kernel", "1",
                                     f"--SchedulerService.launcher_token={launcher}",
                                     f"--SchedulerService.host_token={hosts}")
    # As `notebookos up` starts host daemons: the hosts' token through a pipe, none in the environment.
    env = {k: v for k, v in os.environ.items() if k != "NOTEBOOKOS_SCHEDULER_TOKEN"}
    with open(tmp_path / "hostd.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "notebookos.scheduler.hostd", "--scheduler-url", url,
                                   "--host-id", "h1", "--virtual-gpus", "2", "--no-nvml", "--token-stdin",
                                   "--runtime-dir", str(tmp_path / "h1")], env=env, stdin=subprocess.PIPE,
                                  stdout=log, stderr=subprocess.STDOUT)
    daemon.stdin.write(f"{hosts}\n".encode())
    daemon.stdin.close()
    try:
        wait_hosts(url, {"h1"})
        placed = {}
        for kid in ("a", "b"):
            code, placed[kid] = api("POST", f"{url}/api/kernels", {"kernel_id": kid}, token=launcher)
            assert code == 201, placed[kid]
        ta, tb = placed["a"]["kernel_token"], placed["b"]["kernel_token"]
        assert ta != tb and TOKEN not in (ta, tb)
        # A kernel token: its own kernel, nothing else.
        assert api("POST", f"{url}/api/kernels/a/execute", {}, token=ta)[0] == 200
        assert api("POST", f"{url}/api/kernels/a/finished", {}, token=ta)[0] == 200
        for method, path in (("POST", "/api/kernels/b/execute"), ("GET", "/api/kernels/b"),
                             ("DELETE", "/api/kernels/b"), ("GET", "/api/kernels"), ("GET", "/api/status"),
                             ("GET", "/api/hosts"), ("POST", "/api/kernels")):
            code, answer = api(method, f"{url}{path}", {"kernel_id": "c"} if path == "/api/kernels" else None,
                               token=ta)
            assert code == 403, (method, path, code, answer)
        # The launcher token places kernels and does nothing else.
        for method, path in (("GET", "/api/kernels/a"), ("POST", "/api/kernels/a/execute"), ("GET", "/api/status")):
            assert api(method, f"{url}{path}", token=launcher)[0] == 403, (method, path)
        # The hosts' token: host business only.
        assert api("GET", f"{url}/api/hosts", token=hosts)[0] == 200
        assert api("POST", f"{url}/api/kernels", {"kernel_id": "d"}, token=hosts)[0] == 403
        assert api("POST", f"{url}/api/kernels/a/execute", {}, token=hosts)[0] == 403
        # At the host daemon, a kernel token launches and lists that kernel's replicas only.
        host_url = placed["a"]["replicas"][0]["host_url"]
        code, launched = api("POST", f"{host_url}/api/replicas", replica_body(tmp_path, "a", 1), token=ta)
        assert code == 201, launched
        assert api("POST", f"{host_url}/api/replicas", replica_body(tmp_path, "b", 1), token=ta)[0] == 403
        assert [r["kernel_id"] for r in api("GET", f"{host_url}/api/replicas", token=ta)[1]["replicas"]] == ["a"]
        assert api("GET", f"{host_url}/api/replicas", token=tb)[1]["replicas"] == []
        assert api("DELETE", f"{host_url}/api/replicas/a/1", token=tb)[0] == 403
        assert api("DELETE", f"{host_url}/api/replicas/a/1", token=ta)[0] == 200
        assert api("GET", f"{host_url}/api/gpus", token=ta)[0] == 403  # not a kernel's business
        # Forged: a token for kernel b made with another key.
        from notebookos.scheduler.http import kernel_token
        assert api("POST", f"{url}/api/kernels/b/execute", {}, token=kernel_token("guess", "b"))[0] == 403
    finally:
        daemon.terminate()
        daemon.wait(30)
        scheduler.stop()


def test_bodies_are_not_read_before_the_token_check_and_bad_json_is_a_400(tmp_path):
    scheduler, url = start_scheduler(tmp_path)
    try:
        # 90 MB announced, none sent: refused at the headers, not after buffering the body.
        started = time.monotonic()
        answer = _raw_post(url, "/api/kernels", "Content-Length: 94371840\r\nContent-Type: application/json\r\n")
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        assert time.monotonic() - started < 10
        # With the token, a body over the limit is a 413 (the server stops reading it and may close the
        # connection while the rest is still being sent).
        try:
            answer = _raw_post(url, "/api/kernels", f"Authorization: token {TOKEN}\r\nContent-Length: 94371840\r\n",
                               b"{" + b" " * (9 << 20))
        except (ConnectionResetError, BrokenPipeError):
            answer = b"HTTP/1.1 413 (connection closed while sending)"
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        nested = b"[" * 100_000 + b"]" * 100_000
        code, answer = api("POST", f"{url}/api/kernels", raw=nested)
        assert code == 400 and "nested too deeply" in answer["error"], answer
        code, answer = api("POST", f"{url}/api/kernels", raw=b'{"kernel_id": ')
        assert code == 400 and "malformed JSON" in answer["error"], answer
    finally:
        scheduler.stop()


def test_a_replica_refuses_to_start_without_a_raft_secret(tmp_path):
    body = replica_body(tmp_path)
    conn, config = tmp_path / "conn.json", tmp_path / "config.json"
    conn.write_text(json.dumps(body["connection"]))
    config.write_text(json.dumps({"ReplicaKernel": {**body["config"], "replica_id": 1}}))
    env = {k: v for k, v in os.environ.items() if k != "NOTEBOOKOS_RAFT_SECRET"}
    proc = subprocess.run([sys.executable, "-m", "notebookos.kernel.replica", "-f", str(conn), "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "NOTEBOOKOS_RAFT_SECRET is not set" in proc.stderr, proc.stderr[-2000:]
