"""Executor policies the front loads in tests (through its executor_policy_class option)."""

from __future__ import annotations

from notebookos.kernel.front.executor import ExecutorChoice, ExecutorPolicy, Migrate, ReplicaView, Wait


class WaitTwicePolicy(ExecutorPolicy):
    """Behaves like a scheduler whose GPUs are all busy for the first two asks of each cell."""

    def __init__(self) -> None:
        self.asks = 0
        self.released = 0

    async def choose(self, replicas: list[ReplicaView], last_executor: int | None) -> ExecutorChoice | Wait:
        self.asks += 1
        if self.asks % 3:
            return Wait(position=1, reason="test: every GPU is busy")
        live = sorted(r.id for r in replicas if r.alive)
        return ExecutorChoice(last_executor if last_executor in live else live[0], (0,))

    async def cell_finished(self, replica_id: int) -> None:
        self.released += 1


class MigrateFirstPolicy(ExecutorPolicy):
    """Moves the lowest-id replica once, before the second cell, as a scheduler does when its host is full."""

    def __init__(self) -> None:
        self.cells = 0
        self.moved: list[tuple[int, int]] = []

    async def choose(self, replicas: list[ReplicaView], last_executor: int | None) -> ExecutorChoice | Migrate:
        live = sorted(r.id for r in replicas if r.alive)
        if self.cells == 1 and not self.moved:
            return Migrate(replica=last_executor if last_executor in live else live[0])
        self.cells += 1
        return ExecutorChoice(last_executor if last_executor in live else live[0])

    async def migrated(self, old_replica: int, new_replica: int, host_id: str | None) -> None:
        self.moved.append((old_replica, new_replica))
