"""The bundled scheduling policies over a Cluster: placement, executor choice, migration, autoscaling, queueing,
and GPU accounting under many interleaved kernels."""

from __future__ import annotations

import random

import pytest

from notebookos.scheduler.cluster import AccountingError, Cluster, Host, ResourceRequest
from notebookos.scheduler.policies import HostIndex, IndexedPolicy
from notebookos.scheduler.policies.batch import BatchPolicy
from notebookos.scheduler.policies.notebookos import NotebookOSPolicy
from notebookos.scheduler.policies.reservation import ReservationPolicy
from notebookos.scheduler.policy import Migrate, Queue, Run, ScaleOut, available_policies, load_policy


def make_cluster(n: int, gpus: int = 8) -> Cluster:
    c = Cluster()
    for i in range(1, n + 1):
        c.add_host(Host(f"h{i}", gpus=gpus))
    return c


def add_kernel(c: Cluster, kid: str, gpus: int) -> None:
    c.add_kernel(kid, ResourceRequest(gpus=gpus))


def occupy(c: Cluster, host_id: str, gpus: int, policy: IndexedPolicy | None = None) -> str:
    """A filler kernel with one replica on ``host_id`` running a cell on ``gpus`` GPUs there (changed behind
    the policy's back; ``policy`` is told)."""
    kid = f"filler-{host_id}-{len(c.kernels)}"
    add_kernel(c, kid, gpus)
    rid = c.place_replica(kid, host_id).replica_id
    c.commit(kid, rid)
    if policy is not None:
        policy.refresh(c, [host_id])
    return kid


def check_invariants(c: Cluster, policy: IndexedPolicy | None = None) -> None:
    for host in c.hosts.values():
        assert 0 <= len(host.committed) <= host.gpus
        assert all(0 <= d < host.gpus for d in host.committed)
        assert host.subscribed_gpus == sum(c.kernels[k].request.gpus for k, _ in host.replicas)
        assert host.subscribed_gpus >= 0
        assert host.firm_held == sum(1 for d, k in host.held.items() if c.kernels[k].held.firm)
        for d, (kid, rid) in host.committed.items():
            if d in host.held:  # kept for the kernel's next cell
                hold = c.kernels[kid].held
                assert host.held[d] == kid and hold.host_id == host.id and d in hold.devices
                assert hold.replica_id == rid and (rid is None or c.kernels[kid].replicas[rid].host_id == host.id)
                continue
            running = c.kernels[kid].running
            assert running is not None and running[0] == rid and d in running[1]
            assert c.kernels[kid].replicas[rid].host_id == host.id
    assert c.n_committed == sum(len(h.committed) for h in c.hosts.values())
    assert c.n_held == sum(len(h.held) for h in c.hosts.values())
    assert c.n_subscribed == sum(h.subscribed_gpus for h in c.hosts.values())
    for kernel in c.kernels.values():
        hosts = [r.host_id for r in kernel.replicas.values()]
        assert len(hosts) == len(set(hosts)), "two replicas of a kernel on one host"
        if kernel.running is not None:
            rid, devices = kernel.running
            host = c.hosts[kernel.replicas[rid].host_id]
            assert len(devices) == kernel.request.gpus == len(set(devices))
            assert all(host.committed[d] == (kernel.id, rid) for d in devices)
    if policy is not None and policy._index is not None and policy._index.cluster is c:
        assert policy._index.is_exact()


def test_entry_points_resolve_the_bundled_policies():
    found = available_policies()
    assert found["notebookos"] is NotebookOSPolicy
    assert found["reservation"] is ReservationPolicy
    assert found["batch"] is BatchPolicy
    assert load_policy("batch", process_start_seconds=3).process_start_seconds == 3
    for cls in (NotebookOSPolicy, ReservationPolicy, BatchPolicy):
        assert "models" in cls.__doc__ and "Parameters" in cls.__doc__
        for name, trait in cls.class_traits(config=True).items():
            assert trait.help, f"{cls.__name__}.{name} has no help"


# ------------------------------------------------------------------------------------------------ notebookos


def test_placement_distinct_hosts_least_subscribed_and_under_cap():
    c = make_cluster(5)
    p = NotebookOSPolicy(max_subscription_ratio=1.0)  # a host of 8 GPUs takes replicas requesting 8 GPUs
    add_kernel(c, "k1", 4)
    assert p.place(c, "k1", 0.0) == ["h1", "h2", "h3"]
    add_kernel(c, "k2", 4)
    hosts = p.place(c, "k2", 0.0)
    assert hosts[:2] == ["h4", "h5"] and len(set(hosts)) == 3  # the two empty hosts first
    check_invariants(c, p)
    placed = 2
    for i in range(3, 20):
        add_kernel(c, f"k{i}", 4)
        before = {h.id: h.subscribed_gpus for h in c.hosts.values()}
        hosts = p.place(c, f"k{i}", 0.0)
        if hosts is None:
            # nothing placed, and indeed fewer than 3 hosts have 4 GPUs of room left
            assert {h.id: h.subscribed_gpus for h in c.hosts.values()} == before
            assert sum(1 for h in c.hosts.values() if h.subscribed_gpus + 4 <= 8) < 3
            assert p.hosts_needed(c, f"k{i}") == 3 - sum(1 for h in c.hosts.values() if h.subscribed_gpus + 4 <= 8)
            break
        placed += 1
        assert len(set(hosts)) == 3
        # least subscribed first: no unchosen host was strictly less subscribed than a chosen one
        assert max(before[h] for h in hosts) <= min((v for h, v in before.items() if h not in hosts), default=99)
        assert all(h.subscribed_gpus <= 8 for h in c.hosts.values())
        check_invariants(c, p)
    assert placed == 3  # 5 hosts x 8 GPUs / (3 replicas x 4 GPUs) = 3 kernels (36 of 40 GPUs)


def test_pack_placement_fills_the_most_subscribed_hosts_that_fit():
    c = make_cluster(5)
    p = NotebookOSPolicy(max_subscription_ratio=1.0, placement="pack")
    add_kernel(c, "k1", 4)
    assert sorted(p.place(c, "k1", 0.0)) == ["h1", "h2", "h3"]
    add_kernel(c, "k2", 4)
    assert sorted(p.place(c, "k2", 0.0)) == ["h1", "h2", "h3"]  # packed onto them (8 of 8), h4/h5 stay empty
    add_kernel(c, "k3", 2)
    assert p.place(c, "k3", 0.0) is None and p.hosts_needed(c, "k3") == 1  # only h4, h5 have room
    c.add_host(Host("h6", gpus=8))
    p.refresh(c, ["h6"])
    assert sorted(p.place(c, "k3", 0.0)) == ["h4", "h5", "h6"]
    add_kernel(c, "k4", 2)
    assert sorted(p.place(c, "k4", 0.0)) == ["h4", "h5", "h6"]  # the partly filled hosts, not new ones
    assert all(h.subscribed_gpus <= 8 for h in c.hosts.values())
    check_invariants(c, p)


def test_executor_order_last_executor_first_then_most_free():
    c = make_cluster(3)
    p = NotebookOSPolicy()
    add_kernel(c, "k", 2)
    p.place(c, "k", 0.0)
    reps = {r.host_id: r.replica_id for r in c.kernels["k"].replicas.values()}
    # no executor yet: most free first; ties by replica id
    occupy(c, "h1", 4, p)
    occupy(c, "h3", 2, p)
    assert p.executor_order(c, "k") == [reps["h2"], reps["h3"], reps["h1"]]
    d = p.schedule_cell(c, "k", 1.0)
    assert isinstance(d, Run) and d.host_id == "h2" and len(d.devices) == 2
    assert c.hosts["h2"].committed == {d.devices[0]: ("k", d.replica_id), d.devices[1]: ("k", d.replica_id)}
    p.cell_finished(c, "k", 2.0)
    assert c.hosts["h2"].committed == {}
    # the last executor is tried first even when another host has more GPUs free
    occupy(c, "h2", 4, p)
    assert p.executor_order(c, "k")[0] == reps["h2"]
    d = p.schedule_cell(c, "k", 3.0)
    assert d.host_id == "h2"
    p.cell_finished(c, "k", 4.0)
    # the last executor's host is full: the other replicas, most free GPUs first (h3 has 6 free, h1 4)
    occupy(c, "h2", 4, p)
    d = p.schedule_cell(c, "k", 5.0)
    assert isinstance(d, Run) and d.host_id == "h3"
    check_invariants(c, p)
    with pytest.raises(AccountingError):
        p.schedule_cell(c, "k", 6.0)  # a kernel runs one cell at a time


def _full_replica_hosts(hosts: int, max_hosts: int):
    c = make_cluster(hosts)
    p = NotebookOSPolicy(max_hosts=max_hosts)
    add_kernel(c, "k", 4)
    assert p.place(c, "k", 0.0) == ["h1", "h2", "h3"]
    occupy(c, "h1", 6, p)  # 2 free
    occupy(c, "h2", 8, p)  # 0 free
    occupy(c, "h3", 5, p)  # 3 free
    return c, p


def test_migrate_when_no_replica_host_has_room():
    c, p = _full_replica_hosts(5, 64)
    occupy(c, "h5", 6, p)  # h4: 8 free, h5: 2 free
    d = p.schedule_cell(c, "k", 1.0)
    h2_replica = next(r.replica_id for r in c.kernels["k"].replicas.values() if r.host_id == "h2")
    assert d == Migrate(replica_id=h2_replica, to_host="h4")  # from the fullest replica host to the freest host
    # No cell runs yet, but the target's GPUs wait for the replica moving there: no other kernel's cell takes them.
    assert c.kernels["k"].running is None
    assert c.hosts["h4"].committed == {d: ("k", None) for d in range(4)} and c.hosts["h4"].firm_held == 4
    add_kernel(c, "thief", 8)
    c.place_replica("thief", "h4")
    p.refresh(c, ["h4"])
    assert not isinstance(p.schedule_cell(c, "thief", 1.5), Run)
    c.remove_kernel("thief")
    # the caller carries it out, then asks again: the cell runs on the new replica, on the GPUs kept for it
    new = c.place_replica("k", "h4")
    c.remove_replica("k", h2_replica)
    p.refresh(c, ["h2", "h4"])
    d = p.schedule_cell(c, "k", 2.0)
    assert d == Run(new.replica_id, "h4", (0, 1, 2, 3))
    assert c.hosts["h4"].held == {} and c.hosts["h4"].firm_held == 0
    check_invariants(c, p)


def test_migration_target_respects_the_subscription_cap():
    c, p = _full_replica_hosts(4, 64)
    p.max_subscription_ratio = 1.0
    for i in range(2):  # h4 has 8 GPUs free but its replicas already request 8
        add_kernel(c, f"idle{i}", 4)
        c.place_replica(f"idle{i}", "h4")
    p.refresh(c)
    assert p.schedule_cell(c, "k", 1.0) == ScaleOut(8)


def test_scale_out_below_max_hosts_and_queue_at_max():
    c, p = _full_replica_hosts(3, 4)
    assert p.schedule_cell(c, "k", 1.0) == ScaleOut(gpus=8)
    c, p = _full_replica_hosts(3, 3)
    assert p.schedule_cell(c, "k", 1.0) == Queue(position=1)
    add_kernel(c, "k2", 8)
    assert p.place(c, "k2", 0.0) == ["h3", "h1", "h2"]  # least subscribed first (9, 10, 12 GPUs)
    assert p.schedule_cell(c, "k2", 1.0) == Queue(position=2)
    assert p.schedule_cell(c, "k", 2.0) == Queue(position=1)  # asking again keeps the place in line
    assert p.waiting == ["k", "k2"]
    # GPUs free on h3: the first in line runs and leaves the queue
    p.cell_finished(c, next(k for k in c.kernels if k.startswith("filler-h3")), 3.0)
    assert isinstance(p.schedule_cell(c, "k", 3.0), Run)
    assert p.waiting == ["k2"]
    assert p.schedule_cell(c, "k2", 3.0) == Queue(position=1)  # 8 GPUs free nowhere (h3 has 4 left)
    p.withdraw(c, "k2")
    assert p.waiting == []


# ----------------------------------------------------------------------------------------- reservation, batch


def test_reservation_keeps_gpus_between_cells():
    c = make_cluster(2)
    p = ReservationPolicy(max_hosts=2)
    add_kernel(c, "a", 4)
    assert p.place(c, "a", 0.0) == ["h1"]
    devices = c.kernels["a"].running[1]
    assert len(devices) == 4 and len(c.hosts["h1"].committed) == 4  # reserved at placement, before any cell
    for t in range(3):
        d = p.schedule_cell(c, "a", float(t))
        assert isinstance(d, Run) and d.devices == devices and d.host_id == "h1"
        p.cell_finished(c, "a", t + 0.5)
        assert len(c.hosts["h1"].committed) == 4  # still reserved between cells
    add_kernel(c, "b", 4)
    assert p.place(c, "b", 0.0) == ["h1"]  # packs: h1 has exactly 4 unreserved GPUs
    add_kernel(c, "c", 8)
    assert p.place(c, "c", 0.0) == ["h2"]
    add_kernel(c, "d", 1)
    assert p.place(c, "d", 0.0) is None  # nothing unreserved anywhere
    assert c.kernels["d"].replicas == {}
    assert p.schedule_cell(c, "d", 1.0) == Queue(position=1)  # at max_hosts
    c.remove_kernel("a")  # the session ends: its reservation goes
    p.refresh(c, ["h1"])
    assert len(c.hosts["h1"].committed) == 4
    d = p.schedule_cell(c, "d", 2.0)  # places it, then runs at once
    assert isinstance(d, Run) and d.host_id == "h1" and len(d.devices) == 1 and p.waiting == []
    check_invariants(c, p)


def test_batch_releases_gpus_after_each_cell_and_is_fcfs():
    c = make_cluster(1)
    p = BatchPolicy(max_hosts=1, process_start_seconds=7.5)
    for k, g in (("a", 8), ("b", 4), ("c", 2)):
        add_kernel(c, k, g)
        assert p.place(c, k, 0.0) == []
    assert all(not k.replicas for k in c.kernels.values())
    d = p.schedule_cell(c, "a", 0.0)
    assert isinstance(d, Run) and len(d.devices) == 8 and len(c.kernels["a"].replicas) == 1
    assert p.schedule_cell(c, "b", 1.0) == Queue(1)
    assert p.schedule_cell(c, "c", 2.0) == Queue(2)  # c would fit nowhere anyway, but waits its turn
    p.cell_finished(c, "a", 3.0)
    assert c.hosts["h1"].committed == {} and c.kernels["a"].replicas == {} and not c.hosts["h1"].replicas
    assert p.schedule_cell(c, "c", 3.0) == Queue(2)  # FCFS: b is first in line
    assert isinstance(p.schedule_cell(c, "b", 3.0), Run)
    assert isinstance(p.schedule_cell(c, "c", 3.0), Run)  # b ran: c is now first, and 4 GPUs are free
    p.cell_finished(c, "b", 4.0)
    p.cell_finished(c, "c", 4.0)
    assert c.hosts["h1"].committed == {} and c.hosts["h1"].subscribed_gpus == 0
    assert c.hosts["h1"].idle_since == 4.0
    p.max_hosts = 2
    occupy(c, "h1", 8, p)
    p.refresh(c, ["h1"])
    assert p.schedule_cell(c, "a", 5.0) == ScaleOut(8)
    check_invariants(c, p)


# ------------------------------------------------------------------------------------ accounting under churn


@pytest.mark.parametrize("policy_cls", [NotebookOSPolicy, ReservationPolicy, BatchPolicy])
def test_gpu_accounting_under_random_interleaving(policy_cls):
    """Many kernels, random operations (fixed seed), invariants checked after every step."""
    rng = random.Random(1234)
    c = make_cluster(4)
    cap = {"max_subscription_ratio": 3.0} if policy_cls is NotebookOSPolicy else {}  # the others have no cap
    p = policy_cls(max_hosts=8, **cap)
    kernels: list[str] = []
    running: set[str] = set()
    counts = {"run": 0, "migrate": 0, "scale": 0, "queue": 0}
    n_hosts = 4
    for step in range(2500):
        now = float(step)
        op = rng.random()
        if op < 0.15 and len(kernels) < 60:
            kid = f"k{step}"
            add_kernel(c, kid, rng.choice([1, 1, 2, 4, 8]))
            p.place(c, kid, now)  # None: the cluster must grow; the kernel stays, unplaced, and tries again
            kernels.append(kid)
        elif op < 0.65 and kernels:
            kid = rng.choice(kernels)
            if kid in running:
                continue
            if policy_cls is NotebookOSPolicy and len(c.kernels[kid].replicas) < 3 and p.place(c, kid, now) is None:
                if len(c.hosts) >= p.max_hosts:
                    continue  # the caller waits for capacity
                d = ScaleOut(8)  # the caller grows the cluster
            else:
                d = p.schedule_cell(c, kid, now)
            if isinstance(d, Run):
                counts["run"] += 1
                running.add(kid)
                assert c.kernels[kid].running == (d.replica_id, d.devices)
            elif isinstance(d, Migrate):
                counts["migrate"] += 1
                old = c.kernels[kid].replicas[d.replica_id].host_id
                assert all(r.host_id != d.to_host for r in c.kernels[kid].replicas.values())
                c.place_replica(kid, d.to_host)
                c.remove_replica(kid, d.replica_id, now)
                p.refresh(c, [old, d.to_host])
            elif isinstance(d, ScaleOut):
                counts["scale"] += 1
                n_hosts += 1
                c.add_host(Host(f"h{n_hosts}", gpus=d.gpus, online_since=now, idle_since=now))
                p.refresh(c, [f"h{n_hosts}"])
            else:
                counts["queue"] += 1
                assert len(c.hosts) >= p.max_hosts
        elif op < 0.92 and running:
            kid = rng.choice(sorted(running))
            p.cell_finished(c, kid, now)
            running.discard(kid)
            if policy_cls is not ReservationPolicy:
                assert c.kernels[kid].running is None
        elif kernels:
            kid = kernels.pop(rng.randrange(len(kernels)))
            hosts = [r.host_id for r in c.kernels[kid].replicas.values()]
            if hasattr(p, "withdraw"):
                p.withdraw(c, kid)
            c.remove_kernel(kid, now)
            running.discard(kid)
            p.refresh(c, hosts)
        check_invariants(c, p)
        committed = sum(len(h.committed) for h in c.hosts.values())
        assert committed == (sum(len(c.kernels[k].running[1]) for k in c.kernels if c.kernels[k].running)
                             + sum(len(c.kernels[k].held.devices) for k in c.kernels if c.kernels[k].held))
    assert counts["run"] > 100
    if policy_cls is NotebookOSPolicy:
        assert counts["migrate"] > 0
    assert counts["scale"] > 0 and counts["queue"] > 0


def test_index_tolerates_changes_it_was_not_told_about():
    """With verify_misses (the default), a cluster changed behind the policy's back still gets right answers."""
    c = make_cluster(3)
    p = BatchPolicy(max_hosts=3)
    for k in ("a", "b", "c"):
        add_kernel(c, k, 8)
        assert isinstance(p.schedule_cell(c, k, 0.0), Run)
    add_kernel(c, "d", 8)
    assert p.schedule_cell(c, "d", 0.0) == Queue(1)
    # released behind the policy's back (no cell_finished, no refresh): the index still says h2 is full
    rid = c.kernels["b"].running[0]
    c.remove_replica("b", rid)
    d = p.schedule_cell(c, "d", 1.0)
    assert isinstance(d, Run) and d.host_id == "h2"
    # a host added behind its back is seen too
    c.add_host(Host("h4"))
    add_kernel(c, "e", 8)
    assert p.schedule_cell(c, "e", 2.0).host_id == "h4"
    assert p.index(c).is_exact()


def test_host_index_buckets():
    c = make_cluster(4)
    idx = HostIndex(c)
    occupy(c, "h1", 8)
    occupy(c, "h2", 3)
    occupy(c, "h3", 6)
    idx.update_many(["h1", "h2", "h3"])
    assert idx.is_exact()
    assert idx.max_free_gpus() == 8
    assert idx.most_free(1) == "h4"
    assert idx.best_fit(2) == "h3" and idx.best_fit(3) == "h2" and idx.best_fit(6) == "h4"
    assert idx.most_free(1, lambda h: h.id != "h4") == "h2"
    assert idx.most_free(9) is None
    c.remove_host("h4")
    assert idx.most_free(1) == "h2"  # the stale entry is dropped when read
    idx.update("h4")
    assert idx.is_exact()
