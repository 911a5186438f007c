"""Content-addressed storage for values too large for the Raft log (see :mod:`.base` for the interface)."""

from .base import (
    ENTRY_POINT_GROUP,
    CorruptObject,
    ObjectNotFound,
    ObjectStore,
    available_stores,
    content_digest,
    load_store,
)
from .local import LocalDirectoryStore

__all__ = [
    "ENTRY_POINT_GROUP",
    "CorruptObject",
    "LocalDirectoryStore",
    "ObjectNotFound",
    "ObjectStore",
    "available_stores",
    "content_digest",
    "load_store",
]
