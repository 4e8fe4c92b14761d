"""
The CI examples as shipped (examples/gitlab-ci.yml, examples/Jenkinsfile) against the shared test cluster:
each job's shell steps run as GitLab's runner or Jenkins' `sh` step would run them (their variables and
parameters in the environment), with `salt-run` on PATH pointing at the test master. What needs a GitLab
or Jenkins server (the pipeline graph, `input`, the build result) is read from the files, not run.

Uses the session cluster (``clean_cluster``); the CI jobs' workspaces are per test, and a run left
locked is aborted after each.
"""

import json
import os
import pathlib
import re
import shlex
import subprocess

import pytest
import yaml

from sandbox import repo as sample_repo

from .conftest import NODES
from .test_faults import no_response

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO_ROOT, "examples")
OK, FAILED, BAD_INPUT, LOCKED, ABORTED, PAUSED = 0, 1, 2, 3, 4, 5
_VERSION = [41, 0]


def new_version(c):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    return tag, sample_repo.add_release(c.repo, tag)


def history(c):
    path = os.path.join(c.state_dir, "history", "rainbow.jsonl")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def pause_after_gray(c):
    c.set_pillar(project_extra={"envs": {"pro": {"stages": [
        {"name": "gray", "target": "G@region:east", "batch": 1, "pause": True},
        {"name": "all", "batch": 1}]}}})


@pytest.fixture
def ci(clean_cluster, tmp_path):
    """A job's workspace: a checkout of the examples, and `salt-run` on PATH for the test master."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "salt-run"
    wrapper.write_text("#!/bin/sh\nexec " + shlex.join(clean_cluster.run_cli.cmdline()) + ' "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "checkout"
    (work / "examples").mkdir(parents=True)
    for name in os.listdir(EXAMPLES):
        (work / "examples" / name).write_bytes(pathlib.Path(EXAMPLES, name).read_bytes())
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    yield clean_cluster, work, env
    lock = os.path.join(clean_cluster.state_dir, "locks", "rainbow_pro.lock")
    if os.path.exists(lock):  # a failed test may leave a paused run: abort it for the next test
        clean_cluster.run("deploy.abort", project="rainbow", env="pro")


def run_steps(work, env, lines):
    """The lines of one job, in one shell that stops at the first failing line (as GitLab's runner)."""
    script = "set -e\n" + "\n".join(lines) + "\n"
    proc = subprocess.run(["sh", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    doc = None
    if os.path.exists(os.path.join(work, "deploy.json")):
        with open(os.path.join(work, "deploy.json"), encoding="utf-8") as fh:
            try:
                doc = json.load(fh)
            except ValueError:
                doc = None
    return proc.returncode, doc, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- GitLab


def gitlab_job(name, **ci_vars):
    """(shell lines, environment) of one job of examples/gitlab-ci.yml, `extends` and variables resolved."""
    with open(os.path.join(EXAMPLES, "gitlab-ci.yml"), encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    job = dict(doc[name])
    while "extends" in job:
        base = dict(doc[job.pop("extends")])
        base.update(job)
        job = base
    variables = {**doc.get("variables", {}), **job.get("variables", {}), **ci_vars}
    return job.get("before_script", []) + job["script"], {k: str(v) for k, v in variables.items()}


def gitlab(ci, name, **ci_vars):
    _, work, env = ci
    lines, variables = gitlab_job(name, CI_PROJECT_PATH="web/rainbow", CI_JOB_ID="4711", LOCK_WAIT="1", **ci_vars)
    return run_steps(work, {**env, **variables}, lines)


def test_gitlab_releases_the_tested_commit_and_handles_a_pause_with_manual_jobs(ci):
    c = ci[0]
    with open(os.path.join(EXAMPLES, "gitlab-ci.yml"), encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    project_envs = {"pro", "test"}  # pillar/deploy/rainbow.sls
    assert {doc[j]["variables"]["DEPLOY_ENV"] for j in ("plan", "test", "production", "promote", "abort")} <= project_envs
    assert doc["production"]["allow_failure"] == {"exit_codes": [PAUSED]}
    assert all(r["when"] == "manual" for j in ("promote", "abort") for r in doc[j]["rules"])

    # the commit the pipeline tested, not the branch head: a newer commit lands on master after it
    _, tested = new_version(c)
    sample_repo.add_release(c.repo, "v41.99.0", tag=False)
    code, data, out = gitlab(ci, "plan", CI_COMMIT_SHA=tested)
    assert code == OK and data["result"] is None and data["commit"] == tested, out
    code, data, out = gitlab(ci, "production", CI_COMMIT_SHA=tested)
    assert code == OK, out
    assert data["commit"] == tested, data
    assert set(c.currents().values()) == {data["release"]}
    last = history(c)[-1]
    assert last["kind"] == "release" and last["by"] == "gitlab:web/rainbow#4711" and last["user"] == "root", last

    # a gate pauses the release: the job passes as allowed (exit 5), the manual `abort` job reverts
    before = c.currents()
    pause_after_gray(c)
    tag, _ = new_version(c)
    code, data, out = gitlab(ci, "production", CI_COMMIT_SHA="", CI_COMMIT_TAG=tag)
    assert code == PAUSED and data["result"] == "paused", out
    assert f"_{tag}_" in data["release"]
    # meanwhile the env is locked: a second pipeline waits between attempts, then gives up with exit 3
    code, _, out = gitlab(ci, "production", CI_COMMIT_SHA="", CI_COMMIT_TAG=tag, LOCK_RETRIES="2")
    assert code == LOCKED and "attempt 1 of 2, next in 1 s" in out, out
    code, data, out = gitlab(ci, "abort", CI_COMMIT_SHA="", CI_COMMIT_TAG=tag)
    assert code == OK, out
    assert c.currents() == before

    # the aborted release is marked bad on the nodes it reached: the next pipeline tags a fix, pauses again,
    # and the manual `promote` job finishes the release
    tag, _ = new_version(c)
    code, data, out = gitlab(ci, "production", CI_COMMIT_SHA="", CI_COMMIT_TAG=tag)
    assert code == PAUSED, out
    code, data, out = gitlab(ci, "promote", CI_COMMIT_SHA="", CI_COMMIT_TAG=tag)
    assert code == OK, out
    assert all(f"_{tag}_" in r for r in c.currents().values())
    assert history(c)[-1]["by"] == "gitlab:web/rainbow#4711"


# --------------------------------------------------------------------------- Jenkins


def jenkins_sh_steps():
    """The script of every `sh` step in examples/Jenkinsfile."""
    with open(os.path.join(EXAMPLES, "Jenkinsfile"), encoding="utf-8") as fh:
        text = fh.read()
    return text, re.findall(r"\bsh\((?:script:\s*)?(['\"])(.*?)\1", text)


def test_jenkins_passes_parameters_without_shell_interpolation_and_maps_every_exit_code(ci, tmp_path):
    c, work, env = ci
    text, steps = jenkins_sh_steps()
    assert steps, "no sh step found"
    for quote, script in steps:  # single-quoted Groovy: Groovy puts no value into the shell's text
        assert quote == "'" and "${" not in script, script
    for code in range(6):
        assert re.search(rf"case {code}:", text), f"exit {code} is not mapped to a build result"
    assert "input(" in text and "step(answer" in text  # exit 5: the approval runs promote or abort
    envs = set(re.findall(r"deploy\('\w+', '(\w+)'\)", text))
    assert envs and envs <= {"pro", "test"}, envs

    def sh_step(action, deploy_env, **params):
        # what withEnv([...]) and the job's parameters put into the environment of the `sh` step
        step_env = {**env, "DEPLOY_ACTION": action, "DEPLOY_ENV": deploy_env, "CI_BY": "jenkins:rainbow-deploy#12",
                    "PROJECT": "rainbow", "REF": "", "LOCK_WAIT": "1", **params}
        return run_steps(work, step_env, [steps[0][1]])

    tag, _ = new_version(c)
    code, data, out = sh_step("plan", "pro", REF=tag)
    assert code == OK and f"_{tag}_" in data["release"], out
    # a parameter that is shell text stays one argument: refused as bad input, nothing runs
    marker = tmp_path / "pwned"
    code, data, out = sh_step("release", "pro", REF=f"{tag}; touch {marker}")
    assert code == BAD_INPUT and not marker.exists(), out
    code, data, out = sh_step("release", "pro", PROJECT="$(touch " + str(marker) + ")")
    assert code == BAD_INPUT and not marker.exists(), out
    code, data, out = sh_step("release", "pro", REF=tag)
    assert code == OK and set(c.currents().values()) == {data["release"]}, out
    assert len(c.currents()) == len(NODES)
    last = history(c)[-1]
    assert last["by"] == "jenkins:rainbow-deploy#12", last


def test_the_cli_user_behind_sudo_is_recorded_with_the_ci_identity(clean_cluster):
    c = clean_cluster
    tag, _ = new_version(c)
    env = {**os.environ, "SUDO_USER": "alice"}
    for _ in range(3):  # again only when live minions were too slow for the session's deploy_timeout
        proc = subprocess.run(c.run_cli.cmdline("deploy.release", "project=rainbow", "env=pro", f"ref={tag}",
                                                "by=ci:job#3"), env=env, capture_output=True, text=True, timeout=600)
        failed = [n for n in (json.loads(proc.stdout or "{}").get("nodes") or {}).values() if n.get("result") == "failed"]
        if proc.returncode != FAILED or not failed or not all(no_response(n.get("error")) for n in failed):
            break
    assert proc.returncode == OK, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = history(c)[-1]
    assert last["user"] == "alice" and last["by"] == "ci:job#3", last
    # a by= that is not one token is bad input, and nothing runs
    before = len(history(c))
    ret = c.run("deploy.release", project="rainbow", env="pro", by="x y")
    assert ret.returncode == BAD_INPUT and "invalid by" in ret.data["error"], ret.stdout
    assert len(history(c)) == before
