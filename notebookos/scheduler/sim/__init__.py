"""Trace-driven simulator: the scheduling policies over a simulated cluster, in simulated time.

- :mod:`.traces`: workloads (Tiresias CSV, a sessions CSV, a seeded synthetic generator) and :class:`TraceError`;
- :mod:`.engine`: the discrete-event engine and its cluster model (:class:`SimConfig`, :func:`simulate`);
- :mod:`.report`: ``summary.json``, per-event CSVs, plots;
- :mod:`.cli`: ``notebookos sim`` (``python -m notebookos.scheduler.sim``).
"""

from .engine import METRIC_KEYS, SimConfig, SimResult, Simulation, simulate
from .traces import (
    Cell,
    Session,
    TraceError,
    load_trace,
    read_sessions,
    read_tiresias,
    synthetic,
    synthetic_sessions,
)

__all__ = ["Cell", "METRIC_KEYS", "Session", "SimConfig", "SimResult", "Simulation", "TraceError", "load_trace",
           "read_sessions", "read_tiresias", "simulate", "synthetic", "synthetic_sessions"]
