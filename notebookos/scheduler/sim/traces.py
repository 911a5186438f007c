"""Workloads for the simulator: notebook sessions and their cells, read from a trace or generated.

A :class:`Session` is one notebook kernel: it starts, asks for a number of GPUs (bound while its cells run),
submits cells one after another, and stops. Four sources (``--format`` of ``notebookos sim``):

**Tiresias CSV** (``--format tiresias``, :func:`read_tiresias`; the job traces of the Tiresias simulator, Gu et
al., NSDI '19)::

    job_id,num_gpu,submit_time,iterations,model_name,duration,interval
    1,8,0,5000,resnet50,120,0

``submit_time`` and ``duration`` are in **minutes**. ``iterations``, ``model_name`` and ``interval`` are read but
not used (they must be present; a blank is allowed). ``num_gpu`` above a host's GPUs is clipped to one host by the
simulator (it counts them). The format has no session column, so by default each job (row) is its own session:
the session starts at ``submit_time``, submits one cell of ``duration`` at once, and ends when that cell finishes.

With ``group_sessions=True`` (``--group-sessions``) jobs are grouped back into sessions. Tiresias traces written
from session logs keep a session's trainings as consecutive job ids with non-decreasing submit times, so: in
job_id order (numeric when every job_id is an integer, else the file's order), a job belongs to the session of
the job before it unless its submit time is earlier than that job's (the submit time went backwards: another
session's jobs begin) or it is submitted more than ``session_gap_s`` (``--session-gap`` minutes, default 60)
after that job's end (``submit_time + duration``). A grouped session starts at its first job's submit time; its
cells are its jobs, each submitted at its own ``submit_time`` (fixed by the trace, as in the sessions format) and
running for its ``duration``; it asks for the largest ``num_gpu`` of its jobs (one kernel holds one GPU
request); it ends when its last cell finishes. Its id is its first job's id, or ``first-last`` for several jobs.

**Sessions CSV** (``--format sessions``, :func:`read_sessions`; this project's format): one row per event, rows of
a session in any order, times in **seconds** from the start of the trace::

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

**Synthetic** (``--format synthetic``, :func:`synthetic_sessions`; the default workload without ``--trace``):
seeded, closed-loop sessions whose defaults match the statistics of a real month of notebook sessions (about 900
sessions and 31,000 training cells in 30 days; think gaps of median 3 min and mean 28 min; GPUs busy about 66 % of
a session's span). The period is a window onto a steady stream of sessions: sessions open at its start are
carried over into it and sessions open at its end are closed there (``carry_over_days``, ``close_at_end``). See
:func:`synthetic_sessions` for the model and how its cell durations are derived.

**Synthetic, legacy** (``--format synthetic-legacy``, :func:`synthetic`): the generator that was the default
before, kept so that earlier results (the README's tables of 2,000 sessions a month) can be reproduced. Arrivals
are a Poisson process (``sessions`` expected over ``hours``); each session asks for 1, 4 or 8 GPUs with
probabilities 0.49/0.20/0.31, runs a geometric number of cells (mean ``cells_per_session``, at least 1); before
each cell the user thinks for an exponential time (mean ``think_time_s``, counted from the session's start or from
the end of the previous cell, so scheduling delays push later cells back); cell durations are lognormal with median
``cell_median_s`` (5 min) and mean ``cell_mean_s`` (55 min) (sigma = sqrt(2 ln(mean/median)) ~= 2.19: heavy
tailed); after the last cell the notebook stays open for an exponential time (mean ``linger_s``) and stops. Its
think times (median 21 min) and its 6 cells a session are not those of real notebooks, and its sessions run to
their end after the period.

A trace that cannot be read raises :class:`TraceError`, which names the file, the line and the problem.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Cell", "Session", "TraceError", "TRACE_FORMATS", "GENERATORS", "read_tiresias", "read_sessions",
           "synthetic_sessions", "synthetic", "load_trace", "sniff_format"]

TRACE_FORMATS = ("tiresias", "sessions", "synthetic", "synthetic-legacy")
TIRESIAS_COLUMNS = ("job_id", "num_gpu", "submit_time", "iterations", "model_name", "duration", "interval")
SESSIONS_COLUMNS = ("session_id", "event", "time_s", "gpus", "duration_s")
#: --session-gap's default (60 min): with think gaps of median 3 min and mean 28 min (lognormal, the default
#: synthetic workload) 92 % of the gaps within a session are shorter, so an hour splits only the tail
DEFAULT_SESSION_GAP_S = 3600.0


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


#: a Tiresias job: (job_id, num_gpu, submit time s, duration s)
_Job = tuple[str, int, float, float]


def read_tiresias(path: str | os.PathLike, *, group_sessions: bool = False,
                  session_gap_s: float = DEFAULT_SESSION_GAP_S) -> list[Session]:
    """Sessions of a Tiresias job trace (minutes -> seconds): one single-cell session per job, or with
    ``group_sessions`` the jobs grouped into sessions split where the submit time goes backwards or a job comes
    more than ``session_gap_s`` seconds after the previous job's end (see the module docstring)."""
    path = os.fspath(path)
    if not session_gap_s >= 0:
        raise ValueError(f"session_gap_s must be >= 0, got {session_gap_s!r}")
    jobs: list[_Job] = []  # in file order
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
        jobs.append((job, gpus, submit, duration))
    if not jobs:
        raise TraceError(path, None, "no jobs in the trace")
    if group_sessions:
        sessions = [_job_session(group) for group in _group_jobs(jobs, session_gap_s)]
    else:
        sessions = [Session(job, gpus, submit, [Cell(duration, submit=submit)], stop=None)
                    for job, gpus, submit, duration in jobs]
    sessions.sort(key=lambda s: s.start)
    return sessions


def _group_jobs(jobs: list[_Job], gap_s: float) -> list[list[_Job]]:
    """Runs of consecutive jobs (in job_id order) that form one session each."""
    try:
        ordered = sorted(jobs, key=lambda j: int(j[0]))
    except ValueError:  # ids that are not all integers: their text order would mix sessions ("10" < "9"),
        ordered = jobs  # so the file's order, which a trace writer keeps for a session's jobs
    groups: list[list[_Job]] = []
    for job in ordered:
        if groups:
            _, _, prev_submit, prev_duration = groups[-1][-1]
            # a submit time that goes backwards is the next session's first job; a long pause is a new session
            if job[2] >= prev_submit and job[2] - (prev_submit + prev_duration) <= gap_s:
                groups[-1].append(job)
                continue
        groups.append([job])
    return groups


def _job_session(group: list[_Job]) -> Session:
    """One session of grouped jobs: it asks for their largest GPU count; each job is a cell at its submit time."""
    first, last = group[0][0], group[-1][0]
    sid = first if len(group) == 1 else f"{first}-{last}"
    cells = [Cell(duration, submit=submit) for _, _, submit, duration in group]
    return Session(sid, max(gpus for _, gpus, _, _ in group), group[0][2], cells, stop=None)


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
#: the default arrival rate of :func:`synthetic_sessions`: 900 sessions in 30 days
SESSIONS_PER_DAY = 30.0


def _gpu_mix(gpu_mix: tuple[tuple[int, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    """GPU counts and their probabilities, checked."""
    values = np.array([g for g, _ in gpu_mix])
    probs = np.array([p for _, p in gpu_mix], dtype=float)
    if not len(values) or (values < 0).any():
        raise ValueError(f"gpu_mix must list at least one GPU count, all >= 0, got {list(gpu_mix)}")
    if (probs < 0).any() or not math.isclose(probs.sum(), 1.0, rel_tol=1e-6):
        raise ValueError(f"gpu_mix must have probabilities >= 0 that sum to 1, got {probs.tolist()}")
    return values, probs / probs.sum()


def _lognormal_sigma(median_name: str, median: float, mean_name: str, mean: float) -> float:
    """The sigma of the lognormal with this median and mean (mean = median * exp(sigma^2 / 2))."""
    if not median > 0:
        raise ValueError(f"{median_name} must be > 0, got {median!r}")
    if not mean >= median:
        raise ValueError(f"{mean_name} must be >= {median_name} (a lognormal's mean is at least its median), "
                         f"got {mean!r} < {median!r}")
    return math.sqrt(2.0 * math.log(mean / median))


def _arrivals(rng: np.random.Generator, rate: float, begin: float, end: float, amplitude: float,
              peak_hour: float) -> np.ndarray:
    """Sorted arrival times of a Poisson process over [begin, end) of mean rate ``rate`` (per second), its rate
    proportional to 1 + amplitude * cos(2 pi (t - peak) / day) (time 0 is midnight); amplitude 0: homogeneous."""
    length = end - begin
    if amplitude == 0:  # a Poisson process, given its count, is that many uniform times
        return np.sort(rng.uniform(begin, end, int(rng.poisson(rate * length))))
    day, phase = 86400.0, 2.0 * math.pi * peak_hour / 24.0
    # the weight's mean over [begin, end): the mean rate stays `rate` over a partial day too
    mean = 1.0 + amplitude * day / (2.0 * math.pi * length) * (
        math.sin(2.0 * math.pi * end / day - phase) - math.sin(2.0 * math.pi * begin / day - phase))
    # thinning (Lewis and Shedler): candidates at the peak rate, each kept with probability weight / peak weight
    candidates = rng.uniform(begin, end, int(rng.poisson(rate / mean * (1.0 + amplitude) * length)))
    weight = 1.0 + amplitude * np.cos(2.0 * math.pi * candidates / day - phase)
    keep = rng.uniform(0.0, 1.0 + amplitude, len(candidates)) < weight
    return np.sort(candidates[keep])


def _windowed(start: float, durations: np.ndarray, idle: np.ndarray, horizon: float,
              close_at_end: bool) -> tuple[float, list[Cell], float] | None:
    """One generated session as seen in the period [0, horizon): (start, cells, linger), or None if it is not
    open in it. ``durations``: its cells; ``idle``: its waits before each cell and, last, its linger; placed on
    its own timeline (each cell started at once). A session that started before 0 (carried over) is in the period
    from 0 on: cells that ended before 0 are dropped, one running at 0 keeps its remainder (submitted at 0). With
    ``close_at_end`` the session is closed at ``horizon``: cells it would submit later are dropped, one running
    then is cut there, and it stops there at the latest."""
    k = len(durations)
    submits = start + np.cumsum(idle[:k]) + np.concatenate(([0.0], np.cumsum(durations)[:-1]))
    ends = submits + durations
    stop = (ends[-1] if k else start) + idle[k]
    if stop <= 0:
        return None  # carried over, but closed before the period
    begin, end = max(start, 0.0), (horizon if close_at_end else math.inf)
    cells: list[Cell] = []
    prev = begin  # where the next kept cell's wait counts from: the session's start or the previous cell's end
    for i, (submit, finish) in enumerate(zip(submits.tolist(), ends.tolist(), strict=True)):
        if finish <= 0:
            continue
        if submit >= end:
            break
        # a wait after the session's start or a kept cell, and a cell inside the period, are as drawn
        # (recomputing them from the timeline would round them)
        think = float(idle[i]) if submit >= 0 and (cells or start >= 0) else max(submit, 0.0) - prev
        duration = float(durations[i]) if submit >= 0 and finish <= end else min(finish, end) - max(submit, 0.0)
        cells.append(Cell(duration, think=think))
        prev = min(finish, end)
    if stop > end:
        return begin, cells, end - prev  # closed at the end
    return begin, cells, float(idle[k]) if len(cells) == k else stop - prev


def synthetic_sessions(seed: int = 0, sessions: float | None = None, hours: float = 30 * 24,
                       cells_per_session: float = 34.0, cells_median: float = 12.0, gap_median_s: float = 180.0,
                       gap_mean_s: float = 1680.0, busy_fraction: float = 0.66, cell_median_s: float = 300.0,
                       gpu_mix: tuple[tuple[int, float], ...] = DEFAULT_GPU_MIX, diurnal: float = 0.0,
                       diurnal_peak_hour: float = 14.0, carry_over_days: float = 90.0,
                       close_at_end: bool = True) -> list[Session]:
    """Seeded, closed-loop notebook sessions whose defaults match a real month of notebook sessions
    (``--format synthetic``, the default workload of ``notebookos sim``); the same arguments give the same
    sessions.

    The month it matches: about 900 sessions in 30 days, about 31,000 training cells (about 34 a session, heavy
    tailed), 1, 4 or 8 GPUs a session, gaps between the end of a cell and the submission of the next of median
    3 min and mean 28 min, and GPUs busy about 66 % of a session's span (its start to its end). The model:

    - Arrivals: a Poisson process, ``sessions`` expected over ``hours`` (None: ``SESSIONS_PER_DAY`` = 30 a day,
      900 in 30 days). ``diurnal`` in [0, 1] shapes the rate as 1 + diurnal * cos(2 pi (t - peak) / 24 h) with
      its peak at ``diurnal_peak_hour`` (time 0 is midnight); 0 (the default) keeps it flat, as the month's
      statistics say nothing of the time of day.
    - GPUs: ``gpu_mix`` ((GPUs, probability), ...; 1:0.49, 4:0.20, 8:0.31), bound while the session's cells run.
    - Cells per session: max(1, round(X)) with X lognormal of median ``cells_median`` (12, our choice: most
      sessions are short, a few run hundreds of cells) and mean ``cells_per_session`` (34; sigma 1.44).
    - Idle periods: before the first cell (from the session's start), between cells (from the end of the previous
      cell: closed loop, so scheduling delays push later cells back) and after the last cell (the notebook stays
      open, then stops): a session of n cells has n + 1, all lognormal with median ``gap_median_s`` (180 s) and
      mean ``gap_mean_s`` (1680 s; sigma 2.11).
    - Cell durations: lognormal with median ``cell_median_s`` (300 s, as the legacy generator) and the mean D that
      makes GPUs busy ``busy_fraction`` of a session's span. Derivation, with n-bar = ``cells_per_session``,
      G = ``gap_mean_s`` and f = ``busy_fraction``: a session of n cells is busy n D and spans n D + (n + 1) G
      on average (cells started at once), so over all sessions f = n-bar D / (n-bar D + (n-bar + 1) G), hence
      D = f / (1 - f) * (n-bar + 1) / n-bar * G = 0.66 / 0.34 * 35 / 34 * 1680 s ~= 3357 s (56 min; sigma 2.20).
      f is the fraction of all sessions' time (total busy / total span), not a mean of per-session fractions.

    The period is a window onto a steady stream of such sessions, as a month of a real trace is. These tails are
    long (a session spans 56 h on average, 14 h at the median, and a few a month span weeks), so sessions that
    simply arrived in the period and ran to their end would leave the period's first days emptier than the rest
    and drag the run on for months after it (without either option below, seed 0's 30 days run to day 283), all
    the while keeping hosts provisioned. Hence, each on its own:

    - ``carry_over_days`` (90): sessions also arrive, at the same rate, in that many days before the period; those
      still open at its start are in it from time 0 on (their cells that ended before are dropped; one running at
      0 keeps its remainder, submitted at 0). 0: the period starts with no session open.
    - ``close_at_end`` (True): sessions still open at the end of the period are closed there: cells they would
      submit later are dropped, a cell running then is cut there, and the notebook stops there at the latest.
      These times are those of the sessions' own timelines (each cell started at once); in a run, a cell delayed
      by the scheduler can still end a little after the period.

    So a 30-day period holds about 900 arrivals plus about 60 sessions carried over, and about 30,600 cells, the
    steady state's 900 x 34 (30 seeds: mean 30,650; the 90 days of carry-over miss only the rare sessions that
    span longer). The per-session statistics above are those of whole sessions; the sessions cut at the period's
    edges have fewer cells, so a 30-day period has about 32 a session.

    Each aspect draws from its own random stream (spawned from ``seed``), so changing, say, the cell median leaves
    the arrivals, GPU counts, cell counts and gaps as they were (the gaps set the derived mean cell duration, so
    changing them changes the cells too). Bad parameters raise ValueError naming them.
    """
    if not (isinstance(seed, int | np.integer) and seed >= 0):
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if sessions is None:
        sessions = SESSIONS_PER_DAY * hours / 24.0
    if not sessions >= 0:
        raise ValueError(f"sessions must be >= 0, got {sessions!r}")
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours!r}")
    if not cells_median >= 1:
        raise ValueError(f"cells_median must be >= 1, got {cells_median!r}")
    cells_sigma = _lognormal_sigma("cells_median", cells_median, "cells_per_session", cells_per_session)
    gap_sigma = _lognormal_sigma("gap_median_s", gap_median_s, "gap_mean_s", gap_mean_s)
    if not 0 < busy_fraction < 1:
        raise ValueError(f"busy_fraction must be > 0 and < 1, got {busy_fraction!r}")
    # the mean cell duration that makes GPUs busy busy_fraction of the sessions' spans (see the docstring)
    cell_mean_s = (busy_fraction / (1.0 - busy_fraction) * (cells_per_session + 1.0) / cells_per_session
                   * gap_mean_s)
    if not cell_median_s <= cell_mean_s:
        raise ValueError(f"cell_median_s must be <= the mean cell duration that busy_fraction "
                         f"{busy_fraction:g} gives ({cell_mean_s:.0f} s), got {cell_median_s!r}")
    cell_sigma = _lognormal_sigma("cell_median_s", cell_median_s, "the derived mean cell duration", cell_mean_s)
    if not 0 <= diurnal <= 1:
        raise ValueError(f"diurnal must be >= 0 and <= 1, got {diurnal!r}")
    if not 0 <= diurnal_peak_hour < 24:
        raise ValueError(f"diurnal_peak_hour must be >= 0 and < 24, got {diurnal_peak_hour!r}")
    if not carry_over_days >= 0:
        raise ValueError(f"carry_over_days must be >= 0, got {carry_over_days!r}")
    values, probs = _gpu_mix(gpu_mix)

    arrivals_rng, gpus_rng, counts_rng, durations_rng, idle_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    horizon = hours * 3600.0
    lookback = carry_over_days * 86400.0
    starts = _arrivals(arrivals_rng, sessions / horizon, -lookback, horizon, diurnal, diurnal_peak_hour)
    n = len(starts)
    gpus = gpus_rng.choice(values, size=n, p=probs)
    ncells = np.maximum(1, np.rint(cells_median * np.exp(cells_sigma * counts_rng.standard_normal(n)))).astype(int)
    total = int(ncells.sum())
    durations = cell_median_s * np.exp(cell_sigma * durations_rng.standard_normal(total))
    idle = gap_median_s * np.exp(gap_sigma * idle_rng.standard_normal(total + n))  # n + 1 per session
    seen: list[tuple[int, float, list[Cell], float]] = []
    j = 0
    for i in range(n):
        k = int(ncells[i])
        # session i's cells are durations[j:j+k]; its idle periods idle[i+j : i+j+k+1] (the last: the linger)
        view = _windowed(float(starts[i]), durations[j:j + k], idle[i + j:i + j + k + 1], horizon, close_at_end)
        if view is not None:
            seen.append((int(gpus[i]), *view))
        j += k
    width = len(str(max(len(seen) - 1, 0)))
    return [Session(f"s{i:0{width}d}", g, start, cells, linger=linger)
            for i, (g, start, cells, linger) in enumerate(seen)]


def synthetic(seed: int = 0, sessions: float = 2000, hours: float = 30 * 24, cells_per_session: float = 6.0,
              think_time_s: float = 1800.0, cell_median_s: float = 300.0, cell_mean_s: float = 3300.0,
              linger_s: float = 3600.0, gpu_mix: tuple[tuple[int, float], ...] = DEFAULT_GPU_MIX) -> list[Session]:
    """The legacy generator (``--format synthetic-legacy``; see the module docstring), kept to reproduce earlier
    results: seeded synthetic sessions; the same arguments give the same sessions."""
    if sessions < 0 or hours <= 0:
        raise ValueError("sessions must be >= 0 and hours > 0")
    if cells_per_session < 1:
        raise ValueError("cells_per_session must be >= 1")
    if cell_median_s <= 0 or cell_mean_s < cell_median_s:
        raise ValueError("the cell duration needs 0 < median <= mean (lognormal)")
    values, probs = _gpu_mix(gpu_mix)
    rng = np.random.default_rng(seed)
    horizon = hours * 3600.0
    n = int(rng.poisson(sessions))
    starts = np.sort(rng.uniform(0.0, horizon, n))  # a Poisson process, given its count
    gpus = rng.choice(values, size=n, p=probs)
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


#: the generated workloads by --format name
GENERATORS = {"synthetic": synthetic_sessions, "synthetic-legacy": synthetic}


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


def load_trace(path: str | os.PathLike | None, fmt: str | None, *, group_sessions: bool = False,
               session_gap_s: float = DEFAULT_SESSION_GAP_S, **synthetic_args) -> list[Session]:
    """Sessions from ``path`` in ``fmt`` (sniffed when None), or generated ones (``fmt`` a key of
    :data:`GENERATORS`, or None without a path: ``synthetic``) from ``synthetic_args``. ``group_sessions`` and
    ``session_gap_s`` are for Tiresias traces (:func:`read_tiresias`)."""
    if fmt is None:
        fmt = "synthetic" if path is None else sniff_format(path)
    if group_sessions and fmt != "tiresias":
        raise ValueError(f"--group-sessions is for Tiresias traces, not --format {fmt}")
    if fmt in GENERATORS:
        return GENERATORS[fmt](**synthetic_args)
    if path is None:
        raise ValueError(f"--format {fmt} needs --trace PATH")
    if fmt == "tiresias":
        return read_tiresias(path, group_sessions=group_sessions, session_gap_s=session_gap_s)
    if fmt == "sessions":
        return read_sessions(path)
    raise ValueError(f"unknown trace format {fmt!r}; one of {', '.join(TRACE_FORMATS)}")
