"""Pure logic of the runner (_runners/deploy.py): batch sizes and the cluster view behind rollbacks."""

import pytest
from salt.exceptions import SaltInvocationError
from saltext_deploy._runners import deploy as runner


@pytest.mark.parametrize("batch,count,expected", [
    (1, 10, 1), ("1", 10, 1), (" 3 ", 10, 3), (3, 2, 2), (10, 10, 10), (5, 0, 1),
    ("30%", 10, 3), ("30%", 9, 3), ("30%", 1, 1), ("25%", 10, 3), ("1%", 10, 1), ("100%", 7, 7),
    ("50%", 0, 1), ("99%", 100, 99), ("34%", 3, 2),
])
def test_batch_size(batch, count, expected):
    assert runner._batch_size(batch, count, "stage all") == expected


@pytest.mark.parametrize("batch", [0, "0", "00", -1, "-1", "0%", "101%", "-5%", "%", "abc", "1.5", 1.5, "", None,
                                   True, "3 nodes", "30 %", "1e2", "٣"])
def test_bad_batch_size(batch):
    with pytest.raises(SaltInvocationError, match=r"stage gray: batch .* must be a whole number >= 1 or a percentage"):
        runner._batch_size(batch, 10, "stage gray")


def _node(current, *releases):
    """One node's inventory; releases are (name, status, stamp) with stamp the activation time (None: never)."""
    return {
        "current": current,
        "previous": None,
        "releases": sorted(
            (
                {"name": name, "status": status, "activated_at": stamp, "prepared_at": 1.0, "current": name == current}
                for name, status, stamp in releases
            ),
            key=lambda r: r["activated_at"] or r["prepared_at"],
            reverse=True,
        ),
    }


HISTORY = [("r1", "good", 100.0), ("r2", "good", 200.0), ("r3", "good", 300.0)]


def test_uniform_cluster():
    view = runner._cluster_view({n: _node("r3", *HISTORY) for n in ("web-1", "web-2", "web-3")})
    assert view == {
        "current": {"web-1": "r3", "web-2": "r3", "web-3": "r3"},
        "majority": "r3",
        "differ": [],
        "rollback_target": "r2",
    }


def test_rollback_target_skips_a_release_bad_on_any_node():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    nodes["web-3"] = _node("r3", ("r1", "good", 100.0), ("r2", "bad", 200.0), ("r3", "good", 300.0))
    assert runner._cluster_view(nodes)["rollback_target"] == "r1"


def test_rollback_target_must_be_present_on_every_node():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    nodes["web-3"] = _node("r3", ("r1", "good", 100.0), ("r3", "good", 300.0))  # r2 cleaned up there
    assert runner._cluster_view(nodes)["rollback_target"] == "r1"
    nodes["web-3"] = _node("r3", ("r3", "good", 300.0))
    assert runner._cluster_view(nodes)["rollback_target"] is None


def test_rollback_target_needs_a_release_that_passed_checks():
    never = [("r1", "good", 100.0), ("r2", "prepared", 200.0), ("r3", "good", 300.0)]
    assert runner._cluster_view({n: _node("r3", *never) for n in ("a", "b")})["rollback_target"] == "r1"
    # good on one node and never judged on the others (e.g. an emergency switch): acceptable
    nodes = {"a": _node("r3", *HISTORY), "b": _node("r3", *never)}
    assert runner._cluster_view(nodes)["rollback_target"] == "r2"


def test_rollback_never_goes_forward():
    # r4 was released then left by a rollback to r3 that did not mark it (e.g. checks=report);
    # a further rollback goes to r2, not "back" to the newer r4
    history = HISTORY + [("r4", "good", 250.0)]  # activated before r3's re-activation
    nodes = {n: _node("r3", *history) for n in ("a", "b")}
    for node in nodes.values():
        for rel in node["releases"]:
            if rel["name"] == "r3":
                rel["activated_at"] = 300.0
            if rel["name"] == "r4":
                rel["prepared_at"] = 240.0
    assert runner._cluster_view(nodes)["rollback_target"] == "r4"  # r4 is older than r3's activation
    for node in nodes.values():
        for rel in node["releases"]:
            if rel["name"] == "r4":
                rel["activated_at"] = 400.0  # now newer than the current release
    assert runner._cluster_view(nodes)["rollback_target"] == "r2"


def test_nodes_that_differ():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    # web-3's switch to r3 failed and was switched back to r2
    nodes["web-3"] = _node("r2", ("r1", "good", 100.0), ("r2", "good", 350.0), ("r3", "bad", 300.0))
    view = runner._cluster_view(nodes)
    assert view["majority"] == "r3"
    assert view["differ"] == ["web-3"]
    assert view["current"]["web-3"] == "r2"
    # r3 is bad on web-3: it is never a rollback target, and r2 is current somewhere: nothing older but r1
    assert view["rollback_target"] in ("r1", "r2")
    assert view["rollback_target"] != "r3"


def test_node_without_current_and_empty_cluster():
    nodes = {"a": _node("r2", ("r1", "good", 100.0), ("r2", "good", 200.0)), "b": _node(None, ("r1", "good", 100.0))}
    view = runner._cluster_view(nodes)
    assert view["current"] == {"a": "r2", "b": None}
    assert view["rollback_target"] is None  # r1 is on both but b... r2 is missing on b, r1 is the only candidate
    assert runner._cluster_view({}) == {"current": {}, "majority": None, "differ": [], "rollback_target": None}
