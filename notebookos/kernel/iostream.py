"""stdout/stderr for replicas: ipykernel's ``OutStream`` with a flush that costs nothing when nothing is buffered.

ipykernel's ``flush()`` always hands two callbacks to the IOPub thread and blocks until they ran, even when the cell
printed nothing. ipykernel calls it twice per cell (stdout and stderr) and the replica once more before its Raft
commit, so on a busy two-core host the empty round trips cost more than the commit. When no text is buffered and no
flush is pending there is nothing the IOPub thread could send, so returning at once changes no output and no
ordering: everything already written went to the IOPub thread's queue before anything sent after this call.
"""

from __future__ import annotations

from ipykernel.iostream import OutStream


class ReplicaOutStream(OutStream):
    def flush(self) -> None:
        if self._nothing_buffered():
            return
        super().flush()

    def _nothing_buffered(self) -> bool:
        # Private state of ipykernel's OutStream; if a release renames it, fall back to ipykernel's own flush.
        try:
            if self._flush_pending or self._subprocess_flush_pending:
                return False
            with self._buffer_lock:
                return not any(buffer.tell() for buffer in self._buffers.values())
        except AttributeError:
            return False
