"""The build (deploy_master.build) through the source interface, on a real git repository; no Salt daemons."""

import os
import subprocess
import tarfile

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import DeployError, build, manifest, source

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Xu Liangwei", "GIT_AUTHOR_EMAIL": "x@example.com",
           "GIT_COMMITTER_NAME": "Xu Liangwei", "GIT_COMMITTER_EMAIL": "x@example.com",
           "GIT_COMMITTER_DATE": "2016-08-11T19:11:05+08:00", "GIT_AUTHOR_DATE": "2016-08-11T19:11:05+08:00"}


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "master")
    (path / "index.php").write_text("<?php echo 'rainbow';")
    os.symlink("index.php", path / "home.php")
    _git(path, "add", ".")
    _git(path, "commit", "-q", "-m", "one")
    _git(path, "tag", "v1.0.0")
    return str(path)


def _opts(tmp_path):
    roots = tmp_path / "file_roots"
    roots.mkdir(exist_ok=True)
    return {"cachedir": str(tmp_path / "cache"), "file_roots": {"base": [str(roots)]}}


def test_build_names_packages_publishes_and_reuses(repo, tmp_path):
    opts, lines = _opts(tmp_path), []
    conf = {"repo": repo, "build": ["echo built > BUILD_$DEPLOY_ENV"]}
    info = build.build(opts, "rainbow", "pro", conf, "master", lines.append)
    assert info["release"] == "rainbow_pro_v1.0.0_master_2016-08-11_11-11-05_Xu-Liangwei"
    assert info["version"] == "v1.0.0" and info["committer"] == "Xu Liangwei" and not info["reused"]
    assert info["time"] == "2016-08-11T19:11:05+08:00" and len(info["commit"]) == 40
    assert info["source"] == f"salt://deploy_artifacts/rainbow/{info['release']}.tar.gz"
    artifact = tmp_path / "file_roots" / "deploy_artifacts" / "rainbow" / f"{info['release']}.tar.gz"
    assert build.sha256(str(artifact)) == info["checksum"]
    # a content archive: the manifest (also beside the artifact), then each content by its sha256
    doc = manifest.read(str(artifact).replace(".tar.gz", ".manifest.json"))
    assert [e[:2] for e in doc["entries"]] == [["BUILD_pro", "f"], ["home.php", "l"], ["index.php", "f"]]
    assert doc["tree"] == info["tree"] == manifest.tree_hash(doc["entries"])
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json" and sorted(names[1:]) == sorted(e[4] for e in doc["entries"] if e[1] == "f")
    assert lines == ["build: echo built > BUILD_$DEPLOY_ENV"]
    again = build.build(opts, "rainbow", "pro", conf, "master", lines.append)
    assert again["reused"] and again["checksum"] == info["checksum"]
    test = build.build(opts, "rainbow", "pro", conf, "v1.0.0", lines.append, test=True)
    assert test["release"].startswith("rainbow_pro_v1.0.0_v1.0.0_") and "source" not in test


def test_unknown_ref_and_failing_build_command(repo, tmp_path):
    opts = _opts(tmp_path)
    with pytest.raises(DeployError, match="git: unknown ref 'nope': not a branch, tag or commit"):
        build.build(opts, "rainbow", "pro", {"repo": repo}, "nope", print)
    with pytest.raises(DeployError, match=r"build command failed \(exit 2\): exit 2"):
        build.build(opts, "rainbow", "pro", {"repo": repo, "build": ["exit 2"]}, "master", print)
    with pytest.raises(DeployError, match="git: cannot fetch /nonexistent"):
        build.build(opts, "rainbow", "pro", {"repo": "/nonexistent"}, "master", print)


def test_a_tree_with_a_link_outside_is_refused_before_packaging(repo, tmp_path):
    os.symlink("../../../../etc", os.path.join(repo, "etc"))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "link out")
    with pytest.raises(DeployError, match=r"archive member 'etc' links to '\.\./\.\./\.\./\.\./etc', outside the release"):
        build.build(_opts(tmp_path), "rainbow", "pro", {"repo": repo}, "master", print)
    assert not os.listdir(tmp_path / "file_roots" / "deploy_artifacts" / "rainbow")


def test_the_source_interface():
    assert source.get() is source.get("git")
    assert issubclass(source.get("git"), source.Source)
    with pytest.raises(SaltInvocationError, match="unknown vcs 'cvs': use one of git"):
        source.get("cvs")


# --- refs: a tag named like the branch

def test_the_envs_branch_is_the_branch_even_if_a_tag_has_its_name(repo, tmp_path):
    opts = _opts(tmp_path)
    branch_head = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "checkout", "-q", "-b", "side")
    with open(os.path.join(repo, "evil.php"), "w", encoding="utf-8") as fh:
        fh.write("<?php // unreviewed")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "unreviewed")
    _git(repo, "tag", "master")  # someone who may push tags, not to the branch
    _git(repo, "checkout", "-q", "master")
    tag_commit = _git(repo, "rev-parse", "refs/tags/master").strip()
    assert tag_commit != branch_head
    info = build.build(opts, "rainbow", "pro", {"repo": repo}, "master", print, test=True, branch=True)
    assert info["commit"] == branch_head and info["branch"] == "master"
    # an explicit short ref that is both: refused, naming the candidates
    with pytest.raises(DeployError, match=r"git: ref 'master' is ambiguous: heads/master \(branch, "
                                          + branch_head[:10] + r"\), tags/master \(tag, " + tag_commit[:10]
                                          + r"\): give one of them"):
        build.build(opts, "rainbow", "pro", {"repo": repo}, "master", print, test=True)
    assert build.build(opts, "rainbow", "pro", {"repo": repo}, "heads/master", print, test=True)["commit"] == branch_head
    tagged = build.build(opts, "rainbow", "pro", {"repo": repo}, "tags/master", print, test=True)
    assert tagged["commit"] == tag_commit and "_tags-master_" in tagged["release"]
    # unambiguous short refs, and commits, resolve as before
    assert build.build(opts, "rainbow", "pro", {"repo": repo}, "side", print, test=True)["commit"] == tag_commit
    assert build.build(opts, "rainbow", "pro", {"repo": repo}, "v1.0.0", print, test=True)["commit"] == branch_head
    assert build.build(opts, "rainbow", "pro", {"repo": repo}, branch_head, print, test=True)["commit"] == branch_head
    # the env's branch must be a branch
    with pytest.raises(DeployError, match="git: unknown branch 'v1.0.0'"):
        build.build(opts, "rainbow", "pro", {"repo": repo}, "v1.0.0", print, test=True, branch=True)


@pytest.mark.parametrize("committer", ["..", "x" * 300])
def test_a_commit_by_an_odd_committer_still_builds_a_name_the_nodes_accept(committer, repo, tmp_path):
    import git
    from saltext_deploy._modules import deploy as node_module

    # git itself refuses such a committer on the command line; gitpython writes the commit as given
    odd = git.Actor(committer, "odd@example.com")
    (tmp_path / "repo" / "odd.txt").write_text("odd")
    r = git.Repo(repo)
    r.index.add(["odd.txt"])
    r.index.commit("odd", author=odd, committer=odd)
    assert r.head.commit.committer.name == committer
    info = build.build(_opts(tmp_path), "rainbow", "pro", {"repo": repo}, "master", print)
    node_module._check_release(info["release"])  # raises if the nodes would refuse it
    assert info["committer"] == committer and os.path.exists(
        tmp_path / "file_roots" / "deploy_artifacts" / "rainbow" / f"{info['release']}.tar.gz")


def test_a_name_too_long_for_the_nodes_is_refused_before_building(repo, tmp_path):
    _git(repo, "branch", "feature-" + "b" * 60)
    opts = _opts(tmp_path)
    with pytest.raises(DeployError, match=r"invalid release name 'p{64}_e{64}_v1.0.0_feature-b{40}_.*: nothing was built"):
        build.build(opts, "p" * 64, "e" * 64, {"repo": repo, "build": ["touch /nonexistent/built"]},
                    "feature-" + "b" * 60, print)
    assert not os.listdir(tmp_path / "file_roots")


def test_two_masters_build_the_same_artifact_from_the_same_commit(repo, tmp_path):
    """Two deployment servers: a release one master prepared on some nodes and the other
    builds again after a take-over must have the same checksum, or the nodes refuse it."""
    one, two = tmp_path / "m1", tmp_path / "m2"
    one.mkdir(), two.mkdir()
    first = build.build(_opts(one), "rainbow", "pro", {"repo": repo}, "master", lambda _l: None)
    import time  # pylint: disable=import-outside-toplevel

    time.sleep(1.1)  # another second: the gzip header's time would differ
    second = build.build(_opts(two), "rainbow", "pro", {"repo": repo}, "master", lambda _l: None)
    assert first["release"] == second["release"] and first["checksum"] == second["checksum"]
    assert first["tree"] == second["tree"]


def test_a_part_holds_only_the_wanted_contents_and_is_the_same_for_the_same_set(repo, tmp_path):
    opts = _opts(tmp_path)
    info = build.build(opts, "rainbow", "pro", {"repo": repo}, "master", print)
    doc = build.manifest_of(opts, "rainbow", info["release"])
    want = [e[4] for e in doc["entries"] if e[0] == "index.php"]
    got = build.part(opts, "rainbow", info, want)
    assert got["source"].startswith(f"salt://deploy_artifacts/rainbow/{info['release']}.part-")
    with tarfile.open(got["path"]) as tar:
        assert tar.getnames() == ["manifest.json"] + want
    assert build.part(opts, "rainbow", info, want) == got
