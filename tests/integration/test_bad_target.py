"""A node refuses a rollback target it marked bad, even when the master's record says otherwise.

A writer of the store (the record file here, the etcd prefix with ``deploy_store: etcd``) can rewrite
the master's record of every node; the emergency rollback takes its target from that record.  Each
node checks the target itself (``expect``): the nodes refuse, ``current`` stays, the run fails.

Uses the session cluster (``clean_cluster``): it releases versions of its own on top of what the nodes
serve, and the forged record is rewritten by the nodes' refusals.
"""

import json
import os

from .conftest import NODES
from .test_release import history, releases_on
from .test_rollback import release_new


def _forge(c, release, status):
    """Rewrite the master's record as a writer of the store would: every node's true state (its own
    fingerprint, so the record looks current), but ``release`` with another status."""
    path = os.path.join(c.state_dir, "inventory", "rainbow_pro.json")
    nodes = {}
    for node in NODES:
        ret = c.call(node, "deploy.releases", "rainbow")
        assert ret.returncode == 0, ret
        inv = ret.data
        for rel in inv["releases"]:
            if rel["name"] == release:
                rel["status"] = status
        nodes[node] = inv
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"updated": "forged", "nodes": nodes}, fh)


def test_a_forged_record_cannot_send_the_nodes_to_a_release_they_marked_bad(clean_cluster):
    c = clean_cluster
    c.set_pillar(project_extra={"keep_releases": 6})
    first = release_new(c)
    bad = release_new(c)
    served = release_new(c)
    for node in NODES:  # the middle release was found bad
        assert c.call(node, "deploy.mark", "rainbow", bad, "bad").returncode == 0
    _forge(c, bad, "good")  # ... and the forger makes it the rollback target again
    before = c.currents()
    ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 1, ret.stdout[-3000:]
    error = ret.data["error"]
    assert f"refused the target {bad} of the master's record" in error and "nothing was changed" in error
    assert f"release {bad} is marked bad on this node (the master's record says good)" in error
    assert c.currents() == before == {n: served for n in NODES}
    for node in NODES:
        statuses = releases_on(c, node)
        assert statuses[bad]["status"] == "bad" and statuses[served]["status"] == "good", node
        assert ret.data["nodes"][node]["result"] == "refused"
    assert history(c)[-1]["result"] == "failure"
    # the refusals put the nodes' true state in the record: run again, the rollback goes to the true target
    ret = c.run("deploy.rollback", project="rainbow", env="pro", emergency=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert (ret.data["to"], ret.data["target_from"]) == (first, "record")
    assert c.currents() == {n: first for n in NODES}


def test_a_rollback_to_a_release_marked_bad_needs_allow_bad_and_is_recorded(clean_cluster):
    c = clean_cluster
    c.set_pillar(project_extra={"keep_releases": 6})
    release_new(c)
    bad = release_new(c)
    release_new(c)
    for node in NODES:
        assert c.call(node, "deploy.mark", "rainbow", bad, "bad").returncode == 0
    before = c.currents()
    ret = c.run("deploy.rollback", project="rainbow", env="pro", to=bad)
    assert ret.returncode == 1, ret.stdout[-3000:]
    assert f"release {bad} is marked bad on" in ret.data["error"] and "allow_bad=True" in ret.data["error"]
    assert c.currents() == before
    # force=True keeps its meaning (pass the lock, emergency only): it does not stand for allow_bad
    ret = c.run("deploy.rollback", project="rainbow", env="pro", to=bad, force=True)
    assert ret.returncode == 2 and "allow_bad=True" in ret.data["error"]
    ret = c.run("deploy.rollback", project="rainbow", env="pro", allow_bad=True)
    assert ret.returncode == 2 and "allow_bad=True needs to=<release>" in ret.data["error"]
    ret = c.run("deploy.rollback", project="rainbow", env="pro", to=bad, allow_bad=True)
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert c.currents() == {n: bad for n in NODES}
    last = history(c)[-1]
    assert last["allow_bad"] is True and last["release"] == bad
    assert all(last["nodes"][n]["forced"] is True for n in NODES)
    for node in NODES:
        info = c.call(node, "deploy.info", "rainbow", bad).data
        assert "forced: switched to although marked bad" in [h["event"] for h in info["history"]], node
