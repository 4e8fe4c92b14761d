"""deploy.prepare: a release unpacked, linked, configured, owned and recorded; idempotent."""

import os
import pwd
import stat

import pytest
from tests.functional.fnlib import PROJECT, SECRET, USER
from salt.exceptions import CommandExecutionError

WWW = pwd.getpwnam(USER)
RELEASE = "rainbow_pro_v1.1.1_master_2016-08-11_12-12-00_xuliangwei"
META = {"version": "v1.1.1", "branch": "master", "commit": "0123456789abcdef0123456789abcdef01234567",
        "committer": "xuliangwei", "time": "2016-08-11T12:12:00"}


def _owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_prepare_builds_the_release(project):
    url, _, checksum = project.artifact(RELEASE)
    ret = project.mod.prepare(PROJECT, RELEASE, url, checksum, meta=META)
    final = project.release_dir(RELEASE)
    assert ret["changed"] is True
    assert ret["path"] == final
    assert os.path.isdir(final) and not os.path.islink(final)
    assert project.release_names() == [RELEASE]
    assert project.leftovers() == []
    assert project.current is None  # prepare never switches

    # the app itself
    with open(os.path.join(final, "public", "index.php"), encoding="utf-8") as fh:
        assert RELEASE in fh.read()

    # root's, all the way down (deployed code is root's; the app user owns shared/ only);
    # the rendered config is readable by the project's group
    for dirpath, dirnames, filenames in os.walk(final):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            expected = (0, WWW.pw_gid) if name.endswith("config/app.ini") else (0, 0)
            assert _owner(name) == expected, name
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o755

    # shared paths are links into <root>/shared, which exists and belongs to the user
    logs = os.path.join(final, "storage", "logs")
    assert os.path.islink(logs)
    assert os.readlink(logs) == project.path("shared", "storage", "logs")
    assert os.path.isdir(project.path("shared", "storage", "logs"))
    assert _owner(project.path("shared", "storage", "logs")) == (WWW.pw_uid, WWW.pw_gid)

    # config rendered with the node's secret, 0640, root's, the project's group
    ini = os.path.join(final, "config", "app.ini")
    with open(ini, encoding="utf-8") as fh:
        text = fh.read()
    assert f"key = {SECRET}\n" in text
    assert f"release = {RELEASE}\n" in text
    assert stat.S_IMODE(os.lstat(ini).st_mode) == 0o640
    assert _owner(ini) == (0, WWW.pw_gid)

    # per-node files
    crontab = os.path.join(final, "config", "crontab.xml")
    with open(crontab, encoding="utf-8") as fh:
        assert fh.read() == "<crontab/>\n"
    assert stat.S_IMODE(os.lstat(crontab).st_mode) == 0o644

    # metadata lives beside the tree, not in it
    meta = project.meta(RELEASE)
    assert meta["checksum"] == checksum
    assert meta["commit"] == META["commit"]
    assert meta["status"] == "prepared"
    assert meta["project"] == PROJECT
    assert stat.S_IMODE(os.stat(project.path("meta")).st_mode) == 0o750
    for dirpath, dirnames, filenames in os.walk(final):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            assert META["commit"] not in name and checksum not in name
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as fh:
                    data = fh.read()
                assert META["commit"].encode() not in data, full
                assert checksum.encode() not in data, full


def test_prepare_from_a_local_path_and_uncompressed_tar(project):
    _, path, checksum = project.artifact("plain", mode="w")
    ret = project.mod.prepare(PROJECT, "plain", path, checksum)
    assert ret["changed"] is True
    assert os.path.isfile(project.release_dir("plain") + "/public/index.php")


def test_prepare_again_is_a_no_op(project):
    url, _, checksum = project.artifact(RELEASE)
    project.mod.prepare(PROJECT, RELEASE, url, checksum)
    before = project.tree()
    ret = project.mod.prepare(PROJECT, RELEASE, url, checksum)
    assert ret["changed"] is False
    assert project.tree() == before


def test_prepare_same_name_other_checksum_is_refused(project):
    url, _, checksum = project.artifact(RELEASE)
    project.mod.prepare(PROJECT, RELEASE, url, checksum)
    before = project.tree()
    other_url, _, other = project.artifact(RELEASE + "-rebuilt", marker="changed code")
    assert other != checksum
    with pytest.raises(CommandExecutionError, match="different checksum"):
        project.mod.prepare(PROJECT, RELEASE, other_url, other)
    assert project.tree() == before
    assert project.leftovers() == []


def test_shared_data_survives_a_new_release(project):
    project.deploy("r1")
    with open(project.path("shared", "storage", "logs", "app.log"), "w", encoding="utf-8") as fh:
        fh.write("kept\n")
    project.prepare("r2")
    with open(os.path.join(project.release_dir("r2"), "storage", "logs", "app.log"), encoding="utf-8") as fh:
        assert fh.read() == "kept\n"


def test_config_from_the_fileserver_and_new_directories_are_owned(project):
    tpl_dir = os.path.join(project.base, "files", "templates")
    os.makedirs(tpl_dir, exist_ok=True)
    name = os.path.basename(project.artifacts) + ".ini.j2"
    with open(os.path.join(tpl_dir, name), "w", encoding="utf-8") as fh:
        fh.write("root = {{ root }}\nsms = {{ pillar['rainbow_secrets']['sms_key'] }}\n")
    project.write_pillar(
        config={"config/node.ini": {"source": f"salt://templates/{name}", "mode": "0600"}},
        files={"extra/deep/note.txt": {"contents": "hello", "mode": "0640"}},
    )
    project.prepare("r1")
    final = project.release_dir("r1")
    with open(os.path.join(final, "config", "node.ini"), encoding="utf-8") as fh:
        assert fh.read() == f"root = {project.root}\nsms = {SECRET}\n"
    assert stat.S_IMODE(os.lstat(os.path.join(final, "config", "node.ini")).st_mode) == 0o600
    # directories created for per-node files are root's too, 0755; the file root's with its mode
    for rel in ("extra", "extra/deep", "extra/deep/note.txt"):
        assert _owner(os.path.join(final, rel)) == (0, 0), rel
    assert stat.S_IMODE(os.lstat(os.path.join(final, "extra")).st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(os.path.join(final, "extra/deep/note.txt")).st_mode) == 0o640


def test_prepare_refreshes_the_minions_pillar_only_when_it_changed(project):
    # switch/activate read the in-memory pillar; prepare compiles it afresh (current secrets) and
    # asks the minion to refresh its in-memory copy only when that differs: a refresh is a second
    # pillar compile on the master for every node (prepare grew with the node count)
    project.prepare("r1")
    assert project.pillar_refreshes == []  # the in-memory pillar is the current one
    project.extra_pillar = {"rainbow_secrets": {"sms_key": "rotated-key"}}
    project.write_pillar(reload=False)
    project.prepare("r2")
    assert project.pillar_refreshes == [{"wait": False}]
    project.prepare("r2")  # nothing done, nothing asked
    assert len(project.pillar_refreshes) == 1


def test_prepare_reads_the_in_memory_pillar_as_the_minion_holds_it(project):
    # a minion's refresh keeps a ``schedule`` key in its in-memory pillar (``{}`` when the pillar has
    # none; the pillar's items with the scheduler's own ``_`` keys): not a change of the pillar
    pillar = project.loaders.opts["pillar"]
    pillar["schedule"] = {}
    project.prepare("r1")
    assert project.pillar_refreshes == []
    project.extra_pillar = {**project.extra_pillar, "schedule": {"job": {"function": "test.ping", "seconds": 60}}}
    project.write_pillar()
    project.loaders.opts["pillar"]["schedule"]["job"]["_next_fire_time"] = 1234
    project.prepare("r2")
    assert project.pillar_refreshes == []
    project.extra_pillar = {**project.extra_pillar, "schedule": {"job": {"function": "test.ping", "seconds": 30}}}
    project.write_pillar(reload=False)
    project.prepare("r3")  # the pillar's schedule changed: refreshed
    assert project.pillar_refreshes == [{"wait": False}]


def test_prepare_renders_with_the_pillar_compiled_now(project):
    # a secret rotated in the pillar files since the minion last refreshed its pillar: prepare
    # compiles the pillar afresh and renders the new value (the in-memory pillar is stale)
    project.extra_pillar = {"rainbow_secrets": {"sms_key": "rotated-key"}}
    project.write_pillar(reload=False)
    assert project.loaders.opts["pillar"]["rainbow_secrets"]["sms_key"] == SECRET  # stale in memory
    project.prepare("r1")
    with open(os.path.join(project.release_dir("r1"), "config", "app.ini"), encoding="utf-8") as fh:
        assert "key = rotated-key\n" in fh.read()


def test_nested_shared_paths_never_touch_shared_data(project):
    # 'storage/logs' under the shared 'storage': the release's storage/logs IS <root>/shared/storage/logs
    project.write_pillar(reload=False, shared=["storage/logs"])
    project.prepare("r1")
    log = project.path("shared", "storage", "logs", "app.log")
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("precious\n")
    project.write_pillar(reload=False, shared=["storage", "storage/logs"])
    with pytest.raises(CommandExecutionError, match="shared path 'storage/logs'"):
        project.prepare("r2")
    with open(log, encoding="utf-8") as fh:
        assert fh.read() == "precious\n"
    assert not os.path.islink(project.path("shared", "storage", "logs"))
    assert project.release_names() == ["r1"] and project.leftovers() == []
