"""deploy.releases / info / mark / rollback_target / rollback / cleanup."""

import os
import time

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import PROJECT


def _names(inv):
    return [r["name"] for r in inv["releases"]]


def test_releases_lists_newest_first_with_status(project):
    project.deploy("r1")
    project.deploy("r2")
    project.deploy("r3", status="bad")
    project.mod.activate(PROJECT, "r2")  # switched back by hand
    project.prepare("r4")  # distributed, never switched to
    inv = project.mod.releases(PROJECT)
    assert inv["current"] == "r2"
    assert inv["previous"] == "r3"
    assert _names(inv) == ["r4", "r2", "r3", "r1"]
    by_name = {r["name"]: r for r in inv["releases"]}
    assert {n: r["status"] for n, r in by_name.items()} == {"r1": "good", "r2": "good", "r3": "bad", "r4": "prepared"}
    assert [n for n, r in by_name.items() if r["current"]] == ["r2"]
    assert by_name["r4"]["activated_at"] is None
    assert by_name["r1"]["checksum"] == project.meta("r1")["checksum"]


def test_releases_of_an_empty_project(project):
    listing = project.mod.releases(PROJECT)
    assert {k: listing[k] for k in ("current", "previous", "releases")} == {"current": None, "previous": None,
                                                                          "releases": []}
    assert len(listing["fingerprint"]) == 16
    assert project.mod.current(PROJECT) is None
    assert project.mod.info(PROJECT, "r1") is None
    assert project.mod.rollback_target(PROJECT) is None


def test_info_returns_the_metadata(project):
    project.prepare("r1", meta={"version": "v1.0.0", "committer": "xuliangwei"})
    info = project.mod.info(PROJECT, "r1")
    assert info["version"] == "v1.0.0" and info["committer"] == "xuliangwei"
    assert info["status"] == "prepared"


def test_mark(project):
    project.deploy("r1", status="prepared")
    assert project.mod.mark(PROJECT, "r1", "bad") == {"release": "r1", "status": "bad"}
    assert project.meta("r1")["status"] == "bad"
    assert project.meta("r1")["history"][-1]["event"] == "marked bad"
    with pytest.raises(CommandExecutionError, match="status 'great'"):
        project.mod.mark(PROJECT, "r1", "great")
    with pytest.raises(CommandExecutionError, match="'r9' is not prepared"):
        project.mod.mark(PROJECT, "r9", "good")
    assert not os.path.exists(project.path("meta", "r9.json"))


def test_rollback_target_is_the_newest_good_other_than_current(project):
    project.deploy("r1")
    project.deploy("r2")
    project.deploy("r3", status="bad")
    project.deploy("r4", status="prepared")
    assert project.mod.rollback_target(PROJECT) == "r2"
    project.mod.mark(PROJECT, "r2", "bad")
    assert project.mod.rollback_target(PROJECT) == "r1"


def test_rollback_switches_and_marks_the_release_left_bad(project):
    project.deploy("r1")
    project.deploy("r2")
    ret = project.mod.rollback(PROJECT, checks="skip")
    assert ret["result"] is True and ret["release"] == "r1" and ret["previous"] == "r2"
    assert project.current == "r1"
    assert project.meta("r2")["status"] == "bad"
    # nothing good left to go back to
    with pytest.raises(CommandExecutionError, match="no good release to roll back to"):
        project.mod.rollback(PROJECT)
    assert project.current == "r1"


def test_cleanup_keeps_keep_releases(project):
    for n in range(1, 7):
        project.deploy(f"r{n}")
    project.write_pillar(keep_releases=3)
    ret = project.mod.cleanup(PROJECT)
    assert ret == {"kept": ["r6", "r5", "r4"], "removed": ["r3", "r2", "r1"]}
    assert project.release_names() == ["r4", "r5", "r6"]
    assert sorted(os.listdir(project.path("meta"))) == ["r4.json", "r5.json", "r6.json", "switch.json"]
    assert project.current == "r6"
    # again: nothing more to do
    assert project.mod.cleanup(PROJECT) == {"kept": ["r6", "r5", "r4"], "removed": []}
    with pytest.raises(CommandExecutionError, match="keep at least 1"):
        project.mod.cleanup(PROJECT, keep=0)


def test_cleanup_never_removes_current_previous_or_newest_good(project):
    project.deploy("r0")
    project.deploy("r1")  # newest good
    for n in (2, 3, 4):
        project.deploy(f"r{n}", status="prepared")  # switched to, checks never passed
    # current r4, previous r3
    ret = project.mod.cleanup(PROJECT, keep=1)
    assert ret == {"kept": ["r4", "r3", "r1"], "removed": ["r2", "r0"]}
    assert project.release_names() == ["r1", "r3", "r4"]
    # current outlives being the oldest: roll back by hand to r1, keep=1
    project.mod.activate(PROJECT, "r1")
    ret = project.mod.cleanup(PROJECT, keep=1)
    assert set(ret["kept"]) == {"r1", "r4"} and ret["removed"] == ["r3"]
    assert project.current == "r1"


def test_cleanup_keeps_a_current_switched_by_hand(project):
    # the article's emergency rollback by hand: remove the link, create it again (no activation recorded)
    for n in range(1, 5):
        project.deploy(f"r{n}")
    os.unlink(project.path("current"))
    os.symlink(project.release_dir("r1"), project.path("current"))
    ret = project.mod.cleanup(PROJECT, keep=1)
    assert "r1" in ret["kept"] and "r1" not in ret["removed"]
    assert ret["kept"] == ["r4", "r3", "r1"]  # newest (and good), previous, current
    assert project.release_names() == ["r1", "r3", "r4"]
    assert os.path.isdir(os.path.realpath(project.path("current")))


def test_bad_and_unactivated_releases_do_not_use_up_the_keep_count(project):
    project.deploy("r1")
    project.deploy("r2")
    project.deploy("r3")
    project.deploy("r4")
    project.prepare("x1")  # distributed, never switched to
    project.prepare("x2")
    project.deploy("b1", status="bad")
    project.mod.activate(PROJECT, "r4")  # rolled back by hand: current r4, previous b1
    ret = project.mod.cleanup(PROJECT, keep=2)
    # two releases that served count (r4, r3); b1, x2, x1 are newer than r3 and kept, not counted
    assert ret == {"kept": ["r4", "b1", "x2", "x1", "r3"], "removed": ["r2", "r1"]}
    assert project.release_names() == ["b1", "r3", "r4", "x1", "x2"]


def test_old_bad_and_unactivated_releases_are_removed(project):
    project.prepare("x0")  # never activated, older than everything
    project.deploy("b0", status="bad")
    project.deploy("r1")
    project.deploy("r2")
    project.deploy("r3")
    ret = project.mod.cleanup(PROJECT, keep=2)
    assert ret == {"kept": ["r3", "r2"], "removed": ["r1", "b0", "x0"]}


def test_cleanup_removes_stale_temporary_directories_only(project):
    project.deploy("r1")
    stale = project.path("releases", ".tmp-r2-abcd")
    fresh = project.path("releases", ".tmp-r3-efgh")
    stale_link = project.path(".current-1-2")
    os.makedirs(os.path.join(stale, "public"))
    os.makedirs(fresh)
    os.symlink(project.release_dir("r1"), stale_link)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(stale_link, (old, old), follow_symlinks=False)
    ret = project.mod.cleanup(PROJECT)
    assert ret["removed"] == []
    assert not os.path.lexists(stale) and not os.path.lexists(stale_link)
    assert os.path.isdir(fresh)  # may belong to a prepare running right now
    assert project.current == "r1"
