"""
The project `rainbow` switched to ``vcs: svn`` on the real cluster: a repository made with
``svnadmin create``, served over ``file://`` and by ``svnserve`` on loopback (as www-data, with a
password from pillar); released, re-released, rolled back, and the refusals that change nothing.

Uses the session cluster; the svn repository and svnserve are made once for the module.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from sandbox import repo as sample_repo
from sandbox import web

from .conftest import NODES, WEB
from .test_release import history

# no skip: a missing subversion package must fail here (.ci/run installs it), not hide
assert shutil.which("svnserve"), "needs the Debian package subversion"

PASSWORD = "SVNPASS-3c9e71d2-secret"  # searched for in every output, log and record
_VERSION = [12, 0]  # a major version of its own: tags are shared by every module of the session


def _svn(*args, cwd=None):
    return subprocess.run(["svn", "--non-interactive", "--username", "xuliangwei", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


class SvnRepo:
    """A repository with trunk/, branches/, tags/, and a working copy of trunk to commit from."""

    def __init__(self, work, git_repo):
        self.base = os.path.join(work, "svn")
        self.dir = os.path.join(self.base, "rainbow")
        self.url = "file://" + self.dir
        self.git_repo = git_repo
        os.makedirs(self.base)
        subprocess.run(["svnadmin", "create", self.dir], check=True)
        _svn("mkdir", "-m", "layout", f"{self.url}/trunk", f"{self.url}/branches", f"{self.url}/tags")
        self.wc = tempfile.mkdtemp(prefix="svn-wc-", dir=work)
        _svn("checkout", f"{self.url}/trunk", self.wc)

    def commit(self):
        """A new version of the sample app on trunk (the git sample's tree); returns its version text."""
        _VERSION[1] += 1
        tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
        sample_repo.add_release(self.git_repo, tag)
        tree = os.path.join(tempfile.mkdtemp(prefix="svn-tree-"), "t")
        sample_repo.export_release(self.git_repo, tag, tree)
        shutil.copytree(tree, self.wc, dirs_exist_ok=True)
        shutil.rmtree(os.path.dirname(tree))
        _svn("add", "--force", "--quiet", ".", cwd=self.wc)
        _svn("commit", "-m", f"release {tag}", cwd=self.wc)
        _svn("update", cwd=self.wc)
        return tag[1:]

    def head(self):
        return int(subprocess.run(["svnlook", "youngest", self.dir], check=True, capture_output=True,
                                  text=True).stdout)

    def chown(self, user):
        subprocess.run(["chown", "-R", f"{user}:", self.base], check=True)


@pytest.fixture(scope="module")
def svn_repo(cluster):
    return SvnRepo(cluster.work, cluster.repo)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def svnserve(svn_repo):
    """The same repository behind svnserve on 127.0.0.1, run as www-data, no anonymous access."""
    conf = os.path.join(svn_repo.dir, "conf")
    with open(os.path.join(conf, "passwd"), "w", encoding="utf-8") as fh:
        fh.write(f"[users]\ndeployer = {PASSWORD}\n")
    with open(os.path.join(conf, "svnserve.conf"), "w", encoding="utf-8") as fh:
        fh.write("[general]\nanon-access = none\nauth-access = read\npassword-db = passwd\nrealm = rainbow\n")
    svn_repo.chown("www-data")
    port = _free_port()
    proc = subprocess.Popen(["svnserve", "--foreground", "-d", "--listen-host", "127.0.0.1", "--listen-port",
                             str(port), "-r", svn_repo.base], user="www-data", group="www-data")
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"svn://127.0.0.1:{port}/rainbow"
    proc.terminate()
    proc.wait(10)
    svn_repo.chown("root")


def _use_svn(c, url, **extra):
    # the env names no branch: an svn project's envs default to trunk
    c.set_pillar(project_extra={"vcs": "svn", "repo": url, "envs": {"pro": {"branch": ""}}, **extra})


def _state(c):
    return c.currents(), {n: c.release_dirs(n) for n in NODES}, c.lb_states()


def test_svn_release_rerelease_rollback_and_refusals(clean_cluster, svn_repo):
    c = clean_cluster
    _use_svn(c, svn_repo.url)
    v1 = svn_repo.commit()
    r1 = svn_repo.head()
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    first = ret.data["release"]
    assert first.startswith(f"rainbow_pro_r{r1}_trunk_") and first.endswith("_xuliangwei"), first
    assert (ret.data["ref"], ret.data["commit"], ret.data["version"]) == ("trunk", str(r1), f"r{r1}")
    assert c.currents() == {n: first for n in NODES}
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert all(f"rainbow {v1}" in web.http_get(c.lb.url)[2] for _ in range(4))
    # no VCS metadata in the release
    assert not os.path.exists(os.path.join(c.root("web-1"), "current", ".svn"))
    # re-release of the same revision (by number, too): the artifact and the prepared release are reused
    again = c.run("deploy.release", project="rainbow", env="pro", ref=f"r{r1}")
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.data["release"] == first
    assert "reused" in (again.stdout + again.stderr) and "(0 unpacked)" in (again.stdout + again.stderr)
    # a second revision, then a rollback to the first
    v2 = svn_repo.commit()
    second = c.run("deploy.release", project="rainbow", env="pro")
    assert second.returncode == 0, second.stdout[-3000:]
    assert second.data["release"].startswith(f"rainbow_pro_r{svn_repo.head()}_trunk_")
    assert all(f"rainbow {v2}" in web.http_get(c.lb.url)[2] for _ in range(4))
    back = c.run("deploy.rollback", project="rainbow", env="pro")
    assert back.returncode == 0, back.stdout[-3000:]
    assert back.data["to"] == first
    assert c.currents() == {n: first for n in NODES}
    assert all(f"rainbow {v1}" in web.http_get(c.lb.url)[2] for _ in range(4))
    assert history(c)[-1]["kind"] == "rollback"

    # refusals: an unknown revision, an unknown branch, a bad URL; nothing changes on the nodes
    before = _state(c)
    records = len(history(c))
    for ref, message in ((f"r{svn_repo.head() + 50}", "svn: unknown revision"),
                         ("branches/nope", "svn: unknown ref: no folder branches/nope")):
        bad = c.run("deploy.release", project="rainbow", env="pro", ref=ref)
        assert bad.returncode == 2  # bad input
        assert message in bad.data["error"], bad.data
        assert _state(c) == before
    _use_svn(c, "file:///nonexistent/svn/rainbow")
    bad = c.run("deploy.release", project="rainbow", env="pro")
    assert bad.returncode == 1
    assert "svn: cannot read file:///nonexistent/svn/rainbow" in bad.data["error"], bad.data
    assert _state(c) == before
    _use_svn(c, "ftp://example.invalid/rainbow")
    bad = c.run("deploy.release", project="rainbow", env="pro")
    assert bad.returncode == 1 and "bad repo URL" in bad.data["error"]
    assert _state(c) == before
    assert all(r["result"] != "success" for r in history(c)[records:])


def test_svnserve_with_a_password_from_pillar(clean_cluster, svn_repo, svnserve):
    c = clean_cluster
    v = svn_repo.commit()
    outputs = []
    _use_svn(c, svnserve, svn={"username": "deployer", "password": PASSWORD})
    ret = c.run("deploy.release", project="rainbow", env="pro")
    outputs.append(ret.stdout + ret.stderr)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert ret.data["release"].startswith(f"rainbow_pro_r{svn_repo.head()}_trunk_")
    assert "built" in (ret.stdout + ret.stderr)  # exported over svn://, not reused
    assert all(f"rainbow {v}" in web.http_get(c.lb.url)[2] for _ in range(4))
    before = _state(c)
    for creds in ({"username": "deployer", "password": "not-" + PASSWORD}, {}):
        _use_svn(c, svnserve, svn=creds)
        bad = c.run("deploy.release", project="rainbow", env="pro")
        outputs.append(bad.stdout + bad.stderr)
        assert bad.returncode == 1
        assert f"svn: authentication failed for {svnserve}" in bad.data["error"], bad.data
        assert _state(c) == before
    # the password is nowhere: salt-run's output and errors, the master's log, history, locks,
    # the master's record, artifacts, the nodes' release metadata
    for text in outputs:
        assert PASSWORD not in text
    files = [c.master.config["log_file"]]
    for top in (c.state_dir, *c.master.config["file_roots"]["base"], os.path.join(c.work, "nodes")):
        files += [p for p in glob.glob(os.path.join(top, "**"), recursive=True) if os.path.isfile(p)]
    hits = []
    for path in files:
        with open(path, "rb") as fh:
            if PASSWORD.encode() in fh.read():
                hits.append(path)
    assert not hits
