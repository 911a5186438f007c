"""The notebookos policy's GPU savings, on small hand-computable clusters: soft holds (kept for the kernel's next
cell, taken back by another kernel's cell), committed-driven scale-out, consolidation scale-in with background
moves, and the simulator running them deterministically with its accounting checked after every event."""

from __future__ import annotations

import pytest

from notebookos.scheduler.policies.notebookos import NotebookOSPolicy
from notebookos.scheduler.policy import Move, Run
from notebookos.scheduler.sim.engine import SimConfig, simulate
from notebookos.scheduler.sim.traces import Cell, Session

from .test_policies import add_kernel, check_invariants, make_cluster, occupy


def _kernel_on(c, p, kid, gpus, hosts):
    add_kernel(c, kid, gpus)
    for h in hosts:
        c.place_replica(kid, h)
    p.refresh(c, hosts)


def test_an_executor_keeps_its_gpus_for_the_next_cell_until_the_hold_lapses():
    c = make_cluster(3)
    p = NotebookOSPolicy(hold_seconds=60.0)
    _kernel_on(c, p, "a", 8, ["h1", "h2", "h3"])
    first = p.schedule_cell(c, "a", 0.0)
    assert isinstance(first, Run)
    assert p.cell_finished(c, "a", 10.0) == 70.0  # held until then
    assert c.kernels["a"].held.devices == first.devices and c.gpus_running == 0 and c.gpus_committed == 8
    check_invariants(c, p)
    assert p.schedule_cell(c, "a", 20.0) == first  # the same replica and devices, at once
    p.cell_finished(c, "a", 30.0)
    assert p.hold_lapsed(c, "a", 89.0) is None  # held until 90
    assert p.hold_lapsed(c, "a", 90.0) == first.host_id
    assert c.gpus_committed == 0 and c.kernels["a"].held is None
    check_invariants(c, p)


def test_another_kernels_cell_takes_a_hold_back_only_when_it_needs_it():
    c = make_cluster(3)
    p = NotebookOSPolicy(hold_seconds=600.0)
    for k in "abcd":
        _kernel_on(c, p, k, 8, ["h1", "h2", "h3"])
    ran_a = p.schedule_cell(c, "a", 0.0)
    p.cell_finished(c, "a", 1.0)  # a holds its host's 8 GPUs
    b = p.schedule_cell(c, "b", 2.0)
    c_ = p.schedule_cell(c, "c", 3.0)
    # Free hosts first: b and c do not take a's hold.
    assert {b.host_id, c_.host_id} == {"h1", "h2", "h3"} - {ran_a.host_id}
    assert c.kernels["a"].held is not None
    # d finds nothing free: it takes a's held GPUs rather than wait.
    d = p.schedule_cell(c, "d", 4.0)
    assert d.host_id == ran_a.host_id and c.kernels["a"].held is None
    check_invariants(c, p)
    # a's next cell finds no GPUs on its replicas' hosts now.
    assert not isinstance(p.schedule_cell(c, "a", 5.0), Run)


def test_committed_driven_scale_out():
    c = make_cluster(3)
    p = NotebookOSPolicy(committed_autoscale=True, scale_factor=1.05, spare_hosts=1)
    assert p.autoscale(c, 0.0, starting=0).add_hosts == 0  # 3 hosts: the replicas' minimum, no GPU in use
    for i in range(3):
        _kernel_on(c, p, f"k{i}", 8, ["h1", "h2", "h3"])
        assert isinstance(p.schedule_cell(c, f"k{i}", 1.0), Run)
    assert c.gpus_running == 24
    # ceil(1.05 x 24 / 8) + 1 spare = 5 hosts: 2 more, fewer once some are starting.
    assert p.autoscale(c, 2.0, starting=0).add_hosts == 2
    assert p.autoscale(c, 2.0, starting=2).add_hosts == 0
    # Without the autoscaler the policy has none (the caller's idle-host rule applies).
    assert NotebookOSPolicy().autoscale(c, 2.0, starting=0) is None


def test_consolidation_moves_idle_replicas_off_a_host_in_the_background_and_removes_it():
    c = make_cluster(4)
    p = NotebookOSPolicy(committed_autoscale=True, scale_factor=1.0, spare_hosts=0)
    _kernel_on(c, p, "k1", 1, ["h1", "h2", "h3"])
    _kernel_on(c, p, "k2", 1, ["h2", "h3", "h4"])
    # Target: 3 hosts (the replicas' minimum; nothing runs). h1 and h4 hold one replica each; h1 goes first.
    plan = p.autoscale(c, 0.0, starting=0)
    k1_on_h1 = next(r.replica_id for r in c.kernels["k1"].replicas.values() if r.host_id == "h1")
    (move,) = plan.moves
    assert move == Move("k1", k1_on_h1, move.new_replica_id, "h4") and plan.add_hosts == 0
    assert c.hosts["h1"].draining and c.kernels["k1"].replicas[move.new_replica_id].host_id == "h4"
    assert plan.remove_hosts == ()  # the old replica is still there until the new one is up
    check_invariants(c, p)
    # The move is done: the old replica goes, and the next pass scales h1 in.
    c.remove_replica("k1", k1_on_h1)
    p.refresh(c, ["h1"])
    assert p.autoscale(c, 30.0, starting=0).remove_hosts == ("h1",)
    # The moved kernel's next cell starts at once, on a host that stays.
    run = p.schedule_cell(c, "k1", 31.0)
    assert isinstance(run, Run) and run.host_id != "h1"
    check_invariants(c, p)


@pytest.mark.parametrize(("share", "moved"), [(0.0, []), (1.0, ["k2", "k3"]), (2.0, ["k3"])])
def test_room_share_limits_how_many_idle_kernels_count_on_the_same_free_host(share, moved):
    """Three idle 8-GPU kernels whose only free host is h1: unlimited, all three count on it (the first to start
    a cell leaves the others without room); with room_share 1 each other kernel gets a replica moved to a free
    host of its own (h4, h5); with 2, h1 is the room of two."""
    c = make_cluster(5)
    p = NotebookOSPolicy(committed_autoscale=True, scale_factor=1.0, spare_hosts=0, consolidate_after=1e9,
                         room_share=share)
    for kid in ("k1", "k2", "k3"):
        _kernel_on(c, p, kid, 8, ["h1", "h2", "h3"])
    for h in ("h2", "h3"):
        occupy(c, h, 8, p)
    plan = p.autoscale(c, 0.0, starting=0)
    assert sorted(m.kernel_id for m in plan.moves) == moved
    targets = [m.to_host for m in plan.moves]
    assert len(set(targets)) == len(targets) and set(targets) <= {"h4", "h5"}  # a free host each
    # A move takes a replica off a host without room (h2 or h3), never the kernel's room on h1.
    assert all(c.kernels[m.kernel_id].replicas[m.replica_id].host_id in ("h2", "h3") for m in plan.moves)
    check_invariants(c, p)


def test_the_dynamic_cap_follows_requested_over_running_gpus():
    """NotebookOS's cap: replicas x (GPUs the kernels request / GPUs running cells), averaged over the last
    cap_window passes, at most max_subscription_ratio (and that while nothing runs). Three 1-GPU hosts, 1-GPU
    kernels with a replica on each host: a host's subscription is the number of kernels."""
    c = make_cluster(3, gpus=1)
    p = NotebookOSPolicy(committed_autoscale=True, dynamic_cap=True, cap_window=2, max_subscription_ratio=7.0,
                         max_hosts=3, consolidate_after=1e9)
    for i in range(4):
        add_kernel(c, f"k{i}", 1)
        assert p.place(c, f"k{i}", 0.0) is not None
    p.autoscale(c, 0.0, starting=0)
    assert p.cap == 7.0  # nothing runs: the largest cap
    for kid in ("k0", "k1"):
        assert isinstance(p.schedule_cell(c, kid, 1.0), Run)
    p.autoscale(c, 30.0, starting=0)
    assert p.cap == pytest.approx(3 * (7.0 / 3 + 4 / 2) / 2)  # the window holds both passes
    p.autoscale(c, 60.0, starting=0)
    assert p.cap == 6.0  # 3 replicas x 4 requested / 2 running
    # Placement obeys it: two more kernels fit (6 per host), a third does not (the fixed cap would take it).
    for kid in ("k4", "k5", "k6"):
        add_kernel(c, kid, 1)
    assert p.place(c, "k4", 61.0) is not None and p.place(c, "k5", 61.0) is not None
    assert p.place(c, "k6", 61.0) is None and "oversubscription 6" in p.no_room(c, "k6")
    # Nothing runs any more: the cap goes back up, and k6 fits.
    for kid in ("k0", "k1"):
        p.cell_finished(c, kid, 62.0)
    p.autoscale(c, 90.0, starting=0)
    p.autoscale(c, 120.0, starting=0)
    assert p.cap == 7.0 and p.place(c, "k6", 121.0) is not None
    check_invariants(c, p)


def test_consolidation_never_empties_a_host_with_gpus_in_use():
    c = make_cluster(4)
    p = NotebookOSPolicy(committed_autoscale=True, scale_factor=1.0, spare_hosts=0, hold_seconds=600.0)
    _kernel_on(c, p, "k1", 1, ["h1", "h2", "h3"])
    _kernel_on(c, p, "k2", 1, ["h2", "h3", "h4"])
    run = p.schedule_cell(c, "k1", 0.0)
    p.cell_finished(c, "k1", 1.0)  # held on its host
    plan = p.autoscale(c, 2.0, starting=0)
    assert not c.hosts[run.host_id].draining and run.host_id not in plan.remove_hosts
    assert all(c.kernels[m.kernel_id].replicas[m.replica_id].host_id != run.host_id for m in plan.moves)
    check_invariants(c, p)


def _sessions():
    sessions = []
    for i in range(12):
        cells = [Cell(duration=300.0 + 37 * j, think=60.0 + 400.0 * ((i + j) % 3)) for j in range(6)]
        sessions.append(Session(id=f"s{i}", start=600.0 * i, gpus=[1, 4, 8][i % 3], cells=cells))
    return sessions


@pytest.mark.parametrize("hold", [0.0, 900.0])
def test_the_simulator_runs_the_autoscaler_deterministically_with_exact_accounting(hold):
    cfg = SimConfig(initial_hosts=3, max_hosts=12, scale_out_delay=15.0, scale_in_delay=10.0, migration_cost=20.0)

    def run():
        policy = NotebookOSPolicy(committed_autoscale=True, hold_seconds=hold, max_hosts=12)
        return simulate(policy, _sessions(), cfg, check=True)

    first, second = run(), run()
    drop_wall = lambda m: {k: v for k, v in m.items() if k != "wall_seconds"}  # noqa: E731
    assert drop_wall(first.metrics) == drop_wall(second.metrics) and first.events == second.events
    m = first.metrics
    assert m["cells_run"] == m["cells"] == 72 and m["unfinished_sessions"] == 0
    assert m["scale_ins"] > 0  # the autoscaler removed hosts as sessions ended
    if hold:
        assert m["gpu_hours_reserved"] > m["gpu_hours_committed"]  # holds kept GPUs between cells


def test_batch_starts_a_host_for_each_waiting_cell_not_one_at_a_time():
    from notebookos.scheduler.policies.batch import BatchPolicy

    # Four 8-GPU sessions at once on one 8-GPU host: the three that wait each get a host starting for them.
    sessions = [Session(id=f"s{i}", start=0.0, gpus=8, cells=[Cell(duration=600.0)]) for i in range(4)]
    cfg = SimConfig(initial_hosts=1, max_hosts=8, scale_out_delay=120.0, scale_in_delay=60.0)
    r = simulate(BatchPolicy(max_hosts=8, process_start_seconds=0.0), sessions, cfg, check=True)
    assert r.metrics["scale_outs"] == 3
    assert sorted(r.delays.tolist()) == [0.0, 120.0, 120.0, 120.0]


def test_sim_cli_takes_any_policy_option_and_names_a_wrong_one(tmp_path, capsys):
    import json

    from notebookos.scheduler.sim.cli import main

    out = tmp_path / "out"
    args = ["--days", "1", "--out", str(out), "--no-plots", "-q", "--policies", "notebookos"]
    assert main(args + ["--policy-option", "NotebookOSPolicy.committed_autoscale=True",
                        "--policy-option", "NotebookOSPolicy.hold_seconds=300"]) == 0
    autoscaled = json.loads((out / "summary.json").read_text())["policies"]
    assert main(args) == 0
    plain = json.loads((out / "summary.json").read_text())["policies"]
    assert autoscaled != plain  # the options reached the policy
    assert main(args + ["--policy-option", "NotebookOSPolicy.hold_secs=300"]) == 2
    assert "NotebookOSPolicy has no option 'hold_secs'" in capsys.readouterr().err


def test_two_days_of_sessions_keep_exact_accounting_with_every_option_on():
    from notebookos.scheduler.sim.traces import synthetic_sessions

    policy = NotebookOSPolicy(committed_autoscale=True, hold_seconds=600.0, held_weight=0.3, placement="pack",
                              max_subscription_ratio=10.0, max_hosts=60)
    cfg = SimConfig(max_hosts=60, scale_out_delay=60.0, scale_in_delay=10.0)
    r = simulate(policy, synthetic_sessions(seed=3, hours=48), cfg, check=True)  # checks after every event
    m = r.metrics
    assert m["unfinished_sessions"] == 0 and m["cells_run"] == m["cells"]
    assert m["background_migrations"] > 0 and m["scale_ins"] > 0 and m["migrations"] > 0
    assert m["gpu_hours_reserved"] >= m["gpu_hours_committed"]
