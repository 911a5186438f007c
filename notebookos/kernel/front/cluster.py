"""The front in cluster mode: replicas on the hosts the scheduler chose, GPUs from the scheduler per cell.

- :class:`HostdLauncher` starts and stops replicas through each host's daemon (``notebookos hostd``) and learns
  their liveness from it.
- :class:`SchedulerExecutorPolicy` asks the scheduler which replica runs each cell (a long poll that answers
  run/wait/migrate), releases the GPUs when the cell ends and reports migrations and replacements.

Ports: each replica's host daemon chooses its ports and the address it listens on (``HostDaemon.replica_ip``), on
the replica's machine; the front connects there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from ...common.client import HostClient, SchedulerClient, SchedulerError
from .. import protocol
from .executor import ExecutorChoice, ExecutorPolicy, Migrate, ReplicaView, Wait
from .launchers import Launched, LaunchSpec, ReplicaLauncher

log = logging.getLogger(__name__)


class HostdLauncher(ReplicaLauncher):
    """Replicas as processes of host daemons, one per host the scheduler placed them on.

    Liveness: one long poll per host (``GET /api/replicas?since=V&wait=S``), answered by the daemon the moment one
    of its replicas exits; a daemon that cannot be reached (after one retry) takes this kernel's replicas there
    with it. :meth:`poll`, which the supervisor calls often, reads what the watchers learnt (and restarts one that
    ended while replicas on its host live).
    """

    #: seconds each long poll may be held by the daemon
    long_poll = 30.0
    #: seconds before asking an unreachable daemon once more, before its replicas count as lost
    retry_after = 0.5

    def __init__(self, kernel_id: str, token: str, host_urls: dict[str, str]):
        self.kernel_id = kernel_id
        self.token = token
        self.host_urls = dict(host_urls)
        self._exit: dict[tuple[str, int], int | None] = {}
        #: (the daemon's run, its replicas version) when each replica started
        self._launched_at: dict[tuple[str, int], tuple[str, int]] = {}
        self._watchers: dict[str, asyncio.Task] = {}

    def _client(self, host_id: str) -> HostClient:
        try:
            return HostClient(self.host_urls[host_id], self.token)
        except KeyError:
            raise LookupError(f"no daemon URL known for host {host_id!r}") from None

    async def ports(self, host_id: str | None, count: int, local_ip: str) -> tuple[str, list[int]]:
        """Ports are chosen by the replica's host daemon, on its machine, with the address replicas listen on there."""
        if host_id is None:
            raise ValueError("cluster mode launches replicas on a host the scheduler chose; none was given")
        answer = await self._client(host_id).ports(count)
        return answer["ip"], [int(p) for p in answer["ports"]]

    async def launch(self, spec: LaunchSpec) -> Launched:
        if spec.host_id is None:
            raise ValueError("cluster mode launches replicas on a host the scheduler chose; none was given")
        reply = await self._client(spec.host_id).launch_replica(
            self.kernel_id, spec.replica_id, spec.connection, spec.config["ReplicaKernel"],
            raft_secret=spec.env[protocol.RAFT_SECRET_ENV], hash_seed=int(spec.env["PYTHONHASHSEED"]),
            # The notebook's directory (Jupyter starts the kernel there): the daemon runs the replica there when the
            # path exists on its machine, which a multi-host deployment gets from a filesystem shared at one path.
            cwd=os.getcwd())
        key = (spec.host_id, spec.replica_id)
        self._exit[key] = None
        self._launched_at[key] = (str(reply.get("boot", "")), int(reply.get("version", 0)))
        self._watch(spec.host_id)
        return Launched(reply.get("pid"), spec.host_id, {"host_id": spec.host_id, "replica_id": spec.replica_id})

    async def poll(self, launched: Launched) -> int | None:
        code = self._exit.get((launched.state["host_id"], launched.state["replica_id"]))
        if code is None:
            self._watch(launched.state["host_id"])
        return code

    def _live_on(self, host_id: str) -> bool:
        return any(h == host_id and code is None for (h, _), code in self._exit.items())

    def _watch(self, host_id: str) -> None:
        task = self._watchers.get(host_id)
        if task is None or task.done():
            self._watchers[host_id] = asyncio.ensure_future(self._watch_host(host_id))

    async def _watch_host(self, host_id: str) -> None:
        """Follow one daemon's replicas of this kernel while any of them lives."""
        version, boot, failures = -1, "", 0
        while self._live_on(host_id):
            try:
                answer = await self._client(host_id).replicas_after(version, self.long_poll, boot)
            except (SchedulerError, OSError, LookupError) as exc:
                failures += 1
                if failures < 2:
                    await asyncio.sleep(self.retry_after)
                    continue
                # A host daemon that cannot be reached takes its replicas with it (they die with it).
                log.warning("host %s unreachable (%s): its replicas of this kernel count as lost", host_id, exc)
                for key in self._exit:
                    if key[0] == host_id and self._exit[key] is None:
                        self._exit[key] = -1
                return
            failures = 0
            version, boot = int(answer.get("version", version + 1)), str(answer.get("boot", ""))
            seen = {(host_id, r["replica_id"]): r for r in answer.get("replicas", [])
                    if r.get("kernel_id") == self.kernel_id}
            for key in [k for k in self._exit if k[0] == host_id and self._exit[k] is None]:
                row = seen.get(key)
                boot, launched = self._launched_at.get(key, ("", 0))
                if row is None:
                    # Gone, unless this answer predates its start; a restarted daemon never knew it.
                    if answer.get("boot", boot) != boot or version >= launched:
                        self._exit[key] = -1
                elif not row.get("alive", True):
                    self._exit[key] = row.get("exit_code", -1)

    def close(self) -> None:
        for task in self._watchers.values():
            task.cancel()

    async def _stop(self, launched: Launched) -> None:
        try:
            await self._client(launched.state["host_id"]).stop_replica(self.kernel_id, launched.state["replica_id"])
        except (SchedulerError, OSError) as exc:
            log.info("stopping replica %s: %s", launched.state["replica_id"], exc)
        self._exit[(launched.state["host_id"], launched.state["replica_id"])] = -15

    async def terminate(self, launched: Launched) -> None:
        await self._stop(launched)

    async def kill(self, launched: Launched) -> None:
        await self._stop(launched)

    async def cleanup(self, launched: Launched) -> None:
        if self._exit.get((launched.state["host_id"], launched.state["replica_id"])) != -15:  # not stopped by us yet
            await self._stop(launched)


class SchedulerExecutorPolicy(ExecutorPolicy):
    """The scheduler decides: run (GPUs committed), wait (queued), or migrate first."""

    long_poll = 5.0

    def __init__(self, client: SchedulerClient, kernel_id: str, launcher: HostdLauncher):
        self.client = client
        self.kernel_id = kernel_id
        self.launcher = launcher
        self._waiting = False
        self._releasing: asyncio.Task | None = None
        self._placed: set[int] = set()  # replacements the scheduler placed (it knows them already)
        self._spare: list[dict[str, Any]] = []  # replicas it placed that no replacement has taken yet

    async def _released(self) -> None:
        """Wait for the last cell's GPU release: the scheduler must hear of it before anything else of ours."""
        releasing, self._releasing = self._releasing, None
        if releasing is not None:
            await releasing

    async def choose(self, replicas: list[ReplicaView], last_executor: int | None
                     ) -> ExecutorChoice | Wait | Migrate:
        await self._released()
        # The first ask of a cell does not block, so a queued cell can tell the user it waits; later asks
        # long-poll, so the cell starts the moment a GPU frees.
        answer: dict[str, Any] = await self.client.execute(self.kernel_id,
                                                           wait=self.long_poll if self._waiting else 0.0)
        action = answer.get("action")
        self._waiting = action == "wait"
        if action == "run":
            if answer.get("host_id") and answer.get("host_url"):
                self.launcher.host_urls[answer["host_id"]] = answer["host_url"]
            return ExecutorChoice(int(answer["replica_id"]), tuple(answer.get("devices") or ()), answer.get("host_id"))
        if action == "migrate":
            self.launcher.host_urls[answer["to_host"]] = answer["to_host_url"]
            return Migrate(int(answer["replica_id"]), answer["to_host"])
        return Wait(int(answer.get("position", 1)), answer.get("reason", "waiting for a GPU"))

    async def keep_lease(self, lease_s: float, on_ended: Callable[[str], None],
                         on_move: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Renew this front's lease with the scheduler every third of ``lease_s``: a front that stops renewing
        (killed) has its kernel ended by the scheduler (GPUs released, replicas stopped). ``on_ended`` gets the
        scheduler's reason if it ended the kernel anyway; ``on_move`` each background move the answer orders."""
        if lease_s <= 0:
            return
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                answer = await self.client.renew_lease(self.kernel_id, timeout=lease_s / 3)
                for order in answer.get("moves") or ():
                    if on_move is not None:
                        on_move(order)
            except SchedulerError as exc:
                if exc.status in (404, 410):
                    log.error("the scheduler ended kernel %s: %s", self.kernel_id, exc.message)
                    on_ended(exc.message)
                    return
                log.warning("could not renew the lease of kernel %s: %s", self.kernel_id, exc)
            except OSError as exc:
                log.warning("could not renew the lease of kernel %s: %s", self.kernel_id, exc)

    async def cell_finished(self, replica_id: int) -> None:
        # The cell's reply goes to the client without waiting for the scheduler; the next request of this kernel
        # to the scheduler waits for the release instead (see _released).
        previous = self._releasing

        async def release() -> None:
            if previous is not None:
                await previous
            try:
                await self.client.finished(self.kernel_id)
            except (SchedulerError, OSError) as exc:
                log.error("could not release the GPUs of kernel %s: %s", self.kernel_id, exc)

        self._releasing = asyncio.ensure_future(release())

    async def migrated(self, old_replica: int, new_replica: int, host_id: str | None,
                       patience: float = 120.0) -> None:
        """Report a migration that has happened. The scheduler must learn it (it would otherwise run cells on a
        replica that is gone), so a scheduler that cannot be reached or fails (5xx) is asked again, with backoff, for
        up to ``patience`` seconds; a refusal of a repeated report that an earlier attempt already made is success."""
        await self._released()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        attempt = 0
        while True:
            try:
                await self.client.report_migration(self.kernel_id, old_replica, new_replica, host_id or "")
                return
            except (SchedulerError, OSError) as exc:
                status = exc.status if isinstance(exc, SchedulerError) else 599
                if attempt and status in (404, 409) and await self._migration_known(old_replica, new_replica,
                                                                                      host_id):
                    return  # an attempt whose answer was lost got through
                if status < 500 or loop.time() > deadline:
                    raise
                log.warning("reporting the migration of replica %d of kernel %s to the scheduler, attempt %d: %s; "
                            "retrying", old_replica, self.kernel_id, attempt + 1, exc)
            await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
            attempt += 1

    async def _migration_known(self, old_replica: int, new_replica: int, host_id: str | None) -> bool:
        try:
            view = await self.client.kernel(self.kernel_id)
        except (SchedulerError, OSError):
            return False
        where = {int(r["replica_id"]): r.get("host_id") for r in view.get("replicas", [])}
        return old_replica not in where and where.get(new_replica) == (host_id or "")

    async def move_failed(self, new_replica: int) -> None:
        """A background move did not happen: the scheduler forgets the replica it placed for it."""
        await self._released()
        try:
            await self.client.replica_lost(self.kernel_id, new_replica)
        except (SchedulerError, OSError) as exc:
            log.error("could not report the failed move to replica %d: %s", new_replica, exc)

    async def replica_lost(self, replica_id: int) -> None:
        self._placed.discard(replica_id)
        await self._released()
        try:
            await self.client.replica_lost(self.kernel_id, replica_id)
        except (SchedulerError, OSError) as exc:
            log.error("could not report the loss of replica %d: %s", replica_id, exc)

    async def place_replacement(self, lost_replica: int, lost_host: str | None) -> tuple[str | None, int | None]:
        """The scheduler owns placement: it places the replica the kernel is missing (``POST .../placement``), on a
        live host with room (scaling out if it must), never reusing an id."""
        await self._released()
        if not self._spare:
            answer = await self.client.top_up(self.kernel_id)
            self._spare.extend(answer.get("added") or [])
        if not self._spare:
            raise RuntimeError("the scheduler placed no replacement (the kernel has all its replicas)")
        row = self._spare.pop(0)
        host_id, replica_id = row["host_id"], int(row["replica_id"])
        if row.get("host_url"):
            self.launcher.host_urls[host_id] = row["host_url"]
        self._placed.add(replica_id)
        return host_id, replica_id

    async def replica_added(self, replica_id: int, host_id: str | None) -> None:
        if replica_id in self._placed:  # placed by the scheduler itself
            self._placed.discard(replica_id)
            return
        await self._released()
        try:
            await self.client.report_migration(self.kernel_id, None, replica_id, host_id or "")
        except (SchedulerError, OSError) as exc:
            log.error("could not report replacement replica %d: %s", replica_id, exc)
