"""Which object-store blobs no committed value needs any more: the bookkeeping behind the store's garbage collection.

A value over the inline limit is a blob in the object store, named by its digest; a Raft entry carries only the
digest. When a cell rebinds or deletes a name (or a value is simply replaced by a new one), the old blob would stay
in the store (on tmpfs by default, i.e. in memory) until the kernel ends: a training loop that rebinds a 1 GB model
every cell would grow the store by 1 GB per cell.

:class:`BlobLedger` is part of the replicated state (:class:`~notebookos.kernel.celllog.CellLog` owns one), so every
replica agrees on it. It counts, per digest, the committed names and ``Out`` entries that refer to it; a digest whose
count falls to zero becomes *garbage*. Deleting is done by the replica that runs the next cell, *before* that cell
stores anything, and the digests it deleted travel in that cell's entry (``collected``), which takes them off the
list everywhere. Doing it there rather than on every replica, or on the one that made the garbage, means no other
replica can be storing a value at the same moment: a cell that brings the same content back re-creates the blob, and
one whose ``put`` found the blob still present keeps it alive by referring to it.

A replica that applies an older entry after its blob was collected (one that lags, or a replacement replaying the
log) finds the blob gone; that name is rebound or deleted by a later entry it has yet to apply (that is what made the
blob garbage), and a replica applies every committed entry before it runs a cell. The namespace tracker therefore
treats a missing blob as *pending*, not as an error, until a later entry settles the name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


def blob_digest(ref: Any) -> str | None:
    """The store digest a committed ref depends on, or None for inline values."""
    kind = getattr(ref, "kind", None)
    if kind == "blob":
        return ref.digest
    if kind == "packed":  # one of many small values stored together (namespace.ValueRef.pack)
        return ref.pack
    return None


class BlobLedger:
    """Reference counts of the blobs that committed names and outputs use, and the blobs nothing uses any more."""

    def __init__(self) -> None:
        self.refs: Counter[str] = Counter()
        self.garbage: dict[str, int] = {}  # digest -> seq of the entry that dropped its last reference

    def rebind(self, old: Any, new: Any, seq: int) -> None:
        """One committed name (or output) moved from ``old`` to ``new`` (either may be None)."""
        # Count the new reference first: rebinding a name to the same content must not make its blob garbage.
        digest = blob_digest(new)
        if digest is not None:
            self.refs[digest] += 1
            self.garbage.pop(digest, None)
        digest = blob_digest(old)
        if digest is not None:
            self.refs[digest] -= 1
            if self.refs[digest] <= 0:
                del self.refs[digest]
                self.garbage[digest] = seq

    def collected(self, digests: Iterable[str]) -> None:
        """These blobs were deleted; a digest referenced again meanwhile is not garbage any more anyway."""
        for digest in digests:
            self.garbage.pop(digest, None)

    def pending(self) -> list[str]:
        """The blobs to delete, oldest garbage first."""
        return sorted(self.garbage, key=self.garbage.__getitem__)

    # -- snapshots ---------------------------------------------------------------------------------------------
    def state(self) -> dict[str, int]:
        """What a snapshot must carry: the garbage (the counts follow from the committed refs)."""
        return dict(self.garbage)

    @classmethod
    def from_state(cls, refs: Iterable[Any], garbage: Mapping[str, int]) -> BlobLedger:
        ledger = cls()
        for ref in refs:
            ledger.rebind(None, ref, 0)
        ledger.garbage = {d: s for d, s in garbage.items() if d not in ledger.refs}
        return ledger
