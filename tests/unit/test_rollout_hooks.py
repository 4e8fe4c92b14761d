"""A run's hook phases (deploy_master.rollout.hooks) on the one fake Salt: which node, which call, what stops
the run, and the ``hook`` events."""

import pytest

from deploy_master import DeployError
from deploy_master.rollout import hooks

from .fakesalt import FakeSalt, make_run

PLAN = {"nodes": ["pre-1", "web-1", "web-2"], "preprod": "pre-1",
        "stages": [{"name": "all", "batches": [["web-2"], ["web-1"]]}]}
GOOD = {"ret": {"result": True, "steps": [{"step": "m", "result": True, "retcode": 0}]}, "retcode": 0}
BAD = {"ret": {"result": False, "error": "x", "steps": [{"step": "m", "result": False, "retcode": 1,
                                                          "output": "no"}]}, "retcode": 1}


def _run(tmp_path, phases, answer=GOOD, history=()):
    sent = []

    def minions(fun, nodes, kwarg):
        sent.append((fun, nodes, kwarg))
        return {n: answer for n in nodes}

    salt = FakeSalt(nodes=minions)
    salt.sent = sent
    run = make_run(tmp_path, salt, lb=False)
    run.conf = {**run.conf, "user": "app", "hooks": phases}
    run.release = "r2"
    for record in history:
        run.store.history_append("rainbow", {"env": "pro", **record}, lock=run.lock)
    return run, salt


def _hook_events(salt):
    return [(d["phase"], d["node"], d["result"]) for tag, d in salt.fired if tag == "deploy/rainbow/pro/hook"]


def test_once_runs_on_one_node_in_the_new_release_unless_released_before(tmp_path):
    run, salt = _run(tmp_path / "a", {"once": [{"name": "m", "cmd": "php artisan migrate"}]})
    hooks.before_first_switch(run, PLAN)
    assert salt.sent == [("deploy.hooks", ["pre-1"], {"project": "rainbow", "phase": "once", "release": "r2", "steps": [
        {"name": "m", "cmd": ["php", "artisan", "migrate"], "timeout": 300.0}]})]
    assert run.extra["hooks"]["once"]["result"] is True
    assert _hook_events(salt) == [("once", "pre-1", None), ("once", "pre-1", "ok")]
    again, salt = _run(tmp_path / "b", {"once": [{"name": "m", "cmd": "m"}]},
                       history=[{"kind": "release", "release": "r2", "result": "success"}])
    hooks.before_first_switch(again, PLAN)
    assert salt.calls == [] and again.extra["hooks"]["once"] == {"skipped": "released before"}
    assert _hook_events(salt) == [("once", None, "skipped")]


def test_a_failing_once_stops_before_any_switch_and_after_release_does_not_revert(tmp_path):
    run, salt = _run(tmp_path, {"once": [{"name": "m", "cmd": "m"}], "after_release": [{"name": "m", "cmd": "m"}]},
                     answer=BAD)
    with pytest.raises(DeployError, match="step 'm' failed .exit 1.: no; nothing was switched"):
        hooks.before_first_switch(run, PLAN)
    with pytest.raises(hooks.AfterReleaseFailed):
        hooks.after_last_batch(run, PLAN)
    assert _hook_events(salt)[-1] == ("after_release", "pre-1", "failed")
    run.failed = ["pre-1"]
    with pytest.raises(DeployError, match="pre-1 .once_node. failed before"):
        hooks.after_last_batch(run, PLAN)


def test_only_a_releases_own_switch_sends_before_switch(tmp_path):
    run, _ = _run(tmp_path, {"before_switch": [{"name": "c", "cmd": "c"}]})
    assert hooks.switch_kwarg(run) == {"before_switch": [{"name": "c", "cmd": ["c"], "timeout": 300.0}]}
    assert hooks.switch_kwarg(run, mark_left="bad") == {}  # a revert
    run.kind = "rollback"
    assert hooks.switch_kwarg(run) == {}
    run.kind = "release"
    run.conf = {**run.conf, "hooks": {}}
    assert hooks.switch_kwarg(run) == {}
