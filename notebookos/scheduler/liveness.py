"""Which host daemons are still alive, from the heartbeats they send the scheduler.

A host daemon killed with SIGKILL (or whose machine died) never deregisters, and its replicas go with it. Each
daemon says at registration how often it will send a heartbeat (``heartbeat_s``); a host silent for longer than
``max(timeout, misses * heartbeat_s)`` is taken for dead, and the scheduler drops it with the records of its
replicas, so nothing more is placed there and its GPUs stop counting as online. (Each kernel's front notices its
own replicas' loss on its own and starts replacements.) A host registered without ``heartbeat_s`` is never timed
out, so clients that only register keep working.
"""

from __future__ import annotations


class HostLiveness:
    """Last heartbeat per host, in the scheduler's clock."""

    def __init__(self, misses: int = 3):
        self.misses = misses
        self._seen: dict[str, tuple[float, float]] = {}  # host id -> (last seen, declared heartbeat interval)

    def registered(self, host_id: str, heartbeat_s: float | None, now: float) -> None:
        if heartbeat_s:
            self._seen[host_id] = (now, heartbeat_s)
        else:
            self._seen.pop(host_id, None)

    def heartbeat(self, host_id: str, now: float) -> None:
        _, interval = self._seen.get(host_id, (now, 0.0))
        if interval:
            self._seen[host_id] = (now, interval)

    def forget(self, host_id: str) -> None:
        self._seen.pop(host_id, None)

    def silent(self, now: float, timeout: float) -> list[tuple[str, float]]:
        """Hosts silent for longer than ``timeout`` and ``misses`` of their heartbeats, with how long."""
        if timeout <= 0:
            return []
        return [(host_id, now - seen) for host_id, (seen, interval) in self._seen.items()
                if now - seen > max(timeout, self.misses * interval)]
