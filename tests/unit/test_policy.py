"""The rollback policy (deploy_master.policy): the cluster view and the target, pure; the node's copy of the rule."""

import pytest
from deploy_master import DeployError, policy
from saltext_deploy._modules import deploy as node_module


def _node(current, *releases, commits=None):
    """One node's inventory; releases are (name, status, activated_at[, prepared_at]) (activated_at None: never);
    ``commits``: release name -> its commit (default: each release its own commit)."""
    rels = []
    for name, status, activated, *prepared in releases:
        prepared_at = prepared[0] if prepared else (activated or 1000.0) - 50
        rels.append({"name": name, "status": status, "activated_at": activated, "prepared_at": prepared_at,
                     "current": name == current, "commit": (commits or {}).get(name, f"c-{name}")})
    rels.sort(key=lambda r: r["activated_at"] or r["prepared_at"], reverse=True)
    return {"current": current, "previous": None, "releases": rels}


HISTORY = [("r1", "good", 100.0), ("r2", "good", 200.0), ("r3", "good", 300.0)]


def test_uniform_cluster():
    view = policy.cluster_view({n: _node("r3", *HISTORY) for n in ("web-1", "web-2", "web-3")})
    assert view == {
        "current": {"web-1": "r3", "web-2": "r3", "web-3": "r3"},
        "majority": "r3",
        "differ": [],
        "rollback_target": "r2",
    }


def test_rollback_target_skips_a_release_bad_on_any_node():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    nodes["web-3"] = _node("r3", ("r1", "good", 100.0), ("r2", "bad", 200.0), ("r3", "good", 300.0))
    assert policy.cluster_view(nodes)["rollback_target"] == "r1"


def test_rollback_target_must_be_present_on_every_node():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    nodes["web-3"] = _node("r3", ("r1", "good", 100.0), ("r3", "good", 300.0))  # r2 cleaned up there
    assert policy.cluster_view(nodes)["rollback_target"] == "r1"
    nodes["web-3"] = _node("r3", ("r3", "good", 300.0))
    assert policy.cluster_view(nodes)["rollback_target"] is None


def test_rollback_target_needs_a_release_that_passed_checks():
    never = [("r1", "good", 100.0), ("r2", "prepared", 200.0), ("r3", "good", 300.0)]
    assert policy.cluster_view({n: _node("r3", *never) for n in ("a", "b")})["rollback_target"] == "r1"
    # good on one node, never judged on the other (e.g. an emergency switch): acceptable
    nodes = {"a": _node("r3", *HISTORY), "b": _node("r3", *never)}
    assert policy.cluster_view(nodes)["rollback_target"] == "r2"
    # distributed but never switched to anywhere: not a rollback target
    unused = [("r1", "good", 100.0), ("r2", "prepared", None, 250.0), ("r3", "good", 300.0)]
    assert policy.cluster_view({n: _node("r3", *unused) for n in ("a", "b")})["rollback_target"] == "r1"


def test_rollback_never_goes_forward():
    # r4 was served after r3 and passed its checks, then `current` was put back on r3 by hand
    # (ln -sfn, no activation recorded): a rollback from r3 goes back to r2, not forward to r4
    nodes = {n: _node("r3", *HISTORY, ("r4", "good", 400.0)) for n in ("a", "b")}
    assert policy.cluster_view(nodes)["rollback_target"] == "r2"


def test_node_without_current_and_empty_cluster():
    nodes = {"a": _node("r2", ("r1", "good", 100.0), ("r2", "good", 200.0)), "b": _node(None, ("r1", "good", 100.0))}
    view = policy.cluster_view(nodes)
    assert view["current"] == {"a": "r2", "b": None}
    assert view["majority"] in ("r2", None) and len(view["differ"]) == 1
    assert view["rollback_target"] == "r1"
    assert policy.cluster_view({}) == {"current": {}, "majority": None, "differ": [], "rollback_target": None}


def test_nodes_that_differ():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2", "web-4")}
    nodes["web-3"] = _node("r2", *HISTORY)
    view = policy.cluster_view(nodes)
    assert view["majority"] == "r3"
    assert view["differ"] == ["web-3"]
    assert view["rollback_target"] == "r2"


def test_partial_release_failure_then_rollback():
    # r3 released to web-1 and web-2; on web-3 its checks failed: switched back to r2 (activated
    # again at 350) and r3 marked bad there.  Rolling the cluster back must go to r2, not r1.
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    nodes["web-3"] = _node("r2", ("r1", "good", 100.0), ("r2", "good", 350.0, 150.0), ("r3", "bad", 300.0))
    view = policy.cluster_view(nodes)
    assert (view["majority"], view["differ"]) == ("r3", ["web-3"])
    assert view["rollback_target"] == "r2"


# --- the same commit under another name is not a rollback

SAME = {"r2": "c1", "r3": "c1"}  # r3: the commit of r2 released again under its tag


def test_rollback_target_is_the_newest_good_release_with_another_commit():
    nodes = {n: _node("r3", *HISTORY, commits=SAME) for n in ("web-1", "web-2")}
    assert policy.cluster_view(nodes)["rollback_target"] == "r1"
    assert policy.rollback_target(nodes) == "r1"
    assert policy.rollback_target(nodes, "r2") == "r2"  # to= may still pick any good release
    only = {n: _node("r3", ("r2", "good", 200.0), ("r3", "good", 300.0), commits=SAME) for n in ("a", "b")}
    with pytest.raises(DeployError, match="no good release older than the current one"):
        policy.rollback_target(only)


def test_one_ordering_prepare_time_not_activation_time():
    # r2 was prepared before r3 but activated after it (a node switched back to r2 by hand):
    # the node's rule and the cluster's agree that r2 is older, and r1 is the one before r3
    inv = _node("r3", ("r1", "good", 100.0, 10.0), ("r2", "good", 500.0, 20.0), ("r3", "good", 300.0, 30.0))
    assert policy.node_target(inv) == "r2"
    inv = _node("r2", ("r1", "good", 100.0, 10.0), ("r2", "good", 500.0, 20.0), ("r3", "good", 300.0, 30.0))
    assert policy.node_target(inv) == "r1"  # never forward to r3
    assert policy.cluster_view({"a": inv})["rollback_target"] == "r1"


# --- the explicit target and the refusals

def test_to_must_be_on_every_node_and_not_bad():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    assert policy.rollback_target(nodes, "r1") == "r1"
    nodes["web-2"] = _node("r3", ("r1", "bad", 100.0), ("r3", "good", 300.0))
    with pytest.raises(DeployError, match="release r2 is not on web-2: refusing"):
        policy.rollback_target(nodes, "r2")
    with pytest.raises(DeployError, match="release r1 is marked bad on web-2"):
        policy.rollback_target(nodes, "r1")
    assert policy.target_or_none(nodes, "r1") is None


def test_no_target_names_what_each_node_has():
    nodes = {"web-1": _node("r1", ("r1", "good", 100.0))}
    with pytest.raises(DeployError, match=r"no good release older .*web-1: current r1, good none.*to=<release>"):
        policy.rollback_target(nodes)
    assert policy.target_or_none(nodes) is None


# --- one rule on the node and in the master: the node module keeps a copy (it must stay self-contained)

NODE_CASES = [
    _node("r3", *HISTORY),
    _node("r2", *HISTORY),
    _node("r3", ("r1", "good", 100.0), ("r2", "bad", 200.0), ("r3", "good", 300.0)),
    _node("r3", ("r1", "prepared", 100.0), ("r3", "good", 300.0)),
    _node(None, ("r1", "good", 100.0)),
    _node("r1", ("r1", "good", 100.0)),
    {"current": None, "previous": None, "releases": []},
    _node("r3", *HISTORY, commits=SAME),
    _node("r3", ("r2", "good", 200.0), ("r3", "good", 300.0), commits=SAME),
    _node("r3", *HISTORY, ("r4", "good", 400.0)),
    _node("r3", ("r1", "good", 100.0, 10.0), ("r2", "good", 500.0, 20.0), ("r3", "good", 300.0, 30.0)),
    _node("r2", ("r1", "good", 100.0, 10.0), ("r2", "good", 500.0, 20.0), ("r3", "good", 300.0, 30.0)),
]


@pytest.mark.parametrize("inventory", NODE_CASES)
def test_the_nodes_rollback_target_is_the_masters_node_rule(inventory, monkeypatch):
    monkeypatch.setattr(node_module, "_project", lambda project: {"root": "/nonexistent"})
    monkeypatch.setattr(node_module, "_paths", lambda conf: {})
    monkeypatch.setattr(node_module, "_inventory", lambda paths: inventory)
    assert node_module.rollback_target("rainbow") == policy.node_target(inventory)
    # and the cluster's rule on a one-node cluster is the node's rule
    if inventory["current"]:
        assert policy.cluster_view({"a": inventory})["rollback_target"] == policy.node_target(inventory)
