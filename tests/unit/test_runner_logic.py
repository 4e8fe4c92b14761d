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
    """One node's inventory; releases are (name, status, activated_at[, prepared_at]) (activated_at None: never)."""
    rels = []
    for name, status, activated, *prepared in releases:
        prepared_at = prepared[0] if prepared else (activated or 1000.0) - 50
        rels.append({"name": name, "status": status, "activated_at": activated, "prepared_at": prepared_at,
                     "current": name == current})
    rels.sort(key=lambda r: r["activated_at"] or r["prepared_at"], reverse=True)
    return {"current": current, "previous": None, "releases": rels}


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
    # good on one node, never judged on the other (e.g. an emergency switch): acceptable
    nodes = {"a": _node("r3", *HISTORY), "b": _node("r3", *never)}
    assert runner._cluster_view(nodes)["rollback_target"] == "r2"
    # distributed but never switched to anywhere: not a rollback target
    unused = [("r1", "good", 100.0), ("r2", "prepared", None, 250.0), ("r3", "good", 300.0)]
    assert runner._cluster_view({n: _node("r3", *unused) for n in ("a", "b")})["rollback_target"] == "r1"


def test_rollback_never_goes_forward():
    # r4 was served after r3 and passed its checks, then `current` was put back on r3 by hand
    # (ln -sfn, no activation recorded): a rollback from r3 goes back to r2, not forward to r4
    nodes = {n: _node("r3", *HISTORY, ("r4", "good", 400.0)) for n in ("a", "b")}
    assert runner._cluster_view(nodes)["rollback_target"] == "r2"


def test_node_without_current_and_empty_cluster():
    nodes = {"a": _node("r2", ("r1", "good", 100.0), ("r2", "good", 200.0)), "b": _node(None, ("r1", "good", 100.0))}
    view = runner._cluster_view(nodes)
    assert view["current"] == {"a": "r2", "b": None}
    assert view["majority"] in ("r2", None) and len(view["differ"]) == 1
    assert view["rollback_target"] == "r1"
    assert runner._cluster_view({}) == {"current": {}, "majority": None, "differ": [], "rollback_target": None}


def test_nodes_that_differ():
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2", "web-4")}
    nodes["web-3"] = _node("r2", *HISTORY)
    view = runner._cluster_view(nodes)
    assert view["majority"] == "r3"
    assert view["differ"] == ["web-3"]
    assert view["rollback_target"] == "r2"


def test_partial_release_failure_then_rollback():
    # r3 released to web-1 and web-2; on web-3 its checks failed: switched back to r2 (activated
    # again at 350) and r3 marked bad there.  Rolling the cluster back must go to r2, not r1.
    nodes = {n: _node("r3", *HISTORY) for n in ("web-1", "web-2")}
    nodes["web-3"] = _node("r2", ("r1", "good", 100.0), ("r2", "good", 350.0, 150.0), ("r3", "bad", 300.0))
    view = runner._cluster_view(nodes)
    assert (view["majority"], view["differ"]) == ("r3", ["web-3"])
    assert view["rollback_target"] == "r2"


# --- the master's record of the nodes (what the emergency rollback acts on)

INV = {"current": "r2", "previous": "r1", "releases": [], "fingerprint": "0123456789abcdef"}


@pytest.mark.parametrize("fun,res,expected", [
    ("deploy.switch", {"ok": True, "ret": {"result": True, "inventory": INV}}, INV),
    ("deploy.switch", {"ok": False, "ret": {"result": False, "refused": True, "inventory": INV}}, INV),
    ("deploy.prepare", {"ok": True, "ret": {"changed": False, "inventory": INV}}, INV),
    ("deploy.releases", {"ok": True, "ret": INV}, INV),
    # a state-changing call without an inventory: the node's state is unknown now
    ("deploy.switch", {"ok": False, "silent": True, "error": "no response"}, None),
    ("deploy.prepare", {"ok": False, "error": "disk full"}, None),
    ("deploy.cleanup", {"ok": True, "ret": {"kept": [], "removed": []}}, None),
    ("deploy.mark", {"ok": True, "ret": {"release": "r1", "status": "bad"}}, None),
    # a read-only call says nothing
    ("deploy.current", {"ok": True, "ret": "r2"}, False),
    ("deploy.releases", {"ok": False, "error": "unknown project"}, False),
    ("deploy.info", {"ok": True, "ret": {"name": "r1"}}, False),
])
def test_reported_inventory(fun, res, expected):
    assert runner._reported_inventory(fun, res) == expected


def test_record_keeps_the_latest_inventory_per_node_and_forgets_unknown_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "__opts__", {"deploy_state_dir": str(tmp_path), "cachedir": str(tmp_path)},
                        raising=False)
    assert runner._record_read("rainbow", "pro") == {}
    one = {**INV, "fingerprint": "1111111111111111"}
    runner._record_update("rainbow", "pro", {"web-1": INV, "web-2": INV})
    runner._record_update("rainbow", "pro", {"web-1": one, "web-2": None})
    assert runner._record_read("rainbow", "pro") == {"web-1": one}
    assert runner._record_read("rainbow", "stg") == {}  # per env
    (tmp_path / "inventory" / "rainbow_pro.json").write_text("{not json")
    assert runner._record_read("rainbow", "pro") == {}  # a damaged record is no record: the nodes get listed
    assert not [p for p in (tmp_path / "inventory").iterdir() if ".tmp" in p.name]
