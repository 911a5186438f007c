"""The Quick start as people run it: `notebookos up` and `notebookos lab` start a JupyterLab that works as root,
serves the directory asked for, makes the replicated kernel the one new notebooks start; and the kernel's front
logs to a file, not onto the terminal of the client that started it. Real processes throughout.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from notebookos.kernel.front.app import front_log_path

from .conftest import Kernel, stream_text
from .test_failover import executor_of, kill_replica

TRACKER = "@jupyterlab/notebook-extension:tracker"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, token: str, path: str):
    request = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a local test server
        return json.loads(response.read())


def _start_lab(tmp_path: Path, command: list[str], stop: signal.Signals):
    """Run ``notebookos COMMAND...`` with JupyterLab options (and no --allow-root), wait until Lab answers; yield
    (base URL, token, notebook dir, Lab settings dir, output file)."""
    notebook_dir = tmp_path / "notebooks"
    notebook_dir.mkdir()
    (notebook_dir / "hello-quickstart.txt").write_text("hi\n")
    settings = tmp_path / "lab-settings"  # not the real JupyterLab's: the overrides land here
    port, token = _free_port(), secrets.token_hex(16)
    out = tmp_path / "output.log"
    cmd = [sys.executable, "-m", "notebookos", *command, "--notebook-dir", str(notebook_dir), "--no-browser",
           f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--LabApp.app_settings_dir={settings}"]
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                status = _get(base, token, "/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(command)} did not start JupyterLab:\n"
                                       f"{out.read_text(errors='replace')}") from None
                time.sleep(0.5)
        assert "started" in status
        yield base, token, notebook_dir, settings, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, stop)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def up_lab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart-up")
    yield from _start_lab(tmp, ["up", "--hosts", "1", "--gpus-per-host", "1", "--runtime-dir", str(tmp / "runtime")],
                          signal.SIGINT)


@pytest.fixture(scope="module")
def plain_lab(tmp_path_factory):
    yield from _start_lab(tmp_path_factory.mktemp("quickstart-lab"), ["lab"], signal.SIGTERM)


@pytest.fixture(params=["up", "lab"])
def lab(request):
    return request.getfixturevalue("up_lab" if request.param == "up" else "plain_lab")


def test_lab_starts_as_root_without_allow_root(lab):
    """Lab answered /api/status in the fixture; as root that takes the --allow-root `notebookos` adds itself."""
    _, _, _, _, out = lab
    text = out.read_text(errors="replace")
    if AS_ROOT:
        assert "running as root: starting JupyterLab with --allow-root" in text, text


def test_new_notebooks_start_the_replicated_kernel(lab):
    base, token, _, settings, _ = lab
    specs = _get(base, token, "/api/kernelspecs")
    assert specs["default"] == "notebookos", specs["default"]
    assert specs["kernelspecs"]["notebookos"]["spec"]["display_name"] == "Python 3 (replicated)"
    # File > New > Notebook names no kernel; JupyterLab 4 then starts the server's default only with the notebook
    # tracker's autoStartDefaultKernel on (else its dialog preselects the first kernel by name, the plain one).
    assert json.loads((settings / "overrides.d" / "notebookos.json").read_text()) == {
        TRACKER: {"autoStartDefaultKernel": True}}
    served = _get(base, token, f"/lab/api/settings/{TRACKER}")
    assert served["schema"]["properties"]["autoStartDefaultKernel"]["default"] is True


def test_lab_serves_the_notebook_dir(lab):
    base, token, notebook_dir, _, out = lab
    listing = _get(base, token, "/api/contents")
    assert "hello-quickstart.txt" in [item["name"] for item in listing["content"]], listing
    assert f"JupyterLab serves {notebook_dir}" in out.read_text(errors="replace")


def test_notebook_dir_must_exist(tmp_path):
    for command in (["lab"], ["up", "--no-lab"]):
        proc = subprocess.run([sys.executable, "-m", "notebookos", *command, "--notebook-dir",
                               str(tmp_path / "missing")], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 2 and "not a directory" in proc.stderr, proc.stderr


def test_front_warnings_go_to_its_log_file_not_to_stderr(tmp_path):
    """A replica SIGKILLed: the front's warning is in its log file; the kernel process's stderr (the terminal
    under `jupyter console`) stays empty."""
    stderr_path = tmp_path / "kernel-stderr"
    k = Kernel.__new__(Kernel)  # the conftest helper, on a kernel started with its stderr captured
    k.km = KernelManager(kernel_name="notebookos")
    k.km.connection_file = str(tmp_path / "kernel-quickstart.json")
    log_path = front_log_path(k.km.connection_file)
    with open(stderr_path, "wb") as stderr:
        k.km.start_kernel(stderr=stderr)
    k.client = k.km.client()
    k.client.start_channels()
    try:
        k.client.wait_for_ready(timeout=90)
        reply, _ = k.execute("x = 1")
        assert reply["status"] == "ok", reply
        victim = executor_of(k)
        pid = kill_replica(k, victim)
        warning = f"replica {victim} (pid {pid}) exited with -9"
        k.wait_for(lambda: log_path.exists() and warning in log_path.read_text(), timeout=60,
                   what=f"{warning!r} in {log_path}")
        reply, outputs = k.execute("print(x)")
        assert reply["status"] == "ok" and stream_text(outputs) == "1\n", (reply, outputs)
        assert stderr_path.read_text() == ""
    finally:
        k.shutdown()
    assert stderr_path.read_text() == ""
    assert "WARNING" in log_path.read_text()  # kept after the kernel ended: it is not empty
