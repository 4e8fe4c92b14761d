"""
The pillar contract on the real cluster: every bad input exits 2 and touches nothing (no lock, no
build, no history record, no node changed), a misspelt pillar key is refused with the nearest valid
key, and ``deploy.validate`` checks the master's and the nodes' view without changing anything.

Uses the session cluster (``clean_cluster``): nothing it tries changes a node.
"""

import json
import os

from sandbox import pillar as sandbox_pillar
from sandbox import repo as sample_repo

from .conftest import NODES
from .test_contract import BAD_INPUT, OK, released
from .test_faults import history, run_many, snapshot

LONG_PROJECT = "p" * 64  # a name the nodes accept, but with a long env and branch, a release name they do not
LONG_ENV = "e" * 64
LONG_BRANCH = "b" * 60


def artifacts(c):
    folder = os.path.join(c.master.config["file_roots"]["base"][0], "deploy_artifacts")
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)


def untouched(c):
    return {**snapshot(c), "history": len(history(c)), "artifacts": artifacts(c),
            "locks": sorted(os.listdir(os.path.join(c.state_dir, "locks")))
            if os.path.isdir(os.path.join(c.state_dir, "locks")) else []}


def test_every_bad_input_exits_2_and_touches_nothing(clean_cluster):
    c = clean_cluster
    released(c)
    sample_repo.git("branch", "-f", LONG_BRANCH, "master", cwd=c.repo)
    long_project = sandbox_pillar.project_pillar(c.repo, {"driver": "none"}, project=LONG_PROJECT)
    long_project["envs"] = {LONG_ENV: {"target": "web-1", "branch": LONG_BRANCH}}
    c.set_pillar(other_projects={LONG_PROJECT: long_project})
    before = untouched(c)
    cases = [  # (what, salt-run arguments, words of the error)
        ("unknown ref", {"project": "rainbow", "env": "pro", "ref": "no-such-ref"}, "git: unknown ref 'no-such-ref'"),
        ("release name too long", {"project": LONG_PROJECT, "env": LONG_ENV}, "invalid release name"),
        ("unknown env", {"project": "rainbow", "env": "qa"}, "unknown env 'qa'"),
        ("unknown project", {"project": "nope", "env": "pro"}, "unknown project 'nope'"),
        ("invalid env name", {"project": "rainbow", "env": "p;ro"}, "invalid env name"),
    ]
    results = run_many(c, [("deploy.release", kwargs) for _, kwargs, _ in cases])
    problems = []
    for (what, _kwargs, words), ret in zip(cases, results, strict=True):
        if ret.returncode != BAD_INPUT or ret.data.get("result") != "refused" or words not in str(ret.data.get("error")):
            problems.append((what, ret.returncode, ret.stdout[-800:], ret.stderr[-800:]))
    # bad pillar: a misspelt key in the env (the run would have gone on without automatic rollback)
    c.set_pillar(project_extra={"envs": {"pro": {"on_faliure": "rollback"}}})
    ret = run_many(c, [("deploy.release", {"project": "rainbow", "env": "pro"})])[0]
    expected = "project 'rainbow': unknown key 'on_faliure' in envs.pro; did you mean 'on_failure'?"
    if ret.returncode != BAD_INPUT or ret.data.get("error") != expected:
        problems.append(("on_faliure", ret.returncode, ret.stdout[-800:], ret.stderr[-800:]))
    sample_repo.git("branch", "-D", LONG_BRANCH, cwd=c.repo)
    assert not problems, problems
    assert untouched(c) == before


def test_validate_checks_the_master_and_every_node_without_changing_anything(clean_cluster):
    c = clean_cluster
    released(c)
    before = untouched(c)
    ret = c.run("deploy.validate", "project=rainbow", "env=pro", "nodes=True")
    assert ret.returncode == OK, ret.stdout[-3000:]
    doc = ret.data
    assert doc["result"] == "valid" and doc["problems"] == [], doc
    assert set(doc["nodes"]) == set(NODES) | {"lb-1"}, doc
    assert all(v["result"] == "ok" for v in doc["nodes"].values()), doc
    assert set(doc["nodes"]["lb-1"]["lb"]["states"]) >= {"web-1", "web-2"}, doc
    # a node whose own pillar misspells a key, lacks a declared key and cannot render its config: named on
    # that node, no value shown
    # (its template reads rainbow_secrets, which it no longer declares: the render fails, naming no value)
    c.set_pillar(node_extra={"web-2": {"chekcs": [], "template_pillar": ["deploy:projects:rainbow:greeting",
                                                                          "no_such_key"]}})
    ret = c.run("deploy.validate", "project=rainbow", "env=pro", "nodes=True")
    assert ret.returncode == BAD_INPUT, ret.stdout[-3000:]
    web2 = ret.data["nodes"]["web-2"]["problems"]
    assert "template_pillar 'no_such_key'" in ret.data["nodes"]["web-2"]["missing"], ret.data
    assert any(p.startswith("config config/app.ini: template error at line") and "UndefinedError" in p
               for p in web2), web2
    assert "its pillar: unknown key 'chekcs'; did you mean 'checks'?" in web2, web2
    assert ret.data["nodes"]["web-1"]["result"] == "ok", ret.data
    assert "SMSKEY" not in ret.stdout and "PAYKEY" not in ret.stdout
    # the master's view alone, every env
    c.set_pillar(project_extra={"keep_release": 3})
    ret = c.run("deploy.validate", "project=rainbow")
    assert ret.returncode == BAD_INPUT, ret.stdout[-3000:]
    assert ret.data["problems"][0] == "unknown key 'keep_release'; did you mean 'keep_releases'?", ret.data
    assert "nodes" not in ret.data
    assert untouched(c) == before
    assert json.loads(json.dumps(ret.data))  # a plain document
