"""Shared fixtures: a kernelspec installed into a temporary prefix, and helpers to drive real kernels."""

from __future__ import annotations

import os
import queue
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from notebookos.kernelspec import install_kernelspec


@pytest.fixture(scope="session", autouse=True)
def kernelspec_path(tmp_path_factory) -> Path:
    """Install the notebookos kernelspec where Jupyter will find it for this test session only."""
    prefix = tmp_path_factory.mktemp("prefix")
    install_kernelspec(prefix=str(prefix))
    data = prefix / "share" / "jupyter"
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(data), old]))
    yield data
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


class Kernel:
    """A running kernel (notebookos or plain python3) with a blocking client and small helpers."""

    def __init__(self, kernel_name: str = "notebookos", env: dict[str, str] | None = None, cwd: str | None = None,
                 **provisioner_config: Any):
        self.km = KernelManager(kernel_name=kernel_name)
        if provisioner_config:
            self.km.kernel_spec.metadata["kernel_provisioner"]["config"].update(provisioner_config)
        # Extra environment, as Jupyter Server gives a notebook's kernel (JPY_SESSION_NAME), and the notebook's
        # directory as the working directory, as Jupyter Server starts it.
        self.km.start_kernel(**({"env": {**os.environ, **env}} if env else {}), **({"cwd": cwd} if cwd else {}))
        self.client = self.km.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=90)
        except BaseException:
            self.shutdown()  # a kernel that failed to come up must not outlive the test
            raise

    def execute(self, code: str, timeout: float = 60, **kwargs: Any) -> tuple[dict, list[dict]]:
        """Run one cell; return the execute_reply content and the iopub messages of that cell."""
        msg_id = self.client.execute(code, **kwargs)
        outputs = []
        deadline = time.monotonic() + timeout
        idle = False
        reply = None
        while not (idle and reply is not None):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell did not finish in {timeout}s: {code!r}")
            if not idle:
                try:
                    msg = self.client.get_iopub_msg(timeout=min(remaining, 1))
                except queue.Empty:
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
                elif msg["msg_type"] != "status":
                    outputs.append(msg)
            else:
                try:
                    reply_msg = self.client.get_shell_msg(timeout=min(remaining, 1))
                except queue.Empty:
                    continue
                if reply_msg["parent_header"].get("msg_id") == msg_id:
                    reply = reply_msg
        return reply["content"], outputs

    def value(self, expr: str) -> Any:
        """Evaluate an expression in the kernel and return its text/plain repr evaluated back (for literals)."""
        reply, outputs = self.execute(f"print(repr({expr}))")
        assert reply["status"] == "ok", reply
        return eval(stream_text(outputs, "stdout"))  # noqa: S307 - test helper over our own kernel's output

    def reply(self, msg_id: str, timeout: float = 30) -> dict:
        """The shell reply to ``msg_id`` (for client methods that have no ``reply=True``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.client.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.01))
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg["content"]
        raise TimeoutError(msg_id)

    def control(self, msg_type: str, content: dict | None = None, timeout: float = 30) -> dict:
        msg = self.client.session.msg(msg_type, content or {})
        self.client.control_channel.send(msg)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.client.control_channel.get_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]
        raise TimeoutError(msg_type)

    def info(self) -> dict:
        return self.control("notebookos_info_request")

    def digests(self) -> dict:
        return self.control("notebookos_digest_request")["replicas"]

    def replica_pid(self, replica_id: int) -> int:
        return next(r["pid"] for r in self.info()["replicas"] if r["id"] == replica_id)

    def wait_for(self, predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(interval)
        raise TimeoutError(f"timed out waiting for {what}")

    def shutdown(self) -> None:
        try:
            self.client.stop_channels()
        finally:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=False)


def stream_text(outputs: list[dict], name: str | None = None) -> str:
    return "".join(o["content"]["text"] for o in outputs
                   if o["msg_type"] == "stream" and (name is None or o["content"]["name"] == name))


@pytest.fixture
def kernel():
    k = Kernel()
    yield k
    k.shutdown()
