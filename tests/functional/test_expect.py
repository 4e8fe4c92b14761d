"""deploy.switch ``expect=``: a node acts only in the state the master recorded; ``inventory=True`` reports it."""

from tests.functional.fnlib import PROJECT


def _fp(project):
    return project.mod.releases(PROJECT)["fingerprint"]


def test_the_fingerprint_follows_what_a_rollback_target_depends_on(project):
    project.deploy("r1")
    project.deploy("r2")
    first = _fp(project)
    assert _fp(project) == first  # listing changes nothing
    project.mod.mark(PROJECT, "r1", "bad")
    marked = _fp(project)
    assert marked != first
    project.mod.activate(PROJECT, "r1", force=True)  # a release marked bad: only with force
    switched = _fp(project)
    assert switched not in (first, marked)
    project.prepare("r3")
    assert _fp(project) not in (first, marked, switched)


def test_a_switch_in_the_expected_state_goes_ahead(project):
    project.deploy("r1")
    project.deploy("r2")
    ret = project.mod.switch(PROJECT, "r1", checks="report", mark_left="bad", expect=_fp(project), inventory=True)
    assert ret["result"] is True and ret["current"] == "r1"
    assert project.current == "r1"
    assert project.meta("r2")["status"] == "bad"
    # the inventory returned is the node's state after the switch
    assert ret["inventory"] == project.mod.releases(PROJECT)
    assert ret["inventory"]["current"] == "r1"


def test_a_switch_in_another_state_is_refused_and_changes_nothing(project):
    project.deploy("r1")
    project.deploy("r2")
    recorded = _fp(project)
    project.mod.mark(PROJECT, "r1", "prepared")  # someone changed the node behind the master's back
    before = project.tree()
    ret = project.mod.switch(PROJECT, "r1", checks="report", mark_left="bad", expect=recorded)
    assert ret["result"] is False and ret["refused"] is True
    assert "changed since the master's record" in ret["error"] and recorded in ret["error"]
    assert (ret["current"], ret["previous"]) == ("r2", "r2")
    assert ret["inventory"] == project.mod.releases(PROJECT)
    assert project.tree() == before
    assert project.current == "r2"
    assert project.meta("r2")["status"] == "good"


def test_expect_as_a_dict_is_looked_up_by_minion_id(project):
    project.deploy("r1")
    project.deploy("r2")
    me = project.loaders.opts["id"]
    ret = project.mod.switch(PROJECT, "r1", checks="skip", expect={"some-other-node": _fp(project)})
    assert ret["refused"] is True and f"no expected state for {me}" in ret["error"]
    assert project.current == "r2"
    ret = project.mod.switch(PROJECT, "r1", checks="skip", expect={me: _fp(project), "some-other-node": "x"})
    assert ret["result"] is True and project.current == "r1"


def test_state_changing_calls_report_the_inventory_on_request(project):
    url, _, checksum = project.artifact("r1")
    ret = project.mod.prepare(PROJECT, "r1", url, checksum, inventory=True)
    assert [r["name"] for r in ret["inventory"]["releases"]] == ["r1"]
    assert ret["inventory"]["fingerprint"] == _fp(project)
    again = project.mod.prepare(PROJECT, "r1", url, checksum, inventory=True)  # already prepared
    assert again["changed"] is False and again["inventory"] == ret["inventory"]
    marked = project.mod.mark(PROJECT, "r1", "bad", inventory=True)
    assert marked["inventory"]["releases"][0]["status"] == "bad"
    cleaned = project.mod.cleanup(PROJECT, inventory=True)
    assert cleaned["inventory"] == project.mod.releases(PROJECT)
    # without the flag, returns stay as they were
    assert "inventory" not in project.mod.mark(PROJECT, "r1", "prepared")
    assert "inventory" not in project.mod.cleanup(PROJECT)
