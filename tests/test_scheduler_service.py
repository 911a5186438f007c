"""The live scheduler service with real host daemons: processes and sockets on 127.0.0.1.

The tests drive the scheduler with ``TinyPolicy`` below (loaded by the scheduler process as
``tests.test_scheduler_service:TinyPolicy``), so they do not depend on the bundled policies' fine points.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from traitlets import Bool, Float

from notebookos.scheduler.cluster import Cluster
from notebookos.scheduler.policy import Migrate, Run, ScaleOut, SchedulerPolicy

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-" + secrets.token_hex(8)
POLICY = "tests.test_scheduler_service:TinyPolicy"


class TinyPolicy(SchedulerPolicy):
    """Least-subscribed placement, last executor first, optional migration, scale-out, then a FIFO (the base
    class's waiting queue, which the scheduler shares)."""

    name = "tiny"
    migrate = Bool(False, help="Migrate a replica to a host with a free GPU instead of queueing.").tag(config=True)
    max_subscription_ratio = Float(7.0, help="Subscription cap (a policy with a cap declares it).").tag(config=True)

    def place(self, cluster: Cluster, kernel_id: str, now: float) -> list[str] | None:
        kernel = cluster.kernels[kernel_id]
        need = self.replicas_per_kernel - len(kernel.replicas)  # only the missing ones (a lost one replaced)
        if need <= 0:
            return []
        holders = {r.host_id for r in kernel.replicas.values()}
        gpus = kernel.request.gpus
        fits = [h for h in cluster.hosts.values() if not h.draining and h.gpus and h.id not in holders
                and h.subscribed_gpus + gpus <= self.max_subscription_ratio * h.gpus]
        if len(fits) < need:
            return None
        fits.sort(key=lambda h: (h.subscription_ratio, h.id))
        return [h.id for h in fits[:need]]

    def schedule_cell(self, cluster: Cluster, kernel_id: str, now: float):
        kernel = cluster.kernels[kernel_id]
        waiting = [k for k in self.waiting if k in cluster.kernels]
        first_in_line = not waiting or waiting[0] == kernel_id
        if first_in_line:
            order = sorted(kernel.replicas, key=lambda rid: (rid != kernel.last_executor, rid))
            for rid in order:
                host = cluster.hosts[kernel.replicas[rid].host_id]
                if len(host.free_gpus) >= kernel.request.gpus:
                    devices = cluster.commit(kernel_id, rid, now)
                    self.dequeue(kernel_id)
                    return Run(rid, host.id, devices)
            if self.migrate and order:
                holders = {r.host_id for r in kernel.replicas.values()}
                for host in sorted(cluster.hosts.values(), key=lambda h: h.id):
                    if host.id not in holders and len(host.free_gpus) >= kernel.request.gpus:
                        return Migrate(order[0], host.id)
            if len(cluster.hosts) < self.max_hosts:
                return ScaleOut(self.host_gpus)
        return self._queue(cluster, kernel_id, now)


# ---------------------------------------------------------------------------------------------- helpers


def api(method: str, url: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None,
        timeout: float = 30.0, scheme: str = "token") -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is None and method in ("POST", "PUT"):
        data = b"{}"
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def ok(method: str, url: str, body: Any = None, status: int | tuple[int, ...] = (200, 201)) -> Any:
    code, answer = api(method, url, body)
    expected = status if isinstance(status, tuple) else (status,)
    assert code in expected, (method, url, code, answer)
    return answer


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_with(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class Proc:
    """A service process in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "NOTEBOOKOS_SCHEDULER_TOKEN": TOKEN, **(env or {})}, process_group=0)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.popen.wait()


def start_scheduler(tmp: Path, *args: str) -> tuple[Proc, str]:
    info = tmp / f"scheduler-{secrets.token_hex(3)}.json"
    proc = Proc(["-m", "notebookos.scheduler.service", "--port", "0", "--info-file", str(info), "--policy", POLICY,
                 *args], tmp / f"{info.stem}.log")
    try:
        wait_for(lambda: info.exists() or proc.popen.poll() is not None, 20, "the scheduler")
        assert info.exists(), proc.output()
    except BaseException:
        proc.stop()
        raise
    return proc, json.loads(info.read_text())["url"]


def start_hostd(tmp: Path, url: str, host_id: str, gpus: int = 1, *args: str) -> Proc:
    return Proc(["-m", "notebookos.scheduler.hostd", "--scheduler-url", url, "--host-id", host_id,
                 "--virtual-gpus", str(gpus), "--no-nvml", *args], tmp / f"hostd-{host_id}.log")


def wait_hosts(url: str, ids: set[str], timeout: float = 20.0) -> list[dict]:
    def registered():
        hosts = ok("GET", f"{url}/api/hosts")["hosts"]
        return hosts if {h["id"] for h in hosts} == ids else None

    return wait_for(registered, timeout, f"hosts {sorted(ids)} to register")


def gpus_never_negative(url: str) -> dict:
    status = ok("GET", f"{url}/api/status")
    g = status["gpus"]
    assert 0 <= g["committed"] <= g["online"] and g["free"] == g["online"] - g["committed"] >= 0, status
    return status


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def replica_body(tmp: Path, kernel_id: str = "k1", replica_id: int = 1) -> dict:
    ports = free_ports(6)
    connection = {"transport": "tcp", "ip": "127.0.0.1", "shell_port": ports[0], "iopub_port": ports[1],
                  "stdin_port": ports[2], "control_port": ports[3], "hb_port": ports[4],
                  "key": secrets.token_hex(16), "signature_scheme": "hmac-sha256", "kernel_name": "notebookos"}
    config = {"raft_address": f"127.0.0.1:{ports[5]}", "raft_peers": [], "campaign_now": True,
              "store_dir": str(tmp / "store")}
    return {"kernel_id": kernel_id, "replica_id": replica_id, "connection": connection, "config": config,
            "raft_secret": secrets.token_hex(16), "hash_seed": 1234}


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scheduler")


def _policies() -> list[str]:
    try:
        import notebookos.scheduler.policies.notebookos  # noqa: F401
    except ImportError:
        return [POLICY]
    return [POLICY, "notebookos"]


@pytest.fixture(scope="module", params=_policies())
def cluster(request, tmp_module):
    """A scheduler (2 replicas per kernel; the test policy, and the bundled ``notebookos`` policy where it
    exists) and two host daemons with one virtual GPU each."""
    scheduler, url = start_scheduler(tmp_module, "--replicas-per-kernel", "2", "--max-hosts", "2",
                                     "--policy", request.param)
    hosts = [start_hostd(tmp_module, url, f"h{i}") for i in (1, 2)]
    try:
        wait_hosts(url, {"h1", "h2"})
        yield url, scheduler, hosts
    finally:
        for p in hosts:
            p.stop()
        scheduler.stop()


# ---------------------------------------------------------------------------------------------- tests


def test_hosts_register(cluster):
    url, _, hosts = cluster
    listed = {h["id"]: h for h in ok("GET", f"{url}/api/hosts")["hosts"]}
    assert set(listed) == {"h1", "h2"}
    for h in listed.values():
        assert h["gpus"] == 1 and h["free_gpus"] == [0] and h["committed"] == {}
        assert h["url"].startswith("http://127.0.0.1:") and h["cpus"] >= 1 and h["memory_mb"] > 0
        assert [d["virtual"] for d in h["devices"]] == [True]
        assert h["managed"] is False
    gpus = ok("GET", f"{listed['h1']['url']}/api/gpus")
    assert gpus["host_id"] == "h1" and len(gpus["gpus"]) == 1
    status = gpus_never_negative(url)
    assert status["hosts"] == 2 and status["gpus"]["online"] == 2 and status["gpus"]["committed"] == 0


def test_token_required(cluster):
    url, _, _ = cluster
    host_url = ok("GET", f"{url}/api/hosts")["hosts"][0]["url"]
    for base, path in ((url, "/api/status"), (url, "/api/kernels"), (host_url, "/api/gpus"),
                       (host_url, "/api/replicas")):
        code, answer = api("GET", base + path, token=None)
        assert code == 403 and "token" in answer["error"]
        code, _ = api("GET", base + path, token="wrong")
        assert code == 403
    code, _ = api("POST", f"{url}/api/kernels", {"kernel_id": "x"}, token=None)
    assert code == 403
    code, _ = api("GET", f"{url}/api/status", scheme="Bearer")
    assert code == 200


def test_bad_input(cluster):
    url, _, _ = cluster
    code, answer = api("POST", f"{url}/api/kernels", raw=b'{"kernel_id": ')
    assert code == 400 and "malformed JSON" in answer["error"]
    code, answer = api("POST", f"{url}/api/kernels", raw=b"[1, 2]")
    assert code == 400 and "JSON object" in answer["error"]
    code, answer = api("POST", f"{url}/api/kernels", {"request": {"gpus": 1}})
    assert code == 400 and "'kernel_id'" in answer["error"]
    code, answer = api("POST", f"{url}/api/kernels", {"kernel_id": "k", "request": {"gpus": -1}})
    assert code == 400 and "'request.gpus'" in answer["error"]
    code, answer = api("POST", f"{url}/api/kernels", {"kernel_id": "k", "request": {"cpus": "many"}})
    assert code == 400 and "'request.cpus'" in answer["error"]
    code, answer = api("POST", f"{url}/api/hosts", {"id": "h9", "gpus": 1, "url": "ftp://x"})
    assert code == 400 and "'url'" in answer["error"]
    code, answer = api("POST", f"{url}/api/kernels/nope/execute", {})
    assert code == 404 and "nope" in answer["error"]
    code, answer = api("POST", f"{url}/api/kernels/nope/execute", raw=b"{bad")
    assert code == 400 and "malformed JSON" in answer["error"]
    code, answer = api("GET", f"{url}/api/nothing-here")
    assert code == 404 and "no such endpoint" in answer["error"]
    assert ok("GET", f"{url}/api/kernels")["kernels"] == []


def test_place_execute_queue_release(cluster):
    url, _, _ = cluster
    placed = {}
    for k in ("ka", "kb", "kc"):
        answer = ok("POST", f"{url}/api/kernels", {"kernel_id": k, "request": {"gpus": 1, "cpus": 0.5,
                                                                              "memory_mb": 256}}, 201)
        assert answer["kernel_id"] == k
        assert [r["replica_id"] for r in answer["replicas"]] == [1, 2]
        assert {r["host_id"] for r in answer["replicas"]} == {"h1", "h2"}
        assert all(r["host_url"].startswith("http://") for r in answer["replicas"])
        placed[k] = answer
    code, answer = api("POST", f"{url}/api/kernels", {"kernel_id": "ka"})
    assert code == 409 and "already exists" in answer["error"]

    run_a = ok("POST", f"{url}/api/kernels/ka/execute", {})
    assert run_a["action"] == "run" and run_a["replica_id"] == 1 and run_a["devices"] == [0]
    assert run_a["device_uuids"] == ["GPU-virtual-0000"]
    code, answer = api("POST", f"{url}/api/kernels/ka/execute", {})
    assert code == 409 and "already runs a cell" in answer["error"]
    run_b = ok("POST", f"{url}/api/kernels/kb/execute", {})
    assert run_b["action"] == "run" and run_b["devices"] == [0] and run_b["host_id"] != run_a["host_id"]
    assert gpus_never_negative(url)["gpus"]["free"] == 0

    wait_c = ok("POST", f"{url}/api/kernels/kc/execute", {})
    assert wait_c["action"] == "wait" and wait_c["position"] == 1 and wait_c["reason"]
    status = gpus_never_negative(url)
    assert [q["kernel_id"] for q in status["queue"]] == ["kc"] and sorted(status["running"]) == ["ka", "kb"]

    # A long poll: held until ka's GPU is released, then it answers run.
    answers = []
    poller = threading.Thread(target=lambda: answers.append(api("POST", f"{url}/api/kernels/kc/execute",
                                                                {"wait": 20})))
    started = time.monotonic()
    poller.start()
    time.sleep(0.3)
    assert not answers
    assert ok("POST", f"{url}/api/kernels/ka/finished", {}) == {"released": True}
    poller.join(10)
    code, run_c = answers[0]
    assert code == 200 and run_c["action"] == "run" and run_c["host_id"] == run_a["host_id"], run_c
    assert time.monotonic() - started < 5
    assert ok("POST", f"{url}/api/kernels/ka/finished", {}) == {"released": False}  # idempotent
    gpus_never_negative(url)

    for k in ("kb", "kc"):
        ok("POST", f"{url}/api/kernels/{k}/finished", {})
    status = gpus_never_negative(url)
    assert status["gpus"]["committed"] == 0 and status["queue"] == [] and status["kernels"] == 3
    kernel = ok("GET", f"{url}/api/kernels/kc")
    assert kernel["last_executor"] == 1 and kernel["running"] is None and len(kernel["replicas"]) == 2

    for k in ("ka", "kb", "kc"):
        assert ok("DELETE", f"{url}/api/kernels/{k}") == {"kernel_id": k, "removed": True}
    code, _ = api("POST", f"{url}/api/kernels/ka/execute", {})
    assert code == 404
    status = gpus_never_negative(url)
    assert status["kernels"] == 0 and status["gpus"]["subscribed"] == 0


def test_async_client(cluster):
    from notebookos.common.client import SchedulerClient, SchedulerError

    url, _, _ = cluster

    async def scenario():
        client = SchedulerClient(url, TOKEN)
        placed = await client.place("kasync", {"gpus": 1})
        assert len(placed["replicas"]) == 2
        run = await client.execute("kasync")
        assert run["action"] == "run"
        assert (await client.finished("kasync"))["released"] is True
        assert (await client.status())["gpus"]["committed"] == 0
        await client.remove("kasync")
        with pytest.raises(SchedulerError) as err:
            await client.execute("kasync")
        assert err.value.status == 404 and "kasync" in err.value.message
        with pytest.raises(SchedulerError) as err:
            await SchedulerClient(url, "wrong").status()
        assert err.value.status == 403

    asyncio.run(scenario())


def test_migration_and_session_reclaim(tmp_path):
    """1 replica per kernel: a cell whose host is busy migrates its replica; an idle kernel is reclaimed."""
    scheduler, url = start_scheduler(tmp_path, "--replicas-per-kernel", "1", "--max-hosts", "2",
                                     "--session-idle-limit", "1.5", "--check-interval", "0.2",
                                     "--TinyPolicy.migrate=True")
    hosts = [start_hostd(tmp_path, url, f"m{i}") for i in (1, 2)]
    try:
        wait_hosts(url, {"m1", "m2"})
        for k in ("a", "b", "c"):  # a -> m1, b -> m2, c -> m1 (least subscribed, then by id)
            ok("POST", f"{url}/api/kernels", {"kernel_id": k}, 201)
        assert ok("GET", f"{url}/api/kernels/c")["replicas"][0]["host_id"] == "m1"
        assert ok("POST", f"{url}/api/kernels/a/execute")["action"] == "run"
        move = ok("POST", f"{url}/api/kernels/c/execute")
        m2_url = next(h["url"] for h in ok("GET", f"{url}/api/hosts")["hosts"] if h["id"] == "m2")
        assert move == {"action": "migrate", "replica_id": 1, "to_host": "m2", "to_host_url": m2_url}
        # The front started replica 2 on m2 and retired replica 1; it reports, then asks again.
        code, answer = api("POST", f"{url}/api/kernels/c/replicas",
                           {"old_replica_id": 1, "new_replica_id": 2, "host_id": "nowhere"})
        assert code == 404 and "nowhere" in answer["error"]
        moved = ok("POST", f"{url}/api/kernels/c/replicas", {"old_replica_id": 1, "new_replica_id": 2,
                                                              "host_id": "m2"})
        assert moved["replicas"] == [{"replica_id": 2, "host_id": "m2", "host_url": m2_url, "ready": True}]
        run = ok("POST", f"{url}/api/kernels/c/execute")
        assert run["action"] == "run" and run["replica_id"] == 2 and run["host_id"] == "m2"
        hosts_view = {h["id"]: h for h in ok("GET", f"{url}/api/hosts")["hosts"]}
        assert hosts_view["m1"]["subscribed_gpus"] == 1 and hosts_view["m2"]["subscribed_gpus"] == 2
        ok("POST", f"{url}/api/kernels/c/finished")

        # A lost replica is forgotten and a replacement placed (with a new id).
        lost = ok("DELETE", f"{url}/api/kernels/b/replicas/1")
        assert lost["replicas"] == []
        code, answer = api("POST", f"{url}/api/kernels/b/execute")
        assert code == 409 and "no replicas left" in answer["error"]
        topped = ok("POST", f"{url}/api/kernels/b/placement")
        [added] = topped["added"]
        assert added["replica_id"] == 2 and topped["replicas"] == [added]
        assert ok("POST", f"{url}/api/kernels/b/placement")["added"] == []
        # Its front launches it on that host.
        launched = ok("POST", f"{added['host_url']}/api/replicas", replica_body(tmp_path, "b", 2), 201)
        started = time.monotonic()

        # Kernels without activity past the limit are reclaimed (their replicas stopped); a running one is not.
        time.sleep(1.0)
        ok("POST", f"{url}/api/kernels/c/execute")  # c stays active
        wait_for(lambda: api("GET", f"{url}/api/kernels/b")[0] == 410, 5, "kernel b to be reclaimed")
        assert time.monotonic() - started > 1.0
        wait_for(lambda: not pid_alive(launched["pid"]), 10, "the reclaimed kernel's replica to stop")
        code, answer = api("POST", f"{url}/api/kernels/b/execute")
        assert code == 410 and "reclaimed" in answer["error"]
        status = gpus_never_negative(url)
        assert {"b"} <= {r["kernel_id"] for r in status["reclaimed"]}
        assert "a" not in {r["kernel_id"] for r in status["reclaimed"]}  # a runs a cell
        assert api("GET", f"{url}/api/kernels/c")[0] == 200
        assert status["prewarm_pool"] == {"size_per_host": 0}
    finally:
        for p in hosts:
            p.stop()
        scheduler.stop()


def test_scale_out_and_in(tmp_path):
    """No room -> the LocalHostProvider starts a hostd that registers; idle past the limit -> it is removed."""
    scheduler, url = start_scheduler(tmp_path, "--replicas-per-kernel", "1", "--max-hosts", "2",
                                     "--TinyPolicy.max_subscription_ratio=1", "--host-gpus", "1", "--host-idle-limit", "1",
                                     "--check-interval", "0.2",
                                     f"--LocalHostProvider.runtime_dir={tmp_path / 'scaled'}")
    first = start_hostd(tmp_path, url, "s1")
    try:
        wait_hosts(url, {"s1"})
        assert ok("POST", f"{url}/api/kernels", {"kernel_id": "a"}, 201)["replicas"][0]["host_id"] == "s1"
        placed = ok("POST", f"{url}/api/kernels", {"kernel_id": "b"}, 201)  # s1 is full at ratio 1: scale out
        new_host = placed["replicas"][0]["host_id"]
        assert new_host.startswith("local-")
        view = {h["id"]: h for h in ok("GET", f"{url}/api/hosts")["hosts"]}
        assert set(view) == {"s1", new_host} and view[new_host]["managed"] and not view["s1"]["managed"]
        pids = pids_with(f"--host-id {new_host}")
        assert len(pids) == 1, pids

        code, answer = api("POST", f"{url}/api/kernels", {"kernel_id": "c"})  # at max_hosts
        assert code == 503 and "max_hosts=2" in answer["error"]
        assert api("GET", f"{url}/api/kernels/c")[0] == 404  # nothing left behind

        run = ok("POST", f"{url}/api/kernels/b/execute")
        assert run["action"] == "run" and run["host_id"] == new_host
        ok("POST", f"{url}/api/kernels/b/finished")
        ok("DELETE", f"{url}/api/kernels/b")
        wait_for(lambda: {h["id"] for h in ok("GET", f"{url}/api/hosts")["hosts"]} == {"s1"}, 10,
                 "scale-in to remove the idle host")
        wait_for(lambda: not pid_alive(pids[0]), 10, "the scaled-in host daemon to exit")
        assert ok("POST", f"{url}/api/kernels/a/execute")["action"] == "run"  # s1 (not the provider's) stays
    finally:
        first.stop()
        scheduler.stop()
    assert not pids_with(str(tmp_path / "scaled"))


def test_a_killed_host_daemon_is_dropped_and_a_forgotten_one_registers_again(tmp_path):
    scheduler, url = start_scheduler(tmp_path, "--replicas-per-kernel", "1", "--host-timeout", "1",
                                     "--check-interval", "0.2")
    beat = ("--heartbeat-interval", "0.2")
    hosts = {h: start_hostd(tmp_path, url, h, 1, *beat) for h in ("d1", "d2")}
    silent = None
    try:
        wait_hosts(url, {"d1", "d2"})
        placed = ok("POST", f"{url}/api/kernels", {"kernel_id": "k", "request": {"gpus": 1}}, 201)
        victim = placed["replicas"][0]["host_id"]
        silent = start_hostd(tmp_path, url, "quiet", 1, "--heartbeat-interval", "0")  # declares no heartbeats
        wait_hosts(url, {"d1", "d2", "quiet"})
        # SIGKILL: no deregistration. The host (and its replica's record) go once its heartbeats stop.
        hosts[victim].stop(signal.SIGKILL)
        survivor = next(h for h in hosts if h != victim)
        wait_hosts(url, {survivor, "quiet"}, timeout=20)
        assert ok("GET", f"{url}/api/kernels/k")["replicas"] == []
        status = gpus_never_negative(url)
        assert status["gpus"]["online"] == 2
        assert "sent no heartbeat" in scheduler.output()
        # A daemon the scheduler no longer knows (here: deregistered behind its back) registers again.
        ok("DELETE", f"{url}/api/hosts/{survivor}")
        wait_hosts(url, {survivor, "quiet"}, timeout=20)
        assert "registering again" in hosts[survivor].output()
    finally:
        for p in [*hosts.values(), *([silent] if silent else [])]:
            p.stop()
        scheduler.stop()


def test_scheduler_command_line_is_the_applications_aliases_and_flags(tmp_path):
    """`notebookos scheduler --help` lists the options with the help of the traits they set; an option sets its
    trait (the last of repeats wins), a config file loads under the command line, and the subscription cap has one
    name, the policy's: the old --oversubscription says which."""
    help_text = subprocess.run([sys.executable, "-m", "notebookos", "scheduler", "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    for option, trait, words in (("--port", "SchedulerService.port", "Port the REST API listens on"),
                                 ("--max-hosts", "SchedulerService.max_hosts", "Largest cluster size"),
                                 ("--host-timeout", "SchedulerService.host_timeout", "heartbeat"),
                                 ("--policy", "SchedulerService.policy", "module:Class"),
                                 ("--config", "SchedulerService.config_file", "config file")):
        assert option in help_text and trait in help_text and words in help_text, (option, help_text[:3000])
    assert "--oversubscription" not in help_text and "NotebookOSPolicy.max_subscription_ratio" in help_text

    from notebookos.scheduler.service import SchedulerService

    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps({"SchedulerService": {"check_interval": 2.5, "host_timeout": 9.0},
                                  "NotebookOSPolicy": {"max_subscription_ratio": 3.0}}))
    app = SchedulerService()
    app.initialize(["--port", "0", "--policy", "batch", "--policy=notebookos", f"--config={config}",
                    "--host-timeout=4", "--replicas-per-kernel", "2"])
    assert (app.port, app.policy, app.replicas_per_kernel) == (0, "notebookos", 2)
    assert app.check_interval == 2.5 and app.host_timeout == 4.0
    policy = app.make_policy()
    assert (type(policy).__name__, policy.max_subscription_ratio, policy.replicas_per_kernel) == (
        "NotebookOSPolicy", 3.0, 2)

    for argv in (["--oversubscription", "2"], ["--oversubscription=2"], ["--SchedulerService.oversubscription_ratio=2"]):
        with pytest.raises(ValueError, match=r"--NotebookOSPolicy\.max_subscription_ratio=N"):
            SchedulerService().initialize(argv)
    proc = subprocess.run([sys.executable, "-m", "notebookos", "scheduler", "--oversubscription", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--NotebookOSPolicy.max_subscription_ratio=N" in proc.stderr
    with pytest.raises(ValueError, match="unknown scheduling policy 'nope'; available: batch, notebookos"):
        SchedulerService(policy="nope").make_policy()

    from notebookos.scheduler.up import _route_options

    lab, scheduler, hostd = _route_options(["--NotebookOSPolicy.max_subscription_ratio=3", "--HostDaemon.x=1",
                                            "--SchedulerService.front_lease=9", "--ServerApp.y=2"])
    assert scheduler == ["--NotebookOSPolicy.max_subscription_ratio=3", "--SchedulerService.front_lease=9"]
    assert (lab, hostd) == (["--ServerApp.y=2"], ["--HostDaemon.x=1"])
