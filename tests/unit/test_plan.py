"""The plan (deploy_master.plan): batch sizes, stages and batches, pure."""

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import DeployError
from deploy_master import plan as planning


@pytest.mark.parametrize("batch,count,expected", [
    (1, 10, 1), ("1", 10, 1), (" 3 ", 10, 3), (3, 2, 2), (10, 10, 10), (5, 0, 1),
    ("30%", 10, 3), ("30%", 9, 3), ("30%", 1, 1), ("25%", 10, 3), ("1%", 10, 1), ("100%", 7, 7),
    ("50%", 0, 1), ("99%", 100, 99), ("34%", 3, 2),
])
def test_batch_size(batch, count, expected):
    assert planning.batch_size(batch, count, "stage all") == expected


@pytest.mark.parametrize("batch", [0, "0", "00", -1, "-1", "0%", "101%", "-5%", "%", "abc", "1.5", 1.5, "", None,
                                   True, "3 nodes", "30 %", "1e2", "٣"])
def test_bad_batch_size(batch):
    with pytest.raises(SaltInvocationError, match=r"stage gray: batch .* must be a whole number >= 1 or a percentage"):
        planning.batch_size(batch, 10, "stage gray")


# --- stages and batches

NODES = {f"web-{i}" for i in range(1, 8)} | {"pre-1"}
TARGETS = {"G@roles:rainbow": NODES, "G@region:east": {"web-1", "web-2"}, "G@nothing": set()}


def _make(envc, connected=NODES):
    return planning.make("pro", envc, lambda t: set(TARGETS[t]), lambda: set(connected))


def test_plan_preprod_first_then_stages_and_a_rest_stage():
    plan = _make({"target": "G@roles:rainbow", "preprod": "pre-1",
                  "stages": [{"name": "gray", "target": "G@region:east", "batch": 1}, {"name": "half", "batch": "50%"}]},
                 connected=NODES - {"web-7"})
    assert plan["nodes"] == sorted(NODES) and plan["preprod"] == "pre-1"
    assert plan["stages"] == [
        {"name": "gray", "batches": [["web-1"], ["web-2"]]},
        {"name": "half", "batches": [["web-3", "web-4", "web-5"], ["web-6", "web-7"]]},
    ]
    assert plan["down"] == ["web-7"]
    assert planning.behind_lb(plan) == [f"web-{i}" for i in range(1, 8)]


def test_nodes_matched_by_no_stage_form_the_rest_stage():
    plan = _make({"target": "G@roles:rainbow", "stages": [{"name": "gray", "target": "G@region:east", "batch": 5}]})
    assert [s["name"] for s in plan["stages"]] == ["gray", "rest"]
    assert plan["stages"][1]["batches"] == [["pre-1", "web-3"], ["web-4", "web-5"], ["web-6", "web-7"]]


def test_default_is_one_stage_all_of_quarter_batches():
    plan = _make({"target": "G@roles:rainbow"})
    assert [s["name"] for s in plan["stages"]] == ["all"] and [len(b) for b in plan["stages"][0]["batches"]] == [2] * 4


def test_a_target_that_matches_nothing_is_refused():
    with pytest.raises(DeployError, match="env 'pro': target 'G@nothing' matches no minion"):
        _make({"target": "G@nothing"})


def test_describe():
    plan = _make({"target": "G@region:east", "preprod": "pre-1", "stages": [{"name": "all", "batch": 1}]})
    assert planning.describe(plan, "") == [
        "preprod: pre-1 (not behind the LB): switch, restart, checks",
        "stage all batch 1/2: web-1 (no LB actions)",
        "stage all batch 2/2: web-2 (no LB actions)",
    ]
    assert planning.describe(plan, "haproxy on lb-1")[1] == (
        "stage all batch 1/2: web-1 (haproxy on lb-1: drain+maint, then restore)")


def test_a_stage_keeps_its_pause():
    plan = _make({"target": "G@roles:rainbow", "preprod": "pre-1",
                  "stages": [{"name": "gray", "target": "G@region:east", "batch": 1, "pause": True},
                             {"name": "canary", "target": "G@nothing", "pause": 60},
                             {"name": "half", "batch": "50%", "pause": 30}, {"name": "all"}]})
    assert [(s["name"], s.get("pause")) for s in plan["stages"]] == [("gray", True), ("half", 30)]
