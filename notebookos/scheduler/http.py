"""HTTP plumbing shared by the scheduler service and the host daemons: token auth, JSON bodies, clear errors.

Every endpoint needs ``Authorization: token TOKEN`` (``Bearer`` is accepted too); anything else gets 403. The
token is checked when the headers arrive, before any of the body is read, and a body over :data:`MAX_BODY_BYTES`
gets 413. Each service says what a token may do (``owner.authorize``): the scheduler knows an admin token, a hosts'
token, a launcher token (Jupyter servers: placing kernels) and *kernel tokens*, each good for one kernel's own
requests (:func:`kernel_token`: the kernel id and an HMAC of it under the scheduler's key, so a host daemon given
the key checks them without asking). An error is answered as ``{"error": "what was wrong"}`` with a 4xx/5xx status;
the ``req_*`` helpers name the missing or bad field and what it should be.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from typing import Any

from tornado import web

#: Largest request body read (after the token check); larger ones get 413.
MAX_BODY_BYTES = 8 << 20
_KERNEL_TOKEN_PREFIX = "nbk1"


class APIError(web.HTTPError):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(status, "%s", message)
        self.message = message


def bearer(header: str) -> str | None:
    """The token an ``Authorization`` header carries (``token T`` or ``Bearer T``), or None."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() not in ("token", "bearer") or not value.strip():
        return None
    return value.strip()


def check_token(header: str, token: str) -> bool:
    """True if an ``Authorization`` header carries ``token`` (``token T`` or ``Bearer T``)."""
    value = bearer(header)
    return bool(token) and value is not None and same_token(value, token)


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def kernel_token(key: str, kernel_id: str) -> str:
    """The token good for ``kernel_id``'s own requests only (the scheduler gives it to the kernel's front)."""
    kid = kernel_id.encode().hex()
    mac = hmac.new(key.encode(), f"{_KERNEL_TOKEN_PREFIX}.{kid}".encode(), hashlib.sha256).hexdigest()
    return f"{_KERNEL_TOKEN_PREFIX}.{kid}.{mac}"


def kernel_of(key: str, token: str | None) -> str | None:
    """The kernel id a kernel token is good for, if it was made with ``key``; else None."""
    if not key or not token or not token.startswith(_KERNEL_TOKEN_PREFIX + "."):
        return None
    try:
        kernel_id = bytes.fromhex(token.split(".")[1]).decode()
    except (IndexError, ValueError):
        return None
    return kernel_id if same_token(token, kernel_token(key, kernel_id)) else None


@web.stream_request_body
class JSONHandler(web.RequestHandler):
    """Token-checked JSON handler; ``owner`` is the service object (scheduler or host daemon), whose
    ``authorize(handler, token)`` returns what the token may do (the handler keeps it as ``scope``) or None.

    The body streams in only after :meth:`prepare` accepted the token, and is bounded by :data:`MAX_BODY_BYTES`.
    """

    scope: Any = None

    def initialize(self, owner: Any) -> None:
        self.owner = owner
        self._chunks: list[bytes] = []
        self._size = 0

    def prepare(self) -> None:
        token = bearer(self.request.headers.get("Authorization", ""))
        self.scope = self.owner.authorize(self, token) if token else None
        if self.scope is None:
            raise APIError(403, "missing or wrong token: send the header 'Authorization: token <TOKEN>' with a "
                           "token good for this request")

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES} bytes")
        self._chunks.append(chunk)

    def json_body(self) -> dict[str, Any]:
        raw = b"".join(self._chunks)
        if not raw or not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"malformed JSON in request body: {exc}") from None
        except RecursionError:
            raise APIError(400, "malformed JSON in request body: nested too deeply") from None
        if not isinstance(body, dict):
            raise APIError(400, f"request body must be a JSON object, got {type(body).__name__}")
        return body

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            message = exc.message
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message else self._reason
        elif exc is not None:
            message = f"internal error: {type(exc).__name__}: {exc}"
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))


class NotFoundHandler(JSONHandler):
    def prepare(self) -> None:
        raise APIError(404, f"no such endpoint: {self.request.method} {self.request.path}")


# Field validation: each returns the value or raises a 400 naming the field.


def _missing(where: str) -> APIError:
    return APIError(400, f"missing field {where!r}")


def req_str(body: dict, key: str, where: str | None = None, required: bool = True, default: str | None = None
            ) -> str | None:
    where = where or key
    if key not in body or body[key] is None:
        if required:
            raise _missing(where)
        return default
    value = body[key]
    if not isinstance(value, str) or not value:
        raise APIError(400, f"field {where!r} must be a non-empty string, got {value!r}")
    return value


def req_int(body: dict, key: str, where: str | None = None, required: bool = True, default: int | None = None,
            minimum: int | None = 0, maximum: int | None = None) -> int | None:
    where = where or key
    if key not in body or body[key] is None:
        if required:
            raise _missing(where)
        return default
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"field {where!r} must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise APIError(400, f"field {where!r} must be {bounds}, got {value}")
    return value


def req_num(body: dict, key: str, where: str | None = None, required: bool = True, default: float | None = None,
            minimum: float = 0.0) -> float | None:
    where = where or key
    if key not in body or body[key] is None:
        if required:
            raise _missing(where)
        return default
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise APIError(400, f"field {where!r} must be a number, got {value!r}")
    if value < minimum:
        raise APIError(400, f"field {where!r} must be >= {minimum}, got {value}")
    return float(value)


def req_dict(body: dict, key: str, where: str | None = None, required: bool = True) -> dict | None:
    where = where or key
    if key not in body or body[key] is None:
        if required:
            raise _missing(where)
        return None
    value = body[key]
    if not isinstance(value, dict):
        raise APIError(400, f"field {where!r} must be a JSON object, got {type(value).__name__}")
    return value
