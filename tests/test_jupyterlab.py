"""`notebookos lab` end to end: a real JupyterLab server, the replicated kernel driven over its kernel websocket.

This is the path the JupyterLab front end takes: REST to create a session, then the multiplexed websocket for the
Jupyter messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from tornado.websocket import websocket_connect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-root")
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "notebookos", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"notebookos lab did not start:\n{out}") from None
            time.sleep(0.3)
    yield base, token
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _api(base, token, path, method="GET", body=None):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"},
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def test_lab_serves_the_replicated_kernel_as_default(lab):
    base, token = lab
    specs = _api(base, token, "/api/kernelspecs")
    assert specs["default"] == "notebookos"
    assert specs["kernelspecs"]["notebookos"]["spec"]["display_name"] == "Python 3 (replicated)"
    with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=30) as resp:
        assert resp.status == 200 and b"JupyterLab" in resp.read()


async def _exchange(ws, session: str, msg_type: str, content: dict, channel: str = "shell") -> tuple[dict, list]:
    msg_id = uuid.uuid4().hex
    msg = {"header": {"msg_id": msg_id, "msg_type": msg_type, "session": session, "username": "test",
                      "version": "5.4", "date": "2026-01-01T00:00:00Z"},
           "parent_header": {}, "metadata": {}, "content": content, "buffers": [], "channel": channel}
    await ws.write_message(json.dumps(msg))
    reply, iopub, idle = None, [], False
    while reply is None or not idle:
        raw = await asyncio.wait_for(ws.read_message(), 60)
        assert raw is not None, "websocket closed"
        m = json.loads(raw)
        if m.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if m["channel"] == "iopub":
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                idle = True
            elif m["msg_type"] != "status":
                iopub.append(m)
        elif m["channel"] == channel:
            reply = m
    return reply, iopub


def test_a_notebook_session_runs_cells_over_the_websocket(lab):
    base, token = lab
    session = _api(base, token, "/api/sessions", "POST",
                   {"path": "demo.ipynb", "type": "notebook", "name": "demo.ipynb", "kernel": {"name": "notebookos"}})
    kernel_id = session["kernel"]["id"]

    async def drive():
        ws = await websocket_connect(f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels"
                                     f"?token={token}&session_id={uuid.uuid4().hex}")
        sid = uuid.uuid4().hex
        info, _ = await _exchange(ws, sid, "kernel_info_request", {})
        assert info["content"]["status"] == "ok"
        assert "kernel subshells" not in info["content"].get("supported_features", [])
        # The first cell may run before the last replica (not needed for a majority) has started: wait for it.
        deadline = time.monotonic() + 30
        while True:
            reply, out = await _exchange(ws, sid, "execute_request", {"code": "import notebookos.kernel\n"
                                         "n = len(notebookos.kernel.replicas())\nprint('replicas', n)",
                                         "silent": False})
            assert reply["content"]["status"] == "ok"
            text = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream")
            if text == "replicas 3\n" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert text == "replicas 3\n"
        reply, out = await _exchange(ws, sid, "execute_request", {"code": "n * 14", "silent": False})
        assert [m["content"]["data"]["text/plain"] for m in out if m["msg_type"] == "execute_result"] == ["42"]
        ws.close()

    asyncio.run(drive())
    # Lab's restart button: the kernel comes back and runs cells (with fresh state).
    _api(base, token, f"/api/kernels/{kernel_id}/restart", "POST", {})

    async def after_restart():
        ws = await websocket_connect(f"{base.replace('http', 'ws')}/api/kernels/{kernel_id}/channels?token={token}")
        reply, out = await _exchange(ws, uuid.uuid4().hex, "execute_request",
                                     {"code": "print('n' in dir())", "silent": False})
        assert "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream") == "False\n"
        ws.close()

    asyncio.run(after_restart())
    _api(base, token, f"/api/sessions/{session['id']}", "DELETE")
