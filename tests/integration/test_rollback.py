"""
salt-run deploy.rollback (normal and emergency) and deploy.releases on the real cluster.

Uses the session cluster (``clean_cluster``).
"""

import os
import shutil

from sandbox import repo as sample_repo

from .conftest import NODES, WEB
from .test_release import history, release_holding_the_lock, releases_on

_VERSION = [4, 0]


def release_new(c, **kwargs):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(c.repo, tag, **kwargs)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert c.currents() == {n: ret.data["release"] for n in NODES}
    return ret.data["release"]


def restart_markers(c):
    """A restart step that appends to a per-node file, to prove restarts ran."""
    marks = os.path.join(c.work, "marks")
    os.makedirs(marks, exist_ok=True)
    os.chmod(marks, 0o777)
    extra = {
        node: {"restart": [{"cmd": f"echo restarted >> {marks}/{node}"}, {"cmd": c.php[node].reload_command()}]}
        for node in NODES
    }
    return marks, extra


def count_marks(marks, node):
    path = os.path.join(marks, node)
    return len(open(path, encoding="utf-8").read().split()) if os.path.exists(path) else 0


def test_rollback_goes_to_the_last_good_release_skipping_a_bad_one(clean_cluster):
    c = clean_cluster
    a = release_new(c)
    b = release_new(c)
    stats0 = c.run("deploy.stats", project="rainbow", env="pro").data
    # normal rollback from b goes to a, marks b bad, through the LB
    ret = c.run("deploy.rollback", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert ret.data["to"] == a
    assert c.currents() == {n: a for n in NODES}
    assert releases_on(c, "web-1")[b]["status"] == "bad"
    assert "out of the LB" in (ret.stdout + ret.stderr)
    assert c.lb_states() == {n: "ready" for n in WEB}
    # a new good release, then roll back: b is bad, so the target is a again
    c_rel = release_new(c)
    view = c.run("deploy.releases", project="rainbow", env="pro")
    assert view.returncode == 0
    assert view.data["cluster"]["rollback_target"] == a
    assert view.data["cluster"]["majority"] == c_rel and view.data["cluster"]["differ"] == []
    assert {r["name"]: r["status"] for r in view.data["nodes"]["web-2"]}[b] == "bad"
    ret = c.run("deploy.rollback", project="rainbow", env="pro")
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert ret.data["to"] == a
    assert c.currents() == {n: a for n in NODES}
    stats1 = c.run("deploy.stats", project="rainbow", env="pro").data
    assert stats1["rollbacks"]["normal"] == stats0["rollbacks"]["normal"] + 2
    last = history(c)[-1]
    assert last["kind"] == "rollback" and last["mode"] == "normal" and last["release"] == a


def test_rollback_to_a_release_missing_on_one_node_is_refused(clean_cluster):
    c = clean_cluster
    old = release_new(c)
    release_new(c)
    before = c.currents()
    # an operator removed the old release on web-2 by hand
    shutil.rmtree(os.path.join(c.root("web-2"), "releases", old))
    os.unlink(os.path.join(c.root("web-2"), "meta", f"{old}.json"))
    ret = c.run("deploy.rollback", project="rainbow", env="pro", to=old)
    assert ret.returncode == 1
    assert f"release {old} is not on web-2" in ret.data["error"]
    assert c.currents() == before
    # without to=: the default target must be present everywhere too, so it is not `old`
    view = c.run("deploy.releases", project="rainbow", env="pro").data
    assert view["cluster"]["rollback_target"] != old
    bad = c.run("deploy.rollback", project="rainbow", env="pro", to="x;touch /tmp/dpl-pwned")
    assert bad.returncode == 2 and "invalid release" in bad.data["error"]
    assert not os.path.exists("/tmp/dpl-pwned")
    assert c.currents() == before


def test_normal_rollback_with_a_failing_check_stops_and_restores(clean_cluster):
    c = clean_cluster
    target = release_new(c)
    current = release_new(c)
    # web-2 only accepts the current release: its check fails on the rollback target
    c.set_pillar(node_extra={"web-2": {"checks": [
        {"url": f"http://{NODES['web-2'][0]}:8080/", "contains": f"release: {current}", "retries": 2, "delay": 0.2}]}})
    ret = c.run("deploy.rollback", project="rainbow", env="pro", to=target)
    assert ret.returncode == 1
    assert ret.data["nodes"]["web-2"]["result"] == "failed"
    # preprod and gray went back, web-2 was restored to the current release, web-3 not reached
    assert c.current("pre-1") == target and c.current("web-1") == target
    assert c.current("web-2") == current and c.current("web-3") == current
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert history(c)[-1]["result"] == "failure"


def test_emergency_rollback_switches_every_node_at_once_and_restarts(clean_cluster):
    c = clean_cluster
    target = release_new(c)
    current = release_new(c)
    marks, extra = restart_markers(c)
    c.set_pillar(node_extra=extra)
    before = {n: count_marks(marks, n) for n in NODES}
    stats0 = c.run("deploy.stats", project="rainbow", env="pro").data
    ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert ret.data["to"] == target
    assert c.currents() == {n: target for n in NODES}
    assert all(count_marks(marks, n) == before[n] + 1 for n in NODES)
    # no LB actions at all, checks reported
    assert "out of the LB" not in (ret.stdout + ret.stderr)
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert all(ret.data["nodes"][n]["result"] == "ok" for n in NODES)
    assert releases_on(c, "web-3")[current]["status"] == "bad"
    stats1 = c.run("deploy.stats", project="rainbow", env="pro").data
    assert stats1["rollbacks"]["emergency"] == stats0["rollbacks"]["emergency"] + 1
    assert history(c)[-1]["mode"] == "emergency"


def test_emergency_rollback_honours_the_lock(clean_cluster):
    c = clean_cluster
    release_new(c)
    release_new(c)
    before = c.currents()
    c.set_pillar(project_extra={"build": ["sleep 4"]})
    sample_repo.add_release(c.repo, "v4.99.0")
    with release_holding_the_lock(c):
        ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
        assert ret.returncode == 3
        assert "is locked: release by root" in ret.data["error"]
        assert c.currents() == before


def jobs_of(c, fun):
    """The jids of the master's job cache that ran ``fun``."""
    ret = c.run("jobs.list_jobs", search_function=fun)
    assert ret.returncode == 0, ret.stdout[-2000:]
    return set(ret.data)


def test_emergency_rollback_is_one_call_on_the_masters_record(clean_cluster):
    c = clean_cluster
    c.set_pillar(project_extra={"keep_releases": 6})
    oldest = release_new(c)
    target = release_new(c)
    release_new(c)
    listings, switches = jobs_of(c, "deploy.releases"), jobs_of(c, "deploy.switch")
    ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert (ret.data["to"], ret.data["target_from"], ret.data["changed_since_record"]) == (target, "record", [])
    assert c.currents() == {n: target for n in NODES}
    # the releases were not listed first: one batched deploy.switch to every node was the only node call
    assert jobs_of(c, "deploy.releases") == listings
    assert len(jobs_of(c, "deploy.switch") - switches) == 1
    # a master without a record (new, or its cache wiped) lists the releases first, and gets it right
    os.unlink(os.path.join(c.state_dir, "inventory", "rainbow_pro.json"))
    listings = jobs_of(c, "deploy.releases")
    ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert (ret.data["to"], ret.data["target_from"]) == (oldest, "listing")
    assert len(jobs_of(c, "deploy.releases") - listings) == 1
    assert c.currents() == {n: oldest for n in NODES}
    assert releases_on(c, "web-1")[target]["status"] == "bad"


def test_emergency_rollback_when_a_node_changed_behind_the_masters_record(clean_cluster):
    c = clean_cluster
    c.set_pillar(project_extra={"keep_releases": 6})
    a = release_new(c)
    b = release_new(c)
    third = release_new(c)
    # 1. an operator re-marks an old release on web-2 by hand: web-2 refuses the recorded
    #    state, but its true state gives the same target, so it follows; no node is left behind
    assert c.call("web-2", "deploy.mark", "rainbow", a, "prepared").returncode == 0
    ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert (ret.data["to"], ret.data["changed_since_record"]) == (b, ["web-2"])
    assert "still the target there" in (ret.stdout + ret.stderr)
    assert c.currents() == {n: b for n in NODES}
    assert all(ret.data["nodes"][n]["result"] == "ok" for n in NODES)
    assert releases_on(c, "web-2")[third]["status"] == "bad"
    # 2. a new release, then someone marks the recorded target bad on web-2: the target changes.
    #    The switched nodes go back, and every node goes to the new target (a): never a split env.
    fourth = release_new(c)
    assert c.call("web-2", "deploy.mark", "rainbow", b, "bad").returncode == 0
    ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert (ret.data["to"], ret.data["changed_since_record"]) == (a, ["web-2"])
    assert f"made {a} the target: every node goes there instead" in (ret.stdout + ret.stderr)
    assert c.currents() == {n: a for n in NODES}
    for node in NODES:
        statuses = releases_on(c, node)
        assert statuses[fourth]["status"] == "bad", node  # left by the rollback
        assert statuses[b]["status"] == ("bad" if node == "web-2" else "good"), node  # visited, unchanged
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert history(c)[-1]["changed_since_record"] == ["web-2"]
