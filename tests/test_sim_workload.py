"""Simulator workloads: the default generator matches its target statistics, is seeded and checks its parameters;
Tiresias jobs grouped back into sessions (``--group-sessions``); the CLI options of both."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from notebookos.scheduler.sim.cli import main
from notebookos.scheduler.sim.traces import Cell, _windowed, read_tiresias, synthetic, synthetic_sessions


def _stats(sessions) -> dict:
    """The statistics the generator's defaults are matched to, measured on its output."""
    # gaps: from the end of a cell to the submission of the next (the first cell's wait is from the session start)
    gaps = np.array([c.think for s in sessions for c in s.cells[1:]])
    counts = np.array([len(s.cells) for s in sessions])
    busy = sum(c.duration for s in sessions for c in s.cells)
    # a session's span with every cell started at once: its waits, its cells and the time it stays open after
    span = sum(s.linger + sum(c.think + c.duration for c in s.cells) for s in sessions)
    gpus = np.array([s.gpus for s in sessions])
    durations = np.array([c.duration for s in sessions for c in s.cells])
    return {"sessions": len(sessions), "cells": int(counts.sum()), "cells_mean": counts.mean(),
            "cells_median": np.median(counts), "gap_median": np.median(gaps), "gap_mean": gaps.mean(),
            "busy": busy / span, "duration_median": np.median(durations), "duration_mean": durations.mean(),
            "gpu_mix": {g: (gpus == g).mean() for g in (1, 4, 8)}}


@pytest.fixture(scope="module")
def large():
    # ten months at the default rate (~9,000 sessions, ~300k cells): the heavy tails need a large sample
    return synthetic_sessions(seed=1, hours=10 * 30 * 24)


def test_default_generator_matches_its_targets(large):
    m = _stats(large)
    assert abs(m["sessions"] - 9000) < 4 * math.sqrt(9000)  # Poisson, 30 a day
    assert m["gap_median"] == pytest.approx(180, rel=0.05)  # 3 min
    assert m["gap_mean"] == pytest.approx(1680, rel=0.10)  # 28 min (lognormal sigma 2.11: a slow sample mean)
    assert m["cells_mean"] == pytest.approx(34, rel=0.10)
    assert 11 <= m["cells_median"] <= 13
    assert m["busy"] == pytest.approx(0.66, abs=0.03)
    # the derived mean cell duration: 0.66 / 0.34 * 35 / 34 * 1680 s
    assert m["duration_mean"] == pytest.approx(0.66 / 0.34 * 35 / 34 * 1680, rel=0.15)
    assert m["duration_median"] == pytest.approx(300, rel=0.05)
    for g, p in ((1, 0.49), (4, 0.20), (8, 0.31)):
        assert m["gpu_mix"][g] == pytest.approx(p, abs=0.02)
    # every cell is closed loop (think time from the previous end) and every session ends by itself
    assert all(c.submit is None for s in large for c in s.cells)
    assert all(s.stop is None for s in large)


def _end(session) -> float:
    """When a session stops on its own timeline (each cell started at once)."""
    return session.start + session.linger + sum(c.think + c.duration for c in session.cells)


def test_default_month():
    # the default: 30 days at 30 arrivals a day, plus the sessions carried over from before (started at 0)
    month = synthetic_sessions()
    arrived = [s for s in month if s.start > 0]
    assert abs(len(arrived) - 900) < 4 * 30
    assert 20 < len(month) - len(arrived) < 120 and all(s.start == 0 for s in month[:len(month) - len(arrived)])
    assert 24_000 < _stats(month)["cells"] < 40_000  # about 31,000 (heavy tailed: a month varies by ~10 %)
    # closed at the end of the period: nothing runs past it
    assert max(_end(s) for s in month) <= 30 * 86400 + 1e-6
    assert all(c.duration > 0 and c.think >= 0 for s in month for c in s.cells)
    # without `sessions` the period sets the count: a week is a week at the same rate
    week = synthetic_sessions(hours=7 * 24, carry_over_days=0)
    assert abs(len(week) - 210) < 4 * math.sqrt(210) and min(s.start for s in week) > 0
    # neither window option: sessions arrive in the period and run to their end, long after it
    free = synthetic_sessions(carry_over_days=0, close_at_end=False)
    assert max(_end(s) for s in free) > 40 * 86400 and _stats(free)["cells"] > _stats(month)["cells"] * 0.9


def test_window_edges():
    # started at -100: cells (wait, run) (10, 50) (20, 100) (30, 200), then open 40 more: on its own timeline
    # cell 0 runs -90..-40, cell 1 -20..80, cell 2 110..310, the notebook closes at 350
    durations, idle = np.array([50.0, 100.0, 200.0]), np.array([10.0, 20.0, 30.0, 40.0])
    start, cells, linger = _windowed(-100.0, durations, idle, 200.0, close_at_end=True)
    # in the period from 0: cell 0 is gone, cell 1's remainder runs from 0, cell 2 is cut at 200, closed at 200
    assert (start, [(c.think, c.duration) for c in cells], linger) == (0.0, [(0.0, 80.0), (30.0, 90.0)], 0.0)
    start, cells, linger = _windowed(-100.0, durations, idle, 200.0, close_at_end=False)
    assert (start, [(c.think, c.duration) for c in cells], linger) == (0.0, [(0.0, 80.0), (30.0, 200.0)], 40.0)
    assert _windowed(-500.0, durations, idle, 200.0, close_at_end=True) is None  # closed at -150
    # inside the period the waits, cells and linger are exactly as drawn
    assert _windowed(5.0, durations, idle, 1e9, close_at_end=True) == (
        5.0, [Cell(50.0, think=10.0), Cell(100.0, think=20.0), Cell(200.0, think=30.0)], 40.0)
    # its first cell would come after the end: open, idle, until the end
    assert _windowed(150.0, np.array([10.0]), np.array([60.0, 5.0]), 200.0, close_at_end=True) == (150.0, [], 50.0)


def test_seeded_and_deterministic():
    a = synthetic_sessions(seed=5, hours=48)
    assert a == synthetic_sessions(seed=5, hours=48)
    assert a != synthetic_sessions(seed=6, hours=48)
    # each aspect has its own stream: other gaps (and so longer or shorter cells, for the same busy fraction)
    # leave the arrivals, GPUs and cell counts as they were; other cell durations leave the gaps. (Seen without
    # the window, which keeps or cuts cells by where they fall.)
    raw = {"seed": 5, "hours": 48, "carry_over_days": 0, "close_at_end": False}
    a = synthetic_sessions(**raw)
    b = synthetic_sessions(**raw, gap_median_s=60, gap_mean_s=600)
    assert [(s.id, s.start, s.gpus, len(s.cells)) for s in a] == [(s.id, s.start, s.gpus, len(s.cells)) for s in b]
    assert [c.think for s in a for c in s.cells] != [c.think for s in b for c in s.cells]
    shorter = synthetic_sessions(**raw, cell_median_s=60)
    assert [c.think for s in a for c in s.cells] == [c.think for s in shorter for c in s.cells]
    assert [s.linger for s in a] == [s.linger for s in shorter]
    assert [c.duration for s in a for c in s.cells] != [c.duration for s in shorter for c in s.cells]


def test_busy_fraction_sets_the_mean_cell_duration(large):
    busier = _stats(synthetic_sessions(seed=1, hours=10 * 30 * 24, busy_fraction=0.8))
    assert busier["busy"] == pytest.approx(0.8, abs=0.03)
    assert busier["gap_median"] == pytest.approx(_stats(large)["gap_median"], rel=0.01)  # same gaps, longer cells


def test_diurnal_shape():
    flat = synthetic_sessions(seed=2, sessions=20_000, hours=10 * 24, carry_over_days=0)
    shaped = synthetic_sessions(seed=2, sessions=20_000, hours=10 * 24, carry_over_days=0, diurnal=0.8,
                                diurnal_peak_hour=14)

    def near(sessions, hour):  # fraction of arrivals within 2 hours of `hour`
        h = np.array([s.start for s in sessions]) % 86400 / 3600
        return (np.abs((h - hour + 12) % 24 - 12) < 2).mean()

    assert near(flat, 14) == pytest.approx(4 / 24, abs=0.015)
    assert near(shaped, 14) > 1.5 * near(shaped, 2)  # peak at 14:00, trough at 02:00
    assert abs(len(shaped) - 20_000) < 4 * math.sqrt(20_000)  # the same expected count


BAD = [
    ({"sessions": -1}, "sessions"),
    ({"hours": 0}, "hours"),
    ({"seed": -1}, "seed"),
    ({"cells_median": 0.5}, "cells_median"),
    ({"cells_per_session": 10, "cells_median": 12}, "cells_per_session"),
    ({"gap_median_s": 0}, "gap_median_s"),
    ({"gap_mean_s": 100}, "gap_mean_s"),
    ({"busy_fraction": 1.0}, "busy_fraction"),
    ({"busy_fraction": 0}, "busy_fraction"),
    ({"busy_fraction": float("nan")}, "busy_fraction"),
    ({"cell_median_s": 0}, "cell_median_s"),
    ({"busy_fraction": 0.01}, "cell_median_s"),  # a mean cell of 17 s is below the 300 s median
    ({"cell_median_s": 10_000}, "cell_median_s"),
    ({"diurnal": 1.5}, "diurnal"),
    ({"diurnal_peak_hour": 24}, "diurnal_peak_hour"),
    ({"gpu_mix": ((1, 0.5), (8, 0.2))}, "gpu_mix"),
    ({"gpu_mix": ()}, "gpu_mix"),
    ({"carry_over_days": -1}, "carry_over_days"),
]


@pytest.mark.parametrize("kwargs,name", BAD)
def test_bad_parameters_name_themselves(kwargs, name):
    with pytest.raises(ValueError) as info:
        synthetic_sessions(**kwargs)
    assert str(info.value).startswith(f"{name} must")


# -------------------------------------------------------------------------------------------- Tiresias grouping

# Rows out of order on purpose (grouping goes by job_id, numerically: 10 after 9). Minutes:
#   8: 0..10 (2 GPUs); 9: 15..20 (4), 5 min after 8; 10: 80..85 (1), 60 min after 9 (not more: same session)
#   11: 146..151 (8), 61 min after 10: a new session
#   12: 100..130 (1), submitted before 11: a new session; 13: 120..130 (1), submitted while 12 runs: same session
JOBS = """\
job_id,num_gpu,submit_time,iterations,model_name,duration,interval
11,8,146,1,vgg19,5,0
8,2,0,1,resnet50,10,0
10,1,80,1,resnet50,5,0
13,1,120,1,bert,10,0
9,4,15,1,resnet50,5,0
12,1,100,1,bert,30,0
"""


@pytest.fixture
def jobs(tmp_path) -> Path:
    path = tmp_path / "jobs.csv"
    path.write_text(JOBS)
    return path


def _shape(sessions):
    return [(s.id, s.gpus, s.start, [(c.submit, c.duration) for c in s.cells], s.stop) for s in sessions]


def test_tiresias_groups_sessions(jobs):
    assert _shape(read_tiresias(jobs, group_sessions=True)) == [
        ("8-10", 4, 0, [(0, 600), (900, 300), (4800, 300)], None),  # the largest num_gpu of its jobs
        ("12-13", 1, 6000, [(6000, 1800), (7200, 600)], None),  # split: 12's submit time went backwards
        ("11", 8, 8760, [(8760, 300)], None),  # split: 61 min after 10's end
    ]
    # a shorter gap also splits 10 off (60 min after 9's end)
    assert [s.id for s in read_tiresias(jobs, group_sessions=True, session_gap_s=30 * 60)] == [
        "8-9", "10", "12-13", "11"]


def test_tiresias_without_grouping_is_one_session_per_job(jobs):
    assert _shape(read_tiresias(jobs)) == [
        ("8", 2, 0, [(0, 600)], None), ("9", 4, 900, [(900, 300)], None), ("10", 1, 4800, [(4800, 300)], None),
        ("12", 1, 6000, [(6000, 1800)], None), ("13", 1, 7200, [(7200, 600)], None),
        ("11", 8, 8760, [(8760, 300)], None)]


def test_tiresias_text_ids_group_in_file_order(tmp_path):
    path = tmp_path / "named.csv"
    path.write_text("job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n"
                    "b9,1,0,1,m,1,0\nb10,2,2,1,m,1,0\na1,1,1,1,m,1,0\n")
    assert [(s.id, s.gpus) for s in read_tiresias(path, group_sessions=True)] == [("b9-b10", 2), ("a1", 1)]
    with pytest.raises(ValueError, match="session_gap_s"):
        read_tiresias(path, group_sessions=True, session_gap_s=-1)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_cli_group_sessions(tmp_path, jobs, capsys):
    base = ["--trace", str(jobs), "--format", "tiresias", "--policies", "reservation", "--no-plots", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "g"), "--group-sessions"]) == 0
    s = _summary(tmp_path / "g")
    assert (s["trace"]["sessions"], s["trace"]["cells"]) == (3, 6)
    assert (s["trace"]["group_sessions"], s["trace"]["session_gap_s"]) == (True, 3600)
    assert s["policies"]["reservation"]["unfinished_sessions"] == 0
    assert main([*base, "--out", str(tmp_path / "g30"), "--group-sessions", "--session-gap", "30"]) == 0
    assert _summary(tmp_path / "g30")["trace"]["sessions"] == 4
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert _summary(tmp_path / "one")["trace"]["sessions"] == 6
    assert _summary(tmp_path / "one")["trace"]["group_sessions"] is False
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "x"), "--session-gap", "30"]) == 2
    assert "--session-gap needs --group-sessions" in capsys.readouterr().err
    sessions_csv = tmp_path / "s.csv"
    sessions_csv.write_text("session_id,event,time_s,gpus,duration_s\na,start,0,1,\n")
    assert main(["--trace", str(sessions_csv), "--group-sessions", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "--group-sessions is for Tiresias traces" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ generator options


def test_cli_default_workload_records_its_parameters(tmp_path):
    out = tmp_path / "d"
    assert main(["--hours", "24", "--seed", "4", "--gap-median", "120", "--policies", "reservation", "--no-plots",
                 "--quiet", "--out", str(out)]) == 0
    trace = _summary(out)["trace"]
    assert trace["format"] == "synthetic"
    params = trace["synthetic"]
    assert params == {"seed": 4, "sessions": 30.0, "hours": 24.0, "cells_per_session": 34.0, "cells_median": 12.0,
                      "gap_median_s": 120.0, "gap_mean_s": 1680.0, "busy_fraction": 0.66, "cell_median_s": 300.0,
                      "gpu_mix": [[1, 0.49], [4, 0.2], [8, 0.31]], "diurnal": 0.0, "diurnal_peak_hour": 14.0,
                      "carry_over_days": 90.0, "close_at_end": True}
    regenerated = synthetic_sessions(**{**params, "gpu_mix": tuple(map(tuple, params["gpu_mix"]))})
    assert (trace["sessions"], trace["cells"]) == (len(regenerated), sum(len(s.cells) for s in regenerated))


def test_cli_legacy_generator_is_the_old_one(tmp_path):
    out = tmp_path / "legacy"
    assert main(["--format", "synthetic-legacy", "--sessions", "40", "--hours", "24", "--think-time", "600",
                 "--policies", "reservation", "--no-plots", "--quiet", "--out", str(out)]) == 0
    trace = _summary(out)["trace"]
    old = synthetic(seed=0, sessions=40, hours=24, think_time_s=600)
    assert trace["format"] == "synthetic-legacy"
    assert (trace["sessions"], trace["cells"]) == (len(old), sum(len(s.cells) for s in old))
    assert trace["synthetic"]["cell_mean_s"] == 3300 and trace["synthetic"]["linger_s"] == 3600


@pytest.mark.parametrize("argv,message", [
    (["--think-time", "60"], "--think-time: option(s) of --format synthetic-legacy, not of synthetic"),
    (["--format", "synthetic-legacy", "--gap-median", "60"], "--gap-median: option(s) of --format synthetic"),
    (["--gap-mean", "60"], "gap_mean_s must be >= gap_median_s"),
    (["--busy-fraction", "1.5"], "busy_fraction must be > 0 and < 1, got 1.5 (--busy-fraction)"),
    (["--diurnal", "2"], "(--diurnal)"),
])
def test_cli_bad_generator_options(tmp_path, capsys, argv, message):
    assert main([*argv, "--hours", "2", "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--format", "synthetic-legacy", "--group-sessions", "--session-gap", "--cells-per-session",
                   "--cells-median", "--gap-median", "--gap-mean", "--busy-fraction", "--cell-median", "--gpu-mix",
                   "--diurnal", "--diurnal-peak", "--carry-over", "--close-at-end", "--no-close-at-end",
                   "--think-time", "--cell-mean", "--linger"):
        assert option in text
