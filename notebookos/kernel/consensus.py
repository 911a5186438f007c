"""Consensus for one kernel's replica group: the PySyncObj adapter.

:class:`RaftNode` owns the ``SyncObj`` (:class:`_CellSyncObj`) and its tuning (:class:`RaftTuning`), and turns
PySyncObj's callbacks into awaitables. The state machine it replicates is :class:`~notebookos.kernel.celllog.CellLog`
(``celllog.py``); this module knows nothing of what an entry means.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import pickle
import queue
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException
from pysyncobj.monotonic import monotonic as _raft_clock
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from .celllog import CellLog
from .pysyncobj_setup import pysyncobj  # noqa: F401  (PySyncObj with its global side effects undone)

log = logging.getLogger(__name__)

_FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
# Outcomes after which the proposal is known not to be in the log (or is deduplicated if it is): retry.
_TRANSIENT = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED,
              FAIL_REASON.DISCARDED, FAIL_REASON.QUEUE_FULL}


# -- large entries ------------------------------------------------------------------------------------------------
# PySyncObj sends an entry of appendEntriesBatchSizeBytes (64 KiB) or more in chunks and labels as the last one the
# first chunk that reaches the length of the entry's command, while what it cuts is the slightly longer pickle of
# (command, index, term) (see pysyncobj_setup.py): a payload padded clear of the chunk ends (trailing bytes after a
# pickle's STOP are never read) is always labelled right.
_CHUNK_END_MARGIN = 512  # well over what the command and the (command, index, term) pickles add (~50 bytes)


def _clear_of_chunk_ends(payload: bytes, chunk: int) -> bytes:
    """``payload``, padded so the entry PySyncObj builds around it does not end just short of a chunk boundary."""
    room = -len(payload) % chunk
    return payload + bytes(room + _CHUNK_END_MARGIN) if 0 < room <= _CHUNK_END_MARGIN else payload


class RaftBindError(RuntimeError):
    """This node's Raft address could not be bound."""


class CommitError(RuntimeError):
    """A proposal was not committed (no quorum, leader lost, timeout)."""


# -- transport hardening ------------------------------------------------------------------------------------------
# PySyncObj frames every message as a 4-byte native signed int length (struct "i") followed by that many bytes of
# zlib-compressed pickle, Fernet-encrypted when the group has a password. Its TcpConnection buffers whatever length
# the prefix declares, appending each recv to an immutable bytes object, on the tick thread: a stranger who sends a
# 2 GiB prefix and then streams junk grows that buffer (with quadratic copying) until the tick thread does nothing
# else, and every commit of the node times out. Idle connections are only timed out when they have an event, so
# connections that never send anything stay open for ever and pile up. The subclasses below bound all of that;
# everything else is PySyncObj's own code path.

_FRAME_PREFIX = struct.Struct("i")


@dataclass(frozen=True)
class _Limits:
    max_frame: int  # declared length above which any connection is closed
    preauth: int  # bytes an unauthenticated connection may have buffered
    auth_timeout: float  # seconds an incoming connection has to authenticate (key exchange + its address)
    max_unauthenticated: int  # incoming connections still authenticating, at most


_rejections = {"last_warning": -float("inf"), "since": 0}


def _log_rejection(why: str) -> None:
    # A stranger can reconnect thousands of times a second: one warning per minute, the rest counted, so that the
    # attack cannot fill the replica's log instead.
    now = time.monotonic()
    if now - _rejections["last_warning"] >= 60.0:
        more = f" (and {_rejections['since']} more since the last warning)" if _rejections["since"] else ""
        log.warning("closed a Raft connection: %s%s", why, more)
        _rejections.update(last_warning=now, since=0)
    else:
        _rejections["since"] += 1
        log.debug("closed a Raft connection: %s", why)


class _GuardedConnection(TcpConnection):
    """A ``TcpConnection`` that closes itself on a frame over the limits, before buffering its body.

    A connection counts as authenticated once one frame from it has decrypted (Fernet authenticates with the
    group's key, so only a holder of the secret can produce one); until then it may buffer ``preauth`` bytes.
    Decryption failures already close the connection in PySyncObj (its parser drops the connection on any error).
    """

    def __init__(self, *args: Any, limits: _Limits, **kwargs: Any):
        self.limits = limits
        # When a quiet link was last given grace (PySyncObj's clock, CLOCK_MONOTONIC_RAW, like its read times).
        self._grace_from: float | None = None
        self.authenticated = False
        self.opened = time.monotonic()
        self.rejected: str | None = None  # why this side closed it, for the log and tests
        super().__init__(*args, **kwargs)

    def _reject(self, why: str) -> None:
        self.rejected = why
        _log_rejection(why)
        self.disconnect()

    def _over_limits(self) -> str | None:
        buffered = self._TcpConnection__readBuffer
        bound = self.limits.max_frame if self.authenticated else self.limits.preauth
        if len(buffered) >= _FRAME_PREFIX.size:
            declared = _FRAME_PREFIX.unpack_from(buffered)[0]
            if declared < 0 or declared > bound:
                state = "authenticated" if self.authenticated else "unauthenticated"
                return f"{state} peer declared a {declared}-byte frame (limit {bound})"
        # An authenticated peer may have several frames in flight; the head frame's check bounds each of them, and
        # this bounds how many sit unread (the parser runs only once the socket is drained). A stranger gets
        # ``preauth`` bytes in all.
        total = 2 * bound + _FRAME_PREFIX.size if self.authenticated else bound + _FRAME_PREFIX.size
        if len(buffered) > total:
            return f"{len(buffered)} bytes buffered unparsed (limit {total})"
        return None

    # PySyncObj names its read and parse steps privately; overriding the mangled names is the only hook it offers.
    def _TcpConnection__processRead(self) -> bool:
        more = TcpConnection._TcpConnection__processRead(self)
        if more:
            why = self._over_limits()
            if why is not None:
                self._reject(why)
                return False
        return more

    # -- idle links are not dead links --------------------------------------------------------------------------
    # PySyncObj considers a connection dead when it has read nothing for ``connectionTimeout`` (2.4 s), checked
    # when it sends or has an event. While a leader lives, the link between the two followers carries nothing at
    # all, so after 2.4 s of quiet the first message on it -- the vote request of a survivor told to campaign --
    # tore it down instead of going out, and the receiving side did the same to an arriving vote request before
    # reading it. The election then waited for timeouts and split votes (median 2 s, up to 4-6 s under load).
    # Here a link found quiet past the timeout gets one more timeout of grace from that moment: the message goes
    # out (or the arriving one is read), and only if nothing is read during the grace is the link dropped. A hung
    # peer is thus dropped after one to two timeouts instead of one; Raft does not depend on it (a leader steps
    # down after ``leaderFallbackTimeout`` without answers, followers elect after their election timeout).
    # ("Awaiting a reply" cannot be told from the traffic: some messages, like the address a connecting node sends
    # after the key exchange or a vote request a peer that already voted ignores, never get one.)
    def _TcpConnection__processConnectionTimeout(self) -> None:
        now = _raft_clock()
        last_read = self._TcpConnection__lastReadTime
        timeout = self._TcpConnection__timeout
        if now - last_read <= timeout:
            return
        grace = self._grace_from
        if grace is None or grace < last_read:
            self._grace_from = now  # quiet, not known dead: give it a timeout to show life
        elif now - grace > timeout:
            self.disconnect()

    def disconnect(self) -> None:
        self._grace_from = None
        super().disconnect()

    def _TcpConnection__processParseMessage(self) -> Any:
        why = self._over_limits()  # the head frame changes after each parsed message
        if why is not None:
            self._reject(why)
            return None
        message = TcpConnection._TcpConnection__processParseMessage(self)
        if message is not None and self.state != CONNECTION_STATE.DISCONNECTED:
            self.authenticated = True
        return message


class _GuardedServer(TcpServer):
    """``TcpServer`` whose accepted connections are :class:`_GuardedConnection` (otherwise PySyncObj's code)."""

    def __init__(self, *args: Any, limits: _Limits, on_accepted: Callable[[TcpConnection], None], **kwargs: Any):
        self._limits = limits
        self._on_accepted = on_accepted
        super().__init__(*args, onNewConnection=on_accepted, **kwargs)

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, _ = self._TcpServer__socket.accept()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpServer__sendBufferSize)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpServer__recvBufferSize)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                conn = _GuardedConnection(
                    poller=self._TcpServer__poller, socket=sock, timeout=self._TcpServer__connectionTimeout,
                    sendBufferSize=self._TcpServer__sendBufferSize, recvBufferSize=self._TcpServer__recvBufferSize,
                    keepalive=self._TcpServer__keepalive, limits=self._limits)
                self._on_accepted(conn)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.unbind()
                    return
        if event & POLL_EVENT_TYPE.ERROR:
            self.unbind()


class _GuardedTransport(TCPTransport):
    """PySyncObj's TCP transport with :class:`_GuardedConnection` both ways and a deadline to authenticate.

    Incoming connections sit in ``_unknownConnections`` until they have exchanged keys and named a member's
    address; a peer does that within a round trip, so one still there after ``auth_timeout`` is closed (checked
    every tick: PySyncObj only checks a connection's timeout when it has an event, and an idle one has none). At
    most ``max_unauthenticated`` wait at a time; a new one closes the oldest, so a flood of strangers cannot lock
    out a member reconnecting, nor run the process out of file descriptors.
    """

    def __init__(self, syncObj: SyncObj, selfNode: Any, otherNodes: Any):
        self._limits: _Limits = syncObj.conf.notebookos_limits
        super().__init__(syncObj, selfNode, otherNodes)

    def _createServer(self) -> None:
        super()._createServer()  # resolves the bind address as PySyncObj does; the server is only built, not bound
        conf = self._syncObj.conf
        old = self._server
        self._server = _GuardedServer(
            self._syncObj._poller, old._TcpServer__host, old._TcpServer__port,
            sendBufferSize=conf.sendBufferSize, recvBufferSize=conf.recvBufferSize,
            connectionTimeout=conf.connectionTimeout, limits=self._limits, on_accepted=self._onNewIncomingConnection)

    def _onNewIncomingConnection(self, conn: TcpConnection) -> None:
        waiting = sorted(self._unknownConnections, key=lambda c: getattr(c, "opened", 0.0))
        for stale in waiting[: max(0, len(waiting) - self._limits.max_unauthenticated + 1)]:
            stale._reject(f"more than {self._limits.max_unauthenticated} connections authenticating at once")
        super()._onNewIncomingConnection(conn)

    def _onTick(self) -> None:
        super()._onTick()
        deadline = time.monotonic() - self._limits.auth_timeout
        for conn in list(self._unknownConnections):
            if getattr(conn, "opened", deadline) < deadline:
                conn._reject(f"did not authenticate within {self._limits.auth_timeout:g} s")

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and not isinstance(conn, _GuardedConnection):
            # PySyncObj builds the outgoing connection here; rebuild it as ours with the same callbacks (it is
            # not connected yet: the tick connects it).
            guarded = _GuardedConnection(
                poller=self._syncObj._poller, timeout=self._syncObj.conf.connectionTimeout,
                sendBufferSize=self._syncObj.conf.sendBufferSize, recvBufferSize=self._syncObj.conf.recvBufferSize,
                keepalive=self._syncObj.conf.tcp_keepalive, limits=self._limits)
            guarded.encryptor = self._syncObj.encryptor
            guarded.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, guarded))
            guarded.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            guarded.setOnDisconnectedCallback(functools.partial(self._onDisconnected, guarded))
            self._connections[node] = guarded


class _CellSyncObj(SyncObj):
    """``SyncObj`` whose leader can hold back the commit notice of its own cell entries for a moment.

    After a leader applies newly committed entries, PySyncObj sends followers an extra AppendEntries at once, only to
    tell them the new commit index. For a cell that notice (and the followers' work applying the entry) lands exactly
    while the executor's reply is on its way to the client, and on a small host they compete for the same cores.
    While ``hold_commit_notice`` is set the notice waits until :meth:`RaftNode.release_commit_notice` (called once
    the reply is out) or the next heartbeat, whichever is first. Committing needs no notice: the entry is durable on
    a majority before the proposer's callback runs; only followers' *applying* it is deferred.
    """

    hold_commit_notice = False

    # PySyncObj names this method privately; overriding the mangled name is the only hook it offers.
    def _SyncObj__applyLogEntries(self) -> bool:
        need_send = SyncObj._SyncObj__applyLogEntries(self)
        return need_send and not self.hold_commit_notice

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        """Install a snapshot without forgetting the peers this node knows now.

        PySyncObj replaces the membership with the one stored in the snapshot. A replacement replica that joins
        after log compaction receives a snapshot taken before it and its current peers were added, so it would
        drop the leader that is feeding it the rest of the log and stay stuck at the snapshot's index: one more
        replica loss would then leave the group without quorum. Keeping the union is safe because the entries
        after the snapshot replay every add and remove since, and a remove of a peer we kept applies as usual.
        """
        known = set(self._SyncObj__otherNodes)
        SyncObj._SyncObj__loadDumpFile(self, clearJournal)
        restored = set(self._SyncObj__otherNodes)
        if known - restored:
            self._SyncObj__updateClusterConfiguration(restored | known)


@dataclass
class RaftTuning:
    """PySyncObj timing. Its defaults commit in ~200 ms; these commit in ~2 ms at well under 1% idle CPU.

    With ``appendEntriesUseBatch=False`` PySyncObj writes to a pipe registered with its poller after each proposal,
    so a proposal is sent at once rather than at the next tick, and the periods only bound idle work: each
    heartbeat is pickled, zlib-compressed and Fernet-encrypted to every follower, which answers in kind. At 0.1 s
    that cost the leader 0.8% of a core on our 2-core VM (1.5% on a 16-core host); at 0.3 s, 0.35%.

    The price is a longer election timeout, i.e. how long followers take to notice a dead leader *by themselves*
    (a hung host, a partition). A replica process that dies is noticed by the front at once, and the front then
    has a survivor stand for election immediately (:meth:`RaftNode.campaign`), so the usual failover does not
    wait for the timeout.
    """

    tick_period: float = 0.3
    # Until this node knows a leader and reaches every peer it ticks (and retries connections) this often: peers
    # start within a few hundred ms of each other, and PySyncObj only connects from its tick.
    startup_tick_period: float = 0.01
    startup_limit: float = 5.0
    append_entries_period: float = 0.3
    election_timeout_min: float = 1.2
    election_timeout_max: float = 2.4
    connection_timeout: float = 2.4  # PySyncObj requires >= election_timeout_max
    connection_retry: float = 0.25
    bind_retry: float = 0.1
    bind_attempts: int = 20
    compaction_min_entries: int = 200
    compaction_min_time: float = 300.0
    # Transport limits (see _GuardedTransport). A cell's entry is at most a few MB (large values go to the object
    # store); an AppendEntries carries a batch of entries (append_entries_batch_bytes), a snapshot goes in chunks.
    max_frame_bytes: int = 64 * 2**20
    preauth_bytes: int = 64 * 2**10  # the key exchange and address frames are ~200 bytes each
    auth_timeout: float = 5.0
    max_unauthenticated: int = 16

    def conf(self, secret: str | None) -> SyncObjConf:
        conf = SyncObjConf(
            password=secret,
            autoTick=True,
            autoTickPeriod=self.startup_tick_period,
            appendEntriesPeriod=self.append_entries_period,
            appendEntriesUseBatch=False,
            raftMinTimeout=self.election_timeout_min,
            raftMaxTimeout=self.election_timeout_max,
            connectionTimeout=max(self.connection_timeout, self.election_timeout_max),
            connectionRetryTime=self.startup_tick_period,
            leaderFallbackTimeout=max(2.0, 2 * self.election_timeout_max),
            dynamicMembershipChange=True,
            # A port taken between the front choosing it and the replica binding it must fail the replica fast
            # (the front then replaces it with new ports), not leave a member that retries forever.
            bindRetryTime=self.bind_retry,
            maxBindRetries=self.bind_attempts,
            logCompactionMinEntries=self.compaction_min_entries,
            logCompactionMinTime=self.compaction_min_time,
            # The kernel process holds sockets and threads; forking it to write a snapshot is not safe.
            useFork=False,
            commandsWaitLeader=True,
        )
        # Read by _GuardedTransport, which SyncObj builds inside its constructor with only the conf to go on.
        conf.notebookos_limits = _Limits(self.max_frame_bytes, self.preauth_bytes, self.auth_timeout,
                                         self.max_unauthenticated)
        return conf


class RaftNode:
    """This replica's membership in the kernel's Raft group."""

    def __init__(
        self,
        self_address: str,
        peer_addresses: list[str],
        cell_log: CellLog,
        secret: str | None,
        tuning: RaftTuning | None = None,
        campaign_now: bool = False,
    ):
        self.address = self_address
        self.cell_log = cell_log
        self.tuning = tuning or RaftTuning()
        # SyncObj's tick thread exits when the thread that created it does: create it on the main thread.
        self._conf = self.tuning.conf(secret)
        self._sync = _CellSyncObj(self_address, peer_addresses, self._conf, consumers=[cell_log],
                                  transportClass=_GuardedTransport)
        try:
            self._sync.waitBinded()
        except SyncObjException:
            self._sync.destroy()
            raise RaftBindError(
                f"could not bind the Raft port {self_address} after {self.tuning.bind_attempts} attempts "
                "(another process holds it); this replica exits so that a replacement starts on a new port"
            ) from None
        if campaign_now:
            # A new group has no leader to wait out: let the replica that will run the first cell stand for
            # election at once instead of after a random election timeout.
            self._expire_election_deadline()
        # Calls that touch PySyncObj's transport directly must run on its tick thread.
        self._on_tick: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._sync.addOnTickCallback(self._drain_tick_calls)
        self._settled = False
        self._startup_until = time.monotonic() + self.tuning.startup_limit
        self._sync.addOnTickCallback(self._end_startup_when_settled)
        self._campaign_from_term: int | None = None
        self._sync.addOnTickCallback(self._keep_campaigning)

    def _expire_election_deadline(self) -> None:
        # PySyncObj has no call for "stand for election now"; the attribute is its election deadline, and nothing
        # else is touched. The deadline is on PySyncObj's own clock (CLOCK_MONOTONIC_RAW, not time.monotonic): zero
        # means "already passed" on any clock, so the node stands at its next tick, once it reaches a peer.
        deadline = "_SyncObj__raftElectionDeadline"
        if hasattr(self._sync, deadline):
            setattr(self._sync, deadline, 0.0)

    def campaign(self) -> None:
        """Stand for election now instead of after an election timeout: the caller knows the leader is dead (the
        front saw its process exit), which followers only conclude after a timeout. Raft keeps this safe: a
        candidate whose log is behind is refused, and a live leader just steps down to a higher term."""

        def stand() -> None:
            if not self._sync._isLeader():
                # Kept up until this node starts an election: a heartbeat the dead leader sent just before dying
                # can still arrive and push the deadline back out.
                self._campaign_from_term = self._sync.raftCurrentTerm
                self._keep_campaigning()

        self._on_tick_thread(stand)

    def _keep_campaigning(self) -> None:
        if self._campaign_from_term is None:
            return
        if self._sync.raftCurrentTerm > self._campaign_from_term or self._sync._isLeader():
            self._campaign_from_term = None  # an election happened; if it failed, the usual timeouts take over
            return
        self._expire_election_deadline()
        # Tick callbacks run after the tick's own election check: tick again now, not a tick period later.
        self._wake_tick_thread()

    def _end_startup_when_settled(self) -> None:
        """Go from startup to steady-state ticking once a leader is known and every peer is connected."""
        sync = self._sync
        if self._settled:
            return
        settled = sync._getLeader() is not None and all(sync.isNodeConnected(n) for n in sync.otherNodes)
        # A peer that never comes up (dead before it started) must not keep this node ticking fast for ever.
        if not settled and time.monotonic() < self._startup_until:
            return
        # PySyncObj reads these from its conf on every tick and connection attempt. (The callback stays registered:
        # PySyncObj iterates its callback list while calling them, so removing one from inside is not safe.)
        self._conf.autoTickPeriod = self.tuning.tick_period
        self._conf.connectionRetryTime = self.tuning.connection_retry
        self._settled = True

    def _on_tick_thread(self, call: Callable[[], None]) -> None:
        """Run ``call`` on PySyncObj's tick thread, waking it now rather than at its next tick."""
        self._on_tick.put(call)
        self._wake_tick_thread()

    def _wake_tick_thread(self) -> None:
        notifier = getattr(self._sync, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            notifier.notify()

    def _drain_tick_calls(self) -> None:
        while True:
            try:
                call = self._on_tick.get_nowait()
            except queue.Empty:
                return
            call()

    # -- proposals ---------------------------------------------------------------------------------------------
    async def _propose(self, call: Callable[[Callable[[Any, int], None]], None], timeout: float, what: str,
                       retry_denied: bool = False) -> Any:
        """Propose until committed or ``timeout``; retry only failures that mean "not committed, try again".

        Every proposal made here is idempotent (cell entries carry an id the state machine deduplicates; a
        membership change is skipped when the group already has it). A membership change is also denied while
        another is uncommitted, e.g. just after a leader change, so those retry on ``REQUEST_DENIED`` too.
        """
        transient = _TRANSIENT | {FAIL_REASON.REQUEST_DENIED} if retry_denied else _TRANSIENT
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer"
        while True:
            fut: asyncio.Future = loop.create_future()

            def done(result: Any, err: int, fut: asyncio.Future = fut) -> None:
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result((result, err)))

            call(done)
            remaining = deadline - loop.time()
            try:
                result, err = await asyncio.wait_for(fut, max(remaining, 0.001))
            except TimeoutError:
                raise CommitError(
                    f"{what} was not committed within {timeout:g} s ({last}): the replica group has no quorum "
                    f"({self.describe_quorum()})"
                ) from None
            if err == FAIL_REASON.SUCCESS:
                return result
            last = _FAIL_NAMES.get(err, str(err))
            if err not in transient or loop.time() + 0.05 >= deadline:
                raise CommitError(f"{what} failed: {last} ({self.describe_quorum()})")
            await asyncio.sleep(0.05)

    async def commit_cell(self, entry: dict[str, Any], timeout: float, hold_notice: bool = False) -> int:
        """Commit one cell's entry. With ``hold_notice`` the followers hear of the commit only when
        :meth:`release_commit_notice` is called (or at the next heartbeat): the caller's reply goes out first."""
        entry.setdefault("entry_id", uuid.uuid4().hex)
        payload = _clear_of_chunk_ends(pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL),
                                       self._conf.appendEntriesBatchSizeBytes)
        self._sync.hold_commit_notice = hold_notice
        return await self._propose(lambda cb: self.cell_log.commit_cell(payload, callback=cb), timeout, "commit")

    def release_commit_notice(self) -> None:
        """Send followers the commit index now, if a held commit notice is pending."""
        if not self._sync.hold_commit_notice:
            return
        self._sync.hold_commit_notice = False

        def send() -> None:
            if self._sync._isLeader():
                self._sync._SyncObj__sendAppendEntries()

        self._on_tick_thread(send)

    async def barrier(self, token: str, timeout: float) -> int:
        return await self._propose(lambda cb: self.cell_log.barrier(token, callback=cb), timeout, "barrier")

    async def add_member(self, address: str, timeout: float) -> None:
        if address in self.status()["members"]:
            return
        await self._propose(lambda cb: self._sync.addNodeToCluster(address, callback=cb), timeout, "add member",
                            retry_denied=True)

    async def remove_member(self, address: str, timeout: float) -> None:
        if address not in self.status()["members"]:
            return
        await self._propose(lambda cb: self._sync.removeNodeFromCluster(address, callback=cb), timeout,
                            "remove member", retry_denied=True)

    async def transfer_leadership(self, address: str, timeout: float) -> None:
        """Ask this node, if it leads, to hand leadership to ``address`` (Raft TimeoutNow; best effort)."""
        # Denied while the target lags behind the leader's log: it catches up within heartbeats, so retry.
        await self._propose(
            lambda cb: self._on_tick_thread(lambda: self._sync.transferLeadership(address, callback=cb)),
            timeout, "leadership transfer", retry_denied=True)

    def leader_address(self) -> str | None:
        return getattr(self._sync._getLeader(), "address", None)

    # -- introspection -----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """A snapshot of this node's Raft state, safe to call from any thread."""
        sync = self._sync
        leader = sync._getLeader()
        leader_address = getattr(leader, "address", None)
        if leader_address == self.address:
            role = "leader"
        elif leader_address is None:
            role = "candidate" if sync._isReady() else "joining"
        else:
            role = "follower"
        members = sorted([self.address] + [n.address for n in sync.otherNodes])
        connected = sorted(n.address for n in sync.otherNodes if sync.isNodeConnected(n))
        return {
            "role": role,
            "term": sync.raftCurrentTerm,
            "leader": leader_address,
            "commit_index": sync.raftCommitIndex,
            "applied_index": sync.raftLastApplied,
            "members": members,
            "connected": connected,
            "has_quorum": sync.hasQuorum,
            # (term, index) of the last log entry: Raft elects only a candidate whose log is at least this recent.
            "last_log": [sync._SyncObj__getCurrentLogTerm(), sync._SyncObj__getCurrentLogIndex()],
        }

    def describe_quorum(self) -> str:
        st = self.status()
        reachable = 1 + len(st["connected"])
        return f"{reachable} of {len(st['members'])} members reachable, leader {st['leader'] or 'unknown'}"

    def has_leader(self) -> bool:
        return self._sync._getLeader() is not None

    def wait_leader(self, timeout: float) -> bool:
        """Block until a leader is known (used off the event loop, e.g. before the first cell)."""
        deadline = time.monotonic() + timeout
        while self._sync._getLeader() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def destroy(self) -> None:
        self._sync.destroy()
