"""The Raft wiring alone: three real PySyncObj nodes over loopback TCP, with the kernel's tuning and secret."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from notebookos.kernel.celllog import CellLog
from notebookos.kernel.consensus import CommitError, RaftNode, RaftTuning


@dataclass
class Delta:
    updated: dict = field(default_factory=dict)
    deleted: list = field(default_factory=list)
    unserialisable: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Node:
    def __init__(self, address, peers, secret="s3cret", tuning=None):
        self.events = []
        self.lock = threading.Lock()
        self.log = CellLog(self._record)
        self.raft = RaftNode(address, peers, self.log, secret, tuning)

    def _record(self, event):
        with self.lock:
            self.events.append(event)

    def kinds(self):
        with self.lock:
            return [(e.kind, e.seq) for e in self.events]


@pytest.fixture
def group():
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, addresses) for a in addresses]
    yield nodes, addresses
    for n in nodes:
        n.raft.destroy()


def wait(pred, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def entry(i):
    return {"executor": 1, "code": f"x = {i}", "execution_count": i, "store_history": True,
            "delta": Delta(updated={"x": i})}


def test_commit_is_applied_on_every_node_in_order(group):
    nodes, _ = group
    assert nodes[0].raft.wait_leader(15)

    async def commit_all():
        return [await nodes[i % 3].raft.commit_cell(entry(i), timeout=10) for i in range(1, 6)]

    seqs = asyncio.run(commit_all())
    assert seqs == [1, 2, 3, 4, 5]
    assert wait(lambda: all(len(n.kinds()) == 5 for n in nodes))
    for n in nodes:
        assert n.kinds() == [("cell", s) for s in range(1, 6)]
        assert n.log.records == {"x": 5}
        assert [h[1] for h in n.log.history] == [f"x = {i}" for i in range(1, 6)]
    roles = sorted(n.raft.status()["role"] for n in nodes)
    assert roles == ["follower", "follower", "leader"]


def test_no_quorum_means_no_commit(group):
    nodes, _ = group
    assert nodes[0].raft.wait_leader(15)
    survivor = nodes[0]
    for n in nodes[1:]:
        n.raft.destroy()
    time.sleep(0.5)
    with pytest.raises(CommitError, match="quorum|failed"):
        asyncio.run(survivor.raft.commit_cell(entry(1), timeout=2))
    assert survivor.log.records == {}


def test_a_survivor_told_the_leader_died_is_elected_without_waiting_for_a_timeout():
    # Election timeouts far longer than the test waits: only campaign() can produce these leaders.
    tuning = RaftTuning(election_timeout_min=60.0, election_timeout_max=90.0)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, addresses, tuning=tuning) for a in addresses]
    try:
        nodes[0].raft.campaign()
        assert wait(lambda: all(n.raft.leader_address() == addresses[0] for n in nodes), 20)
        asyncio.run(nodes[0].raft.commit_cell(entry(1), timeout=10))
        # Raft would rightly refuse a candidate whose log lacks the entry (the front asks the most recent one).
        assert wait(lambda: all(n.raft.status()["last_log"] == nodes[0].raft.status()["last_log"] for n in nodes))
        old_term = nodes[0].raft.status()["term"]
        nodes[0].raft.destroy()
        survivors = nodes[1:]
        # Both survivors still believe in the dead leader; the one told to campaign takes over.
        assert all(n.raft.leader_address() == addresses[0] for n in survivors)
        survivors[1].raft.campaign()
        assert wait(lambda: all(n.raft.leader_address() == addresses[2] for n in survivors), 20), [
            n.raft.status() for n in survivors]
        asyncio.run(survivors[0].raft.commit_cell(entry(2), timeout=10))
        assert wait(lambda: survivors[1].log.records.get("x") == 2)
        assert survivors[1].raft.status()["term"] > old_term
    finally:
        for n in nodes[1:]:
            n.raft.destroy()


def test_replacement_joins_and_catches_up_from_a_snapshot():
    tuning = RaftTuning(compaction_min_entries=3)
    ports = free_ports(4)
    addresses = [f"127.0.0.1:{p}" for p in ports[:3]]
    nodes = [Node(a, addresses, tuning=tuning) for a in addresses]
    try:
        assert nodes[0].raft.wait_leader(15)

        async def commit(n):
            for i in range(1, n + 1):
                await nodes[0].raft.commit_cell(entry(i), timeout=10)

        asyncio.run(commit(12))
        dead = nodes.pop(2)
        dead.raft.destroy()
        asyncio.run(nodes[0].raft.remove_member(dead.raft.address, timeout=10))
        new_address = f"127.0.0.1:{ports[3]}"
        newcomer = Node(new_address, [n.raft.address for n in nodes], tuning=tuning)
        nodes.append(newcomer)
        asyncio.run(nodes[0].raft.add_member(new_address, timeout=10))
        assert wait(lambda: newcomer.log.records.get("x") == 12)
        kinds = newcomer.kinds()
        assert kinds and kinds[0][0] == "snapshot", "a compacted log must reach the newcomer as a snapshot"
        assert newcomer.log.execution_count == 12
        assert len(newcomer.log.history) == 12
        # And it takes part in commits from then on.
        asyncio.run(newcomer.raft.commit_cell(entry(13), timeout=10))
        assert wait(lambda: all(n.log.records.get("x") == 13 for n in nodes))
    finally:
        for n in nodes:
            n.raft.destroy()


def test_a_node_without_the_secret_cannot_join_or_disturb():
    ports = free_ports(4)
    addresses = [f"127.0.0.1:{p}" for p in ports[:3]]
    nodes = [Node(a, addresses) for a in addresses]
    intruder_address = f"127.0.0.1:{ports[3]}"
    intruder = Node(intruder_address, addresses, secret="wrong")
    try:
        assert nodes[0].raft.wait_leader(15)
        # Raw garbage on a Raft port is dropped too.
        host, port = addresses[1].split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"\x80\x04garbage-that-is-not-an-encrypted-pickle" * 10)
        asyncio.run(nodes[1].raft.commit_cell(entry(1), timeout=10))
        assert wait(lambda: all(n.log.records.get("x") == 1 for n in nodes))
        time.sleep(0.5)
        assert intruder.log.records == {}
        assert intruder.raft.status()["leader"] is None
        assert all(intruder_address not in n.raft.status()["connected"] for n in nodes)
    finally:
        for n in nodes + [intruder]:
            n.raft.destroy()


def test_a_taken_raft_port_fails_fast_with_a_clear_error():
    from notebookos.kernel.consensus import RaftBindError

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    address = f"127.0.0.1:{squatter.getsockname()[1]}"
    started = time.monotonic()
    try:
        with pytest.raises(RaftBindError, match="could not bind the Raft port"):
            Node(address, [address], tuning=RaftTuning(bind_retry=0.05, bind_attempts=5))
        assert time.monotonic() - started < 10
    finally:
        squatter.close()


def test_replacements_after_a_snapshot_keep_quorum_through_successive_losses():
    """Each newcomer installs a snapshot taken before the newer members joined; it must still know them.

    PySyncObj restores the membership stored in a snapshot. A second replacement would then forget the first
    (which joined after the snapshot), and losing one more original member would leave no quorum.
    """
    # One compaction, early: later snapshots would carry the newer membership and hide the problem.
    tuning = RaftTuning(compaction_min_entries=20, compaction_min_time=3600)
    ports = free_ports(6)
    addresses = [f"127.0.0.1:{p}" for p in ports[:3]]
    nodes = [Node(a, addresses, tuning=tuning) for a in addresses]
    spare = [f"127.0.0.1:{p}" for p in ports[3:]]
    value = 0

    async def commit(node, n):
        nonlocal value
        for _ in range(n):
            value += 1
            await node.raft.commit_cell(entry(value), timeout=10)

    try:
        assert nodes[0].raft.wait_leader(15)
        asyncio.run(commit(nodes[0], 22))
        for _ in range(3):  # replace every original member, one at a time, as the front does after each loss
            dead = nodes.pop(0)
            dead.raft.destroy()
            survivor = nodes[0]
            assert wait(lambda s=survivor: s.raft.has_leader() and s.raft.status()["has_quorum"], 20)
            asyncio.run(survivor.raft.remove_member(dead.raft.address, timeout=10))
            newcomer = Node(spare.pop(0), [n.raft.address for n in nodes], tuning=tuning)
            asyncio.run(survivor.raft.add_member(newcomer.raft.address, timeout=10))
            nodes.append(newcomer)
            assert wait(lambda n=newcomer: n.log.records.get("x") == value, 20)
            current = sorted(n.raft.address for n in nodes)
            assert wait(lambda c=current: all(n.raft.status()["members"] == c for n in nodes), 10), \
                [n.raft.status()["members"] for n in nodes]
            asyncio.run(commit(survivor, 2))
    finally:
        for n in nodes:
            n.raft.destroy()
