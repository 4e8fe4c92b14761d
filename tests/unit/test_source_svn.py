"""The svn source (deploy_master.source.svn) on real repositories: ``svnadmin create`` served over
``file://``, and ``svnserve`` on loopback with a password for the credentials; no Salt daemons."""

import datetime
import os
import shutil
import socket
import subprocess
import time

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import DeployError, build, config, names, source

# no skip: a missing subversion package must fail here (.ci/run installs it), not hide
assert shutil.which("svnadmin") and shutil.which("svnserve"), "needs the Debian package subversion"

PASSWORD = "Pa55-w0rd-never-shown"


def _svn(*args, cwd=None):
    return subprocess.run(["svn", "--non-interactive", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def _set_date(repo_dir, rev, when):
    path = os.path.join(repo_dir, f"date-{rev}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(when)
    subprocess.run(["svnadmin", "setrevprop", repo_dir, "-r", str(rev), "svn:date", path], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def svnrepo(tmp_path_factory):
    """r1 trunk (index.php, a link), r2 branches/, tags/, r3 tags/v1.0 (copy of trunk@1),
    r4 a trunk change, r5 a branch change, r6 branches/stable."""
    base = tmp_path_factory.mktemp("svn")
    repo_dir = str(base / "repo")
    subprocess.run(["svnadmin", "create", repo_dir], check=True)
    url = "file://" + repo_dir
    src = base / "import"
    (src / "trunk" / "public").mkdir(parents=True)
    (src / "trunk" / "public" / "index.php").write_text("<?php echo 'rainbow v1';")
    os.symlink("public/index.php", src / "trunk" / "home.php")
    _svn("import", "-m", "one", "--username", "xuliangwei", str(src), url)
    _svn("mkdir", "-m", "layout", "--username", "xuliangwei", f"{url}/branches", f"{url}/tags")
    _svn("copy", "-m", "tag", "--username", "xuliangwei", f"{url}/trunk@1", f"{url}/tags/v1.0")
    wc = base / "wc"
    _svn("checkout", f"{url}/trunk", str(wc))
    (wc / "public" / "index.php").write_text("<?php echo 'rainbow v2';")
    _svn("commit", "-m", "two", "--username", "alice", cwd=wc)
    _svn("copy", "-m", "branch", "--username", "bob", f"{url}/trunk", f"{url}/branches/stable")
    _set_date(repo_dir, 1, "2016-08-11T11:11:05.000000Z")
    _set_date(repo_dir, 4, "2016-08-12T10:00:00.000000Z")
    return {"dir": repo_dir, "url": url, "base": base}


def _src(tmp_path, repo, **svn):
    conf = {"repo": repo, "vcs": "svn"}
    if svn:
        conf["svn"] = svn
    return source.get("svn")({"cachedir": str(tmp_path)}, "rainbow", conf)


def test_registered():
    assert "svn" in source.KINDS
    assert source.get("svn").kind == "svn"
    assert source.get(None).kind == "git"  # git stays the default


def test_resolve_paths_and_revisions(tmp_path, svnrepo):
    src = _src(tmp_path, svnrepo["url"])
    trunk = src.resolve("trunk")
    assert (trunk.id, trunk.version, trunk.author, trunk.branch) == ("4", "r4", "alice", "trunk")
    assert trunk.time == datetime.datetime(2016, 8, 12, 10, 0, tzinfo=datetime.timezone.utc)
    # a revision number is that revision of trunk; the revision that last changed trunk names it
    for ref in ("r1", "1", "r2", "3"):
        rev = src.resolve(ref)
        assert (rev.id, rev.version, rev.author, rev.branch) == ("1", "r1", "xuliangwei", "trunk"), ref
    assert src.resolve("r5").id == "4"  # r5 changed branches/ only
    tag = src.resolve("tags/v1.0")
    assert (tag.id, tag.version, tag.branch) == ("3", "r3", "tags/v1.0")
    branch = src.resolve("branches/stable")
    assert (branch.id, branch.author, branch.branch) == ("5", "bob", "branches/stable")
    name = names.release_name("rainbow", "pro", src.resolve("r1"))
    assert name == "rainbow_pro_r1_trunk_2016-08-11_11-11-05_xuliangwei"
    assert names.release_name("rainbow", "pro", branch).split("_")[3] == "branches-stable"


def test_export(tmp_path, svnrepo):
    src = _src(tmp_path, svnrepo["url"])
    for ref, text in (("r1", "v1"), ("trunk", "v2"), ("tags/v1.0", "v1")):
        dest = tmp_path / ref.replace("/", "-")
        dest.mkdir()
        src.export(src.resolve(ref), str(dest))
        assert sorted(os.listdir(dest)) == ["home.php", "public"]  # no .svn
        assert (dest / "public" / "index.php").read_text() == f"<?php echo 'rainbow {text}';"
        assert os.readlink(dest / "home.php") == "public/index.php"


def test_export_of_a_subdir_holds_only_that_folder(tmp_path, svnrepo):
    src = source.get("svn")({"cachedir": str(tmp_path)}, "rainbow",
                            {"repo": svnrepo["url"], "vcs": "svn", "subdir": "public"})
    rev = src.resolve("tags/v1.0")
    assert rev.version == "r3"  # the version is the repository's, not the folder's
    dest = tmp_path / "sub"
    dest.mkdir()
    src.export(rev, str(dest))
    assert sorted(os.listdir(dest)) == ["index.php"]
    missing = source.get("svn")({"cachedir": str(tmp_path)}, "rainbow",
                                {"repo": svnrepo["url"], "vcs": "svn", "subdir": "nope"})
    other = tmp_path / "none"
    other.mkdir()
    with pytest.raises(DeployError, match="nope"):
        missing.export(missing.resolve("trunk"), str(other))


def test_refusals_name_what_is_wrong(tmp_path, svnrepo):
    src = _src(tmp_path, svnrepo["url"])
    with pytest.raises(DeployError, match=r"svn: unknown revision: trunk@r999 of file://.*: No such revision 999"):
        src.resolve("r999")
    with pytest.raises(DeployError, match=r"svn: unknown ref: no folder branches/nope@HEAD in file://"):
        src.resolve("branches/nope")
    with pytest.raises(DeployError, match=r"is a file"):
        src.resolve("trunk/public/index.php")
    with pytest.raises(DeployError, match=r"svn: cannot read file:///nonexistent/repo \(trunk@HEAD\): Unable to connect"):
        _src(tmp_path, "file:///nonexistent/repo").resolve("trunk")
    with pytest.raises(DeployError, match=r"bad repo URL 'ftp://x/y'"):
        _src(tmp_path, "ftp://x/y")
    with pytest.raises(DeployError, match=r"no '@'"):
        _src(tmp_path, svnrepo["url"] + "@3")


def test_export_refuses_a_link_out_of_the_tree(tmp_path, svnrepo):
    base = tmp_path / "evil"
    base.mkdir()
    repo_dir = str(base / "repo")
    subprocess.run(["svnadmin", "create", repo_dir], check=True)
    (base / "import" / "trunk").mkdir(parents=True)
    os.symlink("/etc/shadow", base / "import" / "trunk" / "leak")
    _svn("import", "-m", "x", str(base / "import"), "file://" + repo_dir)
    src = _src(tmp_path, "file://" + repo_dir)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DeployError, match="leak"):
        src.export(src.resolve("trunk"), str(dest))
    assert os.listdir(dest) == []


def test_build_reuses_by_revision(tmp_path, svnrepo):
    """The build module with an svn project: artifact per revision, reused, git untouched."""
    roots = tmp_path / "roots"
    roots.mkdir()
    opts = {"cachedir": str(tmp_path / "cache"), "file_roots": {"base": [str(roots)]}}
    conf = {"repo": svnrepo["url"], "vcs": "svn", "build": ["echo built > BUILT"]}
    lines = []
    first = build.build(opts, "rainbow", "pro", conf, "trunk", lines.append)
    assert first["release"] == "rainbow_pro_r4_trunk_2016-08-12_10-00-00_alice"
    assert (first["commit"], first["version"], first["branch"], first["reused"]) == ("4", "r4", "trunk", False)
    again = build.build(opts, "rainbow", "pro", conf, "r5", lines.append)  # r5: trunk unchanged since r4
    assert again["release"] == first["release"] and again["reused"] is True
    doc = build.manifest_of(opts, "rainbow", first["release"])  # beside the content archive
    assert [e[0] for e in doc["entries"]] == ["BUILT", "home.php", "public", "public/index.php"]


def test_config_vcs(tmp_path):
    pillar = {"deploy": {"projects": {"p": {"repo": "file:///x", "vcs": "svn", "root": "/srv/p",
                                             "envs": {"pro": {"target": "*"}, "dev": {"target": "*", "branch": "branches/dev"}}}}}}
    assert config.project_env(pillar, "p", "pro")[1]["branch"] == "trunk"
    assert config.project_env(pillar, "p", "dev")[1]["branch"] == "branches/dev"
    assert "branch" not in pillar["deploy"]["projects"]["p"]["envs"]["pro"]  # the pillar is not changed
    pillar["deploy"]["projects"]["p"]["vcs"] = "cvs"
    with pytest.raises(SaltInvocationError, match="unknown vcs 'cvs': use one of git, svn"):
        config.project_env(pillar, "p", "pro")
    del pillar["deploy"]["projects"]["p"]["vcs"]
    assert "branch" not in config.project_env(pillar, "p", "pro")[1]  # git: the runner's default as before


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def svnserve(svnrepo):
    """The same repository behind svnserve on loopback: no anonymous access, user alice."""
    conf = os.path.join(svnrepo["dir"], "conf")
    with open(os.path.join(conf, "passwd"), "w", encoding="utf-8") as fh:
        fh.write(f"[users]\nalice = {PASSWORD}\n")
    with open(os.path.join(conf, "svnserve.conf"), "w", encoding="utf-8") as fh:
        fh.write("[general]\nanon-access = none\nauth-access = read\npassword-db = passwd\nrealm = rainbow\n")
    port = _free_port()
    proc = subprocess.Popen(["svnserve", "--foreground", "-d", "--listen-host", "127.0.0.1",
                             "--listen-port", str(port), "-r", str(svnrepo["base"])])
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"svn://127.0.0.1:{port}/repo"
    proc.terminate()
    proc.wait(10)


def test_credentials_from_pillar(tmp_path, svnserve, capfd):
    src = _src(tmp_path, svnserve, username="alice", password=PASSWORD)
    rev = src.resolve("tags/v1.0")
    assert (rev.id, rev.version) == ("3", "r3")
    dest = tmp_path / "out"
    dest.mkdir()
    src.export(rev, str(dest))
    assert (dest / "public" / "index.php").read_text() == "<?php echo 'rainbow v1';"
    errors = []
    for bad in ({}, {"username": "alice", "password": "wrong-" + PASSWORD}, {"username": "mallory", "password": PASSWORD}):
        with pytest.raises(DeployError, match=r"svn: authentication failed for svn://127\.0\.0\.1") as exc:
            _src(tmp_path, svnserve, **bad).resolve("trunk")
        errors.append(str(exc.value))
    out = capfd.readouterr()
    for text in (*errors, out.out, out.err):
        assert PASSWORD not in text
    # nothing was left behind: no auth cache under the master user's home or the temp dir
    home = os.path.expanduser("~/.subversion/auth/svn.simple")
    if os.path.isdir(home):
        for name in os.listdir(home):
            with open(os.path.join(home, name), encoding="utf-8", errors="replace") as fh:
                assert PASSWORD not in fh.read()


def test_password_not_in_argv(tmp_path, svnserve, monkeypatch):
    """What the svn process gets: the password on stdin only, never argv or environment."""
    seen = []
    real = subprocess.run

    def spy(argv, **kwargs):
        seen.append((argv, kwargs.get("env"), kwargs.get("input")))
        return real(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    src = _src(tmp_path, svnserve, username="alice", password=PASSWORD)
    src.resolve("trunk")
    assert seen
    for argv, env, stdin in seen:
        assert not any(PASSWORD in a for a in argv) and "alice" not in argv
        assert not any(PASSWORD in v for v in env.values())
        assert stdin == PASSWORD + "\n"
    for url in (svnserve.replace("svn://", f"svn://alice:{PASSWORD}@"), f"ftp://alice:{PASSWORD}@host/x"):
        with pytest.raises(DeployError, match="holds a password") as exc:
            _src(tmp_path, url)
        assert PASSWORD not in str(exc.value)
