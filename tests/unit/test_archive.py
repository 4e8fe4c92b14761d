"""The master's unpack of the repository's tree (deploy_master.archive).

The master used to unpack ``git archive`` with only the stdlib ``data`` filter, which
Python 3.11.7 lets a crafted archive bypass (CVE-2025-4517: symlinks whose expansion exceeds
PATH_MAX stop ``os.path.realpath``; a hard link and a file through them land outside the
destination).  The master now runs the nodes' own member checks first.
"""

import io
import os
import tarfile

import pytest
from salt.exceptions import CommandExecutionError
from deploy_master import DeployError, archive
from saltext_deploy._modules import deploy as node_module


def _add(tar, name, kind="file", target=None, data=b"x"):
    info = tarfile.TarInfo(name)
    if kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o777
        tar.addfile(info)
    elif kind == "sym":
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)
    elif kind == "hard":
        info.type, info.linkname = tarfile.LNKTYPE, target
        tar.addfile(info)
    elif kind == "dev":
        info.type = tarfile.CHRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _realpath_limit_attack(path, dest):
    """The archive of CPython's test_realpath_limit_attack (CVE-2025-4517), for ``dest``."""
    steps = "abcdefghijklmnop"
    max_path = os.pathconf(os.path.dirname(dest), "PC_PATH_MAX")
    component = "d" * ((max_path - len(dest) - 1) // (len(steps) + 1))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        here = ""
        for step in steps:
            _add(tar, os.path.join(here, component), "dir")
            _add(tar, os.path.join(here, step), "sym", component)
            here = os.path.join(here, component)
        linkpath = os.path.join(*steps, "l" * 254)
        _add(tar, linkpath, "sym", os.path.join(*[".."] * len(steps)))
        _add(tar, "escape", "sym", os.path.join(linkpath, ".."))
        _add(tar, "flaglink", "hard", os.path.join("escape", "flag"))
        _add(tar, "flaglink", data=b"overwritten")
        _add(tar, "escape/newfile", data=b"new")


def test_a_tree_that_escapes_the_data_filter_is_refused_and_nothing_is_written(tmp_path):
    outer = tmp_path / "build"
    dest = outer / "src"
    dest.mkdir(parents=True)
    (outer / "flag").write_text("original")
    tar = str(tmp_path / "git.tar")
    _realpath_limit_attack(tar, str(dest))
    with pytest.raises(DeployError, match=r"archive member '.*' (goes through|links to .* through) the symlink"):
        archive.unpack(tar, str(dest))
    assert (outer / "flag").read_text() == "original"
    assert not (outer / "newfile").exists()
    assert os.listdir(dest) == []


def _tar(path, *members):
    with tarfile.open(path, "w") as tar:
        for member in members:
            _add(tar, *member)
    return path


UNSAFE = [
    ([("/etc/x",)], "absolute path or '..'"),
    ([("a/../../x",)], "absolute path or '..'"),
    ([("lib", "sym", "/etc")], "outside the release"),
    ([("lib", "sym", "../..")], "outside the release"),
    ([("lib", "sym", "sub"), ("lib/x",)], "goes through the symlink 'lib'"),
    ([("a", "dir"), ("a/b", "sym", ".."), ("c", "sym", "a/b/../..")], "through the symlink 'a/b'"),
    ([("h", "hard", "/etc/passwd")], "outside the release"),
    ([("dev", "dev")], "device or fifo"),
]


@pytest.mark.parametrize("members,message", UNSAFE)
def test_unsafe_members_are_refused_with_their_name(members, message, tmp_path):
    dest = tmp_path / "src"
    dest.mkdir()
    tar = _tar(str(tmp_path / "t.tar"), ("ok.txt",), *members)
    with pytest.raises(DeployError, match=message):
        archive.unpack(tar, str(dest))
    assert os.listdir(dest) == []  # refused before anything was written


def test_a_normal_tree_is_unpacked(tmp_path):
    dest = tmp_path / "src"
    dest.mkdir()
    tar = _tar(str(tmp_path / "t.tar"), ("public", "dir"), ("public/index.php",), ("current", "sym", "public"),
               ("lib/a", "sym", "../public/index.php"))
    archive.unpack(tar, str(dest))
    assert (dest / "public" / "index.php").read_bytes() == b"x" and os.readlink(dest / "current") == "public"


@pytest.mark.parametrize("members", [m for m, _ in UNSAFE] + [[("ok", "dir"), ("ok/a",), ("l", "sym", "ok/a")]])
def test_the_master_refuses_exactly_what_the_nodes_refuse(members, tmp_path):
    tar = _tar(str(tmp_path / "t.tar"), *members)

    def refuses(check, error):
        with tarfile.open(tar) as fh:
            try:
                check(fh)
                return None
            except error as exc:
                return str(exc)

    master, node = refuses(archive.safe_members, DeployError), refuses(node_module._safe_members, CommandExecutionError)
    assert master == node
