"""PySyncObj, imported once, with its process-wide side effects undone and its wire format fixed.

Every module of ours that uses PySyncObj imports it through here, so these hold in every process that runs Raft
(replicas, tests), and, since a replica runs user code, they are what a notebook sees too.
"""

from __future__ import annotations

import _socket
import pickle
import socket

import pysyncobj
import pysyncobj.pickle

# pysyncobj.win_inet_pton (imported by its TCP connection) sets socket.inet_ntop to a ctypes fallback meant for
# Windows on every platform, where it raises TypeError: any code in the process that formats an address with it
# (psutil's connection list, a user's own) broke once Raft was imported.
socket.inet_ntop = _socket.inet_ntop

# PySyncObj pickles every message with protocol 2, which writes binary bytes as latin-1 text re-encoded as UTF-8
# (up to twice as long, and slow). That also broke large entries: PySyncObj sends an entry of 64 KiB or more in
# chunks and labels as the last one the first chunk that reaches the length of the entry's command, while what it
# cuts is the longer pickle of (command, index, term), so followers unpickled a truncated entry and it never
# committed. With a binary protocol the pickle is longer by a few dozen bytes only (consensus.py pads payloads
# clear of the chunk ends for the rest). All replicas run this module, so all agree on the protocol.
pysyncobj.pickle.__dict__["__protocol"] = pickle.HIGHEST_PROTOCOL

__all__ = ["pysyncobj"]
