"""PySyncObj's process-wide side effects are undone wherever Raft runs, including in the user's notebook."""

from __future__ import annotations

import socket

import pysyncobj.pickle

from notebookos.kernel import consensus  # noqa: F401  (imports PySyncObj as the replicas do)

from .conftest import stream_text


def test_inet_ntop_works_after_importing_raft():
    assert socket.inet_ntop(socket.AF_INET, b"\x7f\x00\x00\x01") == "127.0.0.1"
    assert socket.inet_ntop(socket.AF_INET6, b"\x00" * 15 + b"\x01") == "::1"


def test_pysyncobj_pickles_bytes_as_bytes():
    payload = bytes(range(256)) * 4
    assert len(pysyncobj.pickle.dumps((payload, 1, 2))) < len(payload) + 64


def test_a_notebook_can_format_addresses(kernel):
    reply, outputs = kernel.execute("import socket\nprint(socket.inet_ntop(socket.AF_INET, bytes([10, 0, 0, 1])))")
    assert reply["status"] == "ok", reply
    assert stream_text(outputs, "stdout") == "10.0.0.1\n"
