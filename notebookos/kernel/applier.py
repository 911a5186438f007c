"""Applies committed cells to this replica's IPython shell, off the Raft thread and off the kernel's event loop.

PySyncObj calls the state machine on its tick thread; loading a 256 MiB value there would stall heartbeats and
trigger elections, so :class:`CellLog` only queues each :class:`CommittedEvent` here. One applier thread, with its
own asyncio loop for the object store's async API, materialises them in log order and publishes the sequence
number it has reached, which the kernel awaits before it leads a cell.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from .celllog import CommittedEvent
from .namespace import CellDelta, NamespaceTracker

log = logging.getLogger(__name__)


class Applier:
    """Materialises committed events into ``shell`` in order; entries this replica led are bookkeeping only."""

    def __init__(self, shell: Any, tracker: NamespaceTracker, replica_id: int):
        self.shell = shell
        self.tracker = tracker
        self.replica_id = replica_id
        self.applied_seq = 0
        self.errors: list[str] = []
        self._queue: queue.SimpleQueue[CommittedEvent | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="notebookos-applier", daemon=True)
        self._thread.start()

    # Called on the Raft thread: must not block.
    def submit(self, event: CommittedEvent) -> None:
        self._queue.put(event)

    def stop(self) -> None:
        self._queue.put(None)

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait (without blocking the caller's event loop) until every entry up to ``seq`` is applied."""
        if self.applied_seq >= seq:
            return True
        return await asyncio.to_thread(self._wait_blocking, seq, timeout)

    def _wait_blocking(self, seq: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.applied_seq >= seq, timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            while True:
                event = self._queue.get()
                if event is None:
                    return
                try:
                    loop.run_until_complete(self._apply(event))
                except Exception as exc:  # keep applying later entries; the error is reported by status
                    log.exception("failed to apply committed %s %d", event.kind, event.seq)
                    self.errors.append(f"{event.kind} {event.seq}: {exc!r}")
                # Values that could not be loaded were left unbound; the rest of the entry applied.
                self.errors.extend(f"{event.kind} {event.seq}: {what}: {why}"
                                   for what, why in self.tracker.apply_errors.items())
                self.tracker.apply_errors = {}
                with self._cond:
                    self.applied_seq = max(self.applied_seq, event.seq)
                    self._cond.notify_all()
        finally:
            loop.close()

    async def _apply(self, event: CommittedEvent) -> None:
        if event.kind == "cell":
            entry = event.entry
            if entry.get("executor") == self.replica_id:
                return  # this replica ran the cell: its namespace and tracker are already there
            extras = await self.tracker.apply(entry["delta"])
            if entry.get("store_history"):
                self._record_cell(entry["execution_count"], entry["code"], entry.get("code_parsed"), extras)
        elif event.kind == "snapshot":
            state = event.entry
            pinned = {oid for ref in state["outputs"].values() for oid in ref.refs}
            await self.tracker.restore(state["records"], state.get("nodes", {}), pinned)
            outputs = {}
            if state["outputs"]:
                refs = {f"Out{n}": ref for n, ref in state["outputs"].items()}
                outputs = await self.tracker.apply(CellDelta(updated={}, deleted=[], unserialisable={}, extras=refs))
            self._reset_history(state["history"], {int(k[3:]): v for k, v in outputs.items()})
            self.shell.execution_count = state["execution_count"] + 1

    def _record_cell(self, n: int, code: str, code_parsed: str | None, extras: dict[str, Any]) -> None:
        """Make In, Out, _, _iN and _N agree with the replica that ran the cell.

        This mirrors ``HistoryManager.store_inputs`` without its database write: the executor already wrote the
        cell to the shared history database, and three writers per cell would both duplicate it there and
        contend for SQLite's lock on every cell.
        """
        shell = self.shell
        hm = shell.history_manager
        raw = code.rstrip("\n")
        hm.input_hist_parsed.append((code_parsed if code_parsed is not None else code).rstrip("\n"))
        hm.input_hist_raw.append(raw)
        hm._iii, hm._ii, hm._i, hm._i00 = hm._ii, hm._i, hm._i00, raw
        shell.push({"_i": hm._i, "_ii": hm._ii, "_iii": hm._iii, f"_i{n}": raw}, interactive=False)
        shell.execution_count = n
        if "Out" in extras:
            shell.displayhook.update_user_ns(extras["Out"])
        shell.execution_count = n + 1

    def _reset_history(self, history: list[tuple], outputs: dict[int, Any]) -> None:
        hm = self.shell.history_manager
        del hm.input_hist_parsed[1:]
        del hm.input_hist_raw[1:]
        hm.output_hist.clear()
        for n, code, *parsed in history:  # snapshots from before the transformed code was kept have none
            self._record_cell(n, code, parsed[0] if parsed else None, {"Out": outputs[n]} if n in outputs else {})
