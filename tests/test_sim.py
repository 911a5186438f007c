"""The trace-driven simulator: hand-computed results per policy, determinism, corrupt traces, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from notebookos.scheduler.policies.batch import BatchPolicy
from notebookos.scheduler.policies.notebookos import NotebookOSPolicy
from notebookos.scheduler.policies.reservation import ReservationPolicy
from notebookos.scheduler.sim import (
    METRIC_KEYS,
    SimConfig,
    TraceError,
    read_sessions,
    read_tiresias,
    simulate,
    synthetic,
)
from notebookos.scheduler.sim.cli import main

# Three hosts of 2 GPUs (h0001..h0003, called h1..h3 below), no scaling (max 3 hosts, never below 3), nothing costs time except batch's process start
# (10 s). Sessions a, b, c (2 GPUs each) start at 0 and run a 100 s cell at once; d (2 GPUs) starts at 10 and runs a
# 50 s cell at 200. Everyone keeps the notebook open until 1000.
TRACE = """\
session_id,event,time_s,gpus,duration_s
a,start,0,2,
a,cell,0,,100
a,stop,1000,,
b,start,0,2,
b,cell,0,,100
b,stop,1000,,
c,start,0,2,
c,cell,0,,100
c,stop,1000,,
d,start,10,2,
d,cell,200,,50
d,stop,1000,,
"""
CONFIG = SimConfig(host_gpus=2, initial_hosts=3, max_hosts=3, scale_out_delay=0, scale_in_delay=60,
                   replica_start=0, migration_cost=0)


@pytest.fixture
def trace(tmp_path) -> Path:
    path = tmp_path / "sessions.csv"
    path.write_text(TRACE)
    return path


def run(policy, trace_path: Path):
    return simulate(policy, read_sessions(trace_path), CONFIG, check=True)


def test_notebookos_by_hand(trace):
    # Each kernel has replicas on all 3 hosts (subscription 8 of 14 GPUs per host at the end). a, b, c run at once
    # on h1, h2, h3 (the most free replica host each time). d is placed at 10 (no GPU needed), and its cell at 200
    # finds every host free: delay 0. All sessions end at 1000.
    #   provisioned: 6 GPUs x 1000 s = 6000 GPU-s = 1.6667 GPU-h
    #   committed:   3 x 2 GPUs x 100 s + 2 GPUs x 50 s = 700 GPU-s = 0.19444 GPU-h
    r = run(NotebookOSPolicy(max_hosts=3), trace)
    m = r.metrics
    assert m["gpu_hours_provisioned"] == pytest.approx(6000 / 3600)
    assert m["gpu_hours_committed"] == pytest.approx(700 / 3600)
    assert m["gpu_hours_reserved"] == pytest.approx(700 / 3600)
    assert sorted(r.delays) == [0, 0, 0, 0]
    assert m["interactivity_delay_p99_s"] == 0 and m["immediate_start_fraction"] == 1.0
    assert (m["migrations"], m["scale_outs"], m["scale_ins"], m["unfinished_sessions"]) == (0, 0, 0, 0)
    starts = [e for e in r.events if e[1] == "cell_start"]
    assert [(e[2], e[4]) for e in starts] == [("a", "h0001"), ("b", "h0002"), ("c", "h0003"),
                                                  ("d", "h0001")]


def test_reservation_by_hand(trace):
    # a, b, c reserve a whole host each at 0 and run at once. d cannot be placed until a session ends: a's stop at
    # 1000 frees h1, d is placed there and its cell (submitted at 200) starts at 1000 (delay 800) and ends at 1050.
    #   provisioned: 6 GPUs x 1050 s = 6300 GPU-s = 1.75 GPU-h
    #   committed (cells): 3 x 2 x 100 + 2 x 50 = 700 GPU-s
    #   reserved: a, b, c 2 GPUs x 1000 s each + d 2 GPUs x 50 s = 6100 GPU-s
    #   delays 0, 0, 0, 800: p50 0, p99 = 0.97 x 800 = 776 (linear interpolation), immediate 3/4
    r = run(ReservationPolicy(max_hosts=3), trace)
    m = r.metrics
    assert m["gpu_hours_provisioned"] == pytest.approx(6300 / 3600)
    assert m["gpu_hours_committed"] == pytest.approx(700 / 3600)
    assert m["gpu_hours_reserved"] == pytest.approx(6100 / 3600)
    assert sorted(r.delays) == [0, 0, 0, 800]
    assert m["interactivity_delay_p50_s"] == 0
    assert m["interactivity_delay_p99_s"] == pytest.approx(776)
    assert m["immediate_start_fraction"] == 0.75
    assert m["makespan_hours"] == pytest.approx(1050 / 3600)
    assert (m["migrations"], m["scale_outs"], m["unfinished_sessions"]) == (0, 0, 0)


def test_batch_by_hand(trace):
    # Every cell waits 10 s for its process; GPUs are bound from the decision to the end of the cell.
    # a, b, c: bound 0..110 on h1, h2, h3; d: bound 200..260 (h1, the first host freed). Sessions end at 1000.
    #   provisioned: 6 x 1000 = 6000 GPU-s; committed: 3 x 2 x 110 + 2 x 60 = 780 GPU-s
    #   delays 10, 10, 10, 10; immediate 0
    r = run(BatchPolicy(max_hosts=3, process_start_seconds=10), trace)
    m = r.metrics
    assert m["gpu_hours_provisioned"] == pytest.approx(6000 / 3600)
    assert m["gpu_hours_committed"] == pytest.approx(780 / 3600)
    assert list(r.delays) == [10, 10, 10, 10]
    assert m["interactivity_delay_p50_s"] == 10 and m["immediate_start_fraction"] == 0.0
    ends = [e for e in r.events if e[1] == "cell_end"]
    assert [(e[0], e[2], e[4]) for e in ends] == [(110, "a", "h0001"), (110, "b", "h0002"),
                                                  (110, "c", "h0003"), (260, "d", "h0001")]


def read_sessions_text(tmp_path: Path, text: str):
    path = tmp_path / f"t{len(list(tmp_path.iterdir()))}.csv"
    path.write_text(text)
    return read_sessions(path)


def test_scale_out_scale_in_and_queue(tmp_path):
    # One host of 2 GPUs (max 2 hosts, scale-out takes 30 s, hosts idle 60 s go): a holds both GPUs 0..100 under
    # reservation; b (1 GPU) starts at 5: scale-out, online at 35, b's cell (submitted at 5) starts at 35: delay 30.
    sessions = read_sessions_text(tmp_path, """session_id,event,time_s,gpus,duration_s
a,start,0,2,
a,cell,0,,100
b,start,5,1,
b,cell,5,,10
""")
    cfg = SimConfig(host_gpus=2, initial_hosts=1, max_hosts=2, scale_out_delay=30, scale_in_delay=60,
                    replica_start=0, migration_cost=0)
    r = simulate(ReservationPolicy(max_hosts=2), sessions, cfg, check=True)
    m = r.metrics
    assert sorted(r.delays) == [0, 30]
    assert (m["scale_outs"], m["scale_ins"]) == (1, 0)  # b's host idles from 45; the run ends at 100 (a's end)
    # provisioned: h1 2 GPUs x 100 s + h2 2 GPUs x 65 s = 330 GPU-s
    assert m["gpu_hours_provisioned"] == pytest.approx(330 / 3600)
    # with a third session at 200 the idle host (idle since 45) is scaled in at 105 (a's host stays: min 1)
    sessions.append(read_sessions_text(tmp_path, "session_id,event,time_s,gpus,duration_s\nc,start,200,1,\n"
                                       "c,cell,200,,10\n")[0])
    r = simulate(ReservationPolicy(max_hosts=2), sessions, cfg, check=True)
    assert r.metrics["scale_ins"] == 1
    assert [e[0] for e in r.events if e[1] == "scale_in"] == [105]
    # at max hosts nothing scales: b waits for a to end (delay 95)
    cfg1 = SimConfig(host_gpus=2, initial_hosts=1, max_hosts=1, replica_start=0)
    r = simulate(ReservationPolicy(max_hosts=1), sessions[:2], cfg1, check=True)
    assert sorted(r.delays) == [0, 95] and r.metrics["scale_outs"] == 0


def test_synthetic_run_keeps_the_accounting_exact():
    sessions = synthetic(seed=3, sessions=60, hours=24)
    cfg = SimConfig(initial_hosts=3, max_hosts=12)
    for policy in (NotebookOSPolicy(max_hosts=12), ReservationPolicy(max_hosts=12), BatchPolicy(max_hosts=12)):
        r = simulate(policy, sessions, cfg, check=True)  # invariants checked after every event
        m = r.metrics
        assert m["unfinished_sessions"] == 0
        assert m["cells_run"] == m["cells"] == sum(len(s.cells) for s in sessions)
        assert 0 < m["gpu_hours_committed"] <= m["gpu_hours_reserved"] + 1e-9 <= m["gpu_hours_provisioned"] + 1e-6
        assert m["peak_hosts"] <= 12
        if policy.name == "notebookos":
            assert m["migrations"] > 0


def test_synthetic_generator_distributions():
    s = synthetic(seed=7, sessions=3000, hours=24 * 30)
    assert 2800 < len(s) < 3200
    import numpy as np

    gpus = np.array([x.gpus for x in s])
    assert abs((gpus == 1).mean() - 0.49) < 0.03 and abs((gpus == 8).mean() - 0.31) < 0.03
    durations = np.array([c.duration for x in s for c in x.cells])
    assert 240 < np.median(durations) < 360  # median 5 min
    assert synthetic(seed=7, sessions=50, hours=10) == synthetic(seed=7, sessions=50, hours=10)
    assert synthetic(seed=7, sessions=50, hours=10) != synthetic(seed=8, sessions=50, hours=10)


# ------------------------------------------------------------------------------------------------------- CLI


def _sim(tmp_path: Path, name: str, *extra: str) -> Path:
    out = tmp_path / name
    assert main(["--out", str(out), "--quiet", *extra]) == 0
    return out


def test_cli_outputs_and_determinism(tmp_path):
    args = ("--seed", "11", "--sessions", "40", "--hours", "24", "--max-hosts", "10")
    a = _sim(tmp_path, "a", *args)
    # the second run in another interpreter with another string hash seed: nothing may depend on set order
    b = tmp_path / "b"
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    subprocess.run([sys.executable, "-m", "notebookos.scheduler.sim", "--out", str(b), "--quiet", "--no-plots",
                    *args], check=True, env=env, timeout=120)
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert list(sa["policies"]) == ["notebookos", "reservation", "batch"]
    for name, metrics in sa["policies"].items():
        assert set(METRIC_KEYS) <= set(metrics)
        for key in ("gpu_hours_provisioned", "gpu_hours_committed", "interactivity_delay_p50_s",
                    "interactivity_delay_p99_s", "immediate_start_fraction", "migrations", "scale_outs",
                    "scale_ins", "events", "wall_seconds"):
            assert metrics[key] is not None, (name, key)
        metrics.pop("wall_seconds")
        sb["policies"][name].pop("wall_seconds")
        assert (a / f"events_{name}.csv").read_bytes() == (b / f"events_{name}.csv").read_bytes()
        lines = (a / f"events_{name}.csv").read_text().splitlines()
        assert lines[0] == "time_s,event,session,cell,host,gpus,delay_s,info"
        assert len(lines) - 1 == metrics["events"]
        assert (a / f"gpus_{name}.png").stat().st_size > 1000
    assert sa == sb
    assert (a / "delay_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    c = _sim(tmp_path, "c", "--seed", "12", "--sessions", "40", "--hours", "24", "--no-plots")
    assert json.loads((c / "summary.json").read_text())["policies"] != sa["policies"]


def test_cli_tiresias_trace(tmp_path):
    trace = tmp_path / "jobs.csv"
    trace.write_text("job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n"
                     "1,2,0,100,resnet50,10,0\n2,16,5,100,vgg19,1,0\n")
    sessions = read_tiresias(trace)
    assert [(s.id, s.gpus, s.start, s.cells[0].duration) for s in sessions] == [("1", 2, 0, 600), ("2", 16, 300, 60)]
    out = _sim(tmp_path, "t", "--trace", str(trace), "--policies", "reservation", "--no-plots")
    m = json.loads((out / "summary.json").read_text())["policies"]["reservation"]
    assert m["sessions"] == 2 and m["clipped_requests"] == 1 and m["unfinished_sessions"] == 0


CORRUPT = [
    ("tiresias", "job_id,num_gpu,submit_time,iterations,model_name,interval\n1,1,0,1,m,0\n", 1,
     "missing column(s) duration"),
    ("tiresias", "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n1,1,0,1,m,5,0\n"
                 "2,1,zero,1,m,5,0\n", 3, "'submit_time': 'zero' is not a number"),
    ("tiresias", "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n1,1,0,1,m,5,0\n"
                 "\n2,1,3,1,m,-4,0\n", 4, "duration must be > 0"),
    ("sessions", "session_id,event,time_s,gpus,duration_s\na,start,0,1,\na,cell,5,,-1\n", 3,
     "duration must be > 0"),
    ("sessions", "session_id,event,time_s,gpus,duration_s\na,start,0,1,\nb,cell,5,,1\n", 3, "no start event"),
    ("sessions", "session_id,event,time_s,gpus,duration_s\na,start,10,1,\na,cell,5,,1\n", 3, "before its start"),
    ("sessions", "session_id,event,time_s,gpus,duration_s\na,begin,0,1,\n", 2, "not one of start, cell, stop"),
    ("sessions", "session_id,event,time_s,gpus,duration_s\na,start,0,1.5,\n", 2, "is not an integer"),
]


@pytest.mark.parametrize("fmt,text,line,problem", CORRUPT)
def test_corrupt_traces_name_file_line_and_problem(tmp_path, capsys, fmt, text, line, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    reader = read_tiresias if fmt == "tiresias" else read_sessions
    with pytest.raises(TraceError) as info:
        reader(path)
    err = info.value
    assert (err.path, err.line) == (str(path), line)
    assert problem in err.problem and str(err).startswith(f"{path}:{line}: ")
    assert main(["--trace", str(path), "--format", fmt, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert f"{path}:{line}:" in stderr and problem in stderr and "Traceback" not in stderr


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    missing = tmp_path / "nope.csv"
    proc = subprocess.run([sys.executable, "-m", "notebookos.scheduler.sim", "--trace", str(missing),
                           "--format", "sessions", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "notebookos.scheduler.sim", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--trace", "--format", "--policies", "--out", "--seed", "--sessions", "--days", "--hours",
                   "--host-gpus", "--initial-hosts", "--max-hosts", "--scale-out-delay", "--scale-in-delay",
                   "--replica-start", "--migration-cost", "--process-start"):
        assert option in proc.stdout


def test_add_parser_registers_the_subcommand(tmp_path):
    import argparse

    from notebookos.scheduler.sim.cli import add_parser

    parser = argparse.ArgumentParser(prog="notebookos")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sim", "--sessions", "5", "--hours", "2", "--out", str(tmp_path / "o"), "--quiet",
                              "--no-plots", "--policies", "batch"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["policies"].keys() == {"batch"}
