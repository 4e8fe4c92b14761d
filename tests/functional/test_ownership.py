"""
Deployed code is root's: a release (folders, files, links) belongs to root and the app user
(www-data) can neither change it nor steer root while it is built.  Only shared/ and the
``writable`` folders are the app user's.  Real files, the real unprivileged user www-data.
"""

import os
import pwd
import shutil
import stat
import subprocess
import time
import traceback

import pytest
from salt.exceptions import CommandExecutionError
from tests.functional.fnlib import APP_FILES, PROJECT, USER, content_artifact
import contextlib

APP = pwd.getpwnam(USER)

# what www-data tries inside a release; prints one errno name (or OK) per attempt
PROBE = r"""
import errno, os, sys
rel = sys.argv[1]
def attempt(fn):
    try:
        fn()
        return "OK"
    except OSError as exc:
        return errno.errorcode[exc.errno]
print(attempt(lambda: open(os.path.join(rel, "planted.php"), "x").close()))
print(attempt(lambda: open(os.path.join(rel, "public", "planted.php"), "x").close()))
print(attempt(lambda: os.rename(os.path.join(rel, "public", "index.php"), os.path.join(rel, "public", "old.php"))))
print(attempt(lambda: os.unlink(os.path.join(rel, "public", "index.php"))))
print(attempt(lambda: os.rename(os.path.join(rel, "public"), os.path.join(rel, "gone"))))
print(attempt(lambda: os.mkdir(os.path.join(rel, "config", "evil"))))
print(attempt(lambda: open(os.path.join(rel, "public", "index.php"), "a").close()))
"""


def _as_app(*argv, check=True):
    return subprocess.run(["/usr/bin/python3", *argv], check=check, user=APP.pw_uid, group=APP.pw_gid,
                          extra_groups=[], capture_output=True, text=True)


def _entries(path):
    """{relative path: (uid, gid, mode, kind)} of everything under path (no link followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [None, *dirnames, *filenames]:
            full = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
            out[os.path.relpath(full, path)] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), kind)
    return out


def _victim(path, names):
    os.makedirs(path, mode=0o700)
    for name in names:
        with open(os.path.join(path, name), "w", encoding="utf-8") as fh:
            fh.write("root's file\n")
        os.chmod(os.path.join(path, name), 0o600)
    return path


def _prepare_tree(project, release, files=None):
    path, checksum, doc, _ = content_artifact(project.artifacts, release, files, marker=release)
    url = f"salt://artifacts/{os.path.basename(project.artifacts)}/{os.path.basename(path)}"
    return project.mod.prepare(PROJECT, release, url, checksum, tree=doc["tree"])


WRITABLE = ["storage/framework/cache", "bootstrap/cache"]


@pytest.mark.parametrize("how", ["tar", "tree", "state"])
def test_a_release_is_roots_and_the_app_user_cannot_change_it(project, how):
    project.write_pillar(writable=WRITABLE)
    files = {**APP_FILES, "bootstrap/cache/.gitignore": "*\n", "lib/deep/er/x.php": "<?php\n"}
    if how == "tar":
        project.prepare("r1", files=files)
    elif how == "state":  # deploy.prepared: the artifact path
        url, _, checksum = project.artifact("r1", files=files)
        assert project.states.prepared(name="r1", project=PROJECT, source=url, checksum=checksum).result is True
    else:
        _prepare_tree(project, "r1", files)
    final = project.release_dir("r1")
    found = _entries(final)
    for rel, (uid, gid, mode, kind) in found.items():
        if rel in WRITABLE or any(rel.startswith(w + "/") for w in WRITABLE):
            continue
        if rel == "config/app.ini":  # rendered config: root's, readable by the app's group only
            assert (uid, gid, mode) == (0, APP.pw_gid, 0o640), rel
        elif kind == "d":
            assert (uid, gid, mode) == (0, 0, 0o755), (rel, found[rel])
        elif kind == "l":
            assert (uid, gid) == (0, 0), (rel, found[rel])
        else:
            assert uid == 0 and not mode & 0o022, (rel, found[rel])
    assert found["storage/logs"][3] == "l"  # a shared path: root's link into shared/
    # the writable folders: empty (what the build shipped there is gone), the app user's
    for rel in WRITABLE:
        uid, gid, mode, kind = found[rel]
        assert (uid, gid, kind) == (APP.pw_uid, APP.pw_gid, "d"), rel
        assert os.listdir(os.path.join(final, rel)) == [], rel
    assert found["storage/framework"][:2] == (0, 0)

    out = _as_app("-c", PROBE, final).stdout.split()
    assert out == ["EACCES"] * 7, out
    # and what it must write, it can
    _as_app("-c", "import sys; open(sys.argv[1] + '/storage/framework/cache/x', 'w').write('1')", final)
    _as_app("-c", "import sys; print(open(sys.argv[1] + '/config/app.ini').read())", final)


def test_the_app_user_cannot_steer_root_while_a_release_is_built(project):
    """www-data swaps every folder of the release being built for a link to a root-only folder
    outside, as fast as it can.  On the old code (the tree handed over with os.walk + lchown by
    name) root followed the link and handed the victim's files to www-data within a few prepares;
    now the folder being built is root's until it is complete, and nothing walks it by name."""
    names = [f"f{i:02d}" for i in range(30)]
    victim = _victim(os.path.join(project.workdir, "victim"), names)
    before = _entries(victim)
    files = {**APP_FILES, **{f"d{d:03d}/{n}": "x\n" for d in range(60) for n in names}}
    project.deploy("r0")
    stop = os.path.join(project.workdir, "stop")
    script = (
        "import os, sys\n"
        "rel, victim, stop = sys.argv[1:4]\n"
        "while not os.path.exists(stop):\n"
        "    try: names = os.listdir(rel)\n"
        "    except OSError: continue\n"
        "    for n in names:\n"
        "        if not n.startswith('.tmp-'): continue\n"
        "        t = os.path.join(rel, n)\n"
        "        try: subs = os.listdir(t)\n"
        "        except OSError: continue\n"
        "        for s in subs:\n"
        "            if s.startswith('d'):\n"
        "                p = os.path.join(t, s)\n"
        "                try:\n"
        "                    os.rename(p, os.path.join(t, 'x' + s))\n"
        "                    os.symlink(victim, p)\n"
        "                except OSError: pass\n"
    )
    attacker = subprocess.Popen(["/usr/bin/python3", "-c", script, project.path("releases"), victim, stop],
                                user=APP.pw_uid, group=APP.pw_gid, extra_groups=[])
    tries = 0
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and tries < 8:
            tries += 1
            url, _, checksum = project.artifact(f"r{tries}", files=files)
            with contextlib.suppress(CommandExecutionError):
                project.mod.prepare(PROJECT, f"r{tries}", url, checksum)
            if _entries(victim) != before:
                break
    finally:
        with open(stop, "w"):
            pass
        attacker.wait(10)
    assert _entries(victim) == before, f"root-only files handed to www-data after {tries} prepares"
    for rel, (uid, *_) in _entries(project.release_dir("r1")).items():
        assert uid == 0, rel


def test_a_missing_root_under_a_sticky_world_writable_folder(project):
    """The root's parent is like /tmp (root's, 1777): www-data plants and removes a link at the
    root's path while prepare creates it.  On the old code (makedirs + chmod by path) root
    followed the link: it made releases/ in, and chmodded 0755, a root-only folder elsewhere."""
    sticky = os.path.join(project.workdir, "sticky")
    os.makedirs(sticky)
    os.chmod(sticky, 0o1777)
    victim = _victim(os.path.join(project.workdir, "victim"), ["secret"])
    before = _entries(victim)
    root = os.path.join(sticky, "app")
    project.write_pillar(root=root)
    stop = os.path.join(project.workdir, "stop")
    script = (
        "import os, sys\n"
        "root, victim, stop = sys.argv[1:4]\n"
        "while not os.path.exists(stop):\n"
        "    try: os.symlink(victim, root)\n"
        "    except OSError: continue\n"
        "    try: os.unlink(root)\n"
        "    except OSError: pass\n"
    )
    attacker = subprocess.Popen(["/usr/bin/python3", "-c", script, root, victim, stop],
                                user=APP.pw_uid, group=APP.pw_gid, extra_groups=[])
    tries, refused, built, raw = 0, 0, 0, []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tries < 200:
            tries += 1
            url, _, checksum = project.artifact(f"r{tries}")
            try:
                project.mod.prepare(PROJECT, f"r{tries}", url, checksum)
                built += 1
            except CommandExecutionError as exc:
                refused += 1
                assert root in str(exc), str(exc)
            except OSError as exc:  # not one clear error
                raw.append(repr(exc) + traceback.format_exc()[-1500:])
            if _entries(victim) != before:
                break
            try:
                st = os.lstat(root)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
                shutil.rmtree(root)  # try again from a missing root
    finally:
        with open(stop, "w"):
            pass
        attacker.wait(10)
    assert _entries(victim) == before, f"victim changed after {tries} prepares"
    assert raw == [] and built + refused == tries, raw[:3]


def _old_layout(project, release):
    """What the previous version left: the release handed to the app user (blobs excepted)."""
    for dirpath, dirnames, filenames in os.walk(project.release_dir(release)):
        os.lchown(dirpath, APP.pw_uid, APP.pw_gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), APP.pw_uid, APP.pw_gid)


def test_a_release_prepared_by_the_old_version(project):
    project.deploy("r1")
    project.deploy("r2")
    _old_layout(project, "r1")
    # switching to it (a rollback) is refused, saying why and what to do
    before = project.tree()
    with pytest.raises(CommandExecutionError) as exc:
        project.mod.activate(PROJECT, "r1")
    message = str(exc.value)
    assert "r1" in message and "www-data" in message and "Release it again" in message, message
    assert project.current == "r2" and project.tree() == before
    with pytest.raises(CommandExecutionError, match="Release it again"):
        project.mod.rollback(PROJECT, to="r1", checks="skip")  # through switch: the same refusal
    assert project.current == "r2" and project.tree() == before


def test_preparing_an_old_layout_release_again_builds_it_anew(project):
    project.deploy("r1")
    url, _, checksum = project.artifact("r2")
    project.mod.prepare(PROJECT, "r2", url, checksum)
    _old_layout(project, "r2")
    ret = project.mod.prepare(PROJECT, "r2", url, checksum)  # the same artifact
    assert ret["changed"] is True, ret
    assert all(uid == 0 for uid, *_ in _entries(project.release_dir("r2")).values())
    assert project.mod.activate(PROJECT, "r2")["changed"] is True
    # the live one is left alone (switching to it changes nothing)
    _old_layout(project, "r2")
    assert project.mod.prepare(PROJECT, "r2", url, checksum)["changed"] is False
    assert os.lstat(project.release_dir("r2")).st_uid == APP.pw_uid and project.current == "r2"
    # the state deploy.prepared builds it anew too
    project.mod.activate(PROJECT, "r1")
    _old_layout(project, "r2")
    ret = project.states.prepared(name="r2", project=PROJECT, source=url, checksum=checksum)
    assert ret.result is True and ret.changes, ret
    assert os.lstat(project.release_dir("r2")).st_uid == 0
    # built from the store: lacking() asks for it again
    path, checksum, doc, _ = content_artifact(project.artifacts, "r3", None, marker="r3")
    url = f"salt://artifacts/{os.path.basename(project.artifacts)}/{os.path.basename(path)}"
    project.mod.prepare(PROJECT, "r3", url, checksum, tree=doc["tree"])
    _old_layout(project, "r3")
    blobs = sorted({e[4] for e in doc["entries"] if e[1] == "f"})
    assert project.mod.lacking(PROJECT, "r3", doc["tree"], blobs=blobs)["prepared"] is False
    assert project.mod.prepare(PROJECT, "r3", url, checksum, tree=doc["tree"])["changed"] is True
    assert os.lstat(project.release_dir("r3")).st_uid == 0


def test_the_first_release_after_the_upgrade_and_its_switch_back(project):
    project.deploy("r1")
    _old_layout(project, "r1")  # current, prepared by the old version
    project.prepare("r2")
    out = project.mod.switch(PROJECT, "r2", checks="skip")
    assert out["result"] is True and project.current == "r2", out
    # a release failing its restart switches back to the old one that was live a moment ago
    project.write_pillar(restart=[{"cmd": "exit 3", "name": "fails"}])
    os.unlink(project.path("current"))
    os.symlink(project.release_dir("r1"), project.path("current"))  # r1 live again
    project.prepare("r4")
    out = project.mod.switch(PROJECT, "r4")
    assert out["result"] is False and out["reverted"] is True and project.current == "r1", out


@pytest.mark.parametrize("writable, why", [
    (["storage/logs"], "shared"),
    (["storage"], "shared"),
    (["config"], "config"),
    (["../x"], "writable path"),
])
def test_writable_paths_that_overlap_or_escape_are_refused(project, writable, why):
    project.write_pillar(writable=writable)
    url, _, checksum = project.artifact("r1")
    with pytest.raises(CommandExecutionError) as exc:
        project.mod.prepare(PROJECT, "r1", url, checksum)
    assert why in str(exc.value) and writable[0] in str(exc.value), str(exc.value)
    assert project.release_names() == [] and project.leftovers() == []


def test_a_writable_path_under_a_link_of_the_build_is_refused(project):
    project.write_pillar(writable=["cache/app"])
    with pytest.raises(CommandExecutionError) as exc:
        path, checksum, doc, _ = content_artifact(project.artifacts, "r1", dict(APP_FILES),
                                                  links={"cache": "public"})
        url = f"salt://artifacts/{os.path.basename(project.artifacts)}/{os.path.basename(path)}"
        project.mod.prepare(PROJECT, "r1", url, checksum, tree=doc["tree"])
    assert "cache" in str(exc.value) and "symlink" in str(exc.value), str(exc.value)
    assert project.release_names() == [] and project.leftovers() == []
