"""Committed notebooks (experiments, the Binder demo) carry no paths of the machine that last ran them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for folder in ("experiments", "binder") for p in (ROOT / folder).rglob("*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
LOCAL_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|root|home|Users)/[\w.-]+")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in NOTEBOOKS])
def test_no_local_paths(notebook):
    found = sorted(set(LOCAL_PATH.findall(notebook.read_text())))
    assert not found, f"{notebook.relative_to(ROOT)} holds local paths {found}: clear them (papermill's input_path " \
                      "and output_path, printed paths) before committing"
