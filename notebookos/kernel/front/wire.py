"""Signed Jupyter wire messages as the front handles them: verify, inspect headers, re-sign, forward.

The front sits between two HMAC domains (the client's connection key and the kernel's internal key). Forwarding
keeps the original header, parent and content bytes and only recomputes the signature, so a message arrives exactly
as it was sent, buffers included. Anything that fails to parse or verify raises :class:`BadMessage`; the relay logs
and drops it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

DELIM = b"<IDS|MSG>"


class BadMessage(ValueError):
    """A multipart message that is malformed or carries a bad signature."""


class Signer:
    """HMAC-SHA256 signing with one key, with a bounded replay check on incoming signatures."""

    def __init__(self, key: bytes, replay_window: int = 10_000):
        self.key = key
        # Keying an HMAC costs more than hashing a small message: key once, copy per message (as Session does).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256) if key else None
        self._seen: set[bytes] = set()
        self._order: deque[bytes] = deque()
        self._window = replay_window

    def sign(self, parts: list[bytes]) -> bytes:
        if self._keyed is None:
            return b""
        mac = self._keyed.copy()
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def check(self, signature: bytes, parts: list[bytes]) -> None:
        if not self.key:
            return
        if not hmac.compare_digest(signature, self.sign(parts)):
            raise BadMessage("invalid HMAC signature")
        if signature in self._seen:
            raise BadMessage("duplicate signature (replayed message)")
        self._seen.add(signature)
        self._order.append(signature)
        if len(self._order) > self._window:
            self._seen.discard(self._order.popleft())


@dataclass
class WireMessage:
    """A verified message: routing identities, the four signed parts (raw bytes) and buffers."""

    idents: list[bytes]
    header_raw: bytes
    parent_raw: bytes
    metadata_raw: bytes
    content_raw: bytes
    buffers: list[bytes] = field(default_factory=list)
    _header: dict[str, Any] | None = None
    _parent: dict[str, Any] | None = None
    _metadata: dict[str, Any] | None = None
    _content: dict[str, Any] | None = None

    @property
    def header(self) -> dict[str, Any]:
        if self._header is None:
            self._header = _loads(self.header_raw, "header")
        return self._header

    @property
    def parent(self) -> dict[str, Any]:
        if self._parent is None:
            self._parent = _loads(self.parent_raw, "parent header")
        return self._parent

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = _loads(self.metadata_raw, "metadata")
        return self._metadata

    @property
    def content(self) -> dict[str, Any]:
        if self._content is None:
            self._content = _loads(self.content_raw, "content")
        return self._content

    @property
    def msg_type(self) -> str:
        return self.header.get("msg_type", "")

    @property
    def msg_id(self) -> str:
        return self.header.get("msg_id", "")

    @property
    def parent_id(self) -> str:
        return self.parent.get("msg_id", "")

    def with_metadata(self, metadata: dict[str, Any]) -> WireMessage:
        raw = _dumps(metadata)
        return WireMessage(self.idents, self.header_raw, self.parent_raw, raw, self.content_raw, self.buffers,
                           self._header, self._parent, metadata, self._content)

    def with_content(self, content: dict[str, Any]) -> WireMessage:
        raw = _dumps(content)
        return WireMessage(self.idents, self.header_raw, self.parent_raw, self.metadata_raw, raw, self.buffers,
                           self._header, self._parent, self._metadata, content)

    def frames(self, signer: Signer, idents: list[bytes] | None = None) -> list[bytes]:
        parts = [self.header_raw, self.parent_raw, self.metadata_raw, self.content_raw]
        routing = self.idents if idents is None else idents
        return [*routing, DELIM, signer.sign(parts), *parts, *self.buffers]


def _dumps(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except ValueError as exc:  # orjson.JSONDecodeError, also raised for invalid UTF-8
        raise BadMessage(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadMessage(f"{what} is not a JSON object")
    return value


def parse(frames: list[bytes], signer: Signer) -> WireMessage:
    """Split, verify and wrap one multipart message; raise :class:`BadMessage` on anything wrong."""
    frames = [bytes(f) for f in frames]
    try:
        split = frames.index(DELIM)
    except ValueError:
        raise BadMessage("no <IDS|MSG> delimiter") from None
    body = frames[split + 1:]
    if len(body) < 5:
        raise BadMessage(f"expected signature + 4 message parts after the delimiter, got {len(body)} frames")
    signature, parts, buffers = body[0], body[1:5], body[5:]
    signer.check(signature, parts)
    msg = WireMessage(frames[:split], *parts, buffers=buffers)
    header = msg.header
    if "msg_type" not in header or "msg_id" not in header:
        raise BadMessage("header lacks msg_type or msg_id")
    return msg
