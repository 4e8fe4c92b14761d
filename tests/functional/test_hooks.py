"""deploy.switch before_switch= and deploy.hooks: hook steps on the node, through the Salt loader."""

import json
import os
import pwd

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import PROJECT, SECRET, USER

OUTPUT_TAIL = 200  # characters of a failing step's output that leave the node (the node module's OUTPUT_TAIL)


def _step(name, *argv, timeout=30):
    return {"name": name, "cmd": list(argv), "timeout": timeout}


def _record(out):
    """A step writing who ran it, where, and its environment, as JSON to ``out`` (one line each)."""
    code = ("import json, os, sys; open(sys.argv[1], 'a').write(json.dumps({'uid': os.getuid(), "
            "'cwd': os.getcwd(), 'env': dict(os.environ), 'args': sys.argv[2:]}) + '\\n')")
    return ["python3", "-c", code, out]


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_before_switch_runs_as_the_app_user_in_the_new_release_without_a_shell(project, shared_dir):
    out = os.path.join(shared_dir, "before")
    project.deploy("r1")
    project.prepare("r2")
    steps = [{"name": "cache", "cmd": [*_record(out), "$HOME; echo x", "*"], "timeout": 30}]
    ret = project.mod.switch(PROJECT, "r2", checks="skip", before_switch=steps)
    assert ret["result"] is True and project.current == "r2"
    assert [s["step"] for s in ret["steps"]] == ["before_switch", "switch", "restart"]
    assert ret["steps"][0]["details"][0]["step"] == "cache" and ret["steps"][0]["details"][0]["retcode"] == 0
    [seen] = _lines(out)
    assert seen["uid"] == pwd.getpwnam(USER).pw_uid
    assert seen["cwd"] == project.release_dir("r2")
    assert seen["args"] == ["$HOME; echo x", "*"]  # no shell: neither expanded nor split
    assert set(seen["env"]) == {"PATH", "HOME", "USER", "LANG", "DEPLOY_ROOT", "DEPLOY_CURRENT", "DEPLOY_RELEASE",
                                "DEPLOY_RELEASE_DIR", "DEPLOY_HOOK"}
    assert (seen["env"]["DEPLOY_RELEASE"], seen["env"]["DEPLOY_HOOK"]) == ("r2", "before_switch")
    # not run again when current already points to the release
    again = project.mod.switch(PROJECT, "r2", checks="skip", before_switch=steps)
    assert again["result"] is True and "before_switch" not in [s["step"] for s in again["steps"]]
    assert len(_lines(out)) == 1


def test_a_failing_before_switch_leaves_current_untouched_with_a_redacted_bounded_tail(project, shared_dir):
    out = os.path.join(shared_dir, "before")
    project.write_pillar(restart=[{"cmd": f"echo restarted >> {shared_dir}/restarts"}])
    project.deploy("r1")
    project.prepare("r2")
    noisy = f"import sys; sys.stderr.write('x' * 5000 + ' key={SECRET} ' + 'tail-end'); sys.exit(3)"
    steps = [_step("first", *_record(out)), _step("migrate", "python3", "-c", noisy), _step("never", *_record(out))]
    before = os.readlink(project.path("current"))
    ret = project.mod.switch(PROJECT, "r2", before_switch=steps)
    assert ret["result"] is False
    assert (ret["previous"], ret["current"], ret["reverted"]) == ("r1", "r1", False)
    assert os.readlink(project.path("current")) == before and project.current == "r1"
    assert [s["step"] for s in ret["steps"]] == ["before_switch"]
    details = ret["steps"][0]["details"]
    assert [(d["step"], d["result"], d["retcode"]) for d in details] == [("first", True, 0), ("migrate", False, 3)]
    tail = details[1]["output"]
    assert len(tail) <= OUTPUT_TAIL and tail.endswith("tail-end") and SECRET not in tail and "[redacted]" in tail
    assert SECRET not in json.dumps(ret)
    assert len(_lines(out)) == 1  # stopped at the failing step
    assert not os.path.exists(os.path.join(shared_dir, "restarts"))  # nothing restarted
    assert project.meta("r2")["status"] == "prepared"


def test_a_missing_command_or_a_timeout_fails_the_step(project):
    project.deploy("r1")
    project.prepare("r2")
    ret = project.mod.switch(PROJECT, "r2", before_switch=[_step("nope", "/nonexistent/cmd")])
    assert ret["result"] is False and project.current == "r1"
    assert ret["steps"][0]["details"][0]["retcode"] is None and "nonexistent" in ret["steps"][0]["details"][0]["output"]
    ret = project.mod.switch(PROJECT, "r2", before_switch=[_step("slow", "sleep", "5", timeout=0.5)])
    assert ret["result"] is False and ret["steps"][0]["details"][0]["output"] == "timed out after 0.5s"
    assert project.current == "r1"


def test_hooks_run_in_a_release_or_current_and_fun_steps_by_root(project, shared_dir):
    out = os.path.join(shared_dir, "once")
    project.deploy("r1")
    project.prepare("r2")
    ret = project.mod.hooks(PROJECT, "once", [_step("migrate", *_record(out))], release="r2")
    assert ret == {"result": True, "phase": "once", "release": "r2",
                   "steps": [{"step": "migrate", "result": True, "retcode": 0, "seconds": ret["steps"][0]["seconds"]}]}
    assert _lines(out)[0]["cwd"] == project.release_dir("r2") and _lines(out)[0]["env"]["DEPLOY_HOOK"] == "once"
    ret = project.mod.hooks(PROJECT, "on_rollback", [_step("down", *_record(out))])
    assert ret["release"] == "r1" and _lines(out)[1]["cwd"] == project.release_dir("r1")  # current
    ret = project.mod.hooks(PROJECT, "after_release", [{"name": "ping", "fun": "test.true"},
                                                       {"name": "no", "fun": "test.false"}], release="r2")
    assert [(s["step"], s["result"]) for s in ret["steps"]] == [("ping", True), ("no", False)]
    assert ret["result"] is False


@pytest.mark.parametrize("steps,message", [
    ([{"name": "x", "fun": "cmd.run", "args": ["id"]}], "is not a function a hook may run"),
    ([{"name": "x", "fun": "nosuch.thing"}], "no Salt function 'nosuch.thing'"),
    ([{"name": "x", "cmd": "php artisan migrate"}], "cmd must be a non-empty list of arguments"),
    ([{"name": "x"}], "give cmd or fun"),
    ("x", "steps must be a list"),
])
def test_bad_steps_are_refused_before_anything_runs(project, steps, message):
    project.deploy("r1")
    with pytest.raises(CommandExecutionError, match=message):
        project.mod.hooks(PROJECT, "once", steps, release="r1")


def test_cmd_steps_never_run_as_root(project):
    project.write_pillar(user="root", group="root")
    project.deploy("r1")
    with pytest.raises(CommandExecutionError, match="the release's files are not run as root"):
        project.mod.hooks(PROJECT, "once", [_step("id", "id")], release="r1")
    with pytest.raises(CommandExecutionError, match="phase 'later' must be one of"):
        project.mod.hooks(PROJECT, "later", [], release="r1")
    with pytest.raises(CommandExecutionError, match="release 'r9' is not prepared"):
        project.mod.hooks(PROJECT, "once", [{"name": "t", "fun": "test.true"}], release="r9")
