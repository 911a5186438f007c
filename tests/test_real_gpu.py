"""On a machine with an NVIDIA GPU: NVML discovery, a cell computing on the bound GPU, and GPU state that survives
the executor's SIGKILL. Skipped where there is no GPU (CI); run on one with ``pytest tests/test_real_gpu.py``."""

from __future__ import annotations

import os
import signal

import pytest

from notebookos.scheduler.gpus import discover_gpus, nvml_gpus

from .conftest import Kernel, stream_text


def _nvml_gpus():
    try:
        return nvml_gpus()
    except Exception:  # pragma: no cover - any NVML trouble means "no GPU to test on"
        return None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_nvml = pytest.mark.skipif(not _nvml_gpus(), reason="no NVIDIA GPU visible through NVML")
needs_cuda = pytest.mark.skipif(not _cuda_available(), reason="torch with CUDA and a GPU are needed")


@needs_nvml
def test_nvml_reports_the_real_gpus():
    import pynvml

    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    finally:
        pynvml.nvmlShutdown()
    gpus = discover_gpus(virtual=3)
    assert len(gpus) == count and not any(g.virtual for g in gpus)
    assert [g.index for g in gpus] == list(range(count))
    assert [g.name for g in gpus] == [n.decode() if isinstance(n, bytes) else n for n in names]
    assert all(g.uuid.startswith("GPU-") and g.memory_mb > 1024 for g in gpus)


TRAIN = """
import torch, notebookos.kernel
dev = notebookos.kernel.device()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(64, 8, device=dev), torch.randn(64, 1, device=dev)
for _ in range(20):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
final = float(torch.nn.functional.mse_loss(model(x), y).detach())
print(dev.type, x.device.type, next(model.parameters()).device.type, os.environ.get("CUDA_VISIBLE_DEVICES"))
"""


@needs_cuda
def test_gpu_state_survives_the_executor_s_sigkill():
    k = Kernel(gpus="0")
    try:
        reply, outputs = k.execute("import os\n" + TRAIN, timeout=300)
        assert reply["status"] == "ok", reply
        assert stream_text(outputs, "stdout") == "cuda cuda cuda 0\n"
        warnings = stream_text(outputs, "stderr")
        for name in ("model", "x", "y"):
            assert f"{name!r} was not replicated" not in warnings, warnings
        assert isinstance(k.value("final"), float)
        # Every replica holds the same model and data (followers in host memory): same digests, once the followers
        # have applied the cells (their first "import torch" takes seconds).
        def caught_up():
            info = k.info()
            return all(r["applied_index"] >= info["committed_seq"] for r in info["replicas"] if r["alive"])

        k.wait_for(caught_up, timeout=180, what="followers to apply the training cell")
        digests = k.digests()
        assert all("error" not in d for d in digests.values()), digests
        errors = {r["id"]: r["status"].get("apply_errors") for r in k.info()["replicas"]}
        for name in ("model", "x", "y"):
            assert len({d["digests"].get(name) for d in digests.values()}) == 1, (name, digests, errors)
        executor = k.info()["last_executor"]
        os.kill(k.replica_pid(executor), signal.SIGKILL)
        reply, outputs = k.execute(
            "print(x.device.type, next(model.parameters()).device.type, "
            "abs(float(torch.nn.functional.mse_loss(model(x), y).detach()) - final) < 1e-5)", timeout=300)
        assert reply["status"] == "ok", reply
        assert stream_text(outputs, "stdout") == "cuda cuda True\n"
        assert k.info()["last_executor"] != executor
    finally:
        k.shutdown()
