"""deploy.activate: ``current`` re-pointed atomically, the previous release remembered, broken trees refused."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import PROJECT


def _switch_record(project):
    with open(project.path("meta", "switch.json"), encoding="utf-8") as fh:
        return json.load(fh)


def test_first_activation(project):
    project.prepare("r1")
    ret = project.mod.activate(PROJECT, "r1")
    assert ret == {"previous": None, "current": "r1", "changed": True}
    link = project.path("current")
    assert os.path.islink(link)
    assert os.readlink(link) == project.release_dir("r1")
    assert os.path.realpath(link) == project.release_dir("r1")
    assert _switch_record(project)["previous"] is None
    assert _switch_record(project)["current"] == "r1"
    meta = project.meta("r1")
    assert meta["activated_at"] > meta["prepared_at"]
    assert [h["event"] for h in meta["history"]] == ["prepared", "activated"]
    assert project.mod.current(PROJECT) == "r1"


def test_switch_is_a_rename_over_current(project):
    project.prepare("r1")
    project.prepare("r2")
    project.mod.activate(PROJECT, "r1")
    inode = os.lstat(project.path("current")).st_ino
    ret = project.mod.activate(PROJECT, "r2")
    assert ret == {"previous": "r1", "current": "r2", "changed": True}
    # a new link renamed over the old one (os.replace), never unlink + symlink: the inode
    # changes, the link is always there, and no temporary link is left beside it
    assert os.lstat(project.path("current")).st_ino != inode
    assert os.readlink(project.path("current")) == project.release_dir("r2")
    assert [n for n in os.listdir(project.root) if n.startswith(".current-")] == []
    assert sorted(os.listdir(project.root)) == ["current", "meta", "releases", "shared"]
    assert _switch_record(project)["previous"] == "r1"
    # and back
    assert project.mod.activate(PROJECT, "r1")["previous"] == "r2"
    assert _switch_record(project) | {"at": None} == {"previous": "r2", "current": "r1", "at": None}


READER = """
import os, sys, time
link, stop = sys.argv[1], sys.argv[2]
seen = missing = 0
while not os.path.exists(stop):
    for _ in range(1000):
        seen += 1
        if not os.path.exists(link):  # follows the link: what a web server opening current/... sees
            missing += 1
print(seen, missing)
"""


def test_current_never_disappears_during_switches(project):
    # a reader in another process watches current/public/index.php while we switch back and forth
    project.prepare("r1")
    project.prepare("r2")
    project.mod.activate(PROJECT, "r1")
    stop = os.path.join(project.workdir, "stop")
    reader = subprocess.Popen([sys.executable, "-c", READER, project.path("current", "public", "index.php"), stop],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # let it start
        for i in range(150):
            project.mod.activate(PROJECT, "r2" if i % 2 == 0 else "r1")
    finally:
        open(stop, "w").close()
        out, _ = reader.communicate(timeout=30)
    seen, missing = map(int, out.split())
    assert seen > 1000
    assert missing == 0
    assert project.current == "r1"


def test_activate_current_again_changes_nothing(project):
    project.prepare("r1")
    project.mod.activate(PROJECT, "r1")
    before = project.tree()
    assert project.mod.activate(PROJECT, "r1") == {"previous": "r1", "current": "r1", "changed": False}
    assert project.tree() == before


def test_activate_unprepared_release_is_refused(project):
    project.deploy("r1")
    before = project.tree()
    with pytest.raises(CommandExecutionError, match="'r9' is not prepared"):
        project.mod.activate(PROJECT, "r9")
    assert project.current == "r1"
    assert project.tree() == before


def test_activate_release_without_metadata_is_refused(project):
    # a directory dropped into releases/ by hand is not a prepared release
    project.deploy("r1")
    shutil.copytree(project.release_dir("r1"), project.release_dir("r2"), symlinks=True)
    with pytest.raises(CommandExecutionError, match="'r2' is not prepared"):
        project.mod.activate(PROJECT, "r2")
    assert project.current == "r1"


def test_current_as_a_real_directory_is_refused(project):
    project.prepare("r1")
    os.makedirs(project.path("current"))
    with open(project.path("current", "index.html"), "w", encoding="utf-8") as fh:
        fh.write("hand-made\n")
    before = project.tree()
    with pytest.raises(CommandExecutionError, match="is not a symlink"):
        project.mod.activate(PROJECT, "r1")
    assert project.tree() == before
    assert os.path.isdir(project.path("current")) and not os.path.islink(project.path("current"))
    # prepare refuses such a tree before doing any work, too
    with pytest.raises(CommandExecutionError, match="is not a symlink"):
        project.prepare("r2")
    assert project.release_names() == ["r1"]


@pytest.mark.parametrize("target", ["/etc", "../../elsewhere", "shared", "releases/r1/public"])
def test_current_pointing_outside_releases_is_refused(project, target):
    project.prepare("r1")
    os.symlink(target, project.path("current"))
    with pytest.raises(CommandExecutionError, match="outside .*releases: refusing"):
        project.mod.activate(PROJECT, "r1")
    assert os.readlink(project.path("current")) == target
    assert not os.path.exists(project.path("meta", "switch.json"))


def test_relative_current_link_inside_releases_is_accepted(project):
    # a link made by hand the usual way (ln -sfn releases/r1 current) is understood
    project.prepare("r1")
    project.prepare("r2")
    os.symlink("releases/r1", project.path("current"))
    assert project.mod.current(PROJECT) == "r1"
    assert project.mod.activate(PROJECT, "r2")["previous"] == "r1"
    assert project.current == "r2"
