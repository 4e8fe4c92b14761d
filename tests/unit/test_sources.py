"""Releases from a subfolder, with git submodules, and from an artifact built elsewhere: the build on real
git repositories and real archives (deploy_master.build through the source interface); no Salt daemons."""

import hashlib
import io
import os
import tarfile
import zipfile

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import DeployError, UnknownRef, build, manifest, source
from deploy_master.source import artifact, submodules

from tests.unit.test_build import _git, _opts


def _entries(info, tmp_path):
    path = tmp_path / "file_roots" / "deploy_artifacts" / "rainbow" / f"{info['release']}.manifest.json"
    return {e[0]: e for e in manifest.read(str(path))["entries"]}


def _commit(path, message="one"):
    _git(path, "add", ".")
    _git(path, "commit", "-q", "-m", message)
    return _git(path, "rev-parse", "HEAD").strip()


@pytest.fixture
def mono(tmp_path):
    """A monorepo: web/ (the site) and api/ beside it; tag v2.0.0."""
    path = tmp_path / "git" / "mono"
    (path / "web" / "public").mkdir(parents=True)
    (path / "api").mkdir()
    _git(path, "init", "-q", "-b", "master")
    (path / "web" / "public" / "index.php").write_text("<?php echo 'web';")
    (path / "api" / "main.py").write_text("print('api')")
    (path / "README").write_text("mono")
    _commit(path)
    _git(path, "tag", "v2.0.0")
    return path


def test_subdir_releases_only_that_folder_with_the_repository_version(mono, tmp_path):
    info = build.build(_opts(tmp_path), "rainbow", "pro", {"repo": str(mono), "subdir": "web"}, "master", print)
    assert set(_entries(info, tmp_path)) == {"public", "public/index.php"}
    assert info["version"] == "v2.0.0"


@pytest.mark.parametrize("bad", ["../web", "/web", "web/../../x", "a:b"])
def test_subdir_that_could_leave_the_repository_is_refused(mono, tmp_path, bad):
    with pytest.raises(DeployError, match="subdir"):
        build.build(_opts(tmp_path), "rainbow", "pro", {"repo": str(mono), "subdir": bad}, "master", print)


def test_subdir_missing_at_the_commit_is_named(mono, tmp_path):
    with pytest.raises(DeployError, match="subdir 'nope' is not a folder"):
        build.build(_opts(tmp_path), "rainbow", "pro", {"repo": str(mono), "subdir": "nope"}, "master", print)


@pytest.fixture
def with_modules(tmp_path):
    """app (tag v1.0.0) with lib/ a submodule at a pinned commit (lib moved on after it), and lib with
    its own nested submodule vendor/."""
    base = tmp_path / "git"
    vendor, lib, app = base / "vendor.git", base / "lib.git", base / "app.git"
    for path in (vendor, lib, app):
        path.mkdir(parents=True)
        _git(path, "init", "-q", "-b", "master")
    (vendor / "v.txt").write_text("vendor one")
    _commit(vendor)
    (lib / "lib.php").write_text("lib one")
    _git(lib, "-c", "protocol.file.allow=always", "submodule", "add", "-q", "../vendor.git", "vendor")
    pinned = _commit(lib)
    (app / "index.php").write_text("app")
    _git(app, "-c", "protocol.file.allow=always", "submodule", "add", "-q", "../lib.git", "lib")
    _commit(app)
    _git(app, "tag", "v1.0.0")
    (lib / "lib.php").write_text("lib two: not released")
    _commit(lib, "two")
    return {"app": str(app), "pinned": pinned}


def test_submodules_are_left_out_unless_asked(with_modules, tmp_path):
    info = build.build(_opts(tmp_path), "rainbow", "pro", {"repo": with_modules["app"]}, "v1.0.0", print)
    assert "lib/lib.php" not in _entries(info, tmp_path)


def test_submodules_at_the_commits_the_tree_records_nested_too(with_modules, tmp_path):
    conf = {"repo": with_modules["app"], "submodules": True}
    info = build.build(_opts(tmp_path), "rainbow", "pro", conf, "v1.0.0", print)
    entries = _entries(info, tmp_path)
    assert {"index.php", "lib/lib.php", "lib/vendor/v.txt"} <= set(entries)
    assert entries["lib/lib.php"][4] == hashlib.sha256(b"lib one").hexdigest()
    assert not any(name == ".git" or name.endswith("/.git") or "/.git/" in name for name in entries)


def test_a_submodule_url_elsewhere_is_refused_before_anything_is_fetched(with_modules, tmp_path):
    app = with_modules["app"]
    _git(app, "config", "-f", ".gitmodules", "submodule.lib.url", "https://evil.example.com/lib.git")
    _commit(app, "elsewhere")
    with pytest.raises(DeployError, match="submodule 'lib': its url is neither relative nor on the repository's host"):
        build.build(_opts(tmp_path), "rainbow", "pro", {"repo": app, "submodules": True}, "master", print)


@pytest.mark.parametrize("url, ok", [
    ("ext::sh -c touch% /tmp/pwned", False), ("-uhelp", False), ("https://git.example.com/org/lib.git", True),
    ("https://other.example.com/lib.git", False), ("ssh://git.example.com/lib.git", False),
])
def test_submodule_url_rule(url, ok):
    check = lambda: submodules.check_url(url, "https://git.example.com/org/app.git", [], "lib")  # noqa: E731
    if ok:
        check()
    else:
        with pytest.raises(DeployError):
            check()
    submodules.check_url("ssh://git.example.com/lib.git", "https://git.example.com/org/app.git",
                         ["ssh://git.example.com/"], "lib")


def test_relative_submodule_urls_resolve_as_git_does():
    assert submodules.absolute("../lib.git", "https://h/org/app.git") == "https://h/org/lib.git"
    assert submodules.absolute("./lib.git", "/srv/git/app.git") == "/srv/git/app.git/lib.git"
    assert submodules.absolute("../../x.git", "/srv/git/app.git") == "/srv/x.git"


# --------------------------------------------------------------------------- artifacts


def _tar_gz(files):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zip(files, links=()):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return out.getvalue()


@pytest.fixture
def drop(tmp_path):
    folder = tmp_path / "ci-drop"
    folder.mkdir()

    def put(name, data):
        (folder / name).write_bytes(data)
        return str(folder / name), hashlib.sha256(data).hexdigest()

    put.folder = str(folder)
    return put


def _artifact_opts(tmp_path, drop):
    return {**_opts(tmp_path), "deploy_artifact_dirs": [drop.folder]}


def test_a_tar_gz_artifact_is_released_by_its_version(drop, tmp_path):
    url, digest = drop("rainbow-1.4.2.tar.gz", _tar_gz({"public/index.php": b"<?php echo 1;", "VERSION": b"1.4.2"}))
    conf, ref = artifact.from_arguments({"repo": "unused", "build": ["false"]}, None, url, digest, "1.4.2")
    info = build.build(_artifact_opts(tmp_path, drop), "rainbow", "pro", conf, ref, print)
    assert info["release"].startswith("rainbow_pro_1.4.2_artifact_") and info["commit"] == digest
    assert {"public/index.php", "VERSION"} <= set(_entries(info, tmp_path))  # the build commands did not run


def test_a_war_is_unpacked_as_tomcat_would(drop, tmp_path):
    url, digest = drop("shop.war", _zip({"index.jsp": b"<%= 1 %>", "WEB-INF/web.xml": b"<web-app/>"}))
    conf = {"vcs": "artifact", "artifact": {"url": url, "sha256": digest}}
    info = build.build(_artifact_opts(tmp_path, drop), "rainbow", "pro", conf, "2.0", print)
    assert {"index.jsp", "WEB-INF/web.xml"} <= set(_entries(info, tmp_path))


def test_a_mismatching_artifact_is_refused_as_bad_input_and_not_kept(drop, tmp_path):
    url, digest = drop("a.tar.gz", _tar_gz({"x": b"1"}))
    conf = {"vcs": "artifact", "artifact": {"url": url, "sha256": "0" * 64}}
    with pytest.raises(UnknownRef, match="does not match sha256"):
        build.build(_artifact_opts(tmp_path, drop), "rainbow", "pro", conf, "1.0", print)
    assert not os.listdir(tmp_path / "cache" / "deploy" / "artifact" / "rainbow")
    assert not os.path.exists(tmp_path / "file_roots" / "deploy_artifacts" / "rainbow") or not os.listdir(
        tmp_path / "file_roots" / "deploy_artifacts" / "rainbow")


def test_a_file_outside_the_allowed_folders_is_refused(drop, tmp_path):
    secret = tmp_path / "secret.tar.gz"
    secret.write_bytes(_tar_gz({"x": b"1"}))
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    conf = {"vcs": "artifact", "artifact": {"url": str(secret), "sha256": digest}}
    with pytest.raises(SaltInvocationError, match="deploy_artifact_dirs"):
        build.build(_artifact_opts(tmp_path, drop), "rainbow", "pro", conf, "1.0", print)


@pytest.mark.parametrize("files, links, match", [
    ({"../evil.php": b"x"}, (), "unsafe"),
    ({"/etc/cron.d/x": b"x"}, (), "unsafe"),
    ({"ok": b"x"}, ("public/link",), "link or special file"),
])
def test_an_unsafe_zip_is_refused_whole(drop, tmp_path, files, links, match):
    url, digest = drop("bad.zip", _zip(files, links))
    conf = {"vcs": "artifact", "artifact": {"url": url, "sha256": digest}}
    with pytest.raises(DeployError, match=match):
        build.build(_artifact_opts(tmp_path, drop), "rainbow", "pro", conf, "1.0", print)


def test_an_artifact_above_max_bytes_is_refused(drop, tmp_path):
    url, digest = drop("big.tar.gz", _tar_gz({"big": b"0" * 4096}))
    conf = {"vcs": "artifact", "artifact": {"url": url, "sha256": digest, "max_bytes": 1024}}
    with pytest.raises(DeployError, match="max_bytes"):
        build.build(_artifact_opts(tmp_path, drop), "rainbow", "pro", conf, "1.0", print)


@pytest.mark.parametrize("args, match", [
    ({"artifact": "https://ci/x.tgz", "sha256": "abc", "version": "1"}, "64 hex digits"),
    ({"artifact": "http://ci/x.tgz", "sha256": "a" * 64, "version": "1"}, "https://"),
    ({"artifact": "x.tgz", "sha256": "a" * 64, "version": "1"}, "absolute path"),
    ({"artifact": "https://ci/x.tgz", "sha256": "a" * 64}, "version="),
    ({"version": "1"}, "artifact= and sha256="),
    ({"artifact": "https://ci/x.tgz", "sha256": 1234, "version": "1"}, "quote it"),
])
def test_artifact_arguments_are_checked_before_anything(args, match):
    with pytest.raises(SaltInvocationError, match=match):
        artifact.from_arguments({"repo": "r"}, None, **args)


def test_a_vcs_artifact_project_needs_a_version():
    with pytest.raises(SaltInvocationError, match="version="):
        artifact.from_arguments({"vcs": "artifact", "artifact": {"url": "/x", "sha256": "a" * 64}}, None)
    assert source.get("artifact") is artifact.ArtifactSource
