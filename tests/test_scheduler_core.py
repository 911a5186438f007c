"""SchedulerCore without the network: a fake clock, real policies, real cluster accounting (milliseconds)."""

from __future__ import annotations

import pytest

from notebookos.scheduler.cluster import Growth, ResourceRequest
from notebookos.scheduler.core import CoreError, SchedulerCore
from notebookos.scheduler.policies.batch import BatchPolicy
from notebookos.scheduler.policies.notebookos import NotebookOSPolicy
from notebookos.scheduler.policies.reservation import ReservationPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_core(policy, hosts: int = 2, gpus: int = 1, **kwargs) -> tuple[SchedulerCore, Clock]:
    clock = Clock()
    changes = []
    kwargs.setdefault("max_hosts", policy.max_hosts)
    core = SchedulerCore(policy, clock=clock, on_change=lambda: changes.append(clock.t), **kwargs)
    core.changes = changes
    for i in range(1, hosts + 1):
        core.register_host(f"h{i}", f"http://h{i}:1/", gpus, 4.0, 1024)
    return core, clock


def place(core: SchedulerCore, kernel_id: str, gpus: int = 1) -> list[dict]:
    core.add_kernel(kernel_id, ResourceRequest(gpus=gpus, cpus=0.5, memory_mb=64))
    added = core.place(kernel_id)
    assert added is not None, f"{kernel_id} found no room"
    return added


def assert_accounting(core: SchedulerCore) -> None:
    status = core.status()
    g = status["gpus"]
    assert 0 <= g["committed"] <= g["online"] and g["free"] == g["online"] - g["committed"] >= 0, status
    for host in core.cluster.hosts.values():
        assert 0 <= len(host.committed) <= host.gpus and host.subscribed_gpus >= 0


def test_placement_puts_replicas_on_distinct_hosts_with_urls():
    core, _ = make_core(NotebookOSPolicy(replicas_per_kernel=2, max_hosts=2))
    added = place(core, "k")
    assert sorted(r["host_id"] for r in added) == ["h1", "h2"]
    assert {r["host_url"] for r in added} == {"http://h1:1", "http://h2:1"}  # trailing slash dropped
    assert [r["replica_id"] for r in added] == [1, 2]
    with pytest.raises(CoreError) as err:
        core.add_kernel("k", ResourceRequest())
    assert err.value.status == 409 and "already exists" in err.value.message
    # A lost replica is topped up with a new id, on the host it is missing from.
    core.replica_lost("k", 1)
    [again] = core.place("k")
    assert again["replica_id"] == 3 and again["host_id"] in {"h1", "h2"}
    assert core.place("k") == []


def test_queue_order_positions_and_status():
    core, clock = make_core(NotebookOSPolicy(replicas_per_kernel=2, max_hosts=2))
    for k in ("a", "b", "c", "d"):
        place(core, k)
    assert core.decide("a")[0]["action"] == "run"
    assert core.decide("b")[0]["action"] == "run"
    clock.t += 1
    wait_c, new_host = core.decide("c")
    assert new_host is None  # at max_hosts: queued, nothing to add
    assert wait_c["action"] == "wait" and wait_c["position"] == 1 and "max" not in wait_c["reason"]
    clock.t += 2
    assert core.decide("d")[0]["position"] == 2
    assert core.decide("c")[0]["position"] == 1  # asking again keeps the place in line
    queue = core.status()["queue"]
    assert [(q["kernel_id"], q["position"], q["waiting_s"]) for q in queue] == [("c", 1, 2.0), ("d", 2, 0.0)]
    assert core.kernel_view(core.kernel("d"))["waiting"] == 2
    # One queue: the status reports the policy's own line.
    assert core.policy.waiting == ["c", "d"]
    with pytest.raises(CoreError) as err:
        core.decide("a")
    assert err.value.status == 409 and "already runs a cell" in err.value.message
    assert core.finished("a") == {"released": True} and core.finished("a") == {"released": False}
    run_c = core.decide("c")[0]
    assert run_c["action"] == "run" and run_c["devices"] == [0]
    assert [q["kernel_id"] for q in core.status()["queue"]] == ["d"]
    core.remove_kernel("d")  # leaves the line
    assert core.status()["queue"] == [] and core.policy.waiting == []
    assert_accounting(core)


def test_scale_out_decision_starts_one_host_and_promises_its_spare_gpus():
    core, clock = make_core(NotebookOSPolicy(replicas_per_kernel=1, max_hosts=3, host_gpus=2), hosts=1)
    for k in ("a", "b", "c", "d"):
        place(core, k)  # all on h1 (its subscription cap is 7 x 1 GPU)
    assert core.decide("a")[0]["action"] == "run"
    wait_b, new = core.decide("b")
    assert new is not None and new.gpus == 2 and "scale-out started" in wait_b["reason"]
    assert core.status()["hosts_starting"] == 1
    wait_c, again = core.decide("c")  # the starting host has a spare GPU: promised, no second host
    assert again is None and "scale-out in progress" in wait_c["reason"]
    wait_d, third = core.decide("d")  # nothing spare left: another host, up to max_hosts (1 online + 2)
    assert third is not None and core.status()["hosts_starting"] == 2
    place(core, "e")
    assert core.decide("e")[1] is None  # d's host has a spare GPU too
    place(core, "f")
    wait_f, none = core.decide("f")  # both starting hosts promised, the cluster at max_hosts: queued
    assert none is None and "maximum size (max_hosts=3)" in wait_f["reason"] and wait_f["position"] == 5
    assert core.decide("b")[1] is None  # asking again does not start more
    # The provider added the host; it registered.
    core.register_host("local-1", "http://l1:1", 2, 4.0, 1024)
    core.host_added(new, "local-1")
    assert core.status()["hosts_starting"] == 1 and "local-1" in core.managed_hosts
    # A failure is reported to waiting cells for a while instead of starting another host.
    core.scale_out_failed(third, "RuntimeError: no capacity")
    assert core.status()["last_scale_out_error"] == "RuntimeError: no capacity"
    assert_accounting(core)


def test_placement_scale_out_and_the_503_at_max_hosts():
    core, _ = make_core(NotebookOSPolicy(replicas_per_kernel=3, max_hosts=3, host_gpus=1), hosts=1)
    core.add_kernel("k", ResourceRequest(gpus=1))
    assert core.place("k") is None
    pending = core.hosts_for_placement("k")
    assert len(pending) == 2  # the policy needs two more hosts for three distinct ones
    for i, p in enumerate(pending, 2):
        core.register_host(f"h{i}", f"http://h{i}:1", 1, 4.0, 1024)
        core.host_added(p, f"h{i}")
    assert sorted(r["host_id"] for r in core.place("k")) == ["h1", "h2", "h3"]
    core.add_kernel("k2", ResourceRequest(gpus=8))
    assert core.place("k2") is None
    with pytest.raises(CoreError) as err:
        core.hosts_for_placement("k2")
    assert err.value.status == 503 and "max_hosts=3" in err.value.message
    assert "oversubscription 7" in err.value.message  # the policy's own cap, named by the policy


def test_lease_expiry_reclaims_and_frees_the_gpus():
    core, clock = make_core(NotebookOSPolicy(replicas_per_kernel=2, max_hosts=2), front_lease=30.0)
    place(core, "dead")
    place(core, "alive")
    assert core.decide("dead")[0]["action"] == "run"
    assert core.status()["gpus"]["committed"] == 1
    clock.t += 20
    core.renew_lease("alive")
    assert not core.housekeeping()  # nothing lapsed yet
    clock.t += 15  # dead: 35 s silent; alive: 15 s
    chores = core.housekeeping()
    assert chores.ended_kernels == ["dead"]
    [(kernel_id, targets)] = chores.stop_replicas
    assert kernel_id == "dead" and sorted(targets) == [("http://h1:1", 1), ("http://h2:1", 2)]
    assert core.status()["gpus"]["committed"] == 0 and set(core.cluster.kernels) == {"alive"}
    with pytest.raises(CoreError) as err:
        core.decide("dead")
    assert err.value.status == 410 and "lease" in err.value.message
    assert_accounting(core)


def test_idle_sessions_are_reclaimed_but_not_while_a_cell_runs():
    core, clock = make_core(NotebookOSPolicy(replicas_per_kernel=1, max_hosts=2), session_idle_limit=10.0,
                            reclaim_stops_replicas=False)
    place(core, "busy")
    place(core, "idle")
    core.decide("busy")
    clock.t += 11
    chores = core.housekeeping()
    assert chores.ended_kernels == ["idle"] and chores.stop_replicas == []
    assert "busy" in core.cluster.kernels


def test_scale_in_removes_only_idle_provider_hosts_above_the_floor():
    core, clock = make_core(NotebookOSPolicy(replicas_per_kernel=1, max_hosts=4), hosts=1, host_idle_limit=60.0,
                            min_hosts=1)
    for name in ("m1", "m2"):
        core.register_host(name, f"http://{name}:1", 1, 4.0, 1024)
        core.managed_hosts.add(name)
    place(core, "k")  # least subscribed first: h1
    clock.t += 61
    chores = core.housekeeping()
    assert sorted(chores.remove_hosts) == ["m1", "m2"] and set(core.cluster.hosts) == {"h1"}


def test_silent_hosts_are_dropped_with_their_replicas():
    core, clock = make_core(NotebookOSPolicy(replicas_per_kernel=1, max_hosts=2), hosts=0, host_timeout=5.0)
    core.register_host("a", "http://a:1", 1, 4.0, 1024, heartbeat_s=1.0)
    core.register_host("b", "http://b:1", 1, 4.0, 1024, heartbeat_s=1.0)
    place(core, "k")
    host = core.kernel("k").replicas[1].host_id
    other = "b" if host == "a" else "a"
    clock.t += 4
    core.heartbeat(other)
    clock.t += 2
    core.housekeeping()
    assert set(core.cluster.hosts) == {other} and core.kernel("k").replicas == {}
    with pytest.raises(CoreError) as err:
        core.decide("k")
    assert err.value.status == 409 and "no replicas left" in err.value.message


def test_reservation_keeps_gpus_and_batch_runs_first_come_first_served():
    core, _ = make_core(ReservationPolicy(max_hosts=1), hosts=1, gpus=2)
    place(core, "r", gpus=2)
    for _ in range(2):  # held between cells: asking again is no conflict
        assert core.decide("r")[0]["action"] == "run"
        core.finished("r")
    assert core.status()["gpus"]["committed"] == 2

    core, _ = make_core(BatchPolicy(max_hosts=1), hosts=1, gpus=2)
    for k, gpus in (("big", 2), ("hog", 1), ("small", 1)):
        core.add_kernel(k, ResourceRequest(gpus=gpus))
        assert core.place(k) == []  # nothing standing between cells
    assert core.decide("hog")[0]["action"] == "run"
    assert core.decide("big")[0]["position"] == 1
    assert core.decide("small")[0]["position"] == 2  # a GPU is free, but big came first
    core.finished("hog")
    assert core.decide("big")[0]["action"] == "run"
    assert core.decide("small")[0]["position"] == 1
    assert_accounting(core)


def test_replica_reports_are_checked():
    core, _ = make_core(NotebookOSPolicy(replicas_per_kernel=1, max_hosts=2))
    [r] = place(core, "k")
    other = "h2" if r["host_id"] == "h1" else "h1"
    for old, new, host, status, text in ((9, 5, other, 404, "no replica 9"), (None, 1, other, 409, "already has"),
                                         (None, 5, r["host_id"], 409, "on host"), (1, 5, "nowhere", 404, "nowhere")):
        with pytest.raises(CoreError) as err:
            core.replicas_changed("k", old, new, host)
        assert err.value.status == status and text in err.value.message
    view = core.replicas_changed("k", 1, 5, other)
    assert view["replicas"] == [{"replica_id": 5, "host_id": other, "host_url": f"http://{other}:1", "ready": True}]
    assert core.cluster.hosts[r["host_id"]].subscribed_gpus == 0


def test_growth_never_exceeds_max_hosts_and_promises_end_with_their_host():
    g = Growth(max_hosts=3)
    p, started = g.promise("a", 4, online=1, host_gpus=8)
    assert started and p.unpromised == 4
    assert g.promise("b", 4, online=1, host_gpus=8) == (p, False) and p.unpromised == 0
    q, started = g.promise("c", 1, online=1, host_gpus=8)
    assert started and q is not p
    assert g.promise("d", 1, online=1, host_gpus=8) == (q, False)
    assert g.room(1) == 0 and g.start(1, 8) is None
    r, started = g.promise("e", 8, online=1, host_gpus=8)
    assert (r, started) == (None, False)
    g.arrived(p)
    assert set(g.promised) == {"c", "d"} and g.pending == [q]
    assert g.hosts_to_start(online=2, need=3) == 0  # one starting already, room for none more


def autoscaling_core(**policy_options) -> tuple[SchedulerCore, Clock]:
    """Fixed hosts h1 and h2 (their daemons registered on their own) and p1, added by the provider; kernel k's two
    replicas on h1 and p1; the policy's own autoscaler on."""
    policy = NotebookOSPolicy(replicas_per_kernel=2, max_hosts=3, host_gpus=1, committed_autoscale=True,
                              consolidate_after=0, **policy_options)
    core, clock = make_core(policy, hosts=1)
    pending = core.growth.start(len(core.cluster.hosts), 1)
    core.register_host("p1", "http://p1:1/", 1, 4.0, 1024)
    core.host_added(pending, "p1")
    assert sorted(r["host_id"] for r in place(core, "k")) == ["h1", "p1"]
    core.register_host("h2", "http://h2:1/", 1, 4.0, 1024)
    assert [h.id for h in core.cluster.hosts.values() if h.fixed] == ["h1", "h2"]
    return core, clock


def test_consolidation_moves_go_to_the_front_and_the_emptied_host_is_removed():
    core, clock = autoscaling_core()
    # One GPU is all the idle cluster needs (plus a spare): the provider's host p1 is emptied, not a fixed one.
    chores = core.autoscale()
    assert not chores and core.autoscaling and core.cluster.hosts["p1"].draining
    order = {"replica_id": 2, "new_replica_id": 3, "to_host": "h2", "to_host_url": "http://h2:1"}
    assert core.renew_lease("k")["moves"] == [order]
    assert core.renew_lease("k")["moves"] == [order]  # repeated until the front reports
    # While the move is under way a cell runs at once, on the replica that stays (not the draining one, not the
    # one still starting).
    answer, new_host = core.decide("k")
    assert answer["action"] == "run" and answer["replica_id"] == 1 and new_host is None
    core.finished("k")
    with pytest.raises(CoreError) as err:  # not the move that was ordered
        core.replicas_changed("k", 1, 3, "h2")
    assert err.value.status == 409
    view = core.replicas_changed("k", 2, 3, "h2")
    assert {r["replica_id"]: r["host_id"] for r in view["replicas"]} == {1: "h1", 3: "h2"}
    assert core.renew_lease("k")["moves"] == [] and core.moves.done == 1
    chores = core.autoscale()
    assert chores.remove_hosts == ["p1"] and "p1" not in core.cluster.hosts and core.scale_ins == 1
    # The moved replica runs cells now, and fixed hosts stay however idle the cluster is.
    core.replica_lost("k", 1)
    answer, _ = core.decide("k")
    assert answer["action"] == "run" and answer["replica_id"] == 3
    core.finished("k")
    clock.t += 3600
    assert not core.autoscale() and sorted(core.cluster.hosts) == ["h1", "h2"]


def test_a_move_that_fails_or_is_never_made_is_cancelled():
    core, clock = autoscaling_core()
    core.autoscale()
    # The front reports that the new replica did not come up: its placement goes, the old replica stays.
    core.replica_lost("k", 3)
    assert sorted(core.cluster.kernels["k"].replicas) == [1, 2] and core.renew_lease("k")["moves"] == []
    assert core.moves.cancelled == 1 and core.cluster.hosts["h2"].subscribed_gpus == 0
    # Planned again; this time the front never acts on it: cancelled after move_timeout.
    core.cluster.hosts["p1"].draining = False
    core.policy.refresh(core.cluster)
    core.autoscale()
    [order] = core.renew_lease("k")["moves"]
    clock.t += core.move_timeout + 1
    core.housekeeping()
    assert order["new_replica_id"] not in core.cluster.kernels["k"].replicas and len(core.moves) == 0
    # A front that made the move after all (late) is believed: the replica is there.
    view = core.replicas_changed("k", 2, order["new_replica_id"], "h2")
    assert {r["replica_id"]: r["host_id"] for r in view["replicas"]} == {1: "h1", order["new_replica_id"]: "h2"}
    core.replicas_changed("k", order["new_replica_id"], 99, "p1")  # (and back, for the next case)
    # A move whose old replica is lost meanwhile is cancelled too (a replacement is placed afresh).
    core.cluster.hosts["p1"].draining = False
    core.policy.refresh(core.cluster)
    core.autoscale()
    [order] = core.renew_lease("k")["moves"]
    core.replica_lost("k", order["replica_id"])
    assert sorted(core.cluster.kernels["k"].replicas) == [1] and len(core.moves) == 0
    assert_accounting(core)


def test_a_move_on_a_cells_path_replaces_a_pending_background_move():
    """The front picks the id of a replica it moves for a cell itself: a background order still pending for the
    kernel (which could name the same id) is cancelled first."""
    from .test_policies import occupy

    core, _ = autoscaling_core()
    core.register_host("h3", "http://h3:1/", 1, 4.0, 1024)
    core.autoscale()
    [order] = core.renew_lease("k")["moves"]
    occupy(core.cluster, "h1", 1, core.policy)  # the only replica's host that is not draining has no free GPU
    answer, _ = core.decide("k")
    assert answer["action"] == "migrate" and answer["to_host"] == "h3"
    assert core.renew_lease("k")["moves"] == [] and core.moves.cancelled == 1
    assert order["new_replica_id"] not in core.cluster.kernels["k"].replicas
    assert_accounting(core)
