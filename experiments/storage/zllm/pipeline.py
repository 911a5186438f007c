"""Python API of the zLLM pipeline for notebooks and scripts: plain dicts in and out, nothing printed.

* :func:`ingest` ``(src, store, progress=False) -> dict``: dedup, cluster, BitX-compress a directory;
* :func:`restore` ``(store, out, progress=False) -> dict``: rebuild every file byte-identically (SHA-256);
* :func:`stats` ``(store) -> dict``: bytes after each stage, reduction, families and (if known) their ARI.

Errors on bad input are :class:`~experiments.storage.zllm.errors.ZllmError` subclasses.
"""

from __future__ import annotations

from .errors import (
    RestoreTargetError,
    SafetensorsFormatError,
    SourceError,
    StoreCorruptionError,
    StoreError,
    ZllmError,
)
from .ingestion import ingest
from .report import stats
from .restoration import restore

__all__ = ["ingest", "restore", "stats", "ZllmError", "SafetensorsFormatError", "StoreError",
           "StoreCorruptionError", "RestoreTargetError", "SourceError"]
