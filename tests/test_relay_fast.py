"""The relay's routing and dispatch rules (relay.py's module docstring), in milliseconds: the real relay and
supervisor with fake replicas and, in cluster mode, a fake scheduler behind the real ``SchedulerExecutorPolicy``
(tests/relay_harness.py says what is fake). The same rules with real processes: test_run_all.py,
test_failover.py, test_front_hardening.py.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest

from .relay_harness import Harness, harness_test

MODES = pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
pytestmark = pytest.mark.timeout(20)

CELLS = [f"print cell {i}" for i in range(10)]
CELLS[4] = "print cell 4; error ValueError"


def states(h: Harness, msg_id: str) -> list[str]:
    return [m["content"]["execution_state"] for m in h.iopub(msg_id) if m["msg_type"] == "status"]


@MODES
@harness_test()
async def test_run_all_aborts_the_queue_after_an_error_and_runs_again(h, cluster):
    ids = [h.execute(code) for code in CELLS]
    replies = await h.replies(ids)
    assert [r["status"] for r in replies] == ["ok"] * 4 + ["error"] + ["aborted"] * 5
    assert replies[4]["ename"] == "ValueError"
    assert [r["execution_count"] for r in replies[:5]] == [1, 2, 3, 4, 5]
    # Aborted as ipykernel aborts: a reply between busy and idle, and the cell never reaches a replica.
    for msg_id in ids[5:]:
        await h.idle(msg_id)
        assert states(h, msg_id) == ["busy", "idle"]
        assert h.everywhere(msg_id) == []
    assert h.replica(1).leads == ids[:5]
    assert h.replica(2).yielded == h.replica(3).yielded == ids[:5]  # the others are told they yield
    # The abort ends with the queue it emptied: a new Run All runs everything.
    again = [h.execute(code) for i, code in enumerate(CELLS) if i != 4]
    assert [r["status"] for r in await h.replies(again)] == ["ok"] * 9
    assert h.group.overlaps == 0
    assert h.strays() == []


@MODES
@harness_test()
async def test_stop_on_error_false_aborts_nothing(h, cluster):
    ids = [h.execute(code, stop_on_error=False) for code in ("error ZeroDivisionError", "print 2", "print 3")]
    assert [r["status"] for r in await h.replies(ids)] == ["error", "ok", "ok"]
    # ... and a failed cell with stop_on_error=False does not abort later cells that have the default.
    ids = [h.execute("error X", stop_on_error=False), h.execute("print 4")]
    assert [r["status"] for r in await h.replies(ids)] == ["error", "ok"]


@MODES
@harness_test()
async def test_a_cell_sent_the_moment_an_error_reply_arrives_is_not_aborted(h, cluster):
    """A client that sends its next cell as soon as it has a failed cell's reply (a user re-running at once) must
    see it run, even when it reaches the front before the front has acted on the failure: stop_on_error aborts
    only the cells that were queued when that reply went out."""
    send = h.relay._to_client

    async def slow_after_an_error_reply(channel, msg):
        await send(channel, msg)
        if msg.msg_type == "execute_reply" and msg.content.get("status") == "error":
            await asyncio.sleep(0.3)  # a busy front: the client answers before this returns

    h.relay._to_client = slow_after_an_error_reply
    failed = h.execute("error ValueError")
    assert (await h.reply(failed))["content"]["status"] == "error"
    again = h.execute("print again")
    assert [r["status"] for r in await h.replies([again])] == ["ok"]


@harness_test()
async def test_a_cell_is_dispatched_only_after_the_previous_reply(h):
    ids = [h.execute(f"sleep 10; print {i}") for i in range(5)]
    await h.replies(ids)
    assert h.group.overlaps == 0
    leads = [(t, m) for t, what, _, m in h.group.log if what == "lead"]
    replies = {m: t for t, what, _, m in h.group.log if what == "reply"}
    assert [m for _, m in leads] == ids
    for (_, previous), (sent, _) in pairwise(leads):
        assert sent >= replies[previous]
    # Each lead carries the last sequence number the front saw committed (the previous cell's).
    assert [h.replica(1).lead_meta[m]["after_seq"] for m in ids] == [0, 1, 2, 3, 4]


DELAY = 0.1


@harness_test(cluster=True, finished_delay=DELAY)
async def test_cluster_dispatch_waits_for_the_reply_and_the_release_but_the_reply_does_not(h):
    """With a slow ``/finished``: the scheduler never sees two cells of the kernel at once, each ``/execute`` comes
    after the previous cell's ``/finished`` completed, and each reply reached the client before that."""
    ids = [h.execute(f"print {i}") for i in range(3)]
    await h.replies(ids)
    s = h.scheduler
    await h.until(lambda: len(s.times("finished")) == 3, what="the last release")
    assert s.overlaps == 0
    assert [w for _, w, _ in s.calls] == ["execute", "finished-asked", "finished"] * 3
    executes, finished = s.times("execute"), s.times("finished")
    for i, msg_id in enumerate(ids):
        assert h.reply_time(msg_id) < finished[i], f"cell {i}'s reply waited for /finished"
        if i + 1 < len(ids):
            assert executes[i + 1] >= finished[i]


# Cell 1 runs on replica 2 and opens comm c1; cell 2 runs on replica 1, which is then the primary.
@harness_test(cluster=True, choose=[2, 1])
async def test_comm_messages_go_to_the_replica_that_owns_the_comm(h):
    ids = [h.execute("comm_open c1"), h.execute("print later")]
    await h.replies(ids)
    assert [h.replica(i).leads for i in (1, 2)] == [[ids[1]], [ids[0]]]
    to_owner = h.send("shell", "comm_msg", {"comm_id": "c1", "data": {}})
    elsewhere = h.send("shell", "comm_msg", {"comm_id": "unknown", "data": {}})
    info = h.send("shell", "kernel_info_request")
    await h.until(lambda: h.everywhere(to_owner) and h.everywhere(elsewhere) and h.everywhere(info))
    assert h.everywhere(to_owner) == [2]
    assert h.everywhere(elsewhere) == [1]  # no owner: the primary
    assert h.everywhere(info) == [1]
    close = h.send("shell", "comm_close", {"comm_id": "c1", "data": {}})
    await h.until(lambda: h.everywhere(close))
    assert h.everywhere(close) == [2]


@harness_test(cluster=True, choose=[2, 1])
async def test_a_comm_whose_owner_died_goes_to_the_primary(h):
    await h.replies([h.execute("comm_open c1"), h.execute("print later")])
    h.replica(2).die()
    await h.until(lambda: not h.supervisor.replicas.get(2) or not h.supervisor.replicas[2].alive)
    msg_id = h.send("shell", "comm_msg", {"comm_id": "c1", "data": {}})
    await h.until(lambda: h.everywhere(msg_id))
    assert h.everywhere(msg_id) == [1]


@harness_test(cluster=True, choose=[2])
async def test_interrupt_goes_to_the_replica_running_the_cell(h):
    cell = h.execute("until_interrupt")
    await h.until(lambda: "busy" in states(h, cell), what="the cell to start")
    interrupt = h.send("control", "interrupt_request")
    assert (await h.reply(interrupt, "control"))["content"]["status"] == "ok"
    assert h.everywhere(interrupt) == [2]
    reply = await h.reply(cell)
    assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "KeyboardInterrupt")
    assert reply["metadata"]["notebookos"]["replica"] == 2


@harness_test(cluster=True, choose=[2])
async def test_interrupt_goes_to_the_running_executor_even_when_it_is_no_longer_the_primary(h):
    cell = h.execute("until_interrupt")
    await h.until(lambda: "busy" in states(h, cell), what="the cell to start")
    # Marked diverged while it runs (as the relay marks an executor whose commit failed): other requests
    # now go to replica 1, the lowest usable one; the interrupt still goes where the cell runs.
    h.supervisor.replicas[2].diverged = "its commit failed (set by the test)"
    info = h.send("shell", "kernel_info_request")
    await h.reply(info)
    interrupt = h.send("control", "interrupt_request")
    await h.reply(interrupt, "control")
    assert (h.everywhere(info), h.everywhere(interrupt)) == ([1], [2])
    assert (await h.reply(cell))["content"]["ename"] == "KeyboardInterrupt"


@harness_test(cluster=True, choose=[("migrate", 1), 4])
async def test_a_migration_moves_the_replica_then_the_cell_runs_where_the_scheduler_says(h):
    cell = h.execute("print moved")
    reply = await h.reply(cell)
    assert (reply["content"]["status"], reply["metadata"]["notebookos"]["replica"]) == ("ok", 4)
    await h.idle(cell)
    texts = [m["content"]["text"] for m in h.iopub(cell) if m["msg_type"] == "stream"]
    assert texts[0].startswith("notebookos: moving replica 1 to host elsewhere") and texts[1:] == ["moved\n"]
    assert sorted(r.id for r in h.supervisor.live) == [2, 3, 4]
    assert h.replica(1).exit_code == -15 and h.replica(1).leads == []
    # The planned exit is no loss: nothing reported lost, nothing replaced; the scheduler heard of the move.
    await asyncio.sleep(0.03)
    assert [(w, d) for _, w, d in h.scheduler.calls if w in ("lost", "placement", "replicas")] == [
        ("replicas", {"old_replica_id": 1, "new_replica_id": 4, "host_id": "elsewhere"})]
    assert sorted(h.group.replicas) == [1, 2, 3, 4]


@harness_test(cluster=True, choose=[2])
async def test_input_goes_to_the_replica_that_asked(h):
    cell = h.execute("input name?; print done")
    request = await h.reply(cell, "stdin")
    assert request["content"]["prompt"] == "name?"
    h.client.input("ada")  # as jupyter_client sends it: no parent header
    await h.idle(cell)
    assert [m["content"]["text"] for m in h.iopub(cell) if m["msg_type"] == "stream"] == ["ada\n", "done\n"]
    assert [r.id for r in h.group.replicas.values() if r.got("input_reply")] == [2]


@MODES
@harness_test()
async def test_a_cell_whose_executor_dies_before_starting_it_runs_elsewhere(h, cluster):
    cell = h.execute("@1 die; print ran")
    reply = await h.reply(cell)
    assert reply["content"]["status"] == "ok"
    assert reply["metadata"]["notebookos"]["replica"] == 2
    assert cell in h.replica(1).leads and cell in h.replica(2).leads
    # The new executor is told it is one (``fresh``: it passes a Raft barrier before running the cell).
    assert (h.replica(1).lead_meta[cell]["fresh"], h.replica(2).lead_meta[cell]["fresh"]) == (False, True)
    # Its output is the new executor's only, once.
    await h.idle(cell)
    assert [m["content"]["text"] for m in h.iopub(cell) if m["msg_type"] == "stream"] == ["ran\n"]
    assert states(h, cell) == ["busy", "idle"]
    if cluster:  # the scheduler heard of the loss and the release before it was asked again
        whats = [w for _, w, _ in h.scheduler.calls]
        second = whats.index("execute", 1)
        assert {"lost", "finished"} <= set(whats[1:second]), whats
        assert h.scheduler.overlaps == 0
    # The lost replica is replaced and the next cell runs on the new executor.
    await h.until(lambda: len(h.supervisor.live) == 3, what="the replacement")
    assert len(h.replica(2).got("notebookos_membership_request")) == 2  # 1 removed, 4 added
    assert (await h.reply(h.execute("print next")))["metadata"]["notebookos"]["replica"] == 2
    # The replicas' busy/idle for the front's own requests (status, membership) never reach the client.
    assert h.strays() == []


@MODES
@harness_test()
async def test_cells_queued_behind_a_redispatched_cell_keep_their_order(h, cluster):
    ids = [h.execute("@1 die; print a"), h.execute("print b"), h.execute("print c")]
    replies = await h.replies(ids)
    assert [r["status"] for r in replies] == ["ok"] * 3
    assert [r["execution_count"] for r in replies] == [1, 2, 3]
    assert h.replica(2).leads == ids
    assert h.group.overlaps == 0


@MODES
@harness_test()
async def test_a_cell_whose_executor_dies_after_starting_it_fails_with_replica_lost(h, cluster):
    ids = [h.execute("print started; sleep 10; @1 die; print never"), h.execute("print b"),
           h.execute("print c")]
    replies = await h.replies(ids)
    assert [r["status"] for r in replies] == ["error", "aborted", "aborted"]
    assert replies[0]["ename"] == "ReplicaLost"
    assert "replica 1 (pid None) running this cell died" in replies[0]["evalue"]
    assert "2 of 3 replicas are alive: run the cell again" in replies[0]["evalue"]
    assert h.everywhere(ids[1]) == h.everywhere(ids[2]) == []
    # The started cell's output reached the client once, then its error.
    assert [m["msg_type"] for m in await h.idle(ids[0])] == [
        "status", "execute_input", "stream", "status", "error", "status"]
    reply = await h.reply(h.execute("print again"))
    assert (reply["content"]["status"], reply["metadata"]["notebookos"]["replica"]) == ("ok", 2)
    assert h.strays() == []


@harness_test()
async def test_a_cell_whose_executor_dies_between_its_reply_and_its_idle_still_ends_idle(h):
    h.replica(1).die_after_reply = True
    cell = h.execute("print x")
    assert (await h.reply(cell))["content"]["status"] == "ok"
    await h.until(lambda: h.replica(1).exit_code is not None and 1 not in [r.id for r in h.supervisor.live])
    await h.idle(cell, timeout=0.3)
    # The next cell runs elsewhere and ends as usual; the first cell got exactly one idle.
    assert (await h.reply(h.execute("print y")))["content"]["status"] == "ok"
    idles = [m for m in h.iopub(cell) if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"]
    assert len(idles) == 1


@harness_test(replace_lost=False)
async def test_losing_the_quorum_refuses_cells_with_quorum_lost(h):
    cell = h.execute("print started; sleep 30; @1 die")
    await h.until(lambda: h.iopub(cell), what="the cell to start")
    h.replica(2).die()
    reply = (await h.reply(cell))["content"]
    assert reply["ename"] == "ReplicaLost"
    assert reply["evalue"].endswith(
        "The kernel has lost quorum: 1 of its 3 replicas is alive and committing a cell needs 2, so it refuses "
        "to run cells: nothing more can be committed and no cell runs. Restart the kernel to continue (it "
        "starts with an empty namespace).")
    refused = (await h.reply(h.execute("print 1")))["content"]
    assert (refused["status"], refused["ename"]) == ("error", "QuorumLost")
    assert refused["evalue"].startswith("this kernel has lost quorum: 1 of its 3 replicas is alive")
    assert h.replica(3).leads == []
    h.replica(3).die()
    await h.until(lambda: not h.supervisor.live)
    refused = (await h.reply(h.execute("print 1")))["content"]
    assert refused["evalue"].startswith("this kernel has lost quorum: none of its 3 replicas is alive")


@harness_test()
async def test_a_request_the_dead_primary_owed_is_resent_to_the_new_primary(h):
    h.replica(1).die_on = {"complete_request"}
    msg_id = h.send("shell", "complete_request", {"code": "pri", "cursor_pos": 3})
    reply = await h.reply(msg_id)
    assert (reply["content"]["status"], reply["content"]["replica"]) == ("ok", 2)


@harness_test()
async def test_client_internal_messages_are_refused_and_never_reach_a_replica(h):
    change = {"op": "remove", "address": "127.0.0.1:1"}
    sent = [("control", h.send("control", "notebookos_membership_request", change)),
            ("shell", h.send("shell", "notebookos_membership_request", change)),
            ("shell", h.send("shell", "notebookos_status_request")),
            ("control", h.send("control", "notebookos_made_up_request"))]
    for channel, msg_id in sent:
        reply = await h.reply(msg_id, channel)
        assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "NotPermitted")
        await h.idle(msg_id)
    # The read-only ones on control: the status from the primary, the info from the front.
    status = await h.reply(h.send("control", "notebookos_status_request"), "control")
    assert (status["content"]["status"], status["content"]["replica"]) == ("ok", 1)
    info = await h.reply(h.send("control", "notebookos_info_request"), "control")
    assert info["content"]["has_quorum"] is True
    for _, msg_id in sent:
        assert h.everywhere(msg_id) == []
    assert not any(r.got("notebookos_membership_request") for r in h.group.replicas.values())


@harness_test()
async def test_subshells_are_declined(h):
    on_control = h.send("control", "create_subshell_request")
    on_shell = h.send("shell", "create_subshell_request")
    plain = h.execute("print hi")  # no subshell: runs
    cell = h.send("shell", "execute_request", {"code": "print hi", "silent": False}, subshell_id="abc")
    assert (await h.reply(on_control, "control"))["content"]["ename"] == "NotSupported"
    assert (await h.reply(on_shell))["content"]["ename"] == "SubshellsNotSupported"
    assert (await h.reply(cell))["content"]["ename"] == "SubshellsNotSupported"
    assert (await h.reply(plain))["content"]["status"] == "ok"
    assert h.everywhere(on_control) == h.everywhere(on_shell) == h.everywhere(cell) == []
    info = (await h.reply(h.send("shell", "kernel_info_request")))["content"]
    assert info["supported_features"] == []  # the replica's "kernel subshells" and "debugger" removed


@harness_test()
async def test_shutdown_goes_to_every_replica_and_is_answered_once(h):
    msg_id = h.send("control", "shutdown_request", {"restart": False})
    assert (await h.reply(msg_id, "control"))["content"]["status"] == "ok"
    await h.until(lambda: h.everywhere(msg_id) == [1, 2, 3])
    await h.until(lambda: h.relay.shutdown.is_set())
    await asyncio.sleep(0.05)  # the other replicas' replies have arrived by now, and were dropped
    assert [m["msg_type"] for _, m in h.received["control"]] == ["shutdown_reply"]
