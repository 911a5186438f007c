"""Soak: many cells on a replicated kernel while replicas are SIGKILLed, checked against a plain kernel.

A seeded random program works on shared mutable objects (lists, dicts, instances of a notebook class, a numpy
array and a view of it) and trains a small model with Adam every ``--train-every`` cells. The same cells run on a
plain ``python3`` kernel. Every ``--kill-every`` cells a random replica is SIGKILLed, alternately between cells and
during a cell (when the victim is the executor, that cell fails with ``ReplicaLost`` and is not run on the plain
kernel: its effects were not committed). At the end:

- lost variables: names the plain kernel has that the replicated one lacks (must be 0);
- the values and the identity structure of every object the program made equal the plain kernel's;
- every live replica holds the same values and the same object graph (digest request);
- the model still trains: the loss of the last training cells keeps falling, and the optimiser holds the model's
  parameters.

Usage: ``python benchmarks/soak.py [--cells 1000] [--kill-every 50] [--json OUT]`` (``--quick``: 120 cells).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import KernelManager
from tqdm import tqdm

from notebookos.kernelspec import install_kernelspec

SLOTS = ["L0", "L1", "L2", "D0", "D1", "B0", "B1"]
SETUP = """
import numpy as np, torch
torch.manual_seed(0)
torch.set_num_threads(1)
class Box:
    def __init__(self, v=None):
        self.v = v
L0, L1, L2 = [], [], []
D0, D1 = {}, {}
B0, B1 = Box(), Box()
A0 = np.zeros(6)
V0 = A0[1:4]
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
X = torch.randn(128, 8)
Y = X.sum(dim=1, keepdim=True)
losses = []
uncommitted = 0
"""
TRAIN = """
for _ in range(5):
    opt.zero_grad()
    loss = ((model(X) - Y) ** 2).mean()
    loss.backward()
    opt.step()
losses.append(round(float(loss), 6))
"""
NAMES = [*SLOTS, "A0", "V0", "model", "opt", "X", "Y", "losses", "loss", "uncommitted"]
CANON = ("from notebookos.kernel.graph import value_fingerprint as _vf\nimport json as _json\n"
         f"print(_json.dumps(_vf(globals(), {NAMES!r})))\ndel _vf, _json")


def random_line(rng: random.Random) -> str:
    """One statement over the shared objects; each slot keeps its kind, so cells rarely fail."""
    value = rng.choice([str(rng.randint(-3, 9)), *SLOTS, "[]", "Box()", "A0", "V0"])
    lst, dct, box = rng.choice(["L0", "L1", "L2"]), rng.choice(["D0", "D1"]), rng.choice(["B0", "B1"])
    key = rng.choice("ab")
    return rng.choice([
        f"{lst}.append({value})", f"{lst} = [{value}]", f"if {lst}: {lst}.pop()", f"{lst}.clear()",
        f"{dct}[{key!r}] = {value}", f"{dct} = {{{key!r}: {value}}}", f"{dct}.pop({key!r}, None)",
        f"{box}.v = {value}", f"{box} = Box({value})",
        f"A0[{rng.randint(0, 5)}] += 1", f"V0[{rng.randint(0, 2)}] = {rng.randint(-5, 5)}", "V0 = A0[2:5]",
    ])


# A cell the executor may die in: its first effect must be lost with it (the plain kernel never runs it).
DURING = "import time\nuncommitted += 1\ntime.sleep(1.0)\n"


class Client:
    def __init__(self, name: str):
        self.name = name
        self.km = KernelManager(kernel_name=name)
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def send(self, code: str) -> str:
        return self.kc.execute(code)

    def wait(self, msg_id: str, timeout: float = 300) -> tuple[dict, str]:
        text = ""
        deadline = time.monotonic() + timeout
        idle = False
        while not idle:
            msg = self.kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                text += msg["content"]["text"]
            idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
        while True:
            reply = self.kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.01))
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"], text

    def run(self, code: str) -> tuple[dict, str]:
        return self.wait(self.send(code))

    def control(self, msg_type: str) -> dict:
        msg = self.kc.session.msg(msg_type, {})
        self.kc.control_channel.send(msg)
        while True:
            reply = self.kc.control_channel.get_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def live(repl: Client) -> list[dict]:
    return [r for r in repl.control("notebookos_info_request")["replicas"] if r["alive"] and r["member"]]


def wait_whole(repl: Client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(live(repl)) < 3:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no replacement replica within {timeout:g} s")
        time.sleep(0.2)


def replicas_agree(repl: Client, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = [r for r in repl.control("notebookos_digest_request")["replicas"].values() if "digests" in r]
        if len(replies) >= 3 and len({json.dumps([r["digests"], r["graph"]], sort_keys=True) for r in replies}) == 1:
            return True
        time.sleep(0.5)
    return False


def soak(cells: int, kill_every: int, train_every: int, seed: int) -> dict:
    rng = random.Random(seed)
    plain, repl = Client("python3"), Client("notebookos")
    stats = {"cells": 0, "kills_between": 0, "kills_during": 0, "cells_lost_to_kills": 0, "errors_equal": 0}
    try:
        for k in (plain, repl):
            reply, _ = k.run(SETUP)
            assert reply["status"] == "ok", reply
        for i in tqdm(range(1, cells + 1), desc="soak", unit="cell"):
            code = TRAIN if i % train_every == 0 else "\n".join(random_line(rng) for _ in range(rng.randint(1, 3)))
            kill = i % kill_every == 0
            during = kill and (i // kill_every) % 2 == 0
            if kill:
                wait_whole(repl)
                victim = rng.choice(live(repl))
            if kill and not during:
                os.kill(victim["pid"], signal.SIGKILL)
                stats["kills_between"] += 1
            if during:
                msg_id = repl.send(DURING + code)
                time.sleep(0.4)
                os.kill(victim["pid"], signal.SIGKILL)
                stats["kills_during"] += 1
                reply, _ = repl.wait(msg_id)
                if reply["status"] == "error" and reply["ename"] == "ReplicaLost":
                    stats["cells_lost_to_kills"] += 1
                    continue
                code = DURING + code
                expected, _ = plain.run(code)
            else:
                expected, _ = plain.run(code)
                reply, _ = repl.run(code)
            stats["cells"] += 1
            if (reply["status"], reply.get("ename")) != (expected["status"], expected.get("ename")):
                raise RuntimeError(f"cell {i} ended differently: {reply} vs plain {expected}")
            stats["errors_equal"] += reply["status"] == "error"
        plain_state = json.loads(plain.run(CANON)[1])
        repl_state = json.loads(repl.run(CANON)[1])
        _, text = repl.run("import json\n"
                           "print(json.dumps([losses, opt.param_groups[0]['params'][0] is model[0].weight]))")
        losses, attached = json.loads(text)
        plain_names = {n for n, _ in plain_state}
        lost = sorted(plain_names - {n for n, _ in repl_state})
        return {**stats, "lost_variables": lost, "same_as_plain": plain_state == repl_state,
                "replicas_agree": replicas_agree(repl), "optimizer_attached": attached,
                "losses_first_last": [losses[0], losses[-1]] if losses else [],
                "still_training": len(losses) >= 2 and losses[-1] < losses[len(losses) // 2] <= losses[0]}
    finally:
        plain.shutdown()
        repl.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--kill-every", type=int, default=50)
    parser.add_argument("--train-every", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="120 cells, a kill every 30")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.cells, args.kill_every = 120, 30
    prefix = tempfile.mkdtemp(prefix="notebookos-soak-")
    install_kernelspec(prefix=prefix)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [f"{prefix}/share/jupyter",
                                                                os.environ.get("JUPYTER_PATH")]))
    started = time.perf_counter()
    result = soak(args.cells, args.kill_every, args.train_every, args.seed)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    ok = (not result["lost_variables"] and result["same_as_plain"] and result["replicas_agree"]
          and result["optimizer_attached"] and result["still_training"])
    print("soak:", "PASS" if ok else "FAIL")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
