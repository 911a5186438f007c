"""GPU discovery: virtual GPUs without NVML; the NVML path against a fake ``pynvml`` module (only the GPU is mocked)."""

from __future__ import annotations

import sys
import types

import pytest

from notebookos.scheduler import gpus
from notebookos.scheduler.gpus import GPUInfo, discover_gpus


class FakeNVMLError(Exception):
    pass


def fake_pynvml(devices: list[tuple[object, int, object]] | None, init_error: bool = False) -> types.ModuleType:
    """A module with the nvidia-ml-py functions discover_gpus calls; ``devices``: (name, total bytes, uuid)."""
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.calls = []

    def nvmlInit():
        m.calls.append("init")
        if init_error:
            raise FakeNVMLError("Driver Not Loaded")

    def nvmlShutdown():
        m.calls.append("shutdown")

    m.nvmlInit = nvmlInit
    m.nvmlShutdown = nvmlShutdown
    m.nvmlDeviceGetCount = lambda: len(devices or [])
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    m.nvmlDeviceGetName = lambda h: devices[h[1]][0]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=devices[h[1]][1], free=0, used=0)
    m.nvmlDeviceGetUUID = lambda h: devices[h[1]][2]
    return m


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(gpus.VIRTUAL_GPUS_ENV, raising=False)


def test_virtual_when_pynvml_missing(monkeypatch, no_env):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    found = discover_gpus(3)
    assert [g.index for g in found] == [0, 1, 2]
    assert all(g.virtual for g in found)
    assert len({g.uuid for g in found}) == 3
    assert discover_gpus(0) == []


def test_virtual_default_from_env(monkeypatch, no_env):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert len(discover_gpus(None)) == gpus.DEFAULT_VIRTUAL_GPUS
    monkeypatch.setenv(gpus.VIRTUAL_GPUS_ENV, "2")
    assert len(discover_gpus(None)) == 2
    monkeypatch.setenv(gpus.VIRTUAL_GPUS_ENV, "two")
    with pytest.raises(ValueError, match="NOTEBOOKOS_VIRTUAL_GPUS"):
        discover_gpus(None)


def test_virtual_when_nvml_init_fails(monkeypatch, no_env):
    fake = fake_pynvml([], init_error=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = discover_gpus(2)
    assert len(found) == 2 and all(g.virtual for g in found)
    assert fake.calls == ["init"]


def test_nvml_devices(monkeypatch, no_env):
    fake = fake_pynvml([
        (b"NVIDIA H100 80GB HBM3", 85520809984, b"GPU-aaaaaaaa-1111"),  # bytes: older nvidia-ml-py
        ("NVIDIA H100 80GB HBM3", 85520809984, "GPU-bbbbbbbb-2222"),    # str: newer
    ])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = discover_gpus(5)
    assert found == [
        GPUInfo(0, "NVIDIA H100 80GB HBM3", 81559, "GPU-aaaaaaaa-1111", False),
        GPUInfo(1, "NVIDIA H100 80GB HBM3", 81559, "GPU-bbbbbbbb-2222", False),
    ]
    assert fake.calls == ["init", "shutdown"]
    assert found[0].to_dict() == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559,
                                  "uuid": "GPU-aaaaaaaa-1111", "virtual": False}


def test_nvml_without_devices_falls_back(monkeypatch, no_env):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    found = discover_gpus(1)
    assert len(found) == 1 and found[0].virtual


def test_use_nvml_false_forces_virtual(monkeypatch, no_env):
    fake = fake_pynvml([("NVIDIA H100", 85520809984, "GPU-x")])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = discover_gpus(4, use_nvml=False)
    assert len(found) == 4 and all(g.virtual for g in found)
    assert fake.calls == []
