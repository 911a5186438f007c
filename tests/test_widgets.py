"""Widgets on the replicated kernel: front-end state, not replicated and not warned about.

ipywidgets widgets, tqdm.notebook progress bars and functions made by ``interact`` live in the front end and in a
comm of the replica that made them; a name bound to one is not replicated (README, "Widgets"). Real kernels.
"""

from __future__ import annotations

import time

from .conftest import stream_text
from .test_failover import executor_of, kill_replica

WIDGET_CELL = """\
import ipywidgets
from tqdm.notebook import tqdm
w = ipywidgets.IntSlider(value=3)
for i in tqdm(range(3)):
    pass
bar = tqdm(range(2))
@ipywidgets.interact(a=2)
def f(a):
    return a
x = 41
"""


def _names_on_every_replica(kernel, want: set[str], timeout: float = 60) -> dict:
    """The digests once every live replica replicates exactly the names in ``want`` (of those this test uses)."""
    interesting = {"w", "bar", "f", "x", "i", "ipywidgets", "tqdm"}
    deadline = time.monotonic() + timeout
    while True:
        replicas = kernel.digests()
        names = {rid: set(r.get("digests", {})) & interesting for rid, r in replicas.items()}
        if all(n == want for n in names.values()):
            return replicas
        if time.monotonic() > deadline:
            raise AssertionError(f"replicated names {names}, expected {want} on every replica")
        time.sleep(0.3)


def test_widget_cell_prints_no_warning_and_plain_values_are_replicated(kernel):
    reply, outputs = kernel.execute(WIDGET_CELL)
    assert reply["status"] == "ok", reply
    assert stream_text(outputs, "stderr") == "", stream_text(outputs, "stderr")
    assert any(o["msg_type"] == "comm_open" for o in outputs)  # the widgets really were made
    # A widget as the cell's value (its Out entry): shown, not warned about.
    reply, outputs = kernel.execute("w")
    assert reply["status"] == "ok", reply
    assert stream_text(outputs, "stderr") == ""
    assert any(o["msg_type"] == "execute_result" for o in outputs)
    # The plain variables of the same cell are replicated, the widgets are not (on any replica).
    _names_on_every_replica(kernel, {"x", "i", "ipywidgets", "tqdm"})


def test_after_a_failover_widget_names_are_unbound_and_the_rest_is_there(kernel):
    reply, outputs = kernel.execute(WIDGET_CELL)
    assert reply["status"] == "ok" and stream_text(outputs, "stderr") == "", outputs
    _names_on_every_replica(kernel, {"x", "i", "ipywidgets", "tqdm"})
    first = executor_of(kernel)
    kill_replica(kernel, first)
    reply, outputs = kernel.execute("print(x, i, [n in globals() for n in ('w', 'bar', 'f')])")
    assert reply["status"] == "ok", reply
    assert stream_text(outputs, "stdout") == "41 2 [False, False, False]\n"
    assert executor_of(kernel) != first
    # Widgets work on the new executor: the cell that makes one runs again, still without a warning.
    reply, outputs = kernel.execute("w = ipywidgets.IntSlider(value=5)\nprint(w.value)")
    assert reply["status"] == "ok", reply
    assert stream_text(outputs, "stdout") == "5\n" and stream_text(outputs, "stderr") == ""


def test_a_name_rebound_to_a_widget_is_unbound_on_the_other_replicas(kernel):
    reply, _ = kernel.execute("w = 1\nx = 2")
    assert reply["status"] == "ok"
    _names_on_every_replica(kernel, {"w", "x"})
    reply, outputs = kernel.execute("import ipywidgets\nw = ipywidgets.Button()")
    assert reply["status"] == "ok" and stream_text(outputs, "stderr") == "", outputs
    # No replica keeps the stale 1 under that name.
    _names_on_every_replica(kernel, {"x", "ipywidgets"})


def test_a_container_holding_a_widget_is_warned_about_as_such(kernel):
    reply, outputs = kernel.execute("import ipywidgets\nw = ipywidgets.IntSlider()\npanel = {'slider': w}")
    assert reply["status"] == "ok", reply
    err = stream_text(outputs, "stderr")
    assert "'panel' was not replicated" in err and "widget (IntSlider)" in err, err
    assert "'w'" not in err
