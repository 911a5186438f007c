"""One object graph on every replica: objects shared across cells stay shared after a failover (real kernels,
real SIGKILL), and random programs over shared mutable objects end in the same graph as on a plain kernel."""

from __future__ import annotations

import json
import os
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Kernel, stream_text

torch = pytest.importorskip("torch")


def executor_of(kernel) -> int:
    return kernel.info()["last_executor"]


def kill_executor(kernel) -> int:
    """SIGKILL the executor once the group is whole again (two losses in a row would leave no quorum)."""
    kernel.wait_for(lambda: len([r for r in kernel.info()["replicas"] if r["alive"] and r["member"]]) >= 3,
                    timeout=90, what="three live replicas")
    victim = executor_of(kernel)
    os.kill(kernel.replica_pid(victim), signal.SIGKILL)
    return victim


def run_ok(kernel, code: str, timeout: float = 120) -> str:
    reply, outputs = kernel.execute(code, timeout=timeout)
    assert reply["status"] == "ok", (code, reply)
    return stream_text(outputs, "stdout")


def outcome(kernel, code: str) -> tuple:
    reply, outputs = kernel.execute(code, timeout=120)
    return reply["status"], reply.get("ename"), stream_text(outputs, "stdout")


def live_replicas_agree(kernel, replicas: int = 3, timeout: float = 90) -> dict:
    """The digest reply of every live replica, once they all hold the same values and the same graph
    (followers apply a cell's entry shortly after its reply; a replacement catches up within seconds)."""
    last: dict = {}

    def agree():
        nonlocal last
        last = {rid: r for rid, r in kernel.digests().items() if "digests" in r}
        views = {json.dumps([r["digests"], r["graph"]], sort_keys=True) for r in last.values()}
        return len(last) >= replicas and len(views) == 1

    try:
        kernel.wait_for(agree, timeout=timeout, interval=0.5, what="replicas to agree")
    except TimeoutError:
        first = next(iter(last.values()))
        differ = {rid: sorted(n for n in first["digests"] if r["digests"].get(n) != first["digests"][n])
                  for rid, r in last.items()}
        pytest.fail(f"replicas hold different state: names differing from the first: {differ}; "
                    f"graphs equal: {[r['graph'] == first['graph'] for r in last.values()]}")
    return next(iter(last.values()))


TRAIN = """
for _ in range(20):
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
print(float(loss))
"""


def test_model_and_optimizer_keep_training_after_the_executor_is_killed(kernel):
    run_ok(kernel, "import torch\ntorch.manual_seed(0)\n"
                   "model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))\n"
                   "x = torch.randn(64, 8)\ny = x.sum(dim=1, keepdim=True)")
    run_ok(kernel, "opt = torch.optim.Adam(model.parameters(), lr=0.01)\n"
                   "sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000)")
    before = float(run_ok(kernel, TRAIN))
    first = kill_executor(kernel)
    shared = run_ok(kernel, "print(opt.param_groups[0]['params'][0] is model[0].weight, sched.optimizer is opt,"
                            " all(p in opt.state for p in model.parameters()))")
    assert shared == "True True True\n"
    assert executor_of(kernel) != first
    after = float(run_ok(kernel, TRAIN))
    assert after < before, (before, after)  # the model itself trained, not copies of its parameters
    # Once more on the next survivor: the optimiser state that kept training there is what replicated.
    kill_executor(kernel)
    again = float(run_ok(kernel, TRAIN))
    assert again < after
    assert run_ok(kernel, "print(opt.param_groups[0]['params'][-1] is model[2].bias)") == "True\n"


def test_objects_shared_across_cells_stay_shared_after_failover(kernel):
    run_ok(kernel, "import numpy as np\nimport dataclasses\na = [1, 2]\n"
                   "class C:\n    pass\nc = C()\n")
    run_ok(kernel, "c.items = a\nbase = np.arange(10.0)\nv = base[2:5]\nd = {'w': np.zeros(3)}\nw = d['w']\n"
                   "@dataclasses.dataclass\nclass P:\n    xs: list\np = P(a)\n"
                   "def make():\n    count = [0]\n    def inc():\n        count[0] += 1\n        return count[0]\n"
                   "    return inc\ninc = make()\n")
    run_ok(kernel, "import torch\nlayers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)])\n"
                   "stack = [layers[0], layers[1]]\nbias = layers[1].bias\n")
    run_ok(kernel, "a.append(3)\nbase[3] = 100\nd['w'][0] = 5\ninc(); inc()\n")
    kill_executor(kernel)
    out = run_ok(kernel, "print(c.items is a, c.items, p.xs is a, v.base is base, float(v[1]), w is d['w'],"
                         " float(w[0]), inc(), stack[0] is layers[0], bias is stack[1].bias)")
    assert out == "True [1, 2, 3] True True 100.0 True 5.0 3 True True\n"
    # Writes through one side are seen through the other on the new executor and on its followers.
    out = run_ok(kernel, "v[0] = -1\nwith torch.no_grad():\n    stack[1].bias.fill_(7)\n"
                         "print(float(base[2]), float(bias[0]))")
    assert out == "-1.0 7.0\n"
    kill_executor(kernel)
    assert run_ok(kernel, "print(float(base[2]), float(layers[1].bias[0]), a is p.xs)") == "-1.0 7.0 True\n"
    live_replicas_agree(kernel)


# -- random programs over shared mutable objects ------------------------------------------------------------
SLOTS = ["L0", "L1", "L2", "D0", "D1", "B0", "B1"]
SETUP = ("import numpy as np\nclass Box:\n    def __init__(self, v=None):\n        self.v = v\n"
         "L0, L1, L2 = [], [], []\nD0, D1 = {}, {}\nB0, B1 = Box(), Box()\nA0 = np.zeros(6)\nV0 = A0[1:4]\n")
NAMES = [*SLOTS, "A0", "V0"]

value = st.one_of(st.integers(-3, 9).map(str), st.sampled_from(SLOTS), st.just("[]"), st.just("Box()"),
                  st.just("A0"), st.just("V0"))
op = st.one_of(
    st.builds("{}.append({})".format, st.sampled_from(["L0", "L1", "L2"]), value),
    st.builds("{}[{!r}] = {}".format, st.sampled_from(["D0", "D1"]), st.sampled_from(["a", "b"]), value),
    st.builds("{}.v = {}".format, st.sampled_from(["B0", "B1"]), value),
    st.builds("{} = {}".format, st.sampled_from(SLOTS), value),
    st.builds("if {0}: {0}.pop()".format, st.sampled_from(["L0", "L1", "L2"])),
    st.builds("{}.clear()".format, st.sampled_from(["L0", "D0", "D1"])),
    st.builds("A0[{}] += {}".format, st.integers(0, 5), st.integers(1, 3)),
    st.builds("V0[{}] = {}".format, st.integers(0, 2), st.integers(-5, 5)),
    st.just("V0 = A0[2:5]"),
)
program = st.tuples(st.lists(st.lists(op, min_size=1, max_size=3), min_size=2, max_size=7), st.integers(0, 7))

# Values and identity, independent of which kernel defined a class (graph.value_fingerprint).
FINGERPRINT = ("from notebookos.kernel.graph import value_fingerprint as _vf\nimport json as _json\n"
               f"print(_json.dumps(_vf(globals(), {NAMES!r})))\ndel _vf, _json")


@pytest.fixture(scope="module")
def kernels():
    plain, replicated = Kernel("python3"), Kernel()
    yield plain, replicated
    plain.shutdown()
    replicated.shutdown()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(program)
def test_random_programs_end_in_the_same_object_graph_as_on_a_plain_kernel(kernels, prog):
    plain, replicated = kernels
    cells, kill_at = prog
    for k in kernels:
        run_ok(k, "%reset -f\n" + SETUP)
    for i, cell in enumerate(cells):
        if i == kill_at % len(cells):
            kill_executor(replicated)
        code = "\n".join(cell)
        assert outcome(replicated, code) == outcome(plain, code)  # including errors (D0 = V0; D0['a'] = 1)
    expected = json.loads(run_ok(plain, FINGERPRINT))
    assert json.loads(run_ok(replicated, FINGERPRINT)) == expected
    # And the followers: every live replica holds the executor's graph.
    live_replicas_agree(replicated)
