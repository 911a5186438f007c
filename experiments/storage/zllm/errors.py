"""Exception hierarchy of the zLLM storage pipeline.

Every error the pipeline raises on bad input derives from :class:`ZllmError`, so the CLI can print the message
(no traceback) and exit non-zero. Messages name the file involved and say what to do about it.
"""

from __future__ import annotations


class ZllmError(Exception):
    """Base class of every error the zLLM pipeline raises on purpose."""


class SafetensorsFormatError(ZllmError):
    """A ``.safetensors`` file is corrupt or truncated (header length, JSON, offsets, data size)."""


class StoreError(ZllmError):
    """The store directory is unusable: no manifest, an unreadable manifest, or a bad layout."""


class StoreCorruptionError(StoreError):
    """A blob of the store is missing, truncated or does not hash to what the manifest says."""


class RestoreTargetError(ZllmError):
    """The restore output directory cannot be used (not empty, or not a directory)."""


class SourceError(ZllmError):
    """The directory to ingest does not exist, is empty, or cannot be read."""
