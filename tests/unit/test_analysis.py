"""The analysis gate (deploy_master.gates.analysis, its haproxy provider, and the rollout's ``gating.watch``
against a simulated LB).

Pure logic: the settings, the figures from HAProxy ``show stat`` samples, the verdict.  The
real thing, HAProxy counting a release's 500s under load, is tests/integration/test_analysis.py.
"""

import re

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import Aborted, DeployError, config
from deploy_master.gates import analysis, haproxy
from deploy_master.rollout import batches, gating
from deploy_master.rollout import run as runs

from tests.unit.fakesalt import FakeSalt, make_run


# --------------------------------------------------------------------------- settings


def test_defaults_and_percentages():
    s = analysis.parse({}, "env 'pro'")
    assert s == {"bake": 60, "interval": 5, "max_error_rate": 0.01, "max_p95_ms": None, "min_requests": 100,
                 "after": "stage", "compare": "baseline", "inconclusive": "fail", "provider": "haproxy", "options": {}}
    s = analysis.parse({"bake": "30", "max_error_rate": "0.5%", "max_p95_ms": 250, "min_requests": 10,
                        "after": "batch", "compare": "absolute", "inconclusive": "pass", "interval": 1}, "env 'pro'")
    assert s["bake"] == 30 and s["max_error_rate"] == 0.005 and s["max_p95_ms"] == 250
    assert (s["after"], s["compare"], s["inconclusive"], s["interval"]) == ("batch", "absolute", "pass", 1)
    assert analysis.parse(None, "env 'pro'") is None


def test_a_stage_inherits_overrides_or_turns_off():
    base = analysis.parse({"bake": 30, "max_error_rate": "2%"}, "env 'pro'")
    assert analysis.parse(None, "stage", base) == base
    assert analysis.parse(True, "stage", base) == base
    assert analysis.parse(False, "stage", base) is None
    assert analysis.parse({"bake": 10}, "stage", base) == {**base, "bake": 10}
    assert analysis.parse(True, "stage", None)["bake"] == 60
    envc = {"analysis": {"bake": 30}, "stages": [{"name": "gray", "analysis": {"after": "batch"}},
                                                 {"name": "all", "analysis": False}, {"name": "x"}]}
    assert analysis.stage_settings(envc, "gray", "env")["after"] == "batch"
    assert analysis.stage_settings(envc, "gray", "env")["bake"] == 30
    assert analysis.stage_settings(envc, "all", "env") is None
    assert analysis.stage_settings(envc, "x", "env")["bake"] == 30
    assert analysis.stage_settings(envc, "rest", "env")["bake"] == 30  # the implicit last stage
    assert analysis.stage_settings({}, "all", "env") is None


@pytest.mark.parametrize("value,message", [
    ({"bake": 0}, "env 'pro': analysis:bake 0 must be a number >= 1"),
    ({"bake": "soon"}, "analysis:bake 'soon' must be a number >= 1"),
    ({"bake": True}, "analysis:bake True must be a number"),
    ({"interval": 0.1}, "analysis:interval 0.1 must be a number >= 0.5"),
    ({"max_error_rate": 1}, "analysis:max_error_rate 1 must be a percentage from 0% to 100%, e.g. '1%'"),
    ({"max_error_rate": 0.01}, "analysis:max_error_rate 0.01 must be a percentage"),
    ({"max_error_rate": "101%"}, "analysis:max_error_rate '101%' must be a percentage"),
    ({"max_error_rate": "-1%"}, "analysis:max_error_rate '-1%' must be a percentage"),
    ({"max_p95_ms": "fast"}, "analysis:max_p95_ms 'fast' must be a number >= 0"),
    ({"max_p95_ms": float("nan")}, "analysis:max_p95_ms nan must be a number >= 0"),
    ({"min_requests": 1.5}, "analysis:min_requests 1.5 must be a whole number >= 0"),
    ({"min_requests": -3}, "analysis:min_requests -3 must be a whole number >= 0"),
    ({"after": "release"}, "analysis:after 'release' must be one of stage, batch"),
    ({"compare": "canary"}, "analysis:compare 'canary' must be one of baseline, absolute"),
    ({"inconclusive": "retry"}, "analysis:inconclusive 'retry' must be one of fail, pass"),
    ({"bake_time": 60}, "env 'pro': unknown analysis key 'bake_time'; accepted: bake, interval"),
    ("60s", "env 'pro': analysis must be a dict of bake"),
    ([60], "env 'pro': analysis must be a dict of bake"),
])
def test_bad_settings_are_named(value, message):
    with pytest.raises(SaltInvocationError, match=re.escape(message)):
        analysis.parse(value, "env 'pro'")


# --------------------------------------------------------------------------- config validation

ENV = {"target": "G@roles:rainbow", "preprod": "pre-1", "stages": [{"name": "gray", "batch": 1}]}
PROJECT = {"repo": "/srv/git/rainbow.git", "root": "/data/www/rainbow", "envs": {"pro": ENV},
           "lb": {"driver": "haproxy", "minion": "lb-1"}}


def _pillar(env=None, lb=None):
    return {"deploy": {"projects": {"rainbow": {**PROJECT, "envs": {"pro": {**ENV, **(env or {})}},
                                                "lb": lb or PROJECT["lb"]}}}}


def test_config_accepts_analysis_with_haproxy():
    _, envc = config.project_env(_pillar({"analysis": {"bake": 30, "max_error_rate": "1%"}}), "rainbow", "pro")
    assert envc["analysis"]["bake"] == 30


@pytest.mark.parametrize("env,lb,message", [
    ({"analysis": {"bake": 30}}, {"driver": "nginx", "minion": "lb-1"},
     "env 'pro': analysis needs the haproxy LB driver, not 'nginx': open-source nginx keeps no per-server response "
     "counters (only nginx Plus's API or a parser of its access log give them); use provider: prometheus "
     "(docs/analysis.md) or remove 'analysis' from this env"),
    ({"analysis": {"bake": 30}}, {"driver": "none"}, "analysis needs the haproxy LB driver, not 'none': there is no "
                                                     "load balancer"),
    ({"stages": [{"name": "gray", "batch": 1, "analysis": {"bake": 5}}]}, {"driver": "nginx", "minion": "lb-1"},
     "analysis needs the haproxy LB driver, not 'nginx'"),
    ({"analysis": {"max_error_rate": 2}}, None, "env 'pro': analysis:max_error_rate 2 must be a percentage"),
    ({"stages": [{"name": "gray", "batch": 1, "analysis": {"after": "never"}}]}, None,
     "env 'pro' stage 'gray': analysis:after 'never' must be one of stage, batch"),
])
def test_config_refuses_bad_analysis(env, lb, message):
    with pytest.raises(SaltInvocationError, match=re.escape(message)):
        config.project_env(_pillar(env, lb), "rainbow", "pro")


def test_config_stage_turning_analysis_off_needs_no_counting_lb():
    pillar = _pillar({"stages": [{"name": "gray", "batch": 1, "analysis": False}]}, {"driver": "nginx", "minion": "l"})
    config.project_env(pillar, "rainbow", "pro")


# --------------------------------------------------------------------------- figures and verdict


def row(total, errors=0, rtime=10, **extra):
    """A server's show-stat counters: ``total`` responses of which ``errors`` 5xx."""
    return {"hrsp_2xx": total - errors, "hrsp_5xx": errors, "rtime": rtime, "rtime_max": rtime * 3, "status": "UP",
            **extra}


def samples(*per_sample):
    return list(per_sample)


def test_figures_are_counter_deltas_over_the_bake():
    s = [{"web-1": row(1000, 5), "web-2": row(2000, 10)},
         {"web-1": row(1100, 15, rtime=40), "web-2": row(2100, 10, rtime=12)},
         {"web-1": row(1200, 25, rtime=50), "web-2": row(2200, 10, rtime=11)}]
    fig = haproxy.group_figures(s, ["web-1"])
    assert fig["responses"] == 200 and fig["errors"] == 20 and fig["error_rate"] == 0.1
    assert fig["p95_ms"] == 50
    assert fig["per_server"]["web-1"]["hrsp_5xx"] == 20 and fig["per_server"]["web-1"]["rtime_max"] == 150
    both = haproxy.group_figures(s, ["web-1", "web-2"])
    assert both["responses"] == 400 and both["errors"] == 20 and both["error_rate"] == 0.05


def test_a_reading_counts_only_when_the_server_answered_since_the_last_sample():
    s = [{"w": row(10, rtime=900)}, {"w": row(10, rtime=900)}, {"w": row(20, rtime=30)}]
    assert haproxy.server_figures(s, "w")["rtimes"] == [30]


def test_a_counter_reset_counts_from_zero():
    s = [{"w": row(5000, 100)}, {"w": row(300, 3)}]  # HAProxy reloaded in between
    fig = haproxy.server_figures(s, "w")
    assert fig["responses"] == 300 and fig["errors"] == 3


def test_p95_nearest_rank():
    assert haproxy.p95([]) is None
    assert haproxy.p95([7]) == 7
    assert haproxy.p95(list(range(1, 101))) == 95
    assert haproxy.p95(list(range(1, 21))) == 19


def decide(settings, samples, new, old):
    """The gate's decision on the haproxy provider's figures of ``samples``."""
    return analysis.decide(settings, haproxy.figures_of(samples, new, old), new, old)


SET = analysis.parse({"bake": 60, "max_error_rate": "1%", "min_requests": 100}, "env")


def test_baseline_fails_a_release_serving_ten_percent_errors():
    s = [{"web-1": row(0), "web-2": row(0), "web-3": row(0)},
         {"web-1": row(500, 50), "web-2": row(500, 1), "web-3": row(500, 0)}]
    out = decide(SET, s, ["web-1"], ["web-2", "web-3"])
    assert out["verdict"] == "fail" and not out["passed"] and out["mode"] == "baseline"
    assert out["new"]["error_rate"] == 0.1 and out["old"]["error_rate"] == 0.001
    assert out["reasons"] == ["error rate 10.00% (50 5xx of 500 responses on web-1) is above the old release's "
                              "0.10% (1 of 1000 on web-2, web-3) + max_error_rate 1.00%"]
    assert "new (web-1): 500 responses, 50 5xx (10.00%)" in analysis.describe(out)


def test_baseline_passes_when_the_old_release_fails_as_much():
    s = [{"web-1": row(0), "web-2": row(0)}, {"web-1": row(500, 50), "web-2": row(500, 48)}]
    out = decide(SET, s, ["web-1"], ["web-2"])
    assert out["verdict"] == "pass" and out["passed"]
    absolute = decide({**SET, "compare": "absolute"}, s, ["web-1"], ["web-2"])
    assert absolute["verdict"] == "fail" and absolute["mode"] == "absolute"
    assert absolute["reasons"] == ["error rate 10.00% (50 5xx of 500 responses on web-1) is above max_error_rate 1.00%"]


def test_no_old_server_left_or_too_little_baseline_traffic_means_absolute_limits():
    s = [{"web-1": row(0), "web-2": row(0)}, {"web-1": row(500, 4), "web-2": row(50, 0)}]
    out = decide(SET, s, ["web-1", "web-2"], [])
    assert out["mode"] == "absolute" and out["notes"] == ["no server left on the old release: absolute limits"]
    assert out["verdict"] == "pass"  # 4 of 550 = 0.73 %
    out = decide(SET, s, ["web-1"], ["web-2"])
    assert out["mode"] == "absolute" and "answered 50 requests, fewer than min_requests=100" in out["notes"][0]
    assert out["verdict"] == "pass"  # 0.8 %


def test_the_limit_itself_passes():
    s = [{"w": row(0)}, {"w": row(1000, 10)}]
    assert decide({**SET, "compare": "absolute"}, s, ["w"], [])["passed"]
    s = [{"w": row(0)}, {"w": row(1000, 11)}]
    assert not decide({**SET, "compare": "absolute"}, s, ["w"], [])["passed"]


def test_too_few_requests_is_inconclusive_and_fails_closed_unless_told():
    s = [{"web-1": row(0), "web-2": row(0)}, {"web-1": row(37, 0), "web-2": row(400)}]
    out = decide(SET, s, ["web-1"], ["web-2"])
    assert out["verdict"] == "inconclusive" and not out["passed"]
    assert out["reasons"] == ["inconclusive: the new release's servers (web-1) answered 37 requests in the bake, "
                              "fewer than min_requests=100"]
    assert decide({**SET, "inconclusive": "pass"}, s, ["web-1"], ["web-2"])["passed"]
    assert decide({**SET, "min_requests": 0}, [{"w": row(0)}, {"w": row(0)}], ["w"], [])["passed"]


def test_latency_limit_against_baseline_and_absolute():
    setting = {**SET, "max_p95_ms": 100}
    s = [{"n": row(0), "o": row(0)}, {"n": row(200, rtime=90), "o": row(200, rtime=20)},
         {"n": row(400, rtime=180), "o": row(400, rtime=30)}]
    out = decide(setting, s, ["n"], ["o"])
    assert out["new"]["p95_ms"] == 180 and out["old"]["p95_ms"] == 30
    assert out["reasons"] == ["p95 of the mean response time (HAProxy rtime) 180 ms is above the old release's 30 ms "
                              "+ max_p95_ms 100 ms"]
    assert decide({**setting, "max_p95_ms": 200}, s, ["n"], ["o"])["passed"]
    absolute = decide({**setting, "compare": "absolute", "max_p95_ms": 150}, s, ["n"], ["o"])
    assert absolute["reasons"] == ["p95 of the mean response time (HAProxy rtime) 180 ms is above max_p95_ms 150 ms"]


# --------------------------------------------------------------------------- the runner's hook


def fake_run(tmp_path, envc, rates, abort_after=None):
    """A real Run on the fake Salt, whose LB counters grow by ``rates`` per stats call."""
    salt = FakeSalt(rates=rates)
    run = make_run(tmp_path, salt, envc)
    checks = []
    check = run.lock.check
    run.lock.check = lambda: checks.append(1) or check()
    if abort_after:
        salt.after_stats = lambda n: n >= abort_after and setattr(run, "aborted", "SIGTERM")
    run.salt, run.checks = salt, checks
    return run


def _events(run):
    return [(tag.rsplit("/", 1)[1], data) for tag, data in run.salt.fired]


PLAN = {"stages": [{"name": "gray", "batches": [["web-1"]]}, {"name": "all", "batches": [["web-2", "web-3"]]}]}
GRAY = PLAN["stages"][0]


def test_runner_hook_stops_a_bad_release_and_reports_the_figures(tmp_path):
    run = fake_run(tmp_path, {"analysis": {"bake": 1, "interval": 0.5, "min_requests": 50}},
                   {"web-1": (100, 10), "web-2": (100, 0), "web-3": (100, 0)})
    with pytest.raises(DeployError, match=r"analysis of stage gray failed: error rate 10.00% .* on web-1\) is above "
                                          r"the old release's 0.00%"):
        gating.watch(run, PLAN, GRAY, ["web-1"])
    calls = run.salt.stats_calls
    assert 3 <= len(calls) <= 4 and calls[0] == ["web-1", "web-2", "web-3"]
    assert [(what, data["phase"]) for what, data in _events(run)] == [("analysis", "start")] + [
        ("analysis", "sample")] * (len(calls) - 2) + [("analysis", "end")]
    data = _events(run)[-1][1]
    assert data["verdict"] == "fail" and data["stage"] == "gray" and data["batch"] is None and data["reasons"]
    assert data["figures"]["new"]["servers"] == ["web-1"] and data["figures"]["old"]["servers"] == ["web-2", "web-3"]
    assert run.timings["analysis"][0]["verdict"] == "fail"
    assert run.timings["analysis"][0]["window"] == [1001.0, 1000.0 + len(calls)]
    assert run.checks
    assert "watching live traffic on the LB for 1s" in _events(run)[0][1]["message"]


def test_runner_hook_passes_a_good_release_and_skips_what_is_not_asked(tmp_path):
    rates = {"web-1": (100, 0), "web-2": (100, 0), "web-3": (100, 0)}
    run = fake_run(tmp_path / "a", {"analysis": {"bake": 1, "interval": 0.5, "min_requests": 50}}, rates)
    gating.watch(run, PLAN, GRAY, ["web-1"])
    assert run.timings["analysis"][0]["verdict"] == "pass"
    # per batch only when asked; not for rollbacks; not without analysis; not before anything switched
    run = fake_run(tmp_path / "b", {"analysis": {"bake": 1, "after": "batch"}}, rates)
    gating.watch(run, PLAN, GRAY, ["web-1"])
    assert run.salt.stats_calls == []
    run = fake_run(tmp_path / "c", {"analysis": {"bake": 1}}, rates)
    gating.watch(run, PLAN, GRAY, ["web-1"], batch=1)
    run.kind = "rollback"
    gating.watch(run, PLAN, GRAY, ["web-1"])
    run.kind = "release"
    gating.watch(run, PLAN, GRAY, [])
    assert run.salt.stats_calls == []
    run = fake_run(tmp_path / "d", {}, rates)
    gating.watch(run, PLAN, GRAY, ["web-1"])
    assert run.salt.stats_calls == []


def test_runner_hook_inconclusive_pass_warns(tmp_path):
    run = fake_run(tmp_path, {"analysis": {"bake": 1, "interval": 0.5, "inconclusive": "pass"}},
                   {"web-1": (1, 0), "web-2": (1, 0), "web-3": (1, 0)})
    gating.watch(run, PLAN, GRAY, ["web-1"])
    assert run.lock.warnings and "passed without evidence" in run.lock.warnings[0]


def test_runner_hook_stops_waiting_on_a_signal(tmp_path):
    run = fake_run(tmp_path, {"analysis": {"bake": 30, "interval": 0.5}},
                   {"web-1": (1, 0), "web-2": (1, 0), "web-3": (1, 0)}, abort_after=2)
    with pytest.raises(Aborted, match="during the analysis of stage gray"):
        gating.watch(run, PLAN, GRAY, ["web-1"])
    assert len(run.salt.stats_calls) == 2


def test_stages_call_the_hook_after_each_batch_and_as_the_first_gate_of_a_stage(tmp_path):
    seen = []

    def batch(run, stage, index, nodes, release, **kw):
        for node in nodes:
            run.nodes[node] = {"old": "r1", "new": release, "result": "ok"}
        return list(nodes)

    def watch(run, plan, stage, switched_nodes=None, batch=None):
        seen.append((stage["name"], batch, sorted(runs.switched(run))))

    original = (batches.batch, gating.watch)
    batches.batch, gating.watch = batch, watch
    try:
        run = fake_run(tmp_path, {}, {})
        run.nodes, run.release = {"pre-1": {"old": "r1", "new": "r2", "result": "ok"}}, "r2"
        batches.stages(run, PLAN, "r2")
    finally:
        batches.batch, gating.watch = original
    assert seen == [("gray", 1, ["pre-1", "web-1"]), ("gray", None, ["pre-1", "web-1"]),
                    ("all", 1, ["pre-1", "web-1", "web-2", "web-3"]),
                    ("all", None, ["pre-1", "web-1", "web-2", "web-3"])]


def test_the_hook_watches_the_switched_nodes_behind_the_lb_only(tmp_path):
    run = fake_run(tmp_path, {"analysis": {"bake": 1, "interval": 0.5, "min_requests": 50}},
                   {"web-1": (100, 0), "web-2": (100, 0), "web-3": (100, 0)})
    run.release = "r2"
    run.nodes = {n: {"old": "r1", "new": "r2", "result": "ok"} for n in ("pre-1", "web-1")}
    run.nodes["web-2"] = {"old": "r1", "new": "r1", "result": "failed"}  # switched back
    gating.watch(run, PLAN, GRAY)
    entry = run.timings["analysis"][0]
    assert entry["new"]["servers"] == ["web-1"] and entry["old"]["servers"] == ["web-2", "web-3"]
