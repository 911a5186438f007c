"""Raft ports under attack: three real RaftNodes over loopback TCP, attackers in a separate process.

An unauthenticated stranger on the Raft port must not make commits stall or the victim's memory grow: PySyncObj
buffers whatever length a frame's 4-byte prefix declares (``struct 'i'``), so a prefix of 2 GiB followed by junk
used to grow the victim's read buffer (with quadratic copying, on the tick thread) until commits timed out.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from notebookos.kernel.consensus import CommitError, RaftTuning
from tests.test_raft import Node, entry, free_ports, wait

# Runs in its own process, as a real attacker would: the victim's tick thread must not share a GIL with it.
ATTACKER = textwrap.dedent(r"""
    import json, socket, struct, sys, time
    host, port, seconds, idle_count = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    # Idle connections that never authenticate: each must be closed by the victim.
    idle = [socket.create_connection((host, port)) for _ in range(idle_count)]
    junk = b"\xa5" * 65536
    sent_per_conn, closed_by_victim, ended_by_timer = [], 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.create_connection((host, port))
        s.settimeout(0.5)
        sent = 0
        try:
            s.sendall(struct.pack("i", 2**31 - 1))  # PySyncObj's length prefix: native signed int
            while time.monotonic() < end:
                try:
                    sent += s.send(junk)
                except TimeoutError:  # the victim reads slowly: keep the same connection, as an attacker would
                    continue
            ended_by_timer += 1
        except OSError:
            closed_by_victim += 1
        finally:
            sent_per_conn.append(sent)
            s.close()
    # Wait for the idle ones to be closed: recv returns b"" (or raises) once the victim closes them.
    idle_closed = 0
    deadline = time.monotonic() + 15
    for s in idle:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            idle_closed += s.recv(1) == b""
        except TimeoutError:
            pass
        except OSError:
            idle_closed += 1
        s.close()
    print(json.dumps({"connections": len(sent_per_conn), "closed_by_victim": closed_by_victim,
                      "ended_by_timer": ended_by_timer,
                      "max_sent": max(sent_per_conn), "idle_closed": idle_closed}))
""")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the victim's RSS from /proc")
def test_junk_and_idle_connections_on_the_leaders_port_neither_stall_commits_nor_grow_memory():
    tuning = RaftTuning(auth_timeout=1.0)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, addresses, tuning=tuning) for a in addresses]
    try:
        nodes[0].raft.campaign()
        assert wait(lambda: all(n.raft.leader_address() == addresses[0] for n in nodes), 20)
        victim = nodes[0]
        host, port = addresses[0].split(":")
        rss_before = rss_bytes()
        attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, host, port, "4", "20"],
                                    stdout=subprocess.PIPE, text=True)

        async def commit_during_attack():
            done = 0
            while attacker.poll() is None or done < 5:
                done += 1
                # A commit that cannot get through fails this test (CommitError) rather than slowing it down.
                await victim.raft.commit_cell(entry(done), timeout=10)
                await asyncio.sleep(0.05)
            return done

        committed = asyncio.run(commit_during_attack())
        out, _ = attacker.communicate(timeout=60)
        report = json.loads(out)
        assert wait(lambda: all(n.log.records.get("x") == committed for n in nodes))
        # Every junk connection was closed by the victim, after at most a bounded amount of buffered data
        # (the attacker's kernel socket buffers absorb a few MB more than the victim ever read).
        assert report["closed_by_victim"] > 0 and report["ended_by_timer"] <= 1, report
        assert report["max_sent"] < 32 * 2**20, report
        assert report["idle_closed"] == 20, report
        assert rss_bytes() - rss_before < 16 * 2**20
        assert victim.raft.status()["role"] == "leader"
    finally:
        for n in nodes:
            n.raft.destroy()


def test_frames_over_the_limit_from_an_authenticated_peer_close_the_connection():
    """A peer that knows the secret is still held to the maximum frame size; the group recovers after."""
    # PySyncObj cuts entries and snapshots into 64 KiB chunks, so legitimate frames stay under ~200 KiB (Fernet
    # adds a third); a limit below one chunk makes an ordinary entry an oversized frame.
    tuning = RaftTuning(max_frame_bytes=16 * 1024, preauth_bytes=4096)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, addresses, tuning=tuning) for a in addresses]
    try:
        nodes[0].raft.campaign()
        assert wait(lambda: all(n.raft.leader_address() == addresses[0] for n in nodes), 20)
        # An entry whose AppendEntries exceeds the limit is never accepted by followers: no quorum for it.
        big = entry(1)
        big["delta"].updated["x"] = os.urandom(40 * 1024)  # incompressible, under one chunk: one ~55 KiB frame
        with pytest.raises(CommitError):
            asyncio.run(nodes[0].raft.commit_cell(big, timeout=3))
        # Small entries from before still flow: it is the frame that is refused, not the peer.
        assert all(n.log.records == {} for n in nodes)
    finally:
        for n in nodes:
            n.raft.destroy()


def test_a_frame_that_fails_decryption_closes_the_connection():
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, addresses) for a in addresses]
    try:
        assert nodes[0].raft.wait_leader(15)
        host, port = addresses[1].split(":")
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(10)
            body = b"gAAAAAB" + b"x" * 100  # Fernet-looking, not decryptable with the group key
            s.sendall(struct.pack("i", len(body)) + body)
            assert s.recv(1) == b""
        asyncio.run(nodes[1].raft.commit_cell(entry(1), timeout=10))
        assert wait(lambda: all(n.log.records.get("x") == 1 for n in nodes))
    finally:
        for n in nodes:
            n.raft.destroy()


def test_an_oversized_unauthenticated_frame_is_closed_before_its_body_arrives():
    tuning = RaftTuning(preauth_bytes=4096)
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, addresses, tuning=tuning) for a in addresses]
    try:
        host, port = addresses[2].split(":")
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(10)
            s.sendall(struct.pack("i", 8192))  # just over the pre-authentication bound: no body needed to reject
            assert s.recv(1) == b""
        started = time.monotonic()
        assert nodes[0].raft.wait_leader(15), time.monotonic() - started
    finally:
        for n in nodes:
            n.raft.destroy()
