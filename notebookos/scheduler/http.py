"""HTTP plumbing shared by the scheduler service and the host daemons: token auth, JSON bodies, clear errors.

Every endpoint needs ``Authorization: token TOKEN`` (``Bearer`` is accepted too); anything else gets 403. An error
is answered as ``{"error": "what was wrong"}`` with a 4xx/5xx status; the ``req_*`` helpers name the missing or bad
field and what it should be.
"""

from __future__ import annotations

import hmac
import json
import math
import os
from pathlib import Path
from typing import Any

from tornado import web

#: Environment variables the kernel side reads to find the scheduler (``notebookos up`` sets them for JupyterLab).
SCHEDULER_URL_ENV = "NOTEBOOKOS_SCHEDULER_URL"
SCHEDULER_TOKEN_ENV = "NOTEBOOKOS_SCHEDULER_TOKEN"


class APIError(web.HTTPError):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(status, "%s", message)
        self.message = message


def check_token(header: str, token: str) -> bool:
    """True if an ``Authorization`` header carries ``token`` (``token T`` or ``Bearer T``)."""
    scheme, _, value = header.strip().partition(" ")
    if not token or scheme.lower() not in ("token", "bearer"):
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class JSONHandler(web.RequestHandler):
    """Token-checked JSON handler; ``owner`` is the service object (scheduler or host daemon)."""

    def initialize(self, owner: Any) -> None:
        self.owner = owner

    def prepare(self) -> None:
        if not check_token(self.request.headers.get("Authorization", ""), self.owner.token):
            raise APIError(403, "missing or wrong token: send the header 'Authorization: token <TOKEN>'")

    def json_body(self) -> dict[str, Any]:
        raw = self.request.body
        if not raw or not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"malformed JSON in request body: {exc}") from None
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


def write_private_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON readable by this user only, atomically (a reader never sees a partial file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
