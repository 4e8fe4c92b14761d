"""The gate seam (deploy_master.gates): the registry of providers, the analysis gate's decision on
any provider's figures, and the pause gate.  Pure logic; on daemons: tests/integration/test_gates.py
and tests/integration/test_analysis.py."""

import re
import sys
import types

import pytest
from salt.exceptions import SaltInvocationError
from deploy_master import gates
from deploy_master.gates import analysis, haproxy, pause


@pytest.fixture
def provider(monkeypatch):
    """A provider ``fake`` registered as a new one is: one module, one line in PROVIDERS."""
    mod = types.ModuleType("deploy_master.gates.fake")
    mod.figures = {"new": {"requests": 200, "errors": 0, "latency_ms": 40}, "old": {"requests": 400, "errors": 4,
                                                                                    "latency_ms": 30}, "notes": []}
    mod.sampled = []

    def settings(raw, where):
        unknown = sorted(set(raw) - {"query"})
        if unknown:
            raise SaltInvocationError(f"{where}: unknown analysis key {unknown[0]!r}")
        return {"query": str(raw.get("query", "up"))}

    class Window:
        def __init__(self, settings, ctx):
            self.ctx = ctx

        def sample(self):
            mod.sampled.append(list(self.ctx.new))

        def figures(self):
            return mod.figures

    mod.settings, mod.Window = settings, Window
    monkeypatch.setitem(sys.modules, "deploy_master.gates.fake", mod)
    monkeypatch.setitem(gates.PROVIDERS, "fake", "fake")
    monkeypatch.setitem(analysis.CHOICES, "provider", tuple(gates.PROVIDERS))
    return mod


def _ctx(**kw):
    checks = []
    ctx = gates.Context(new=["web-1"], old=["web-2", "web-3"], check=checks.append,
                        event=lambda phase, message, **f: checks.append(phase), label="stage gray", **kw)
    return ctx, checks


def test_haproxy_is_the_default_provider_and_has_no_keys_of_its_own():
    s = analysis.parse({}, "env 'pro'")
    assert s["provider"] == "haproxy" and s["options"] == {}
    assert set(gates.PROVIDERS) >= {"haproxy"} and gates.provider("haproxy") is haproxy
    with pytest.raises(SaltInvocationError, match=re.escape("env 'pro': unknown analysis key 'query'")):
        analysis.parse({"query": "x"}, "env 'pro'")
    with pytest.raises(SaltInvocationError, match="analysis:provider 'datadog' must be one of haproxy"):
        analysis.parse({"provider": "datadog"}, "env 'pro'")


def test_a_provider_validates_its_own_keys_and_a_stage_inherits_them(provider):
    base = analysis.parse({"provider": "fake", "query": "rate(x)"}, "env 'pro'")
    assert base["options"] == {"query": "rate(x)"}
    assert analysis.parse({"bake": 5}, "stage", base)["options"] == {"query": "rate(x)"}
    assert analysis.parse({"query": "y"}, "stage", base)["options"] == {"query": "y"}
    with pytest.raises(SaltInvocationError, match="env 'pro': unknown analysis key 'url'"):
        analysis.parse({"provider": "fake", "url": "http://x"}, "env 'pro'")
    analysis.check_driver(base, "none", "env 'pro'")  # no DRIVERS: any LB (or none) will do
    with pytest.raises(SaltInvocationError, match="analysis needs the haproxy LB driver, not 'nginx'"):
        analysis.check_driver(analysis.parse({}, "env"), "nginx", "env 'pro'")


def test_the_decision_is_the_gates_on_any_providers_figures(provider):
    s = analysis.parse({"provider": "fake", "bake": 1, "interval": 0.5, "min_requests": 100,
                        "max_p95_ms": 5}, "env")
    ctx, checks = _ctx()
    out = analysis.run(s, ctx)
    assert out.verdict == "fail" and not out.passed
    assert out.reasons == ["latency 40 ms is above the old release's 30 ms + max_p95_ms 5 ms"]
    assert out.figures["new"]["servers"] == ["web-1"] and out.figures["old"]["error_rate"] == 0.01
    assert provider.sampled and "sample" in checks and "during the analysis of stage gray" in checks
    provider.figures = {"new": {"requests": 20, "errors": 0, "latency_ms": None}, "old": None, "notes": ["n"]}
    out = analysis.run({**s, "inconclusive": "pass"}, _ctx()[0])
    assert (out.verdict, out.passed) == ("inconclusive", True)
    assert out.record["notes"] == ["n", "no server left on the old release: absolute limits"]
    assert analysis.describe(out.record, s).startswith("new (web-1): 20 responses, 0 5xx (0.00%), latency None ms")


def test_the_haproxy_window_reads_the_lbs_counters():
    calls = []

    def lb_call(fun, nodes):
        calls.append((fun, list(nodes)))
        n = len(calls)
        row = {"hrsp_2xx": 100 * n, "hrsp_5xx": 0, "rtime": 20}
        return {"lb-1/rainbow": {"servers": {node: dict(row) for node in nodes}, "time": 1000 + n}}

    ctx, _ = _ctx(lb_call=lb_call)
    window = haproxy.Window({}, ctx)
    window.sample()
    fig = window.figures()
    assert [c[0] for c in calls] == ["stats"] * 3 and calls[0][1] == ["web-1", "web-2", "web-3"]
    assert fig["new"]["requests"] == fig["new"]["responses"] == 200 and fig["new"]["latency_ms"] == 20
    assert fig["samples"] == 3 and fig["window"] == [1001, 1003]


def test_the_pause_gate():
    assert pause.settings({}, {"pause": 30}, "stage") == 30 and pause.when(30) == "stage"
    with pytest.raises(SaltInvocationError):
        pause.settings({}, {"pause": "soon"}, "env 'pro' stage 'gray'")
    with pytest.raises(pause.Paused) as paused:
        pause.run(True, gates.Context(label="gray", state=lambda: {"stage": "gray", "next": 1}))
    assert paused.value.state == {"stage": "gray", "next": 1}
