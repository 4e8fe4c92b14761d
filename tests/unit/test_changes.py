"""deploy_master.changes: what a release would change (commits, config keys), never a value."""

import subprocess

import pytest
from deploy_master import changes
from deploy_master.source import Revision
from deploy_master.source.git import GitSource


def test_config_keys_by_section_and_form():
    text = "# comment\n[db]\nhost = a\nport: 5432\n\n[app]\nexport TOKEN=x\nname = y\n; other\n"
    assert sorted(changes.config_keys(text)) == ["app.TOKEN", "app.name", "db.host", "db.port"]


def test_changed_keys_names_keys_never_values():
    old = "[db]\nhost = old-host\npassword = hunter2\nkeep = 1\n"
    new = "[db]\nhost = new-host\npassword = hunter2\nkeep = 1\nport = 5432\n"
    out = changes.changed_keys(old, new)
    assert out == {"added": ["db.port"], "removed": [], "changed": ["db.host"]}
    text = repr(out)
    assert "old-host" not in text and "new-host" not in text and "hunter2" not in text and "5432" not in text
    assert changes.changed_keys(None, "a = 1") == {"added": ["a"], "removed": [], "changed": []}


def test_config_sources_skip_salt_urls():
    conf = {"config": {"config/app.ini": {"source": "config/app.ini.example"},
                       "config/x.ini": {"source": "salt://x.ini"}, "config/y": "bad"}}
    assert changes.config_sources(conf) == {"config/app.ini": "config/app.ini.example"}


def _git(repo, *args):
    env = {"GIT_AUTHOR_NAME": "ann", "GIT_AUTHOR_EMAIL": "a@x", "GIT_COMMITTER_NAME": "ann",
           "GIT_COMMITTER_EMAIL": "a@x", "HOME": str(repo), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q", "-b", "master")
    (tmp_path / "app.ini.example").write_text("[db]\nhost = a\npassword = s3cret\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    first = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "app.ini.example").write_text("[db]\nhost = b\npassword = s3cret\ntimeout = 3\n")
    _git(tmp_path, "commit", "-qam", "db host and timeout")
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "<b>markup</b> subject")
    last = _git(tmp_path, "rev-parse", "HEAD")
    return tmp_path, first, last


def test_compare_git_groups_nodes_by_their_commit(repo, tmp_path_factory):
    path, first, last = repo
    opts = {"cachedir": str(tmp_path_factory.mktemp("cache"))}
    conf = {"repo": str(path), "config": {"config/app.ini": {"source": "app.ini.example"}}}
    src = GitSource(opts, "rainbow", conf)
    target = src.resolve("master", branch=True)
    assert isinstance(target, Revision) and target.id == last
    out = changes.compare(src, conf, target, {"web-1": first, "web-2": first, "web-3": last, "new-1": None})
    groups = {tuple(g["nodes"]): g for g in out["groups"]}
    behind = groups[("web-1", "web-2")]
    assert [c["subject"] for c in behind["commits"]] == ["<b>markup</b> subject", "db host and timeout"]
    assert behind["reverted"] == []
    assert behind["config"] == [{"file": "config/app.ini", "source": "app.ini.example", "added": ["db.timeout"],
                                 "removed": [], "changed": ["db.host"]}]
    same = groups[("web-3",)]
    assert same["commits"] == [] and same["config"] == []
    fresh = groups[("new-1",)]
    assert fresh["config"][0]["new"] is True and fresh["config"][0]["added"] == ["db.host", "db.password", "db.timeout"]
    assert "s3cret" not in repr(out)
    # releasing an older commit: the newer ones are what it takes away
    older = Revision(id=first, version="x", author="ann", time=target.time, branch="master")
    back = changes.compare(src, conf, older, {"web-1": last})["groups"][0]
    assert back["commits"] == [] and len(back["reverted"]) == 2
    assert back["config"][0]["removed"] == ["db.timeout"]


def test_compare_unknown_current_commit(repo, tmp_path_factory):
    path, _, _ = repo
    conf = {"repo": str(path)}
    src = GitSource({"cachedir": str(tmp_path_factory.mktemp("cache"))}, "rainbow", conf)
    target = src.resolve("master", branch=True)
    group = changes.compare(src, conf, target, {"web-1": "0" * 40})["groups"][0]
    assert group["unknown"] is True and group["commits"] == []
