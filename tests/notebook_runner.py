"""Runs an experiment's notebook top to bottom on the replicated kernel (papermill), for the notebook tests.

Each experiment notebook ends by binding ``summary``, a dict of its measured results, and printing it as JSON on
the last line of its last cell; :func:`run_notebook` returns that dict beside the executed notebook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat


def run_notebook(src: Path, workdir: Path, **params: object) -> tuple[nbformat.NotebookNode, dict]:
    """Execute ``src`` with papermill on the ``notebookos`` kernel in ``workdir``; fail on any error output."""
    dst = workdir / src.name
    args = [sys.executable, "-m", "papermill", str(src), str(dst), "-k", "notebookos", "--cwd", str(workdir),
            "--log-level", "ERROR"]
    for key, value in params.items():
        args += ["-p", key, str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    nb = nbformat.read(dst, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{out.get('ename')}: {out.get('evalue')}"
    last = [o for o in nb.cells[-1].outputs if o.get("output_type") == "stream"]
    summary = json.loads(last[-1]["text"].strip().splitlines()[-1])
    return nb, summary


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def has_progress_bars(nb: nbformat.NotebookNode) -> bool:
    return any("application/vnd.jupyter.widget-view+json" in out.get("data", {})
               for cell in nb.cells for out in cell.get("outputs", []))
