"""The provisioner's options: from the kernelspec, from a notebook's metadata, and clear errors for bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jupyter_client.manager import KernelManager

from notebookos.kernel.provisioner import UnknownKernelOption, notebook_path, notebook_request


def write_notebook(path, metadata):
    path.write_text(json.dumps({"cells": [], "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_notebook_metadata_sets_the_resource_request(tmp_path):
    nb = write_notebook(tmp_path / "train.ipynb", {"notebookos": {"gpus": 2, "cpus": 4, "memory_mb": 8192}})
    assert notebook_request(nb) == {"gpu_request": 2, "cpu_request": 4.0, "memory_request_mb": 8192}
    assert notebook_request(write_notebook(tmp_path / "plain.ipynb", {"kernelspec": {}})) == {}
    # Jupyter Server names the notebook absolutely, or relative to the server root while the kernel's cwd is the
    # notebook's directory.
    assert notebook_path(str(nb), None) == nb
    assert notebook_path("some/dir/train.ipynb", str(tmp_path)) == tmp_path / "train.ipynb"
    assert notebook_path("console-1", str(tmp_path)) is None
    # A notebook not saved yet, or not JSON: the kernelspec's request applies.
    (tmp_path / "broken.ipynb").write_text("{not json")
    assert notebook_request(tmp_path / "broken.ipynb") == {}


@pytest.mark.parametrize(("request_", "message"), [
    ({"gpu": 1}, "unknown key(s) 'gpu'"),
    ({"gpus": -1}, "'gpus' in the notebook metadata"),
    ({"gpus": 1.5}, "non-negative integer"),
    ({"gpus": True}, "non-negative integer"),
    ({"cpus": "two"}, "non-negative number"),
    ([1], "must be an object"),
])
def test_bad_notebook_metadata_names_the_key_and_the_file(tmp_path, request_, message):
    nb = write_notebook(tmp_path / "nb.ipynb", {"notebookos": request_})
    with pytest.raises(UnknownKernelOption) as err:
        notebook_request(nb)
    assert message in str(err.value) and str(nb) in str(err.value)


def test_a_kernel_started_for_a_notebook_takes_its_request(tmp_path):
    import os

    good = write_notebook(tmp_path / "nb.ipynb", {"notebookos": {"gpus": 3}})
    km = KernelManager(kernel_name="notebookos")
    km.start_kernel(env={**os.environ, "JPY_SESSION_NAME": str(good)}, cwd=str(tmp_path))
    config = Path(km.connection_file).with_suffix(".notebookos-config.json")
    try:
        assert km.provisioner.option("gpu_request") == 3
        # The front gets it in its config file (private), next to the connection file.
        assert json.loads(config.read_text())["NotebookOSFront"]["gpu_request"] == 3
        assert config.stat().st_mode & 0o777 == 0o600
    finally:
        km.shutdown_kernel(now=True)
    assert not config.exists()  # removed with the kernel
    # Bad metadata stops the start with the reason (Lab shows it in its kernel error dialog).
    bad = write_notebook(tmp_path / "bad.ipynb", {"notebookos": {"gpus": "all"}})
    km = KernelManager(kernel_name="notebookos")
    with pytest.raises(UnknownKernelOption, match="'gpus' in the notebook metadata"):
        km.start_kernel(env={**os.environ, "JPY_SESSION_NAME": str(bad)})
    assert not km.has_kernel


def test_jupyter_config_sets_front_options_by_their_one_name():
    """``c.NotebookOSFront.<option>`` in Jupyter's config reaches every kernel's front; a kernelspec value wins."""
    from traitlets.config import Config

    from .conftest import Kernel

    config = Config()
    config.NotebookOSFront.replicas = 1
    config.NotebookOSFront.commit_timeout = 12.5
    km = KernelManager(kernel_name="notebookos", config=config)
    km.kernel_spec.metadata["kernel_provisioner"]["config"]["commit_timeout"] = 20.0
    kernel = Kernel.__new__(Kernel)
    kernel.km = km
    km.start_kernel()
    kernel.client = km.client()
    kernel.client.start_channels()
    try:
        kernel.client.wait_for_ready(timeout=90)
        assert km.provisioner.option("replicas") == 1 and km.provisioner.option("commit_timeout") == 20.0
        assert len(kernel.info()["replicas"]) == 1
        reply, _ = kernel.execute("x = 1")
        assert reply["status"] == "ok", reply
    finally:
        kernel.shutdown()
