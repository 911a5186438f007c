"""PyTorch tensors between replicas (tensors.py): content-only pickles, GPU tensors parked in host memory."""

from __future__ import annotations

import pytest

from notebookos.kernel import serialize, tensors
from notebookos.objectstore.base import content_digest

torch = pytest.importorskip("torch")


def roundtrip(value, user_ns=None):
    header, buffers = serialize.dumps(value, user_ns if user_ns is not None else {})
    return serialize.loads(header, [b.raw() for b in buffers], {})


def test_tensor_pickles_depend_on_content_only():
    # torch's own pickles carry a random serialisation id, so replicas holding equal tensors got different digests.
    a, b = torch.arange(12.0).reshape(3, 4), torch.arange(12.0).reshape(3, 4)
    assert content_digest(*serialize.dumps(a, {})) == content_digest(*serialize.dumps(b, {}))
    b[0, 0] = -1
    assert content_digest(*serialize.dumps(a, {})) != content_digest(*serialize.dumps(b, {}))


def test_dtypes_shapes_grad_and_parameters_survive():
    model = torch.nn.Linear(3, 2)
    values = {
        "model": model,
        "x": torch.arange(6.0).reshape(2, 3).requires_grad_(),
        "flag": torch.tensor(True),
        "half": torch.ones(2, 2, dtype=torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 5),
        "strided": torch.arange(10).reshape(2, 5).t(),
    }
    out = roundtrip(values)
    assert type(out["model"].weight) is torch.nn.Parameter and out["model"].weight.requires_grad
    assert torch.equal(out["model"].weight, model.weight) and torch.equal(out["model"].bias, model.bias)
    assert out["x"].requires_grad and torch.equal(out["x"].detach(), values["x"].detach())
    for name in ("flag", "half", "scalar", "empty", "strided"):
        assert out[name].dtype == values[name].dtype and out[name].shape == values[name].shape, name
        assert torch.equal(out[name], values[name]), name


def test_gpu_tensors_wait_in_host_memory_until_a_device_is_bound():
    """A tensor that lived on a GPU is loaded on the CPU and remembered, until a GPU is bound (moved in place then:
    tests/test_real_gpu.py checks that on a machine with one)."""
    before = tensors.displaced_count()
    data = torch.arange(4.0).view(torch.uint8).numpy()
    param = tensors._rebuild_tensor(data, "float32", (2, 2), "cuda", True, True)
    assert param.device.type == "cpu" and param.requires_grad and type(param) is torch.nn.Parameter
    assert tensors.displaced_count() == before + 1
    # Re-pickled on the follower it still says "cuda", so its digest matches the executor's GPU tensor.
    cpu_twin = torch.nn.Parameter(torch.arange(4.0).view(2, 2))
    assert serialize.dumps(param, {})[0] != serialize.dumps(cpu_twin, {})[0]
    assert tensors.restore_displaced(torch.device("cpu")) == 0  # a CPU binding does not move GPU tensors
    assert param.device.type == "cpu" and tensors.displaced_count() == before + 1
    del param
    assert tensors.displaced_count() == before  # forgotten with the tensor
