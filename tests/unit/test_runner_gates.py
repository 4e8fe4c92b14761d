"""The runner's gates between stages: the pause and the rollback of what a run switched.

Pure logic: ``_stages``, ``_pause``, ``_switched`` and ``_revert`` run unchanged; the batch and switch
steps are recorded instead of calling Salt, the lock is a local store's on a temporary folder.
On real daemons: tests/integration/test_gates.py.
"""

import pytest
from deploy_master import Aborted, store
from deploy_master.rollout import batches as steps
from deploy_master.rollout import gating, revert

from tests.unit import fakes

PLAN = {"nodes": ["pre-1", "web-1", "web-2", "web-3"], "preprod": "pre-1",
        "stages": [{"name": "gray", "batches": [["web-1"]], "pause": True},
                   {"name": "all", "batches": [["web-2"], ["web-3"]]}]}


class History:
    def __init__(self):
        self.records = []

    def history_append(self, project, record, lock=None):
        self.records.append(record)


class Run(fakes.Recorder):
    project, env, kind, mode, max_failures, release, run_id = "rainbow", "pro", "release", "normal", 0, "r3", "42"
    has_lb, envc = False, {}  # no LB: no analysis of live traffic (tests/unit/test_analysis.py has it)
    started_at, outcome, aborted = "t0", None, None

    def __init__(self, tmp_path):
        self.lock = store.LocalStore(str(tmp_path)).lock("rainbow", "pro", "release").acquire("42")
        self.store = History()
        self.failed, self.log, self.events, self.silent = [], [], [], set()
        self.timings, self.extra, self.build = {}, {}, {}
        self.nodes = {"pre-1": {"old": "r2", "new": "r3", "result": "ok"},
                      "web-1": {"old": "r1", "new": "r3", "result": "ok"}}

    def check_abort(self, where):
        if self.aborted:
            raise Aborted(f"aborted by {self.aborted} {where}")


@pytest.fixture
def batches(monkeypatch):
    done = []

    def batch(run, stage, index, nodes, release, **kw):
        done.append((stage["name"], tuple(nodes), release, kw))
        for node in nodes:
            run.nodes.setdefault(node, {}).setdefault("old", "r1")
            run.nodes[node].update({"new": release, "result": "ok"})
        return nodes

    def switch(run, nodes, release, **kw):
        done.append(("preprod", tuple(nodes), release, kw))
        for node in nodes:
            run.nodes.setdefault(node, {}).update({"new": release, "result": "ok"})
        return nodes

    monkeypatch.setattr(steps, "batch", batch)
    monkeypatch.setattr(steps, "switch", switch)
    return done


def test_pause_true_stops_after_the_stage_with_the_runs_state(tmp_path, batches):
    run = Run(tmp_path)
    with pytest.raises(gating.Paused) as paused:
        steps.stages(run, PLAN, "r3")
    assert [b[0] for b in batches] == ["gray"]
    state = paused.value.state
    assert state["run"] == "42" and state["release"] == "r3" and state["stage"] == "gray" and state["next"] == 1
    assert state["switched"] == {"pre-1": "r2", "web-1": "r1"} and state["plan"]["stages"] == PLAN["stages"]
    # promote goes on from the next stage
    steps.stages(run, PLAN, "r3", start=state["next"])
    assert [b[1] for b in batches] == [("web-1",), ("web-2",), ("web-3",)]


def test_a_pause_on_the_last_stage_is_ignored_and_a_rollback_has_none(tmp_path, batches):
    run = Run(tmp_path)
    steps.stages(run, {**PLAN, "stages": [PLAN["stages"][1], {**PLAN["stages"][0], "pause": True}]}, "r3")
    assert any("pause ignored: it is the last stage" in line for line in run.log)
    run.kind = "rollback"
    steps.stages(run, PLAN, "r1")  # no _Paused


def test_a_timed_pause_takes_a_promote_and_an_abort_request(tmp_path, batches):
    run = Run(tmp_path)
    plan = {**PLAN, "stages": [{**PLAN["stages"][0], "pause": 30}, PLAN["stages"][1]]}
    other = store.LocalStore(str(tmp_path)).lock("rainbow", "pro", "promote")
    other.request("promote", "42", "bob")  # left before the wait starts: taken at its first poll
    steps.stages(run, plan, "r3")
    assert any("promoted by bob" in line for line in run.log)
    assert "waiting" not in run.lock.holder()
    (pause,) = [data for what, data in run.events if what == "pause"]
    assert pause == {"stage": "gray", "next_stage": "all", "next": "all", "seconds": 30,
                     "switched": {"pre-1": "r2", "web-1": "r1"}, "by": None}
    assert ("promote", {"stage": "gray", "by": "bob"}) in run.events
    run = Run(tmp_path / "b")
    store.LocalStore(str(tmp_path / "b")).lock("rainbow", "pro", "abort").request("abort", "42", "bob")
    with pytest.raises(gating.AbortRequested, match="aborted by deploy.abort \\(bob\\) during the pause after stage gray"):
        steps.stages(run, plan, "r3")
    assert run.outcome == "aborted"


def test_sigterm_during_a_timed_pause_is_the_abort_path(tmp_path, batches):
    run = Run(tmp_path)
    plan = {**PLAN, "stages": [{**PLAN["stages"][0], "pause": 30}, PLAN["stages"][1]]}
    original = steps.batch

    def batch_then_signal(r, *a, **k):
        out = original(r, *a, **k)
        r.aborted = "SIGTERM"
        return out

    steps.batch = batch_then_signal
    try:
        with pytest.raises(Aborted, match="aborted by SIGTERM before the pause after stage gray"):
            steps.stages(run, plan, "r3")
    finally:
        steps.batch = original


def test_revert_sends_every_switched_node_back_through_the_lb_in_plan_order(tmp_path, batches):
    run = Run(tmp_path)
    run.nodes["web-2"] = {"old": "r1", "new": "r1", "result": "failed", "error": "checks (switched back)"}
    done = revert.revert(run, PLAN, "2 node(s) failed")
    assert [(b[0], b[1], b[2]) for b in batches] == [("preprod", ("pre-1",), "r2"), ("gray", ("web-1",), "r1")]
    assert all(b[3] == {"mark_left": "bad", "checks": "report", "force": True} for b in batches)  # back to what they served
    assert done["result"] == "success" and done["to"] == {"pre-1": "r2", "web-1": "r1"}
    assert run.nodes["web-1"]["rolled_back"] == {"new": "r1", "result": "ok"}
    assert run.nodes["web-2"]["result"] == "failed"  # the forward run's record is kept
    event, end = [e for e in run.events if e[0] == "rollback"]
    assert event[1]["nodes"] == {"pre-1": "r2", "web-1": "r1"} and event[1]["to"] == event[1]["target"] == ["r1", "r2"]
    assert end[1]["result"] == "success"
    (rec,) = run.store.records
    assert rec["kind"] == "rollback" and rec["mode"] == "auto" and rec["result"] == "success" and rec["from"] == "r3"
    # nothing switched: nothing to do
    run.nodes = {}
    assert revert.revert(run, PLAN, "x") is None
