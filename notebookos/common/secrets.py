"""Where a process finds the scheduler and its token, and private files for secrets (mode 0600, atomic).

Tokens travel in files only their user can read or through pipes, never in an environment that user code inherits
(README, Security).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: Environment variables the kernel side reads to find the scheduler (``notebookos up`` sets them for JupyterLab).
SCHEDULER_URL_ENV = "NOTEBOOKOS_SCHEDULER_URL"
SCHEDULER_TOKEN_ENV = "NOTEBOOKOS_SCHEDULER_TOKEN"
#: A file (mode 0600) holding the token, for processes that must not keep it in an environment user code inherits.
SCHEDULER_TOKEN_FILE_ENV = "NOTEBOOKOS_SCHEDULER_TOKEN_FILE"
#: Carries a kernel's Raft secret to its replicas (never on the command line: ps shows argv).
RAFT_SECRET_ENV = "NOTEBOOKOS_RAFT_SECRET"


def read_secret(path: str | os.PathLike) -> str:
    """A token from a file only this user may read; refuses a file others can read (say so, and how to fix it)."""
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise ValueError(f"{path} is readable by other users (mode {mode & 0o777:o}): chmod 600 it")
    return Path(path).read_text().strip()


def write_private_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write JSON readable by this user only, atomically (a reader never sees a partial file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)
