"""Large binary entries commit: PySyncObj's chunked transmission of big entries lost their end (see "large
entries" in ``consensus.py``), so an entry of real pickled bytes over 64 KiB almost never committed."""

from __future__ import annotations

import asyncio
import os

from .test_raft import Delta, Node, free_ports, wait


def test_binary_entries_over_the_old_chunk_size_commit_on_every_node():
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [Node(a, addresses) for a in addresses]
    try:
        assert nodes[0].raft.wait_leader(15)
        leader = next(n for n in nodes if n.raft.status()["role"] == "leader")
        # Random bytes: most are >= 0x80, which protocol 2 writes as two bytes each.
        # One payload ends just short of a 64 KiB boundary: the case a binary pickle alone would still mislabel.
        sizes = [70_000, 300_000, 1_500_000, 3_000_000, 5 * 65536 - 300]

        async def commit_all():
            return [await leader.raft.commit_cell(
                {"executor": 1, "code": "", "execution_count": i, "store_history": False,
                 "delta": Delta(updated={"blob": os.urandom(size)})}, timeout=20)
                for i, size in enumerate(sizes, 1)]

        assert asyncio.run(commit_all()) == [1, 2, 3, 4, 5]
        assert wait(lambda: all(len(n.kinds()) == len(sizes) for n in nodes), timeout=30)
        assert len({n.log.records["blob"] for n in nodes}) == 1
    finally:
        for n in nodes:
            n.raft.destroy()
