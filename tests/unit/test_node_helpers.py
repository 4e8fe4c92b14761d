"""Pure logic of the node module (_modules/deploy.py): archive screening, names, paths, modes."""

import datetime
import io
import os
import tarfile

import pytest
from salt.exceptions import CommandExecutionError
from saltext_deploy._modules import deploy


def _tar(*members):
    """An in-memory tar archive of (name, type, linkname) members, opened for reading."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            data = b"x" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


F, D, S, H = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize("members", [
    [("public", D, ""), ("public/index.php", F, "")],
    [("./public/index.php", F, ""), (".", D, "")],
    [("public/storage", S, "../storage/app/public")],  # Laravel's storage link
    [("public/a", S, "b"), ("public/b", F, "")],
    [("a/b/c/up", S, "../../.."), ("a/b/c/x", S, "../../../public")],
    [("public/hard", H, "public/index.php"), ("public/index.php", F, "")],
    [("l1", S, "l2"), ("l2", S, "public")],  # a link to a link
    [("weird..name.php", F, ""), ("public/...", F, "")],
])
def test_safe_archives_pass(members):
    with _tar(*members) as tar:
        assert [m.name for m in deploy._safe_members(tar)] == [m[0] for m in members]


@pytest.mark.parametrize("members,message", [
    ([("/etc/passwd", F, "")], "absolute path or '..'"),
    ([("../x", F, "")], "absolute path or '..'"),
    ([("a/../../x", F, "")], "absolute path or '..'"),
    ([("a/..", D, "")], "absolute path or '..'"),
    ([("s", S, "/etc")], "links to '/etc', outside the release"),
    ([("s", S, "..")], "outside the release"),
    ([("a/s", S, "../..")], "outside the release"),
    ([("a/s", S, "../b/../../x")], "outside the release"),
    ([("a/s", S, "./../../x")], "outside the release"),
    ([("h", H, "../x")], "outside the release"),
    ([("a/h", H, "../x")], "outside the release"),  # a hard link's target is relative to the archive root
    ([("h", H, "/etc/shadow")], "outside the release"),
    ([("dev/sda", tarfile.BLKTYPE, "")], "device or fifo"),
    ([("dev/tty", tarfile.CHRTYPE, "")], "device or fifo"),
    ([("fifo", tarfile.FIFOTYPE, "")], "device or fifo"),
    # lexically inside, really outside: each path goes through a symlink of the archive
    ([("0", S, "a/b/d/a/b/d/../../../../../../etc/passwd"), ("a/b/d", S, "../..")], "through the symlink 'a/b/d'"),
    ([("d", S, "."), ("x", S, "d/../y")], "through the symlink 'd'"),
    ([("up", S, "."), ("up/evil.php", F, "")], "goes through the symlink 'up'"),
    ([("up", S, "."), ("up/sub/evil.php", F, "")], "goes through the symlink 'up'"),
    ([("d", S, "."), ("h", H, "d/../x")], "through the symlink 'd'"),
])
def test_unsafe_archives_are_refused(members, message):
    with _tar(*members) as tar, pytest.raises(CommandExecutionError, match=message) as exc:
        deploy._safe_members(tar)
    assert "release refused" in str(exc.value)


def test_one_bad_member_refuses_the_whole_archive():
    members = [("public/index.php", F, "")] * 3 + [("public/evil", S, "/etc/passwd")]
    with _tar(*members) as tar, pytest.raises(CommandExecutionError, match="'public/evil'"):
        deploy._safe_members(tar)


def test_unpack_refuses_before_writing_anything(tmp_path):
    archive = tmp_path / "a.tar"
    with open(archive, "wb") as fh:
        buf = _tar(("public/index.php", F, ""), ("evil", S, "/etc/passwd")).fileobj
        buf.seek(0)
        fh.write(buf.read())
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(CommandExecutionError, match="outside the release"):
        deploy._unpack(str(archive), str(dest))
    assert os.listdir(dest) == []


@pytest.mark.parametrize("name", [
    "rainbow_pro_v1.1.1_master_2016-08-11_12-12_xuliangwei", "r1", "R.1-x_y", "a" * 200, "1",
])
def test_good_release_names(name):
    deploy._check_release(name)


@pytest.mark.parametrize("name", [
    "", " ", "a b", "a/b", "..", "a..b", "../a", ".a", "-a", "_a", "a;b", "$(id)", "`id`", "a|b", "a&b",
    "a\n", "a\nb", "\na", "a\x00b", "a" * 201, "ünï", "switch", None, 7, ["a"], b"a",
    "rainbow_pro_v1.1.1_master_2016-08-11_12:12_xuliangwei",  # ':' as in the article's example
])
def test_bad_release_names(name):
    with pytest.raises(CommandExecutionError, match="invalid release name"):
        deploy._check_release(name)


@pytest.mark.parametrize("name", ["rainbow", "r", "my-app_2", "0app", "a" * 64])
def test_good_project_names(name):
    deploy._check_project(name)


@pytest.mark.parametrize("name", ["", "Rainbow", "-a", "_a", "a.b", "a/b", "..", "a b", "a\n", "a" * 65, None, 1])
def test_bad_project_names(name):
    with pytest.raises(CommandExecutionError, match="invalid project name"):
        deploy._check_project(name)


@pytest.mark.parametrize("path", ["config/app.ini", "a", "a/b/c.d", "a/.hidden", "a/..b"])
def test_good_relpaths(path):
    assert deploy._check_relpath(path, "x") == path


@pytest.mark.parametrize("path", ["", "/a", "../a", "a/../b", "a/./b", "a//b", "a/", ".", "..", None])
def test_bad_relpaths(path):
    with pytest.raises(CommandExecutionError, match="^x "):
        deploy._check_relpath(path, "x")


def test_inside(tmp_path):
    (tmp_path / "rel" / "config").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "rel" / "shared")
    os.symlink("config", tmp_path / "rel" / "cfg")
    base = str(tmp_path / "rel")
    assert deploy._inside(base, "config/app.ini", "x") == os.path.join(base, "config", "app.ini")
    assert deploy._inside(base, "cfg/app.ini", "x") == os.path.join(base, "config", "app.ini")
    with pytest.raises(CommandExecutionError, match="resolves outside the release"):
        deploy._inside(base, "shared/app.ini", "x")


@pytest.mark.parametrize("value,expected", [(None, 0o640), ("0640", 0o640), ("640", 0o640), ("0600", 0o600),
                                            (644, 0o644), ("0", 0), ("777", 0o777)])
def test_modes(value, expected):
    assert deploy._mode(value, 0o640, "x") == expected


@pytest.mark.parametrize("value,message", [("rwx", "not an octal mode"), ("0999", "not an octal mode"),
                                           ("1777", "out of range"), ("-1", "out of range")])
def test_bad_modes(value, message):
    with pytest.raises(CommandExecutionError, match=message):
        deploy._mode(value, 0o640, "config x")


@pytest.mark.parametrize("root", ["relative", "./x", "/", "//", "///", "/tmp/..", "/a/../..", "", None, 5])
def test_project_root_is_checked(root):
    pillar = {"deploy": {"projects": {"rainbow": {"root": root}}}}
    with pytest.raises(CommandExecutionError, match="root"):
        deploy._project("rainbow", pillar)


def test_project_root_is_normalised():
    pillar = {"deploy": {"projects": {"rainbow": {"root": "/data/www/rainbow/", "user": "www"}}}}
    conf = deploy._project("rainbow", pillar)
    assert conf["root"] == "/data/www/rainbow" and conf["user"] == "www"
    # the pillar itself is not modified
    assert pillar["deploy"]["projects"]["rainbow"]["root"] == "/data/www/rainbow/"


@pytest.mark.parametrize("pillar", [{}, {"deploy": None}, {"deploy": {"projects": {}}},
                                    {"deploy": {"projects": {"rainbow": {}}}},
                                    {"deploy": {"projects": {"rainbow": "x"}}}])
def test_undefined_project(pillar):
    with pytest.raises(CommandExecutionError, match="not defined in this node's pillar"):
        deploy._project("rainbow", pillar)


def test_write_json_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    path = str(tmp_path / "meta.json")
    deploy._write_json(path, {"a": 1})
    assert deploy._read_json(path) == {"a": 1}
    loop = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular reference"):
        deploy._write_json(path, {"a": loop})
    assert deploy._read_json(path) == {"a": 1}  # the old content stays
    assert os.listdir(tmp_path) == ["meta.json"]  # and no temporary file is left


def test_write_json_accepts_dates(tmp_path):
    # meta='{time: 2016-08-11 12:12:00}' on the salt command line arrives as a datetime
    path = str(tmp_path / "meta.json")
    deploy._write_json(path, {"time": datetime.datetime(2016, 8, 11, 12, 12)})
    assert deploy._read_json(path) == {"time": "2016-08-11 12:12:00"}


def test_read_json_tolerates_missing_and_corrupt_files(tmp_path):
    assert deploy._read_json(str(tmp_path / "nope.json"), {"d": 1}) == {"d": 1}
    (tmp_path / "bad.json").write_text("{not json")
    assert deploy._read_json(str(tmp_path / "bad.json")) is None
