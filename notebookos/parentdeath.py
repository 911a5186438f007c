"""Child processes that end with their parent: Linux ``PR_SET_PDEATHSIG``, set between fork and exec.

Used as ``preexec_fn`` wherever notebookos starts a process that must not outlive its starter: replicas die with
their front (SIGKILL), host daemons and ``notebookos up``'s children are asked to stop (SIGTERM) so they can stop
their own children first. Where ``prctl`` is unavailable (not Linux) the child simply does not get the signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(sig: int) -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


def kill_with_parent() -> None:
    """preexec_fn: SIGKILL this child when its parent dies."""
    _set_parent_death_signal(signal.SIGKILL)


def term_with_parent() -> None:
    """preexec_fn: SIGTERM this child when its parent dies (it may then stop its own children)."""
    _set_parent_death_signal(signal.SIGTERM)
