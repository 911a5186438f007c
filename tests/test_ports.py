"""Ports handed out for replicas stay theirs until the replica binds them (common/replicas.free_ports)."""

from __future__ import annotations

import errno
import socket

import pytest
import zmq

from notebookos.common import replicas


def test_a_held_port_is_given_to_no_one_else_but_binds_for_the_replica():
    held = replicas.free_ports("127.0.0.1", 4)
    assert len(set(held)) == 4
    # Handed out again by no later call here, and no bind(0) anywhere gets it (another process's ports included).
    later = set(replicas.free_ports("127.0.0.1", 200))
    others = []
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        others.append(s)
    assert not later & set(held)
    assert not {s.getsockname()[1] for s in others} & set(held)
    plain = socket.socket()
    with pytest.raises(OSError) as taken:
        plain.bind(("127.0.0.1", held[0]))
    assert taken.value.errno == errno.EADDRINUSE
    # The replica's own listeners bind it: ZeroMQ's and PySyncObj's (both set SO_REUSEADDR).
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(f"tcp://127.0.0.1:{held[1]}")
    client = ctx.socket(zmq.DEALER)
    client.linger = 0
    client.connect(f"tcp://127.0.0.1:{held[1]}")
    client.send(b"hello")
    assert router.poll(5000) and router.recv_multipart()[-1] == b"hello"
    raft = socket.socket()  # as PySyncObj's TcpServer binds (not imported here: it patches socket on import)
    raft.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    raft.bind(("127.0.0.1", held[2]))
    raft.listen()
    raft.close()
    for s in [plain, *others]:
        s.close()
    router.close()
    client.close()


def test_a_port_is_released_after_its_hold():
    [port] = replicas.free_ports("127.0.0.1", 1, hold=0.0)
    replicas.free_ports("127.0.0.1", 1)  # expired holds are closed on the next call
    s = socket.socket()
    s.bind(("127.0.0.1", port))  # free again for anyone
    s.close()


def test_a_hold_ends_once_its_port_listens():
    ports = replicas.free_ports("127.0.0.1", 2)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", ports[0]))
    listener.listen()
    held = replicas.release_held()
    # The listening port's hold is closed (a plain bind now fails only because of the listener); the other stays.
    fds = {e[2].getsockname()[1] for e in replicas._held}
    assert ports[0] not in fds and ports[1] in fds and held == len(fds)
    listener.close()
    s = socket.socket()
    s.bind(("127.0.0.1", ports[0]))  # nothing holds it any more
    s.close()
