"""A run's hook phases (deploy_master.rollout.hooks): which node, which call, what stops the run; a fake run
stands for the rollout's (its node call is the one batched Salt call)."""

import pytest

from deploy_master import DeployError
from deploy_master.rollout import hooks

PLAN = {"nodes": ["pre-1", "web-1", "web-2"], "preprod": "pre-1",
        "stages": [{"name": "all", "batches": [["web-2"], ["web-1"]]}]}


class _Run:
    kind, project, env, release = "release", "rainbow", "pro", "r2"

    def __init__(self, phases, history=(), answer=None):
        self.conf, self.envc = {"user": "app", "hooks": phases}, {}
        self.extra, self.failed, self.lines, self.calls = {}, [], [], []
        self.store = type("S", (), {"history_read": lambda s, p, e: list(history)})()
        self.answer = answer or {"ok": True, "ret": {"result": True, "steps": [{"step": "m", "result": True,
                                                                                 "retcode": 0}]}}

    def emit(self, type_, message, line=True, **fields):
        self.lines.append((type_, message, fields))

    def node_call(self, nodes, fun, kwarg):
        self.calls.append((nodes, fun, kwarg))
        return {nodes[0]: self.answer}


def test_once_runs_on_one_node_in_the_new_release_unless_released_before():
    run = _Run({"once": [{"name": "m", "cmd": "php artisan migrate"}]})
    hooks.before_first_switch(run, PLAN)
    assert run.calls == [(["pre-1"], "deploy.hooks", {"project": "rainbow", "phase": "once", "release": "r2", "steps": [
        {"name": "m", "cmd": ["php", "artisan", "migrate"], "timeout": 300.0}]})]
    assert run.extra["hooks"]["once"]["result"] is True
    again = _Run(run.conf["hooks"], history=[{"kind": "release", "release": "r2", "result": "success"}])
    hooks.before_first_switch(again, PLAN)
    assert again.calls == [] and again.extra["hooks"]["once"] == {"skipped": "released before"}


def test_a_failing_once_stops_before_any_switch_and_after_release_does_not_revert():
    bad = {"ok": False, "error": "x", "ret": {"steps": [{"step": "m", "result": False, "retcode": 1, "output": "no"}]}}
    run = _Run({"once": [{"name": "m", "cmd": "m"}], "after_release": [{"name": "m", "cmd": "m"}]}, answer=bad)
    with pytest.raises(DeployError, match="step 'm' failed .exit 1.: no; nothing was switched"):
        hooks.before_first_switch(run, PLAN)
    with pytest.raises(hooks.AfterReleaseFailed):
        hooks.after_last_batch(run, PLAN)
    run.failed = ["pre-1"]
    with pytest.raises(DeployError, match="pre-1 .once_node. failed before"):
        hooks.after_last_batch(run, PLAN)


def test_only_a_releases_own_switch_sends_before_switch():
    run = _Run({"before_switch": [{"name": "c", "cmd": "c"}]})
    assert hooks.switch_kwarg(run) == {"before_switch": [{"name": "c", "cmd": ["c"], "timeout": 300.0}]}
    assert hooks.switch_kwarg(run, mark_left="bad") == {}  # a revert
    run.kind = "rollback"
    assert hooks.switch_kwarg(run) == {}
    assert hooks.switch_kwarg(_Run({})) == {}
