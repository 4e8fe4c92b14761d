"""The gates between a release's stages: the pause, and the revert of what a run switched.

A real Run on the fake Salt (tests/unit/fakesalt.py), its lock and history a local store's on a
temporary folder; no load balancer here (tests/unit/test_runner_batches.py has it).  On real
daemons: tests/integration/test_gates.py.
"""

import pytest
from deploy_master import Aborted, store
from deploy_master.rollout import batches as steps
from deploy_master.rollout import gating, revert

from tests.unit.fakesalt import FakeSalt, make_run

PLAN = {"nodes": ["pre-1", "web-1", "web-2", "web-3"], "preprod": "pre-1",
        "stages": [{"name": "gray", "batches": [["web-1"]], "pause": True},
                   {"name": "all", "batches": [["web-2"], ["web-3"]]}]}


def _run(tmp_path):
    """A release r3 that switched pre-1 (from r2) and web-1 (from r1)."""
    salt = FakeSalt()
    salt.current = {"pre-1": "r3", "web-1": "r3"}
    run = make_run(tmp_path, salt, lb=False, jid="42")
    run.release = "r3"
    run.nodes = {"pre-1": {"old": "r2", "new": "r3", "result": "ok"},
                 "web-1": {"old": "r1", "new": "r3", "result": "ok"}}
    run.salt = salt
    return run


def _events(run, what):
    return [data for tag, data in run.salt.fired if tag.endswith(f"/{what}")]


def _lines(run):
    return [data["message"] for _, data in run.salt.fired]


def test_pause_true_stops_after_the_stage_with_the_runs_state(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(gating.Paused) as paused:
        steps.stages(run, PLAN, "r3")
    assert [c[0] for c in run.salt.switch_calls] == [["web-1"]]
    state = paused.value.state
    assert state["run"] == "42" and state["release"] == "r3" and state["stage"] == "gray" and state["next"] == 1
    assert state["switched"] == {"pre-1": "r2", "web-1": "r1"} and state["plan"]["stages"] == PLAN["stages"]
    # promote goes on from the next stage
    steps.stages(run, PLAN, "r3", start=state["next"])
    assert [c[0] for c in run.salt.switch_calls] == [["web-1"], ["web-2"], ["web-3"]]


def test_a_pause_on_the_last_stage_is_ignored_and_a_rollback_has_none(tmp_path):
    run = _run(tmp_path)
    steps.stages(run, {**PLAN, "stages": [PLAN["stages"][1], {**PLAN["stages"][0], "pause": True}]}, "r3")
    assert any("pause ignored: it is the last stage" in line for line in _lines(run))
    run.kind = "rollback"
    steps.stages(run, PLAN, "r1")  # no Paused


def test_a_timed_pause_takes_a_promote_and_an_abort_request(tmp_path):
    run = _run(tmp_path)
    plan = {**PLAN, "stages": [{**PLAN["stages"][0], "pause": 30}, PLAN["stages"][1]]}
    other = store.LocalStore(str(tmp_path / "deploy")).lock("rainbow", "pro", "promote")
    other.request("promote", "42", "bob")  # left before the wait starts: taken at its first poll
    steps.stages(run, plan, "r3")
    assert any("promoted by bob" in line for line in _lines(run))
    assert "waiting" not in run.lock.holder()
    (pause,) = _events(run, "pause")
    assert {k: pause[k] for k in ("stage", "next_stage", "seconds", "switched", "v")} == {
        "stage": "gray", "next_stage": "all", "seconds": 30, "switched": {"pre-1": "r2", "web-1": "r1"}, "v": 1}
    (promote,) = _events(run, "promote")
    assert promote["stage"] == "gray" and promote["by"] == "bob"
    run = _run(tmp_path / "b")
    store.LocalStore(str(tmp_path / "b" / "deploy")).lock("rainbow", "pro", "abort").request("abort", "42", "bob")
    with pytest.raises(gating.AbortRequested,
                       match="aborted by deploy.abort \\(bob\\) during the pause after stage gray"):
        steps.stages(run, plan, "r3")
    assert run.outcome == "aborted"


def test_sigterm_during_a_timed_pause_is_the_abort_path(tmp_path):
    run = _run(tmp_path)
    plan = {**PLAN, "stages": [{**PLAN["stages"][0], "pause": 30}, PLAN["stages"][1]]}
    run.salt.after_switch = lambda: setattr(run, "aborted", "SIGTERM")
    with pytest.raises(Aborted, match="aborted by SIGTERM before the pause after stage gray"):
        steps.stages(run, plan, "r3")


def test_revert_sends_every_switched_node_back_in_plan_order(tmp_path):
    run = _run(tmp_path)
    run.nodes["web-2"] = {"old": "r1", "new": "r1", "result": "failed", "error": "checks (switched back)"}
    done = revert.revert(run, PLAN, "2 node(s) failed")
    calls = run.salt.switch_calls
    assert [(c[0], c[1]) for c in calls] == [(["pre-1"], "r2"), (["web-1"], "r1")]
    # back to what they served
    assert all(c[2] == {"mark_left": "bad", "checks": "report", "force": True} for c in calls)
    assert done["result"] == "success" and done["to"] == {"pre-1": "r2", "web-1": "r1"}
    assert run.nodes["web-1"]["rolled_back"] == {"new": "r1", "result": "ok"}
    assert run.nodes["web-2"]["result"] == "failed"  # the forward run's record is kept
    event, end = _events(run, "rollback")
    assert event["nodes"] == {"pre-1": "r2", "web-1": "r1"} and event["to"] == event["target"] == ["r1", "r2"]
    assert end["result"] == "success"
    (rec,) = run.store.history_read("rainbow", "pro")
    assert rec["kind"] == "rollback" and rec["mode"] == "auto" and rec["result"] == "success" and rec["from"] == "r3"
    # nothing switched: nothing to do
    run.nodes = {}
    assert revert.revert(run, PLAN, "x") is None
