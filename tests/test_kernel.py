"""The replicated kernel through real Jupyter clients: jupyter_client, nbclient, papermill, jupyter console.

One kernel is shared by the tests of this module (starting three replicas costs seconds); tests that break a
kernel live in test_failover.py.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time

import nbformat
import pytest
import zmq
from nbclient import NotebookClient

from .conftest import Kernel, stream_text


@pytest.fixture(scope="module")
def k():
    kernel = Kernel()
    yield kernel
    kernel.shutdown()


def test_cell_runs_and_reply_names_the_executor(k):
    reply, outputs = k.execute("print(6 * 7)")
    assert reply["status"] == "ok"
    assert stream_text(outputs) == "42\n"
    assert any(o["msg_type"] == "execute_input" for o in outputs)


def test_every_replica_holds_the_same_namespace(k):
    cells = [
        "a = 1\nb = 'text'\nc = {'k': [1, 2, 3]}\nfloat_value = 2.5",
        "import numpy as np\nsmall = np.arange(10)\nbig = np.arange(300_000, dtype=np.float64)  # 2.4 MB",
        "def scaled(v):\n    return v * a\nsquare = lambda v: v * v",
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n    def norm2(self):\n"
        "        return self.x ** 2 + self.y ** 2\np = Point(3, 4)",
        "import json as js\nfrom collections import OrderedDict",
        "doomed = 1\ndel doomed\nc['k'].append(4)",
        "big[0] = 42.0\nbig.sum()",
    ]
    for code in cells:
        reply, outputs = k.execute(code)
        assert reply["status"] == "ok", (code, reply)
    replicas = k.wait_for(lambda: _settled(k.digests()), what="all replicas applied the cells")
    assert len(replicas) == 3
    digests = [r["digests"] for r in replicas.values()]
    for name in ("a", "b", "c", "float_value", "np", "small", "big", "scaled", "square", "Point", "p", "js",
                 "OrderedDict"):
        assert name in digests[0], name
    assert "doomed" not in digests[0]
    assert all(d == digests[0] for d in digests[1:]), "replicas' namespaces differ"
    ins = [r["In"] for r in replicas.values()]
    counts = [r["execution_count"] for r in replicas.values()]
    assert all(i == ins[0] for i in ins) and all(c == counts[0] for c in counts)
    # The values themselves, evaluated on the executor.
    assert k.value("(a, b, c, float_value)") == (1, "text", {"k": [1, 2, 3, 4]}, 2.5)
    assert k.value("(scaled(5), square(3), p.norm2(), isinstance(p, Point), float(big[0]), len(big))") == (
        5, 9, 25, True, 42.0, 300_000)


def _settled(replicas: dict) -> dict | None:
    seqs = {json.dumps([r.get("digests"), r.get("In"), r.get("execution_count")], sort_keys=True)
            for r in replicas.values()}
    return replicas if len(seqs) == 1 and all("digests" in r for r in replicas.values()) else None


def test_followers_take_yield_notices_silently(k):
    """A yield notice reaches every follower (its status names the request) but costs no busy/idle or reply there."""
    from jupyter_client import BlockingKernelClient

    k.execute("warm = 1")
    info = k.info()
    followers = [r for r in info["replicas"] if r["alive"] and r["id"] != info["last_executor"]]
    assert len(followers) == 2
    listeners = []
    for row in followers:
        kc = BlockingKernelClient(connection_file=row["connection_file"])
        kc.load_connection_file()
        kc.start_channels(shell=False, stdin=False, hb=False, control=False)
        listeners.append(kc)
    try:
        time.sleep(1.0)  # let the iopub subscriptions settle before the cell
        msg_id = k.client.execute("yielded_cell = 2")
        assert k.reply(msg_id)["status"] == "ok"
        for row in followers:
            status = k.wait_for(
                lambda row=row: next(r["status"] for r in k.info()["replicas"] if r["id"] == row["id"]).get(
                    "last_yielded_request") == msg_id, what=f"replica {row['id']} to record the yield")
            assert status
        for kc in listeners:
            seen = []
            while True:
                try:
                    msg = kc.get_iopub_msg(timeout=0.5)
                except queue.Empty:
                    break
                if msg["parent_header"].get("msg_id") == msg_id:
                    seen.append(msg["msg_type"])
            assert seen == [], f"a follower published {seen} for a cell it yielded"
    finally:
        for kc in listeners:
            kc.stop_channels()


def test_out_and_underscore_agree(k):
    reply, outputs = k.execute("40 + 2")
    n = reply["execution_count"]
    results = [o for o in outputs if o["msg_type"] == "execute_result"]
    assert results and results[0]["content"]["data"]["text/plain"] == "42"
    assert k.value(f"(Out[{n}], _{n}, In[{n}])") == (42, 42, "40 + 2")


def test_replicas_api_and_magic(k):
    k.execute("import notebookos.kernel")
    rows = k.value("notebookos.kernel.replicas()")
    assert len(rows) == 3
    assert {tuple(sorted(r)) for r in rows} == {
        ("alive", "applied_index", "host", "id", "last_executor", "pid", "raft_role")}
    assert sum(r["last_executor"] for r in rows) == 1
    assert all(r["alive"] for r in rows)
    assert len({r["pid"] for r in rows}) == 3

    def settled_roles():
        roles = sorted(r["raft_role"] for r in k.value("notebookos.kernel.replicas()"))
        return roles if roles == ["follower", "follower", "leader"] else None

    k.wait_for(settled_roles, what="one leader and two followers in replicas()")
    reply, outputs = k.execute("%replicas")
    text = "".join(o["content"]["data"]["text/plain"] for o in outputs if o["msg_type"] == "execute_result")
    assert "raft_role" in text and "last_executor" in text


def test_unserialisable_value_is_named_every_time(k, tmp_path):
    path = tmp_path / "f.txt"
    reply, outputs = k.execute(f"fh = open({str(path)!r}, 'w')")
    assert reply["status"] == "ok"
    assert "fh" in stream_text(outputs, "stderr") and "fails over" in stream_text(outputs, "stderr")
    reply, outputs = k.execute("fh.write('hello')")
    assert "fh" in stream_text(outputs, "stderr")
    k.execute("fh.close(); del fh")


def test_interrupt_a_sleeping_cell(k):
    msg_id = k.client.execute("import time\ntime.sleep(60)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until it is running
        msg = k.client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            break
    time.sleep(0.5)
    started = time.monotonic()
    k.km.interrupt_kernel()
    reply = k.client.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = k.client.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - started < 20
    reply, outputs = k.execute("print('still here')")
    assert stream_text(outputs) == "still here\n"


def test_input_request_round_trip(k):
    msg_id = k.client.execute("name = input('who? ')\nprint('hi', name)", allow_stdin=True)
    req = k.client.get_stdin_msg(timeout=30)
    assert req["content"]["prompt"] == "who? "
    k.client.input("ada")
    outputs = []
    while True:
        msg = k.client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        outputs.append(msg)
    assert stream_text(outputs) == "hi ada\n"


def test_ipywidgets_comm_round_trip(k):
    reply, outputs = k.execute("import ipywidgets as w\nslider = w.IntSlider(value=1)\nslider")
    assert reply["status"] == "ok"
    opens = [o for o in outputs if o["msg_type"] == "comm_open"
             and o["content"]["data"]["state"].get("_model_name") == "IntSliderModel"]
    assert opens, [o["msg_type"] for o in outputs]
    comm_id = opens[0]["content"]["comm_id"]
    # Front end -> kernel: the user drags the slider.
    msg = k.client.session.msg("comm_msg", {"comm_id": comm_id,
                                            "data": {"method": "update", "state": {"value": 7},
                                                     "buffer_paths": []}})
    k.client.shell_channel.send(msg)
    k.wait_for(lambda: k.value("slider.value") == 7, what="slider value from the front end")
    # Kernel -> front end: a cell changes the value and the front end hears of it.
    reply, outputs = k.execute("slider.value = 3")
    updates = [o for o in outputs if o["msg_type"] == "comm_msg" and o["content"]["comm_id"] == comm_id]
    assert any(u["content"]["data"].get("state", {}).get("value") == 3 for u in updates)


def test_shell_requests_other_than_execute(k):
    k.execute("import collections\nsome_long_name = 1")
    c = k.client
    info = c.kernel_info(reply=True, timeout=30)["content"]
    assert info["status"] == "ok" and info["language_info"]["name"] == "python"
    assert "kernel subshells" not in info.get("supported_features", [])
    comp = c.complete("some_long_", reply=True, timeout=30)["content"]
    assert "some_long_name" in comp["matches"]
    insp = c.inspect("collections.OrderedDict", reply=True, timeout=30)["content"]
    assert insp["found"]
    hist = c.history(hist_access_type="tail", n=5, reply=True, timeout=30)["content"]
    assert hist["status"] == "ok" and hist["history"]
    assert k.reply(c.is_complete("for i in range(3):"))["status"] == "incomplete"
    comm_info = k.reply(c.comm_info())
    assert comm_info["status"] == "ok"


def test_subshell_requests_are_declined(k):
    reply = k.control("create_subshell_request")
    assert reply["status"] == "error" and "subshell" in reply["evalue"]
    reply, _ = k.execute("1")
    assert reply["status"] == "ok"


def test_bad_signature_and_malformed_messages_are_dropped(k):
    before = k.info()["dropped_messages"]
    conn = k.km.get_connection_info()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 2000  # let the bad messages leave before close
    sock.connect(f"tcp://{conn['ip']}:{conn['shell_port']}")
    good = k.client.session.msg("execute_request", {"code": "hacked = 1", "silent": False})
    frames = k.client.session.serialize(good)
    frames[1] = b"0" * 64  # wrong HMAC
    sock.send_multipart(frames)
    sock.send_multipart([b"no delimiter at all"])
    sock.send_multipart([b"<IDS|MSG>", b"sig", b"{not json", b"{}", b"{}", b"{}"])
    sock.close()
    k.wait_for(lambda: k.info()["dropped_messages"] >= before + 3, what="drops counted")
    reply, outputs = k.execute("print('hacked' in dir())")
    assert stream_text(outputs) == "False\n"


NOTEBOOK_CELLS = [
    "import math\nvalues = [math.sqrt(i) for i in range(5)]\nprint(values)",
    "total = sum(values)\nround(total, 6)",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n[fib(i) for i in range(10)]",
    "import numpy as np\narr = np.linspace(0, 1, 5)\narr * 2",
    "class Box:\n    def __init__(self, v): self.v = v\n    def __repr__(self): return f'Box({self.v})'\nBox(total > 5)",
    "import sys\nprint('to stderr', file=sys.stderr)\n_ ",
]


def _outputs(nb):
    out = []
    for cell in nb.cells:
        texts = []
        for o in cell.outputs:
            if o.output_type == "stream":
                texts.append((o.name, o.text))
            elif o.output_type in ("execute_result", "display_data"):
                texts.append((o.output_type, o.data.get("text/plain")))
            elif o.output_type == "error":
                texts.append(("error", o.ename))
        out.append(texts)
    return out


def test_nbclient_notebook_matches_plain_python3():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in NOTEBOOK_CELLS])
    results = {}
    for name in ("python3", "notebookos"):
        copy = nbformat.reads(nbformat.writes(nb), as_version=4)
        NotebookClient(copy, kernel_name=name, timeout=120, startup_timeout=120).execute()
        results[name] = _outputs(copy)
    assert results["notebookos"] == results["python3"]
    assert results["notebookos"][1] == [("execute_result", str(round(sum(i ** 0.5 for i in range(5)), 6)))]


def test_papermill_runs_a_parameterised_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("n = 3", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("squares = [i * i for i in range(n)]\nprint(squares)"),
    ])
    nb.metadata["kernelspec"] = {"name": "notebookos", "language": "python",
                                 "display_name": "Python 3 (replicated)"}
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    subprocess.run([sys.executable, "-m", "papermill", str(src), str(dst), "-k", "notebookos", "-p", "n", "5",
                    "--log-level", "ERROR"], check=True, timeout=180, env=os.environ.copy())
    out = nbformat.read(dst, as_version=4)
    assert out.cells[-1].outputs[0]["text"] == "[0, 1, 4, 9, 16]\n"


def test_jupyter_console_works_unchanged():
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_console", "--kernel", "notebookos", "--simple-prompt",
         "--ZMQTerminalInteractiveShell.kernel_timeout=120"],
        input="print(6 * 7)\nexit\n", capture_output=True, text=True, timeout=180, env=os.environ.copy())
    assert "42" in proc.stdout, proc.stdout + proc.stderr


def test_a_cell_runs_exactly_once(k, tmp_path):
    """Only the executor runs a cell: followers apply its committed effect, never re-run its side effects."""
    path = tmp_path / "side_effect.txt"
    for _ in range(3):
        reply, _ = k.execute(f"with open({str(path)!r}, 'a') as f:\n    f.write('x')")
        assert reply["status"] == "ok"
    time.sleep(1.0)  # followers have had time to (wrongly) run them
    assert path.read_text() == "xxx"
    replicas = k.wait_for(lambda: _settled(k.digests()), what="replicas settled")
    assert len({r["execution_count"] for r in replicas.values()}) == 1
