"""One replica of a replicated kernel: an ipykernel ``IPythonKernel`` that commits each cell's effect through Raft.

The front sends every ``execute_request`` to all replicas: the one chosen to run it gets ``role: lead``, the others
``role: yield``. The leader runs the cell, captures its effect on the user namespace, and commits it as one Raft
entry *before* its ``execute_reply`` is sent, so a reply the user saw is never lost by a failover. Yielding replicas
reply at once and apply the entry when it commits (see ``applier.py``).

Run as ``python -m notebookos.kernel.replica -f CONNECTION_FILE --ReplicaKernel.replica_id=1 ...``; the front
starts replicas this way.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import socket
import sys
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from traitlets import Bool, Dict, DottedObjectName, Float, Int, List, Unicode

from ..objectstore import load_store
from . import protocol, tensors
from .applier import Applier
from .celllog import CellLog
from .consensus import CommitError, RaftNode, RaftTuning
from .devices import DeviceBinding
from .graph import graph_shape
from .namespace import NamespaceTracker, format_unserialisable_warning
from .serialize import namespace_digests


class ReplicaLost(RuntimeError):
    """Shown to the user when the replica running their cell died before committing it."""


class ReplicaKernel(IPythonKernel):
    """An IPython kernel that is one member of a Raft group of identical kernels."""

    implementation = "notebookos"

    replica_id = Int(1, help="This replica's id within its kernel (1, 2, 3, ...; replacements get new ids).").tag(
        config=True
    )
    raft_address = Unicode("127.0.0.1:0", help="host:port this replica's Raft node binds to.").tag(config=True)
    raft_peers = List(Unicode(), help="host:port of the other members of the Raft group.").tag(config=True)
    store_name = Unicode("local", help="Object store for values over the inline limit (entry point name).").tag(
        config=True
    )
    store_dir = Unicode("", help="Directory of the local object store; shared by the replicas of one host.").tag(
        config=True
    )
    store_options = Dict(help="More keyword arguments of the object store (e.g. the 'hostfetch' store's fetch_url "
                         "and kernel_id, which a host daemon sets).").tag(config=True)
    commit_timeout = Float(10.0, help="Seconds a cell's commit may wait for a Raft quorum before it fails.").tag(
        config=True
    )
    ready_timeout = Float(30.0, help="Seconds the first cell waits for the Raft group to elect a leader.").tag(
        config=True
    )
    campaign_now = Bool(False, help="Stand for Raft leader at start instead of after an election timeout "
                        "(the front sets it for the replica that will run the first cell).").tag(config=True)
    commit_notice_delay = Float(
        0.01, help="Seconds after a cell's reply before followers are told its entry committed (they apply it then). "
        "Telling them at once puts their work on the reply's path; waiting lets one notice cover several quick cells."
    ).tag(config=True)
    collect_garbage = Bool(True, help="Before running a cell, delete the object-store blobs no committed name or "
                           "Out refers to any more (turn off when the store directory is shared between kernels)."
                           ).tag(config=True)
    keep_state = Bool(False, help="After each cell this replica runs, put the committed state (the Raft state "
                      "machine's snapshot: refs of every value, history, outputs) into the object store, report its "
                      "digest (reply metadata and status: 'state') and delete the state it replaces. For policies "
                      "that run each cell in a fresh process (batch, front/percell.py).").tag(config=True)
    restore_digest = Unicode("", help="Start from the committed state stored under this digest (put there by "
                             "keep_state of an earlier replica) instead of an empty namespace. If it cannot be "
                             "loaded, every cell is refused with a StateMissing error.").tag(config=True)
    compaction_entries = Int(
        200, help="Raft log entries after which the log is compacted into a snapshot of the committed refs."
    ).tag(config=True)
    host_id = Unicode("", help="The host this replica runs on, as the cluster scheduler names it (the front sets it "
                      "in cluster mode); empty: this machine's hostname.").tag(config=True)

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # ipykernel sleeps 0.5 ms before each execute_reply to let iopub drain; the reply already waits for a Raft
        # commit and goes through the front, which orders nothing across channels anyway.
        self._execute_sleep = 0
        self.host = self.host_id or socket.gethostname()
        self.diverged: str | None = None
        self._lead_meta: dict[str, Any] = {}
        self._last_seq = 0
        #: how long the last cell's capture (hashing, storing) and Raft commit took, in its reply's metadata
        self._last_timings: dict[str, float] = {}
        self._executing = False
        self._yielded_to: str | None = None
        self._notice_scheduled = False
        self._collecting: asyncio.Future[list[str]] | None = None
        self._background: set[asyncio.Future] = set()
        self.devices = DeviceBinding()
        store_kwargs = {"root": self.store_dir} if self.store_name in ("local", "hostfetch") else {}
        self.store = load_store(self.store_name, **store_kwargs, **self.store_options)
        self.tracker = NamespaceTracker(self.shell.user_ns, self.store, hidden=self.shell.user_ns_hidden)
        self.tracker.prime()
        self.applier = Applier(self.shell, self.tracker, self.replica_id)
        self.cell_log = CellLog(self.applier.submit)
        #: the committed state's digest in the store (keep_state/restore_digest), and why it could not be loaded
        self.state_digest = self.restore_digest
        self.state_problem: str | None = None
        if self.restore_digest:
            # Before Raft starts: the snapshot is this replica's starting state, applied like one from a leader.
            self._restore_state(self.restore_digest)
        secret = os.environ.get(protocol.RAFT_SECRET_ENV)
        if not secret:
            # PySyncObj without a password takes unauthenticated pickles from anyone who reaches the port.
            raise RuntimeError(f"${protocol.RAFT_SECRET_ENV} is not set: a replica's Raft port must be authenticated. "
                               "Replicas are started by the notebookos front or a host daemon, which set it; to start "
                               "one by hand, set it to the same random secret on every replica of the kernel")
        self.raft = RaftNode(
            self.raft_address,
            list(self.raft_peers),
            self.cell_log,
            secret,
            RaftTuning(compaction_min_entries=self.compaction_entries),
            campaign_now=self.campaign_now,
        )
        self.control_handlers[protocol.STATUS_REQUEST] = self.notebookos_status_request
        self.control_handlers[protocol.MEMBERSHIP_REQUEST] = self.notebookos_membership_request
        self.control_handlers[protocol.DIGEST_REQUEST] = self.notebookos_digest_request
        from .magics import register_magics

        register_magics(self.shell)

    # -- execution ---------------------------------------------------------------------------------------------
    async def shell_main(self, subshell_id, msg):
        """Take ``yield`` notices before ipykernel's dispatcher: they need no busy/idle and no reply.

        A yielding replica learns the cell's effect from the Raft log; the notice only tells it which cell is
        running elsewhere (shown in its status). Answering it like a request would cost the front two iopub
        messages and a reply to parse and drop per replica per cell.
        """
        if self.session is not None:
            try:
                _, frames = self.session.feed_identities(msg, copy=False)  # [signature, header, parent, metadata, ...]
                header_raw, metadata = _frame_bytes(frames[1]), _frame_bytes(frames[3])
            except (ValueError, IndexError):
                header_raw = metadata = b""
            # The byte test keeps leads cheap; the parse makes sure the marker is ours, not nested client metadata.
            if protocol.YIELD_MARKER in metadata and _role(self.session.unpack(metadata)) == protocol.ROLE_YIELD:
                self._yielded_to = self.session.unpack(header_raw).get("msg_id")
                return
        await super().shell_main(subshell_id, msg)

    async def execute_request(self, stream, ident, parent):
        meta = (parent.get("metadata") or {}).get(protocol.META_KEY) or {}
        if meta.get("role") == protocol.ROLE_YIELD:  # shell_main normally takes these; never run a yielded cell
            self._yielded_to = parent["header"].get("msg_id")
            return
        self._lead_meta = meta
        problem = await self._prepare_to_lead(meta)
        if problem is not None:
            self._send_error_reply(stream, ident, parent, *problem)
            return
        self._executing = True
        self._start_collecting()
        self.devices.bind(tuple(meta.get("devices") or ()))
        if self.devices.devices and tensors.displaced_count():
            # Tensors this replica received from a GPU executor wait in host memory: the cell expects them on a GPU.
            try:
                tensors.restore_displaced(self.devices.torch_device())
            except Exception:  # e.g. the bound GPU is not reachable; device() tells the cell why, in its output
                self.log.exception("could not move replicated tensors to GPU %s", self.devices.devices)
        try:
            await super().execute_request(stream, ident, parent)
        finally:
            # The reply has been sent: now followers may hear of the commit and apply it.
            self._schedule_commit_notice()
            self.devices.release()
            self._executing = False

    def _schedule_commit_notice(self) -> None:
        """Let followers hear of this cell's commit ``commit_notice_delay`` after its reply (one notice for every
        cell committed meanwhile). Heartbeats carry the commit index too, so a cell that blocks the event loop
        delays them by at most one heartbeat period."""
        if self._notice_scheduled:
            return
        self._notice_scheduled = True

        def release() -> None:
            self._notice_scheduled = False
            self.raft.release_commit_notice()

        asyncio.get_running_loop().call_later(self.commit_notice_delay, release)

    async def _prepare_to_lead(self, meta: dict[str, Any]) -> tuple[str, str] | None:
        """Make sure this replica holds every committed cell before it runs the next one."""
        if self.diverged:
            return "ReplicaDiverged", self.diverged
        if self.state_problem:
            return "StateMissing", self.state_problem
        if not self.raft.has_leader() and not await asyncio.to_thread(self.raft.wait_leader, self.ready_timeout):
            return "QuorumLost", f"no Raft leader after {self.ready_timeout:g} s ({self.raft.describe_quorum()})"
        try:
            if meta.get("fresh"):
                await self.raft.barrier(uuid.uuid4().hex, self.commit_timeout)
            if not await self.applier.wait_applied(int(meta.get("after_seq", 0)), self.commit_timeout):
                return "QuorumLost", "this replica could not catch up with the committed cells in time"
        except CommitError as exc:
            return "QuorumLost", str(exc)
        return None

    async def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False,
                         *, cell_meta=None, cell_id=None):
        reply = await super().do_execute(
            code, silent, store_history, user_expressions, allow_stdin, cell_meta=cell_meta, cell_id=cell_id
        )
        try:
            started = time.perf_counter()
            entry = await self._capture(code, store_history and not silent, await self._collected())
            captured = time.perf_counter()
            commit = asyncio.ensure_future(self.raft.commit_cell(entry, self.commit_timeout, hold_notice=True))
            await asyncio.sleep(0)  # let the proposal leave before we block on the flushes below
            # ipykernel flushes the cell's output after do_execute; doing it now overlaps the Raft round trip.
            if sys.stdout is not None:
                sys.stdout.flush()
            if sys.stderr is not None:
                sys.stderr.flush()
            self._last_seq = await commit
            self._last_timings = {"capture_s": round(captured - started, 4),
                                  "commit_s": round(time.perf_counter() - captured, 4)}
            if self.keep_state:
                await self._put_state()
        except CommitError as exc:
            # The cell ran here but its effect is not in the log: this namespace no longer matches the group's.
            self.diverged = f"replica {self.replica_id} ran a cell it could not commit: {exc}"
            reply = self._publish_error(
                "QuorumLost", f"{exc}. This replica ran the cell but could not commit it in time, so it will be "
                "retired. Unless a majority had already received the entry (the kernel then tells you on the next "
                "cell), the cell's effects are lost and the kernel's state is as of the last committed cell.")
        return reply

    def _restore_state(self, digest: str) -> None:
        """Load the committed state stored under ``digest``; on failure note why, and refuse every cell."""
        try:
            with ThreadPoolExecutor(1) as pool:  # the store is async and this may run inside an event loop
                header, _ = pool.submit(asyncio.run, self.store.get(digest)).result()
            self.cell_log._deserialize(pickle.loads(header))
        except Exception as exc:  # missing (deleted, or on no host), corrupt, or not a state
            self.state_problem = (
                f"this kernel's committed state (object {digest}) could not be loaded from the object store "
                f"{self.store.location}: {exc}. Starting from an empty namespace would silently lose every earlier "
                "cell, so no cell runs. Restart the kernel to start again from an empty namespace (re-run your "
                "cells); its variables are lost.")
            self.log.error("%s", self.state_problem)

    async def _put_state(self) -> None:
        """The committed state, for the next cell's process: into the object store; the state it replaces goes."""
        header = pickle.dumps(self.cell_log._serialize(), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            digest, _ = await self.store.put(header, [])
        except Exception as exc:  # the front then refuses the next cells: they would start from an older state
            self.state_digest = ""
            self.state_problem = (f"the committed state after the last cell could not be stored in the object store "
                                  f"{self.store.location}: {exc}. Restart the kernel (its variables are lost).")
            sys.stderr.write(f"notebookos: {self.state_problem}\n")
            return
        previous, self.state_digest = self.state_digest, digest
        if previous and previous != digest:
            await self.store.delete_many([previous])

    def _start_collecting(self) -> None:
        """Delete garbage blobs (garbage.py) while the cell runs; :meth:`_collected` waits for it before the cell's
        own values are stored, so a value that comes back is written again rather than found and then deleted."""
        garbage = self.cell_log.garbage() if self.collect_garbage and self._collecting is None else []
        if garbage:
            self._collecting = asyncio.ensure_future(self.store.delete_many(garbage))

    async def _collected(self) -> list[str]:
        collecting, self._collecting = self._collecting, None
        return await collecting if collecting is not None else []

    async def _capture(self, code: str, store_history: bool, collected: list[str]) -> dict[str, Any]:
        """The Raft entry for the cell that just ran: its namespace delta, code and execution count."""
        shell = self.shell
        n = shell.execution_count - 1
        extras = {}
        out = shell.history_manager.output_hist.get(n) if store_history else None
        if out is not None:
            extras["Out"] = out
        delta = await self.tracker.capture(code, extras)
        lost = dict(delta.unserialisable)
        if "Out" in delta.unserialisable_extras:
            lost[f"Out[{n}]"] = delta.unserialisable_extras["Out"]
        warnings = [format_unserialisable_warning(lost)] if lost else []
        warnings += [f"Warning: {name!r} {caveat}." for name, caveat in sorted(self.tracker.caveats.items())]
        if warnings:
            sys.stderr.write("\n".join(warnings) + "\n")
            sys.stderr.flush()
        parsed = shell.history_manager.input_hist_parsed
        entry = {
            "executor": self.replica_id,
            "code": code,
            "code_parsed": parsed[n] if store_history and len(parsed) > n else None,
            "execution_count": n,
            "store_history": store_history,
            "delta": delta,
            "collected": collected,
        }
        return entry

    def finish_metadata(self, parent, metadata, reply_content):
        metadata = super().finish_metadata(parent, metadata, reply_content)
        metadata[protocol.META_KEY] = {"role": protocol.ROLE_LEAD, "replica": self.replica_id, "seq": self._last_seq,
                                       "host": self.host, "devices": list(self.devices.devices),
                                       "raft_address": self.raft_address, "raft_leader": self.raft.leader_address(),
                                       "timings": self._last_timings}
        if self.keep_state:
            metadata[protocol.META_KEY]["state"] = self.state_digest
        return metadata

    def _publish_error(self, ename: str, evalue: str) -> dict[str, Any]:
        content = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self.session.send(self.iopub_socket, "error", content, self.get_parent("shell"), ident=self._topic("error"))
        return {"status": "error", "execution_count": self.execution_count, **content}

    def _send_error_reply(self, stream, ident, parent, ename: str, evalue: str) -> None:
        content = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self.session.send(self.iopub_socket, "error", content, parent, ident=self._topic("error"))
        content = {"status": "error", "execution_count": self.execution_count, **content}
        self.session.send(stream, "execute_reply", content, parent, ident=ident,
                          metadata={protocol.META_KEY: {"replica": self.replica_id, "seq": self.applier.applied_seq}})

    # -- front <-> replica control ---------------------------------------------------------------------------
    def replica_status(self) -> dict[str, Any]:
        raft = self.raft.status()
        return {
            "id": self.replica_id,
            "pid": os.getpid(),
            "host": self.host,
            "raft_address": self.raft_address,
            "raft_role": raft["role"],
            "raft_term": raft["term"],
            "raft_leader": raft["leader"],
            "raft_members": raft["members"],
            "raft_last_log": raft["last_log"],
            "applied_index": self.applier.applied_seq,
            "raft_applied_index": raft["applied_index"],
            "executing": self._executing,
            "devices": list(self.devices.devices),
            "last_yielded_request": self._yielded_to,
            "diverged": self.diverged,
            "apply_errors": list(self.applier.errors[-5:]),
            "missing_values": sorted(self.tracker.missing),
            "store_garbage": len(self.cell_log.garbage()),
            "state": self.state_digest,
            "state_problem": self.state_problem,
        }

    async def notebookos_status_request(self, stream, ident, parent):
        self.session.send(stream, protocol.STATUS_REPLY, self.replica_status(), parent, ident=ident)

    async def notebookos_membership_request(self, stream, ident, parent):
        # ipykernel handles control messages one at a time, and a membership change waits for a Raft commit
        # (seconds, while a leader is elected): answer it from a task so status requests are not held behind it.
        task = asyncio.ensure_future(self._membership_change(stream, ident, parent))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _membership_change(self, stream, ident, parent):
        content = parent["content"]
        try:
            if content["op"] == "add":
                await self.raft.add_member(content["address"], content.get("timeout", self.commit_timeout))
            elif content["op"] == "remove":
                await self.raft.remove_member(content["address"], content.get("timeout", self.commit_timeout))
            elif content["op"] == "campaign":
                self.raft.campaign()
            elif content["op"] == "transfer":
                await self.raft.transfer_leadership(content["address"], content.get("timeout", 2.0))
            else:
                raise ValueError(f"unknown membership op {content['op']!r}; expected 'add', 'remove', 'campaign' or 'transfer'")
            reply = {"status": "ok"}
        except Exception as exc:
            reply = {"status": "error", "ename": type(exc).__name__, "evalue": str(exc),
                     "traceback": traceback.format_exception(exc)}
        self.session.send(stream, protocol.MEMBERSHIP_REPLY, reply, parent, ident=ident)

    async def notebookos_digest_request(self, stream, ident, parent):
        """Digest every replicated name from the live namespace (not from the log), to compare replicas."""
        names = sorted(self.tracker.records())
        ns = self.shell.user_ns
        content = {"status": "ok", "replica": self.replica_id, "execution_count": self.shell.execution_count,
                   "In": list(ns.get("In", [])), "digests": namespace_digests(ns, names),
                   "graph": graph_shape(ns, names)}
        self.session.send(stream, protocol.DIGEST_REPLY, content, parent, ident=ident)

    def replicas(self) -> list[dict[str, Any]]:
        """The front's table of replicas as of this cell's start, with this replica's own row made live."""
        rows = [dict(r) for r in self._lead_meta.get("replicas", [])]
        me = self.replica_status()
        mine = {"id": me["id"], "pid": me["pid"], "host": me["host"], "raft_role": me["raft_role"],
                "alive": True, "applied_index": me["applied_index"]}
        for row in rows:
            if row.get("id") == self.replica_id:
                row.update(mine)
                break
        else:
            rows.append({**mine, "last_executor": True})
        return rows

    async def do_shutdown(self, restart):
        self.applier.stop()
        self.raft.destroy()
        reply = super().do_shutdown(restart)
        return await reply if inspect.isawaitable(reply) else reply


def _role(metadata: Any) -> str | None:
    meta = metadata.get(protocol.META_KEY) if isinstance(metadata, dict) else None
    return meta.get("role") if isinstance(meta, dict) else None


def _frame_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


class ReplicaKernelApp(IPKernelApp):
    """ipykernel's kernel application, configured for a replica."""

    outstream_class = DottedObjectName(
        "notebookos.kernel.iostream.ReplicaOutStream",
        help="stdout/stderr class: ipykernel's, with a flush that costs nothing when nothing is buffered.",
    ).tag(config=True)

    def init_sockets(self):
        super().init_sockets()
        # ipykernel 7 receives shell messages on a thread of their own only to route subshell requests, which the
        # front declines; without it every request (and every yield notice) costs one thread hand-off less.
        self.shell_channel_thread = None


def main() -> None:
    ReplicaKernelApp.launch_instance(kernel_class=ReplicaKernel)


if __name__ == "__main__":
    # Run the package's copy of this module, so notebookos.kernel.replica.ReplicaKernel is the running class.
    from notebookos.kernel.replica import main as package_main

    package_main()
