"""Several load balancers: the ``lb`` pillar (one LB or a list, ``deploy_master.lbs``), and the run's
LB actions on every LB (``rollout.lb.LoadBalancers``: one batched call per step, answers merged, a
failing LB's batch put back everywhere), against LB minions simulated in memory."""

import pytest
from deploy_master import DeployError, config, lbs, pillar_schema
from deploy_master.gates import haproxy
from deploy_master.rollout import batches
from deploy_master.rollout import lb as balancer
from salt.exceptions import SaltInvocationError

from tests.unit.fakesalt import FakeSalt, make_run

HAP = {"driver": "haproxy", "minion": "lb-1", "socket": "/run/haproxy/admin.sock", "backend": "rainbow"}
NGX = {"driver": "nginx", "minion": "lb-2", "upstream_file": "/etc/nginx/up.conf", "servers": {"web-1": "10.0.0.1:80"}}


# --------------------------------------------------------------------------- parsing


def test_one_mapping_stays_valid_and_is_named():
    assert lbs.parse(HAP) == [{**HAP, "name": "lb-1/rainbow"}]
    assert lbs.parse(None) == lbs.parse({"driver": "none"}) == lbs.parse([]) == []
    assert lbs.DRIVERS == ("haproxy", "nginx")  # pillar_schema.LB_DRIVERS without none


def test_a_list_of_any_drivers_each_named_uniquely():
    two_on_one = [HAP, {**HAP, "socket": "/run/haproxy/b.sock"}, NGX, {**NGX, "name": "edge"}]
    got = lbs.parse(two_on_one)
    assert [lb["name"] for lb in got] == ["lb-1/rainbow#1", "lb-1/rainbow#2", "lb-2/nginx", "edge"]
    assert [lb["driver"] for lb in got] == ["haproxy", "haproxy", "nginx", "nginx"]


@pytest.mark.parametrize("raw, message", [
    ([HAP, {**HAP, "minon": "lb-2"}], "unknown key 'minon' in lb[1]; did you mean 'minion'?"),
    ([HAP, {"driver": "f5", "minion": "x"}], "lb[1]: unknown lb driver 'f5'"),
    ([HAP, {"driver": "none"}], "lb[1]: unknown lb driver 'none'"),
    ([{**HAP, "minion": ""}], "lb[0] (haproxy): lb needs the 'minion'"),
    ([HAP, "lb-2"], "lb[1]: must be a dict"),
    ([{**HAP, "drain_timeout": "soon"}], "lb[0]: drain_timeout: 'soon' must be a number of seconds"),
    ([{**NGX, "servers": ["10.0.0.1:80"]}], "lb[0] (nginx): servers must be a dict"),
    ([{**HAP, "name": "a"}, {**NGX, "name": "a"}], "lb[1]: name 'a' is given to two load balancers"),
    ("lb-1", "lb must be a dict (one load balancer) or a list of them"),
])
def test_a_bad_entry_is_named(raw, message):
    with pytest.raises(SaltInvocationError) as exc:
        lbs.parse(raw, "project 'rainbow'")
    assert message in str(exc.value) and str(exc.value).startswith("project 'rainbow': ")


def _pillar(lb, **env):
    return {"deploy": {"projects": {"rainbow": {
        "repo": "/r", "root": "/data/www/rainbow", "lb": lb,
        "envs": {"pro": {"target": "web-*", **env}}}}}}


def test_the_schema_names_a_misspelt_key_in_a_list_entry():
    pillar = _pillar([HAP, {**NGX, "upstream_fil": "/x"}])
    with pytest.raises(SaltInvocationError,
                       match=r"unknown key 'upstream_fil' in lb\[1\]; did you mean 'upstream_file'"):
        config.project_env(pillar, "rainbow", "pro")
    assert pillar_schema.problems(_pillar([HAP, NGX])["deploy"]["projects"]["rainbow"], "rainbow") == []


def test_config_gives_the_envs_lbs_and_wait_up():
    conf, envc = config.project_env(_pillar([HAP, NGX], lb_wait_up=12), "rainbow", "pro")
    assert [lb["name"] for lb in config.load_balancers(conf, envc)] == ["lb-1/rainbow", "lb-2/nginx"]
    assert config.lb_wait_up(conf, envc) == 12
    assert config.lb_wait_up(conf, {}) == 30
    with pytest.raises(SaltInvocationError, match="lb_wait_up: -1 must be 0 or more seconds"):
        config.project_env(_pillar(HAP, lb_wait_up=-1), "rainbow", "pro")


def test_analysis_needs_every_lb_to_count():
    with pytest.raises(SaltInvocationError, match="analysis needs the haproxy LB driver"):
        config.project_env(_pillar([HAP, NGX], analysis={"bake": 10}), "rainbow", "pro")


# --------------------------------------------------------------------------- merging answers


def test_states_agree_or_say_which_lb_differs():
    merged = lbs.merge_states({"dc1": {"web-1": "ready", "web-2": "ready"},
                               "dc2": {"web-1": "ready", "web-2": "maint"}})
    assert merged == {"web-1": "ready", "web-2": "dc1: ready, dc2: maint"}
    assert lbs.not_up_nodes({"a": {"web-1": "DOWN"}, "b": {"web-1": "UP 1/2"}}) == {"web-1": "a: DOWN, b: UP 1/2"}


def test_counters_are_summed_across_lbs_and_means_keep_the_largest():
    got = haproxy.combined({
        "dc1": {"servers": {"web-1": {"hrsp_2xx": 10, "hrsp_5xx": 1, "rtime": 20, "rtime_max": 90, "status": "UP"}},
                "time": 5},
        "dc2": {"servers": {"web-1": {"hrsp_2xx": 5, "hrsp_5xx": 2, "rtime": 40, "rtime_max": 70, "status": "UP"}},
                "time": 7},
    })
    assert got == {"servers": {"web-1": {"hrsp_2xx": 15, "hrsp_5xx": 3, "rtime": 40, "rtime_max": 90,
                                         "status": "UP"}}, "time": 7}


# --------------------------------------------------------------------------- the run's LBs, minions in memory


class Minions:
    """LB minions in memory: ``deploy_lb.each`` as each minion answers it; ``fail``: {lb name: action}."""

    def __init__(self, fail=None, not_up=None, silent=()):
        self.calls, self.out, self.fail, self.not_up, self.silent = [], {}, fail or {}, not_up or {}, set(silent)

    def __call__(self, minions, fun, kwarg):
        assert fun == "deploy_lb.each"
        self.calls.append((sorted(minions), kwarg["fun"], kwarg["servers"], kwarg.get("restore", [])))
        answers = {}
        for minion in minions:
            if minion in self.silent:
                answers[minion] = {"ok": False, "silent": True, "error": "no response"}
                continue
            ret = {"lbs": {}}
            for lb in (lb for lb in kwarg["lbs"] if lb["minion"] == minion):
                ret["lbs"][lb["name"]] = self.act(lb["name"], kwarg)
            if kwarg["fun"] in ("attach", "swap") and "wait_up" in kwarg:
                ret["wait_seconds"] = 1.5
                ret["not_up"] = {n: s for n, s in self.not_up.items() if n in ret["lbs"]}
                if kwarg["fun"] == "swap" and ret["not_up"]:
                    ret["held"] = True
            answers[minion] = {"ok": True, "ret": ret}
        return answers

    def act(self, name, kwarg):
        fun, servers = kwarg["fun"], kwarg["servers"]
        if self.fail.get(name) == fun:
            return {"ok": False, "error": f"{fun} refused"}
        out = self.out.setdefault(name, set())
        if fun in ("attach", "swap"):
            out -= set(kwarg.get("restore") or servers)
        if fun in ("detach", "swap"):
            out |= set(servers)
        if fun == "status":
            return {"ok": True, "ret": {"states": {s: "maint" if s in out else "ready" for s in servers},
                                        "detached": sorted(out & set(servers))}}
        return {"ok": True, "ret": {"prior": {s: "ready" for s in servers}, "drain_seconds": 0.2,
                                    "restored": {s: "ready" for s in kwarg.get("restore") or servers}}}


DEFS = lbs.parse([HAP, {**HAP, "socket": "/run/b.sock", "name": "b"}, NGX])


def test_one_call_per_step_to_every_lb_minion():
    minions = Minions()
    run_lbs = balancer.LoadBalancers(DEFS, minions)
    run_lbs.detach(["web-1"])
    assert minions.calls == [(["lb-1", "lb-2"], "detach", ["web-1"], [])]
    assert minions.out == {"lb-1/rainbow": {"web-1"}, "b": {"web-1"}, "lb-2/nginx": {"web-1"}}
    assert run_lbs.status(["web-1", "web-2"]) == {"web-1": "maint", "web-2": "ready"}
    assert run_lbs.describe() == ("3 load balancers: haproxy lb-1/rainbow on lb-1, haproxy b on lb-1, "
                                  "nginx lb-2/nginx on lb-2")
    assert balancer.LoadBalancers(DEFS[:1], minions).describe() == "haproxy on lb-1"


def test_one_lb_failing_names_it_and_one_lb_reads_as_it_always_did():
    with pytest.raises(DeployError, match=r"detach failed on 1 of 3 LBs: b \(haproxy on lb-1: detach refused\)"):
        balancer.LoadBalancers(DEFS, Minions(fail={"b": "detach"})).detach(["web-1", "web-2"])
    with pytest.raises(DeployError, match=r"^load balancer \(haproxy on lb-1\): detach failed: detach refused$"):
        balancer.LoadBalancers(DEFS[:1], Minions(fail={"lb-1/rainbow": "detach"})).detach(["web-1"])


def test_one_lb_failing_to_drain_puts_the_batch_back_everywhere(tmp_path):
    """The batch fails before its switch, and every LB that had it out has it back (its recorded state)."""
    salt = FakeSalt()
    run = make_run(tmp_path, salt)
    minions = Minions(fail={"b": "detach"})
    run.balancer = balancer.LoadBalancers(DEFS, minions, 10)
    with pytest.raises(DeployError, match="b .haproxy on lb-1: detach refused"):
        batches.stages(run, {"stages": [{"name": "s1", "batches": [["web-1", "web-2"]]}]}, "r2")
    assert [c[1] for c in minions.calls] == ["detach", "attach"] and salt.switches == []
    assert minions.out == {"lb-1/rainbow": set(), "b": set(), "lb-2/nginx": set()}
    assert run.lock.detached() == []


def test_a_silent_lb_minion_fails_the_step():
    run_lbs = balancer.LoadBalancers(DEFS, Minions(silent={"lb-2"}))
    with pytest.raises(DeployError, match="lb-2/nginx .nginx on lb-2: no response"):
        run_lbs.status(["web-1"])


def test_swap_on_one_minion_is_one_call_on_several_an_attach_then_a_detach():
    one = lbs.parse([HAP, {**HAP, "socket": "/run/b.sock"}])
    minions = Minions()
    out = balancer.LoadBalancers(one, minions, 10).swap(["web-2"], ["web-1"])
    assert [c[1] for c in minions.calls] == ["swap"] and out["detached"] and out["lb_wait_seconds"] == 1.5
    minions = Minions()
    out = balancer.LoadBalancers(DEFS, minions, 10).swap(["web-2"], ["web-1"])
    # every LB must see web-1 UP before any LB takes web-2 out
    assert [c[1] for c in minions.calls] == ["attach", "detach"] and out["detached"]


def test_a_server_not_up_is_reported_and_the_next_batch_is_not_taken_out():
    minions = Minions(not_up={"b": {"web-1": "DOWN"}})
    out = balancer.LoadBalancers(DEFS, minions, 10).swap(["web-2"], ["web-1"])
    assert out["not_up"] == {"web-1": "b: DOWN"} and out["detached"] is False
    assert [c[1] for c in minions.calls] == ["attach"]


def test_no_wait_when_lb_wait_up_is_zero():
    minions = Minions()
    out = balancer.LoadBalancers(DEFS, minions, 0).attach(["web-1"])
    assert minions.calls == [(["lb-1", "lb-2"], "attach", ["web-1"], [])] and out["lb_wait_seconds"] is None


def test_the_analysis_reads_every_lbs_counters_in_one_call():
    def stats(minions, fun, kwarg):
        return {m: {"ok": True, "ret": {"lbs": {lb["name"]: {"ok": True, "ret": {
            "servers": {s: {"hrsp_2xx": 10, "hrsp_5xx": 0, "rtime": 5, "status": "UP"} for s in kwarg["servers"]},
            "time": 1.0}} for lb in kwarg["lbs"] if lb["minion"] == m}}} for m in minions}

    per_lb = balancer.LoadBalancers(DEFS, stats).stats(["web-1"])
    assert sorted(per_lb) == ["b", "lb-1/rainbow", "lb-2/nginx"]
    assert haproxy.combined(per_lb)["servers"]["web-1"]["hrsp_2xx"] == 30


def test_validate_asks_every_lb_minion_and_names_each_lbs_answer():
    from deploy_master import views  # pylint: disable=import-outside-toplevel

    plan = {"nodes": ["web-1"], "down": [], "preprod": None, "stages": [{"name": "all", "batches": [["web-1"]]}]}
    asked, lb = views.validation_targets(plan, DEFS)
    assert asked == ["lb-1", "lb-2", "web-1"] and all(one["servers_asked"] == ["web-1"] for one in lb)
    answers = {"web-1": {"ok": True, "ret": {"problems": []}},
               "lb-1": {"ok": True, "ret": {"problems": [], "lbs": {"lb-1/rainbow": {"states": {"web-1": "ready"}},
                                                                   "b": {"error": "no such socket"}}}},
               "lb-2": {"ok": False, "silent": True, "error": "no response"}}
    out = views.node_problems(plan, lb, answers, "rainbow")
    assert out["lb-1"]["lb"] == {"lb-1/rainbow": {"states": {"web-1": "ready"}}, "b": {"error": "no such socket"}}
    assert out["lb-1"]["problems"] == ["load balancer b: no such socket"] and out["lb-1"]["result"] == "invalid"
    assert out["lb-2"]["result"] == "no response" and out["lb-2"]["lb"] == {"lb-2/nginx": {"error": "no response"}}
    assert out["web-1"] == {"result": "ok", "problems": []}
    # one LB: its answer as it always was
    one = views.node_problems(plan, views.validation_targets(plan, DEFS[:1])[1],
                              {"lb-1": answers["lb-1"]}, "rainbow")
    assert one["lb-1"]["lb"] == {"states": {"web-1": "ready"}} and one["lb-1"]["result"] == "ok"
