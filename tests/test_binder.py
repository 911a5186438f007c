"""Binder (``binder/``): repo2docker builds from it (checked without Docker: ``--no-build --debug`` prints the
Dockerfile it would build), and ``binder/start`` runs the demo notebook on its background cluster within Binder's
memory (1.5 GB here; mybinder.org gives 2 GB), showing GPU binding and a failover."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
RSS_LIMIT = 1.5 * 2**30


def test_repo2docker_builds_from_the_binder_folder():
    pytest.importorskip("repo2docker")
    proc = subprocess.run([sys.executable, "-m", "repo2docker", "--no-build", "--debug", "--no-run", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "python=3.12" in out  # runtime.txt (repo2docker's default would be older)
    install = 'pip install --no-cache-dir -r "binder/requirements.txt"'
    assert install in out
    assert out.index("COPY --chown=0:0 src/ ") < out.index(install)  # the local requirement (.) installs from the copy
    assert "RUN ./binder/postBuild" in out
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in out


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that exited since the listing counts nothing
            total += p.memory_info().rss
    return total


def test_the_demo_runs_on_the_binder_cluster_within_binders_memory(tmp_path):
    out = tmp_path / "demo_out"
    env = {**os.environ, "NOTEBOOKOS_BINDER_RUNTIME": str(tmp_path / "runtime")}
    env.pop("NOTEBOOKOS_SCHEDULER_URL", None)
    proc = subprocess.Popen(["bash", str(BINDER / "start"), sys.executable, "-m", "jupyter", "execute",
                             "--kernel_name=notebookos", f"--output={out}", str(BINDER / "demo.ipynb")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    peak = 0
    try:
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 280
        while proc.poll() is None and time.monotonic() < deadline:
            peak = max(peak, tree_rss(root))
            time.sleep(0.2)
        log = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].decode(errors="replace")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the cluster start left running in the background
        proc.wait(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM) and out.with_suffix(".ipynb").exists(), log[-3000:]
    assert "notebookos: cluster up" in log, log[-3000:]
    print(f"peak RSS of the process tree: {peak / 2**30:.2f} GiB")
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GiB"
    nb = nbformat.read(out.with_suffix(".ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream") for c in code]
    errors = [[o.ename for o in c.outputs if o.output_type == "error"] for c in code]
    assert "GPUs bound to this cell: [0]" in text[1]  # a virtual GPU of the cluster, bound while the cell ran
    assert errors[2] == ["ReplicaLost"]  # the cell that killed its own process
    assert "x + 1 = 42 | sum of weights = 499999500000.0 | y defined: False" in text[3]
    assert "'replicas_alive': 3" in text[-1]  # the replacement joined
    assert sum(map(len, errors)) == 1


def test_postbuild_makes_notebookos_the_default_in_the_environment_prefix(tmp_path):
    """postBuild writes only into the Python environment it runs in (a throwaway venv here, Binder's conda env)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("JUPYTER_PATH", None)
    proc = subprocess.run(["bash", str(BINDER / "postBuild")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    etc = venv / "etc" / "jupyter"
    assert json.loads((etc / "jupyter_config.d" / "notebookos-binder.json").read_text()) == {
        "NotebookOSFront": {"store_on_tmpfs": False}}
    assert json.loads((etc / "jupyter_server_config.d" / "notebookos-binder.json").read_text()) == {
        "MultiKernelManager": {"default_kernel_name": "notebookos"}}
    assert (venv / "share" / "jupyter" / "kernels" / "notebookos" / "kernel.json").exists()
    # JupyterLab's settings overrides go where that JupyterLab reads them (its own prefix: here the base one).
    [written] = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.endswith("overrides.d/notebookos.json")]
    assert json.loads(Path(written).read_text())
