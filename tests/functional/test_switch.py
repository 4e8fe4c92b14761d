"""deploy.switch / restart / check: switch, restart steps, smoke checks, switching back on failure."""

import os

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import APP_FILES, GOOD_MARK, PROJECT, USER


def _checks(web, **extra):
    return [{"url": f"{web}/", "status": 200, "contains": GOOD_MARK, "retries": 1, "delay": 0, "timeout": 3, **extra}]


def _broken(text="broken build"):
    return {**APP_FILES, "public/index.php": f"<?php echo '{text}'; ?>\n"}


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return fh.read().splitlines()


def test_passing_checks_mark_the_release_good(project, web, shared_dir):
    log = os.path.join(shared_dir, "restarts")
    project.write_pillar(checks=_checks(web), restart=[{"cmd": f"readlink -f . >> {log}"}])
    project.deploy("r1")
    project.prepare("r2")
    ret = project.mod.switch(PROJECT, "r2")
    assert ret["result"] is True
    assert (ret["release"], ret["previous"], ret["current"], ret["reverted"], ret["checks"]) == (
        "r2", "r1", "r2", False, True)
    assert [s["step"] for s in ret["steps"]] == ["switch", "restart", "checks"]
    assert ret["steps"][2]["details"][0]["status"] == 200
    assert project.current == "r2"
    assert project.meta("r2")["status"] == "good"
    assert project.meta("r1")["status"] == "good"  # left alone: a release is not a rollback
    # the restart ran once, in the new release
    assert _lines(log) == [project.release_dir("r2")]


def test_failing_checks_switch_back(project, web, shared_dir):
    log = os.path.join(shared_dir, "restarts")
    project.write_pillar(checks=_checks(web), restart=[{"cmd": f"readlink -f . >> {log}"}])
    project.deploy("r1")
    project.prepare("r2", files=_broken())
    ret = project.mod.switch(PROJECT, "r2")
    assert ret["result"] is False
    assert ret["reverted"] is True
    assert ret["checks"] is False
    assert ret["current"] == "r1"
    assert [s["step"] for s in ret["steps"]] == ["switch", "restart", "checks", "revert"]
    assert ret["steps"][2]["details"][0]["error"] == f"response does not contain {GOOD_MARK!r}"
    assert ret["steps"][3]["to"] == "r1" and ret["steps"][3]["result"] is True
    assert project.current == "r1"
    assert project.meta("r2")["status"] == "bad"
    assert project.meta("r1")["status"] == "good"
    # restarted in the new release, then again after switching back
    assert _lines(log) == [project.release_dir("r2"), project.release_dir("r1")]
    assert project.leftovers() == []
    assert project.mod.check(PROJECT)["result"] is True  # r1 serves again


def test_wrong_status_fails_the_check(project, web):
    project.write_pillar(checks=_checks(web))
    project.deploy("r1")
    project.prepare("r2", files=_broken(f"{GOOD_MARK} but status-500"))
    ret = project.mod.switch(PROJECT, "r2")
    assert ret["result"] is False
    detail = ret["steps"][2]["details"][0]
    assert detail["status"] == 500 and detail["error"] == "status 500, expected 200"
    assert project.current == "r1"


def test_unreachable_check_is_retried_then_fails(project):
    project.write_pillar(checks=[{"url": "http://127.0.0.1:9/", "retries": 2, "delay": 0, "timeout": 1}])
    project.deploy("r1")
    project.prepare("r2")
    ret = project.mod.switch(PROJECT, "r2")
    assert ret["result"] is False and project.current == "r1"
    detail = ret["steps"][2]["details"][0]
    assert detail["attempts"] == 2 and detail["status"] is None and detail["error"]


def test_report_mode_never_switches_back(project, web):
    project.write_pillar(checks=_checks(web))
    project.deploy("r1")
    project.prepare("r2", files=_broken())
    ret = project.mod.switch(PROJECT, "r2", checks="report", mark_left="bad")
    assert ret["checks"] is False
    assert ret["result"] is True and ret["reverted"] is False
    assert project.current == "r2"
    assert project.meta("r1")["status"] == "bad"  # the release left, as in an emergency rollback
    assert project.meta("r2")["status"] == "prepared"  # report mode does not judge it


def test_skip_mode_runs_no_checks(project, web):
    project.write_pillar(checks=_checks(web))
    project.deploy("r1")
    project.prepare("r2", files=_broken())
    ret = project.mod.switch(PROJECT, "r2", checks="skip")
    assert ret["result"] is True and ret["checks"] is None
    assert [s["step"] for s in ret["steps"]] == ["switch", "restart"]
    assert project.current == "r2"


def test_switch_arguments_are_validated(project):
    project.deploy("r1")
    with pytest.raises(CommandExecutionError, match="checks='maybe'"):
        project.mod.switch(PROJECT, "r1", checks="maybe")
    with pytest.raises(CommandExecutionError, match="mark_left='good'"):
        project.mod.switch(PROJECT, "r1", mark_left="good")
    with pytest.raises(CommandExecutionError, match="'r2' is not prepared"):
        project.mod.switch(PROJECT, "r2")
    assert project.current == "r1"


def test_failing_restart_switches_back_and_stops_at_the_failing_step(project, shared_dir):
    flag = os.path.join(shared_dir, "fail-next")
    after = os.path.join(shared_dir, "after")
    project.write_pillar(restart=[
        {"cmd": f"if [ -e {flag} ]; then rm -f {flag}; echo boom >&2; exit 3; fi"},
        {"cmd": f"echo ran >> {after}"},
    ])
    project.deploy("r1")
    project.prepare("r2")
    open(flag, "w").close()
    os.chown(flag, 33, 33)  # the dir is sticky: www-data may only remove its own files
    ret = project.mod.switch(PROJECT, "r2")
    assert ret["result"] is False and ret["reverted"] is True
    restart = ret["steps"][1]
    assert restart["result"] is False
    assert len(restart["details"]) == 1  # the second step never ran
    assert restart["details"][0]["retcode"] == 3 and "boom" in restart["details"][0]["output"]
    assert project.current == "r1"
    assert project.meta("r2")["status"] == "bad"
    assert _lines(after) == ["ran"]  # only after switching back (the flag was gone by then)


def test_cmd_runs_as_the_project_user(project, shared_dir):
    out = os.path.join(shared_dir, "whoami")
    project.write_pillar(restart=[{"cmd": f'{{ id -un; id -gn; id -G; echo "$DEPLOY_CURRENT"; pwd -P; }} > {out}'}])
    project.deploy("r1")
    ret = project.mod.restart(PROJECT)
    assert ret["result"] is True, ret
    with open(out, encoding="utf-8") as fh:
        user, group, groups, current, cwd = fh.read().splitlines()
    assert (user, group) == (USER, USER)
    assert groups == "33"  # only its own group: none of root's supplementary groups
    assert current == project.path("current")
    assert cwd == project.release_dir("r1")
    assert os.stat(out).st_uid == 33


def test_clear_empties_directories_but_keeps_them(project, shared_dir):
    work = os.path.join(project.workdir, "tomcat", "work")
    tmp = os.path.join(project.workdir, "tomcat", "temp")
    os.makedirs(os.path.join(work, "Catalina", "localhost"))
    os.makedirs(tmp)
    for path in (os.path.join(work, "Catalina", "localhost", "index_jsp.class"), os.path.join(tmp, "upload.tmp")):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("stale")
    victim = os.path.join(project.workdir, "victim")
    os.makedirs(victim)
    open(os.path.join(victim, "keep"), "w").close()
    os.symlink(victim, os.path.join(tmp, "link-to-victim"))
    missing = os.path.join(project.workdir, "tomcat", "missing")
    project.write_pillar(restart=[{"clear": [work, tmp, missing]}])
    project.deploy("r1")
    ret = project.mod.restart(PROJECT)
    assert ret["result"] is True
    assert ret["steps"][0]["removed"] == 3
    assert os.path.isdir(work) and os.listdir(work) == []
    assert os.path.isdir(tmp) and os.listdir(tmp) == []
    assert os.listdir(victim) == ["keep"]  # a link is removed, never followed
    assert not os.path.exists(missing)


@pytest.mark.parametrize("step,message", [
    ({"clear": ["relative/dir"]}, "must be an absolute directory"),
    ({"clear": "/"}, "must be an absolute directory other than '/'"),
    ({"service": "nginx", "action": "explode"}, "action 'explode'"),
    ({"bogus": 1}, "unknown step"),
])
def test_bad_restart_steps_fail_clearly(project, step, message):
    project.write_pillar(restart=[step])
    project.deploy("r1")
    ret = project.mod.restart(PROJECT)
    assert ret["result"] is False
    assert message in ret["steps"][0]["output"]


def test_cmd_timeout(project):
    project.write_pillar(restart=[{"cmd": "sleep 5", "timeout": 0.3}])
    project.deploy("r1")
    ret = project.mod.restart(PROJECT)
    assert ret["result"] is False
    assert ret["steps"][0]["output"] == "timed out"
