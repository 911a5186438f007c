"""Workloads for the simulator: notebook sessions and their cells, read from a trace or generated.

A :class:`Session` is one notebook kernel: it starts, asks for a number of GPUs (bound while its cells run),
submits cells one after another, and stops. Three sources:

**Tiresias CSV** (``--format tiresias``; the job traces of the Tiresias simulator, Gu et al., NSDI '19)::

    job_id,num_gpu,submit_time,iterations,model_name,duration,interval
    1,8,0,5000,resnet50,120,0

``submit_time`` and ``duration`` are in **minutes**. The format has no session column, so each job (row) is its
own session: the session starts at ``submit_time``, submits one cell of ``duration`` at once, and ends when that
cell finishes. ``iterations``, ``model_name`` and ``interval`` are read but not used (they must be present; a
blank is allowed). ``num_gpu`` above a host's GPUs is clipped to one host by the simulator (it counts them).

**Sessions CSV** (``--format sessions``; this project's format): one row per event, rows of a session in any
order, times in **seconds** from the start of the trace::

    session_id,event,time_s,gpus,duration_s
    alice,start,0,2,
    alice,cell,10,,600
    alice,cell,700,,30
    alice,stop,3600,,
    bob,start,60,8,
    bob,cell,60,,120

- ``start``: the session (kernel) starts at ``time_s`` and asks for ``gpus`` GPUs (required, >= 0).
- ``cell``: a cell is submitted at ``time_s`` (>= the session's start) and runs for ``duration_s`` (> 0).
  ``gpus`` may be blank or must equal the session's. Cells of a session run one at a time: a cell submitted while
  the previous one still runs starts being scheduled when it finishes (and its delay is counted from then).
- ``stop``: the session ends at ``time_s`` or when its last cell finishes, whichever is later. Optional: without
  it the session ends when its last cell finishes.

Blank lines and lines starting with ``#`` are skipped. Extra columns are ignored.

**Synthetic** (``--format synthetic``, :func:`synthetic`): seeded, closed-loop sessions. Arrivals are a Poisson
process (``sessions`` expected over ``hours``); each session asks for 1, 4 or 8 GPUs with probabilities
0.49/0.20/0.31, runs a geometric number of cells (mean ``cells_per_session``, at least 1); before each cell the
user thinks for an exponential time (mean ``think_time_s``, counted from the session's start or from the end of the
previous cell, so scheduling delays push later cells back); cell durations are lognormal with median
``cell_median_s`` (5 min) and mean ``cell_mean_s`` (55 min) (sigma = sqrt(2 ln(mean/median)) ~= 2.19: heavy
tailed); after the last cell the notebook stays open for an exponential time (mean ``linger_s``) and stops.

A trace that cannot be read raises :class:`TraceError`, which names the file, the line and the problem.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Cell", "Session", "TraceError", "TRACE_FORMATS", "read_tiresias", "read_sessions", "synthetic",
           "load_trace", "sniff_format"]

TRACE_FORMATS = ("tiresias", "sessions", "synthetic")
TIRESIAS_COLUMNS = ("job_id", "num_gpu", "submit_time", "iterations", "model_name", "duration", "interval")
SESSIONS_COLUMNS = ("session_id", "event", "time_s", "gpus", "duration_s")


class TraceError(ValueError):
    """A trace that cannot be used: ``path``, ``line`` (1-based; None for the whole file) and ``problem``."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass(slots=True)
class Cell:
    """One cell. ``submit`` is an absolute time (trace) or None; then ``think`` seconds after the previous cell
    ended (or after the session started, for the first) it is submitted (closed loop)."""

    duration: float
    submit: float | None = None
    think: float = 0.0


@dataclass(slots=True)
class Session:
    """One notebook session (one kernel)."""

    id: str
    gpus: int
    start: float
    cells: list[Cell] = field(default_factory=list)
    #: absolute stop time (ends at max(stop, end of last cell)); None: ``linger`` seconds after the last cell
    stop: float | None = None
    linger: float = 0.0


# -------------------------------------------------------------------------------------------------- parsing


def _number(path: str, line: int, column: str, text: str | None, *, integer: bool = False,
            minimum: float | None = 0.0, strict: bool = False) -> float:
    if text is None or text.strip() == "":
        raise TraceError(path, line, f"column {column!r} is empty")
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            raise TraceError(path, line, f"column {column!r}: {text!r} is not a number") from None
        if not integer or not f.is_integer():
            kind = "an integer" if integer else "a number"
            raise TraceError(path, line, f"column {column!r}: {text!r} is not {kind}") from None
        value = int(f)
    if not math.isfinite(value):
        raise TraceError(path, line, f"column {column!r}: {text!r} is not finite")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        rel = ">" if strict else ">="
        noun = "duration" if "duration" in column else column
        raise TraceError(path, line, f"column {column!r}: {noun} must be {rel} {minimum:g}, got {text!r}")
    return value


def _rows(path: str, required: tuple[str, ...]):
    """(line number, row dict) for each data row; checks the header."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise TraceError(path, None, f"cannot open: {e.strerror or e}") from None
    with f:
        lines = ((i, raw) for i, raw in enumerate(f, 1)
                 if raw.strip() and not raw.lstrip().startswith("#"))
        header_line = None
        header: list[str] = []
        for i, raw in lines:
            header_line = i
            header = [h.strip() for h in next(csv.reader([raw]))]
            break
        if header_line is None:
            raise TraceError(path, None, "empty trace (no header line)")
        missing = [c for c in required if c not in header]
        if missing:
            raise TraceError(path, header_line, f"missing column(s) {', '.join(missing)} in the header "
                             f"(expected {','.join(required)}; got {','.join(header)})")
        for i, raw in lines:
            try:
                values = next(csv.reader([raw]))
            except csv.Error as e:
                raise TraceError(path, i, f"bad CSV: {e}") from None
            if len(values) < len(header):
                raise TraceError(path, i, f"{len(values)} fields, the header has {len(header)}")
            yield i, dict(zip(header, (v.strip() for v in values), strict=False))


def read_tiresias(path: str | os.PathLike) -> list[Session]:
    """Sessions of a Tiresias job trace (one single-cell session per job; minutes -> seconds)."""
    path = os.fspath(path)
    sessions: list[Session] = []
    seen: dict[str, int] = {}
    for line, row in _rows(path, TIRESIAS_COLUMNS):
        job = row["job_id"]
        if not job:
            raise TraceError(path, line, "column 'job_id' is empty")
        if job in seen:
            raise TraceError(path, line, f"job_id {job!r} repeats line {seen[job]}")
        seen[job] = line
        gpus = int(_number(path, line, "num_gpu", row["num_gpu"], integer=True))
        submit = _number(path, line, "submit_time", row["submit_time"]) * 60.0
        duration = _number(path, line, "duration", row["duration"], strict=True) * 60.0
        sessions.append(Session(job, gpus, submit, [Cell(duration, submit=submit)], stop=None))
    if not sessions:
        raise TraceError(path, None, "no jobs in the trace")
    sessions.sort(key=lambda s: s.start)
    return sessions


def read_sessions(path: str | os.PathLike) -> list[Session]:
    """Sessions of a sessions CSV (see the module docstring)."""
    path = os.fspath(path)
    starts: dict[str, tuple[int, float, int]] = {}
    cells: dict[str, list[tuple[float, float, int, int]]] = {}
    stops: dict[str, tuple[int, float]] = {}
    for line, row in _rows(path, SESSIONS_COLUMNS):
        sid, event = row["session_id"], row["event"].lower()
        if not sid:
            raise TraceError(path, line, "column 'session_id' is empty")
        time_s = _number(path, line, "time_s", row["time_s"])
        if event == "start":
            if sid in starts:
                raise TraceError(path, line, f"session {sid!r} starts twice (first on line {starts[sid][0]})")
            gpus = int(_number(path, line, "gpus", row["gpus"], integer=True))
            starts[sid] = (line, time_s, gpus)
        elif event == "cell":
            duration = _number(path, line, "duration_s", row["duration_s"], strict=True)
            gpus_text = row["gpus"]
            gpus = int(_number(path, line, "gpus", gpus_text, integer=True)) if gpus_text else -1
            cells.setdefault(sid, []).append((time_s, duration, line, gpus))
        elif event == "stop":
            if sid in stops:
                raise TraceError(path, line, f"session {sid!r} stops twice (first on line {stops[sid][0]})")
            stops[sid] = (line, time_s)
        else:
            raise TraceError(path, line, f"column 'event': {row['event']!r} is not one of start, cell, stop")
    sessions: list[Session] = []
    orphans = [(v[0][2], s) for s, v in cells.items() if s not in starts]
    orphans += [(v[0], s) for s, v in stops.items() if s not in starts]
    if orphans:
        line, sid = min(orphans)
        raise TraceError(path, line, f"session {sid!r} has no start event")
    for sid, (line, start, gpus) in starts.items():
        session_cells = sorted(cells.get(sid, []), key=lambda c: (c[0], c[2]))
        for time_s, _, cline, cgpus in session_cells:
            if time_s < start:
                raise TraceError(path, cline, f"cell of session {sid!r} at {time_s:g} s is before its start "
                                 f"({start:g} s, line {line})")
            if cgpus >= 0 and cgpus != gpus:
                raise TraceError(path, cline, f"cell of session {sid!r} asks for {cgpus} GPUs, the session "
                                 f"for {gpus} (line {line})")
        stop = None
        if sid in stops:
            sline, stop = stops[sid]
            if stop < start:
                raise TraceError(path, sline, f"session {sid!r} stops at {stop:g} s, before its start "
                                 f"({start:g} s, line {line})")
            late = [c for c in session_cells if c[0] > stop]
            if late:
                raise TraceError(path, late[0][2], f"cell of session {sid!r} at {late[0][0]:g} s is after its "
                                 f"stop ({stop:g} s, line {sline})")
        sessions.append(Session(sid, gpus, start, [Cell(d, submit=t) for t, d, _, _ in session_cells], stop=stop))
    if not sessions:
        raise TraceError(path, None, "no sessions in the trace")
    sessions.sort(key=lambda s: s.start)
    return sessions


# ------------------------------------------------------------------------------------------------ synthetic

DEFAULT_GPU_MIX = ((1, 0.49), (4, 0.20), (8, 0.31))


def synthetic(seed: int = 0, sessions: float = 2000, hours: float = 30 * 24, cells_per_session: float = 6.0,
              think_time_s: float = 1800.0, cell_median_s: float = 300.0, cell_mean_s: float = 3300.0,
              linger_s: float = 3600.0, gpu_mix: tuple[tuple[int, float], ...] = DEFAULT_GPU_MIX) -> list[Session]:
    """Seeded synthetic sessions (see the module docstring); the same arguments give the same sessions."""
    if sessions < 0 or hours <= 0:
        raise ValueError("sessions must be >= 0 and hours > 0")
    if cells_per_session < 1:
        raise ValueError("cells_per_session must be >= 1")
    if cell_median_s <= 0 or cell_mean_s < cell_median_s:
        raise ValueError("the cell duration needs 0 < median <= mean (lognormal)")
    values = np.array([g for g, _ in gpu_mix])
    probs = np.array([p for _, p in gpu_mix], dtype=float)
    if (probs < 0).any() or not math.isclose(probs.sum(), 1.0, rel_tol=1e-6):
        raise ValueError(f"GPU mix probabilities must be >= 0 and sum to 1, got {probs.tolist()}")
    rng = np.random.default_rng(seed)
    horizon = hours * 3600.0
    n = int(rng.poisson(sessions))
    starts = np.sort(rng.uniform(0.0, horizon, n))  # a Poisson process, given its count
    gpus = rng.choice(values, size=n, p=probs / probs.sum())
    ncells = rng.geometric(1.0 / cells_per_session, size=n)
    total = int(ncells.sum())
    mu, sigma = math.log(cell_median_s), math.sqrt(2.0 * math.log(cell_mean_s / cell_median_s))
    durations = rng.lognormal(mu, sigma, total) if sigma > 0 else np.full(total, cell_median_s)
    thinks = rng.exponential(think_time_s, total) if think_time_s > 0 else np.zeros(total)
    lingers = rng.exponential(linger_s, n) if linger_s > 0 else np.zeros(n)
    out: list[Session] = []
    j = 0
    width = len(str(max(n - 1, 0)))
    for i in range(n):
        k = int(ncells[i])
        cells = [Cell(float(durations[j + c]), think=float(thinks[j + c])) for c in range(k)]
        j += k
        out.append(Session(f"s{i:0{width}d}", int(gpus[i]), float(starts[i]), cells, linger=float(lingers[i])))
    return out


def sniff_format(path: str | os.PathLike) -> str:
    """``tiresias`` or ``sessions`` from a trace's header."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.lstrip().startswith("#"):
                    header = {h.strip() for h in line.split(",")}
                    break
            else:
                header = set()
    except OSError as e:
        raise TraceError(path, None, f"cannot open: {e.strerror or e}") from None
    if "job_id" in header:
        return "tiresias"
    if "session_id" in header:
        return "sessions"
    raise TraceError(path, 1, "cannot tell the trace format from the header (no job_id or session_id column); "
                     "pass --format")


def load_trace(path: str | os.PathLike | None, fmt: str | None, **synthetic_args) -> list[Session]:
    """Sessions from ``path`` in ``fmt`` (sniffed when None), or synthetic ones (``fmt='synthetic'``)."""
    if fmt == "synthetic" or (fmt is None and path is None):
        return synthetic(**synthetic_args)
    if path is None:
        raise ValueError(f"--format {fmt} needs --trace PATH")
    fmt = fmt or sniff_format(path)
    if fmt == "tiresias":
        return read_tiresias(path)
    if fmt == "sessions":
        return read_sessions(path)
    raise ValueError(f"unknown trace format {fmt!r}; one of {', '.join(TRACE_FORMATS)}")
