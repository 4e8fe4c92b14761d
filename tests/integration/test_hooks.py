"""
Release hooks on the real cluster: ``once`` (a migration) on exactly one node, once per release,
never on a rollback; ``before_switch`` on each node before its switch; ``after_release`` once;
``on_rollback`` before a normal rollback switches; ``test=True`` lists them.

Uses the session cluster (``clean_cluster``).  Every step appends one line to a file the test reads:
``<phase> <release> <node> <release current pointed to when the step ran>``.
"""

import os

from sandbox import repo as sample_repo

from .conftest import NODES, WEB
from .test_release import history

_VERSION = [37, 0]  # a major version of its own: tags are shared by every module of the session

# the step: a shell the step asks for itself, its script fixed, every value an argument or variable
SCRIPT = ('printf "%s %s %s %s\\n" "$DEPLOY_HOOK" "$DEPLOY_RELEASE" "$(basename "$(dirname "$DEPLOY_ROOT")")" '
          '"$(basename "$(readlink "$DEPLOY_CURRENT")")" >> "$0"')


def new_version(c):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(c.repo, tag)
    return tag


def marks_file(c):
    folder = os.path.join(c.work, "hook-marks")
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o777)
    path = os.path.join(folder, "marks")
    if os.path.exists(path):
        os.unlink(path)
    return path


def marks(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [tuple(line.rstrip("\n").split(" ")) for line in fh]  # "": current pointed to nothing yet


def step(name, path, fail=None):
    """A hook step that records itself; with ``fail``, it exits 7 where that file exists in the node's root."""
    script = SCRIPT if fail is None else f'test ! -e "$DEPLOY_ROOT/{fail}" || exit 7; {SCRIPT}'
    return {"name": name, "cmd": ["sh", "-c", script, path], "timeout": 60}


def hooks_pillar(path, **override):
    phases = {phase: [step(phase, path)] for phase in ("once", "before_switch", "after_release", "on_rollback")}
    return {"hooks": {**phases, **override}}


def test_once_runs_on_one_node_once_per_release_and_no_rollback_runs_it(clean_cluster):
    c = clean_cluster
    path = marks_file(c)
    c.set_pillar(project_extra=hooks_pillar(path))
    new_version(c)
    before = {n: release or "" for n, release in c.currents().items()}
    plan = c.run("deploy.release", project="rainbow", env="pro", test=True)
    assert plan.returncode == 0, plan.stdout
    assert "hooks once on pre-1, before the first switch: once" in plan.data["plan"]
    assert "hooks before_switch on each node, in the new release: before_switch" in plan.data["plan"]
    assert "hooks after_release on pre-1, after the last batch: after_release" in plan.data["plan"]
    assert marks(path) == []

    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    a = ret.data["release"]
    assert c.currents() == {n: a for n in NODES}
    seen = marks(path)
    # once first, on pre-1 only, before anything switched; before_switch on every node before its
    # own switch; after_release last, once
    assert seen[0] == ("once", a, "pre-1", before["pre-1"])
    assert sorted(m[2] for m in seen if m[0] == "before_switch") == sorted(NODES)
    assert all(m[1] == a and m[3] == before[m[2]] for m in seen if m[0] == "before_switch")
    assert seen[-1] == ("after_release", a, "pre-1", a)
    assert len(seen) == len(NODES) + 2
    assert ret.data["hooks"]["once"]["node"] == "pre-1" and ret.data["hooks"]["once"]["result"] is True
    [recorded] = history(c)[-1]["hooks"]["once"]["steps"]
    assert recorded == {"step": "once", "result": True, "retcode": 0, "seconds": recorded["seconds"]}

    # the same release again: it was released here, once does not run; nothing switches
    again = c.run("deploy.release", project="rainbow", env="pro")
    assert again.returncode == 0, again.stdout[-3000:]
    assert again.data["release"] == a
    assert f"hooks once: skipped, {a} was released to pro before" in again.stdout + again.stderr
    assert [m[0] for m in marks(path)[len(seen):]] == ["after_release"]

    new_version(c)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    b = ret.data["release"]
    assert [m for m in marks(path) if m[0] == "once"] == [("once", a, "pre-1", before["pre-1"]),
                                                          ("once", b, "pre-1", a)]

    # a normal rollback: on_rollback once, on pre-1, in the release left, before its switch; no once
    count = len(marks(path))
    plan = c.run("deploy.rollback", project="rainbow", env="pro", test=True)
    assert plan.data["plan"][-1] == "hooks on_rollback on pre-1, before the first switch: on_rollback"
    back = c.run("deploy.rollback", project="rainbow", env="pro")
    assert back.returncode == 0, back.stdout[-3000:]
    assert back.data["to"] == a and c.currents() == {n: a for n in NODES}
    assert marks(path)[count:] == [("on_rollback", b, "pre-1", b)]
    assert c.lb_states() == {n: "ready" for n in WEB}


def test_a_failing_once_stops_the_release_with_nothing_switched(clean_cluster):
    c = clean_cluster
    path = marks_file(c)
    flag = os.path.join(c.root("pre-1"), "fail-once")
    open(flag, "w").close()
    try:
        c.set_pillar(project_extra=hooks_pillar(path, once=[step("migrate", path, fail="fail-once")]))
        new_version(c)
        before = c.currents()
        ret = c.run("deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 1, ret.stdout[-3000:]
        assert ret.data["error"] == "hooks once on pre-1: step 'migrate' failed (exit 7); nothing was switched"
        assert c.currents() == before
        assert marks(path) == []
        assert c.lb_states() == {n: "ready" for n in WEB}
        assert history(c)[-1]["hooks"]["once"]["result"] is False
    finally:
        os.unlink(flag)
    # repaired: the release was never out in the env, so its once steps run now
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert [m[0] for m in marks(path) if m[0] == "once"] == ["once"]


def test_a_failing_before_switch_fails_that_node_only(clean_cluster):
    c = clean_cluster
    path = marks_file(c)
    flag = os.path.join(c.root("web-2"), "fail-before")
    open(flag, "w").close()
    try:
        c.set_pillar(project_extra={**hooks_pillar(path, before_switch=[step("cache", path, fail="fail-before")]),
                                    "envs": {"pro": {"max_failures": 1}}})
        new_version(c)
        before = c.currents()
        ret = c.run("deploy.release", project="rainbow", env="pro")
        assert ret.returncode == 1, ret.stdout[-3000:]
        new = ret.data["release"]
        assert c.currents() == {**{n: new for n in NODES}, "web-2": before["web-2"]}
        assert ret.data["nodes"]["web-2"]["result"] == "failed"
        assert ret.data["nodes"]["web-2"]["error"] == "before_switch: cache: exit code 7"
        assert sorted(m[2] for m in marks(path) if m[0] == "before_switch") == ["pre-1", "web-1", "web-3"]
        assert c.lb_states() == {n: "ready" for n in WEB}
    finally:
        os.unlink(flag)
