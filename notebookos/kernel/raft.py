"""Compatibility shim: Raft wiring moved to ``celllog.py`` (the state machine) and ``consensus.py`` (PySyncObj)."""

from .celllog import CellLog, CommittedEvent
from .consensus import CommitError, RaftBindError, RaftNode, RaftTuning

__all__ = ["CellLog", "CommitError", "CommittedEvent", "RaftBindError", "RaftNode", "RaftTuning"]
