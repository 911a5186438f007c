"""Names shared by the front and the replicas: metadata keys and the front<->replica control messages.

The front tells each replica its role for an ``execute_request`` in the request's metadata under
``META_KEY``: ``{"role": "lead" | "yield", "after_seq": int, "fresh": bool, "replicas": [...]}``. ``after_seq`` is
the last sequence number the front saw committed; ``fresh`` says the executor changed, so the new one must pass a
Raft barrier before running (it may not have applied a cell whose reply the front never saw). Replicas answer
with ``{"replica": id, "seq": int}`` under the same key in the ``execute_reply`` metadata.
"""

from ..common.secrets import RAFT_SECRET_ENV  # noqa: F401 - the replicas' environment is part of the protocol

META_KEY = "notebookos"

ROLE_LEAD = "lead"
ROLE_YIELD = "yield"
# Replicas test a request's raw metadata for these bytes before deserialising it: a lead never contains them, so
# leads skip the parse; a hit is confirmed by parsing (user metadata might contain the word).
YIELD_MARKER = b'"yield"'

# Control-channel requests the front sends to replicas (never relayed to or from clients).
STATUS_REQUEST = "notebookos_status_request"
STATUS_REPLY = "notebookos_status_reply"
MEMBERSHIP_REQUEST = "notebookos_membership_request"
MEMBERSHIP_REPLY = "notebookos_membership_reply"
DIGEST_REQUEST = "notebookos_digest_request"
DIGEST_REPLY = "notebookos_digest_reply"
