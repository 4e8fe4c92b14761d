"""The runner's batches behind the load balancer (``_stages``, ``_batch``): one LB call between batches.

Issue 15 goal 2: within a stage, the call that takes batch N+1 out of the LB also puts batch N
back (``deploy_lb.swap``), so a batch costs two sequential Salt calls, not three.  Checked
against a load balancer and nodes simulated in memory, with the invariant that matters for
recovery: before any LB call changes anything, every server out of the LB (or about to be) is
in the run's record of detached nodes (``run.lock.set_detached``), and at the end nothing is
left out but a node that never answered.
"""

import pytest
from deploy_master import Aborted, DeployError
from saltext_deploy._runners import deploy as runner


class Lock:
    def __init__(self):
        self.record = []

    def detached(self):
        return list(self.record)

    def set_detached(self, nodes):
        self.record = sorted(nodes)

    def check(self):
        pass


class Run:
    """What ``_stages`` and ``_batch`` use of ``_Run``; an LB and nodes in memory."""

    project, env, mode, kind = "rainbow", "pro", "normal", "release"
    has_lb = True
    lb = {"driver": "haproxy", "minion": "lb-1", "drain_timeout": 1}
    envc = {}  # no analysis, no pause: the stage gates pass at once

    def __init__(self, failing=(), silent=(), abort_after=None):
        self.lock = Lock()
        self.out = set()  # servers the simulated LB has out of service
        self.lb_calls = []
        self.switches = []
        self.failing, self.silent_nodes, self.abort_after = set(failing), set(silent), abort_after
        self.nodes, self.failed, self.silent, self.refused, self.timings = {}, [], set(), {}, {}
        self.max_failures = 0
        self.aborted = None
        self.log = []

    def progress(self, message, **data):
        self.log.append(message)

    def fire(self, *args, **kwargs):
        pass

    def check_abort(self, where):
        if self.aborted:
            raise Aborted(f"aborted {where}")

    def lb_call(self, fun, nodes, **kwarg):
        restore = list(kwarg.get("restore") or [])
        self.lb_calls.append((fun, sorted(nodes), sorted(restore)))
        recorded = set(self.lock.detached())
        if fun in ("detach", "swap"):
            assert set(nodes) <= recorded, "a node is taken out before the run records it"
        assert self.out <= recorded, "a node is out of the LB without the run's record"
        if fun == "attach":
            self.out -= set(nodes)
            return {"restored": {n: "ready" for n in nodes}}
        self.out -= set(restore)
        self.out |= set(nodes)
        return {"prior": {n: "ready" for n in nodes}, "drain_seconds": 0.0, "restored": {n: "ready" for n in restore}}

    def call(self, nodes, fun, kwarg=None, timeout=None):
        assert fun == "deploy.switch"
        self.switches.append(sorted(nodes))
        out = {}
        for node in nodes:
            if node in self.silent_nodes:
                out[node] = {"ok": False, "silent": True, "error": "no response"}
            elif node in self.failing:
                out[node] = {"ok": False, "error": "checks failed",
                             "ret": {"result": False, "previous": "r1", "current": "r1", "reverted": True}}
            else:
                out[node] = {"ok": True, "ret": {"result": True, "previous": "r1", "current": "r2", "steps": [],
                                                 "seconds": 0.1}}
        if self.abort_after is not None and len(self.switches) == self.abort_after:
            self.aborted = "SIGTERM"
        return out


@pytest.fixture(autouse=True)
def _no_store(monkeypatch):
    monkeypatch.setattr(runner, "_node_call", lambda run, nodes, fun, kwarg: run.call(nodes, fun, kwarg))


def _plan(*stages):
    return {"stages": [{"name": f"s{i}", "batches": [list(b) for b in batches]} for i, batches in enumerate(stages, 1)]}


def test_one_lb_call_between_batches_of_a_stage():
    run = Run()
    runner._stages(run, _plan([["w1", "w2"], ["w3", "w4"], ["w5"]]), "r2")
    assert run.lb_calls == [
        ("detach", ["w1", "w2"], []),
        ("swap", ["w3", "w4"], ["w1", "w2"]),
        ("swap", ["w5"], ["w3", "w4"]),
        ("attach", ["w5"], []),
    ]
    assert run.out == set() and run.lock.detached() == []
    assert all(run.nodes[n]["out_of_lb"] is not None for n in ("w1", "w2", "w3", "w4", "w5"))
    assert [b["nodes"] for b in run.timings["batches"]] == [["w1", "w2"], ["w3", "w4"], ["w5"]]


def test_no_node_waits_out_of_the_lb_across_a_stage_boundary():
    run = Run()
    runner._stages(run, _plan([["w1"], ["w2"]], [["w3"], ["w4"]]), "r2")
    assert [c[0] for c in run.lb_calls] == ["detach", "swap", "attach", "detach", "swap", "attach"]
    assert run.out == set() and run.lock.detached() == []


def test_a_failing_batch_stops_the_rollout_with_every_node_back():
    run = Run(failing={"w3"})
    with pytest.raises(DeployError, match="max_failures"):
        runner._stages(run, _plan([["w1"], ["w2", "w3"], ["w4"]]), "r2")
    assert run.lb_calls == [("detach", ["w1"], []), ("swap", ["w2", "w3"], ["w1"]), ("attach", ["w2", "w3"], [])]
    assert run.out == set() and run.lock.detached() == []
    assert run.switches == [["w1"], ["w2", "w3"]]


def test_an_abort_between_batches_puts_the_last_batch_back():
    run = Run(abort_after=1)
    with pytest.raises(Aborted):
        runner._stages(run, _plan([["w1"], ["w2"], ["w3"]]), "r2")
    assert run.lb_calls == [("detach", ["w1"], []), ("attach", ["w1"], [])]
    assert run.out == set() and run.lock.detached() == []


def test_a_silent_node_stays_out_and_recorded():
    run = Run(silent={"w2"})
    run.max_failures = 5
    runner._stages(run, _plan([["w1", "w2"], ["w3"]]), "r2")
    assert run.lb_calls == [("detach", ["w1", "w2"], []), ("swap", ["w3"], ["w1"]), ("attach", ["w3"], [])]
    assert run.out == {"w2"} and run.lock.detached() == ["w2"]


def test_a_failing_lb_call_puts_back_what_it_can():
    run = Run()
    original = run.lb_call

    def lb_call(fun, nodes, **kwarg):
        if fun == "swap":
            run.lb_calls.append((fun, sorted(nodes), sorted(kwarg.get("restore") or [])))
            raise DeployError("load balancer: swap failed")
        return original(fun, nodes, **kwarg)

    run.lb_call = lb_call
    with pytest.raises(DeployError, match="swap failed"):
        runner._stages(run, _plan([["w1"], ["w2"]]), "r2")
    assert run.lb_calls[-1] == ("attach", ["w1", "w2"], [])
    assert run.out == set() and run.lock.detached() == []


def test_a_congested_master_is_asked_again_not_an_unexpected_error(monkeypatch):
    """Issue 15 goal 5: at 50+ nodes the master, busy compiling every node's pillar, let Salt's client
    time out (``SaltClientError: Salt request timed out. The master is not responding``) and the
    release died with "unexpected error".  The job may run all the same: the nodes are asked, as
    for a slow node (``stragglers``)."""
    from salt.exceptions import SaltClientError

    class Client:
        def cmd(self, *args, **kwargs):
            raise SaltClientError("Salt request timed out. The master is not responding.")

    class Fake:
        client, timeout, salt_calls = Client(), 5, 0

        def stragglers(self, jid, missing):
            self.asked = sorted(missing)
            return {"web-1": {"ret": {"result": True}, "retcode": 0}}, {"web-2": runner.NO_RESPONSE}

    monkeypatch.setattr(runner, "__opts__", {}, raising=False)
    fake = Fake()
    out = runner._Run.call(fake, ["web-2", "web-1"], "deploy.prepare")
    assert fake.asked == ["web-1", "web-2"]
    assert out["web-1"] == {"ok": True, "ret": {"result": True}}
    assert out["web-2"]["ok"] is False and out["web-2"]["error"] == runner.NO_RESPONSE
