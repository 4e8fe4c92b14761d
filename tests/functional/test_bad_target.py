"""A node never switches to a release it marked bad unless the call says ``force=True`` (activate, switch,
rollback); the emergency rollback's ``expect`` binds the target release and the node checks it itself."""

import json
import os

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import PROJECT


def _events(project, release):
    return [h["event"] for h in project.meta(release)["history"]]


def _two(project):
    """r1 marked bad (say, rolled back from), r2 served."""
    project.deploy("r1", status="bad")
    project.deploy("r2")


def test_activate_refuses_a_bad_release_and_takes_it_with_force(project):
    _two(project)
    before = project.tree()
    with pytest.raises(CommandExecutionError, match=r"release 'r1' is marked bad on this node: refusing to switch "
                                                    r"to it \(force=True"):
        project.mod.activate(PROJECT, "r1")
    assert project.tree() == before and project.current == "r2"
    ret = project.mod.activate(PROJECT, "r1", force=True)
    assert ret == {"previous": "r2", "current": "r1", "changed": True, "forced": True}
    assert project.current == "r1"
    assert project.meta("r1")["status"] == "bad"  # forcing is no verdict
    assert _events(project, "r1")[-2:] == ["activated", "forced: switched to although marked bad"]
    # force on a release that is not bad changes nothing in the record
    assert "forced" not in project.mod.activate(PROJECT, "r2", force=True)
    assert _events(project, "r2")[-1] == "activated"


def test_switch_refuses_a_bad_release_and_takes_it_with_force(project):
    _two(project)
    before = project.tree()
    with pytest.raises(CommandExecutionError, match="'r1' is marked bad on this node"):
        project.mod.switch(PROJECT, "r1", checks="skip")
    assert project.tree() == before and project.current == "r2"
    ret = project.mod.switch(PROJECT, "r1", checks="skip", force=True)
    assert ret["result"] is True and ret["current"] == "r1" and ret["forced"] is True
    assert "forced: switched to although marked bad" in _events(project, "r1")
    assert project.current == "r1"


def test_rollback_refuses_a_bad_release_and_takes_it_with_force(project):
    _two(project)
    with pytest.raises(CommandExecutionError, match="'r1' is marked bad on this node"):
        project.mod.rollback(PROJECT, to="r1", checks="skip")
    assert project.current == "r2" and project.meta("r2")["status"] == "good"  # nothing marked either
    ret = project.mod.rollback(PROJECT, to="r1", checks="skip", force=True)
    assert ret["result"] is True and ret["forced"] is True and project.current == "r1"
    assert project.meta("r2")["status"] == "bad"


def test_a_failed_switch_goes_back_to_the_release_it_served_even_if_that_one_is_bad(project):
    project.write_pillar(checks=[{"url": "http://127.0.0.1:9/", "retries": 0, "delay": 0, "timeout": 1}])
    _two(project)
    project.mod.activate(PROJECT, "r1", force=True)  # serving a bad release
    project.prepare("r3")
    ret = project.mod.switch(PROJECT, "r3")
    assert ret["result"] is False and ret["reverted"] is True
    assert project.current == "r1"


def _expect(project, release, **over):
    inv = project.mod.releases(PROJECT)
    status = next((r["status"] for r in inv["releases"] if r["name"] == release), None)
    return {project.loaders.opts["id"]: {"fingerprint": inv["fingerprint"], "release": release, "status": status,
                                         **over}}


def _refused(project, ret, match):
    assert ret["result"] is False and ret["refused"] is True and ret["why"] == "target", ret
    assert match in ret["error"], ret["error"]
    assert ret["inventory"] == project.mod.releases(PROJECT)


def test_the_expected_target_is_checked_by_the_node(project):
    _two(project)
    project.deploy("r3")
    before = project.tree()
    # the record claims r1 is good here, with this node's true fingerprint (a forged record)
    ret = project.mod.switch(PROJECT, "r1", checks="report", mark_left="bad", expect=_expect(project, "r1", status="good"))
    _refused(project, ret, "release r1 is marked bad on this node (the master's record says good)")
    # even a record that says bad is refused without force
    ret = project.mod.switch(PROJECT, "r1", checks="report", mark_left="bad", expect=_expect(project, "r1"))
    _refused(project, ret, "release r1 is marked bad on this node")
    # the expect is bound to one target: another release named in the call is refused
    ret = project.mod.switch(PROJECT, "r2", checks="report", mark_left="bad", expect=_expect(project, "r1"))
    _refused(project, ret, "the master's record names r1 as the target, the call r2")
    # what the record says this node serves is checked as well (the rollback may have to switch back to it)
    ret = project.mod.switch(PROJECT, "r2", checks="report", expect=_expect(project, "r2", current="r1"))
    _refused(project, ret, "this node serves r3, the master's record says r1")
    ret = project.mod.switch(PROJECT, "r2", checks="report", expect=_expect(project, "r2", current_status="bad"))
    _refused(project, ret, "the release this node serves is good, the master's record says bad")
    # a target this node does not have
    ret = project.mod.switch(PROJECT, "r9", checks="report", mark_left="bad", expect=_expect(project, "r9", status="good"))
    _refused(project, ret, "release r9 is not prepared on this node")
    assert project.tree() == before and project.current == "r3"
    assert project.meta("r3")["status"] == "good"


def test_an_incomplete_expected_target_is_refused(project):
    project.deploy("r1")
    project.deploy("r2")
    os.makedirs(project.path("meta", "manifest"), exist_ok=True)
    with open(project.path("meta", "manifest", "r1.json"), "w", encoding="utf-8") as fh:
        json.dump({"entries": [["public/gone.php", "f", 0o644, 5, None]]}, fh)
    before = project.tree()
    ret = project.mod.switch(PROJECT, "r1", checks="report", mark_left="bad", expect=_expect(project, "r1"))
    _refused(project, ret, "release 'r1' is incomplete on this node")
    assert project.tree() == before and project.current == "r2"


def test_the_expected_target_goes_ahead_when_the_node_agrees(project):
    _two(project)
    project.deploy("r0")  # prepared last, good
    project.mod.activate(PROJECT, "r2")
    ret = project.mod.switch(PROJECT, "r0", checks="report", mark_left="bad", expect=_expect(project, "r0"))
    assert ret["result"] is True and project.current == "r0"
    assert project.meta("r2")["status"] == "bad"
    # with force, a target the record and the node both mark bad is taken
    ret = project.mod.switch(PROJECT, "r1", checks="report", expect=_expect(project, "r1"), force=True)
    assert ret["result"] is True and ret["forced"] is True and project.current == "r1"


@pytest.mark.parametrize("test", [True, False])
def test_the_states_do_not_go_to_a_release_marked_bad(project, test):
    _two(project)
    before = project.tree()
    ret = project.states.active(name="r1", project=PROJECT, test=test)
    assert ret.result is False and ret.changes == {}
    assert "r1 is marked bad on this node" in ret.comment
    ret = project.states.rolled_back(name=PROJECT, to="r1", checks="skip", test=test)
    assert ret.result is False and ret.changes == {}
    assert "r1 is marked bad on this node" in ret.comment
    assert project.tree() == before and project.current == "r2"
