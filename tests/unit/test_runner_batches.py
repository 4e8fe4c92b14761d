"""The runner's batches behind the load balancer (``_stages``, ``_batch``): one LB call between batches.

Within a stage, the call that takes batch N+1 out of the LB also puts batch N
back (``deploy_lb.swap``), so a batch costs two sequential Salt calls, not three.  Checked
against a load balancer and nodes simulated in memory, with the invariant that matters for
recovery: before any LB call changes anything, every server out of the LB (or about to be) is
in the run's record of detached nodes (``run.lock.set_detached``), and at the end nothing is
left out but a node that never answered.
"""

import pytest
from deploy_master import Aborted, DeployError
from deploy_master import jobs
from deploy_master.rollout import batches

from tests.unit.fakesalt import FakeSalt, make_run


def _plan(*stages):
    return {"stages": [{"name": f"s{i}", "batches": [list(b) for b in batches]} for i, batches in enumerate(stages, 1)]}


def test_one_lb_call_between_batches_of_a_stage(tmp_path):
    salt = FakeSalt()
    run = make_run(tmp_path, salt)
    batches.stages(run, _plan([["w1", "w2"], ["w3", "w4"], ["w5"]]), "r2")
    assert salt.lb_calls == [
        ("detach", ["w1", "w2"], []),
        ("swap", ["w3", "w4"], ["w1", "w2"]),
        ("swap", ["w5"], ["w3", "w4"]),
        ("attach", ["w5"], []),
    ]
    assert salt.out == set() and run.lock.detached() == []
    assert all(run.nodes[n]["out_of_lb"] is not None for n in ("w1", "w2", "w3", "w4", "w5"))
    assert [b["nodes"] for b in run.timings["batches"]] == [["w1", "w2"], ["w3", "w4"], ["w5"]]
    assert run.salt_calls == len(salt.calls) == 4 + 3  # one LB call and one switch per batch, the last attach
    events = [(tag.rsplit("/", 1)[1], d.get("phase"), d.get("batch")) for tag, d in salt.fired
              if tag.endswith(("/batch", "/stage"))]
    assert events == [("stage", "start", None), ("batch", "out", 1), ("batch", "in", 1), ("batch", "out", 2),
                      ("batch", "in", 2), ("batch", "out", 3), ("batch", "in", 3), ("stage", "end", None)]
    back = [d for tag, d in salt.fired if tag.endswith("/batch") and d["phase"] == "in"]
    assert [d["passed"] for d in back] == [["w1", "w2"], ["w3", "w4"], ["w5"]] and all(d["v"] == 1 for d in back)


def test_no_node_waits_out_of_the_lb_across_a_stage_boundary(tmp_path):
    salt = FakeSalt()
    run = make_run(tmp_path, salt)
    batches.stages(run, _plan([["w1"], ["w2"]], [["w3"], ["w4"]]), "r2")
    assert [c[0] for c in salt.lb_calls] == ["detach", "swap", "attach", "detach", "swap", "attach"]
    assert salt.out == set() and run.lock.detached() == []


def test_a_failing_batch_stops_the_rollout_with_every_node_back(tmp_path):
    salt = FakeSalt(failing={"w3"})
    run = make_run(tmp_path, salt)
    with pytest.raises(DeployError, match="max_failures"):
        batches.stages(run, _plan([["w1"], ["w2", "w3"], ["w4"]]), "r2")
    assert salt.lb_calls == [("detach", ["w1"], []), ("swap", ["w2", "w3"], ["w1"]), ("attach", ["w2", "w3"], [])]
    assert salt.out == set() and run.lock.detached() == []
    assert salt.switches == [["w1"], ["w2", "w3"]]
    (failed,) = [d for tag, d in salt.fired if tag.endswith("/node") and d["result"] == "failed"]
    assert failed["node"] == "w3" and failed["error"].startswith("checks failed")
    assert [d["result"] for tag, d in salt.fired if tag.endswith("/stage") and d["phase"] == "end"] == ["failed"]


def test_an_abort_between_batches_puts_the_last_batch_back(tmp_path):
    salt = FakeSalt()
    run = make_run(tmp_path, salt)
    salt.after_switch = lambda: setattr(run, "aborted", "SIGTERM")
    with pytest.raises(Aborted):
        batches.stages(run, _plan([["w1"], ["w2"], ["w3"]]), "r2")
    assert salt.lb_calls == [("detach", ["w1"], []), ("attach", ["w1"], [])]
    assert salt.out == set() and run.lock.detached() == []


def test_a_silent_node_stays_out_and_recorded(tmp_path):
    salt = FakeSalt(silent={"w2"})
    run = make_run(tmp_path, salt)
    run.max_failures = 5
    batches.stages(run, _plan([["w1", "w2"], ["w3"]]), "r2")
    assert salt.lb_calls == [("detach", ["w1", "w2"], []), ("swap", ["w3"], ["w1"]), ("attach", ["w3"], [])]
    assert salt.out == {"w2"} and run.lock.detached() == ["w2"]
    assert run.nodes["w2"]["error"] == jobs.NO_RESPONSE and ("saltutil.find_job", ["w2"]) in salt.calls


def test_a_failing_lb_call_puts_back_what_it_can(tmp_path):
    salt = FakeSalt()
    salt.lb_fails = {"swap"}
    run = make_run(tmp_path, salt)
    with pytest.raises(DeployError, match="load balancer \\(haproxy on lb-1\\): swap failed: swap refused"):
        batches.stages(run, _plan([["w1"], ["w2"]]), "r2")
    assert salt.lb_calls[-1] == ("attach", ["w1", "w2"], [])
    assert salt.out == set() and run.lock.detached() == []


def test_the_next_batch_leaves_once_the_last_is_up_and_the_wait_is_said(tmp_path):
    salt = FakeSalt()
    run = make_run(tmp_path, salt)
    batches.stages(run, _plan([["w1"], ["w2"]]), "r2")
    each = [(tag, d) for tag, d in salt.fired if tag.endswith("/batch") and d["phase"] == "in"]
    assert [d["lb_wait_seconds"] for _, d in each] == [0.5, 0.5]
    assert "w1 UP on every LB after 0.5s" in each[0][1]["message"]
    assert run.timings["lb_wait_seconds"] == [{"batch": "stage s1 batch 1/2", "seconds": 0.5},
                                              {"batch": "stage s1 batch 2/2", "seconds": 0.5}]
    waits = [c for c in salt.calls if c[0] == "deploy_lb.each"]
    assert len(waits) == 3  # still one LB call per batch, and the last put-back


def test_a_server_not_up_after_its_batch_fails_and_the_next_batch_stays_in(tmp_path):
    salt = FakeSalt()
    salt.not_up = {"w1": "DOWN"}
    run = make_run(tmp_path, salt)
    with pytest.raises(DeployError, match="max_failures"):
        batches.stages(run, _plan([["w1"], ["w2"], ["w3"]]), "r2")
    assert run.failed == ["w1"] and "not UP on the load balancer 0.5s after it was put back" in run.nodes["w1"]["error"]
    assert "lb-1/rainbow: DOWN" in run.nodes["w1"]["error"]
    assert salt.switches == [["w1"]]  # w2 was never switched
    assert salt.lb_calls == [("detach", ["w1"], []), ("attach", ["w1"], []), ("attach", ["w2"], [])]
    assert salt.out == set() and run.lock.detached() == []
    assert run.timings["lb_wait_seconds"] == [{"batch": "stage s1 batch 1/3", "seconds": 0.5}]


def test_a_server_not_up_within_max_failures_lets_the_next_batch_go_on(tmp_path):
    salt = FakeSalt()
    salt.not_up = {"w1": "DOWN"}
    run = make_run(tmp_path, salt)
    run.max_failures = 1
    batches.stages(run, _plan([["w1"], ["w2"], ["w3"]]), "r2")
    assert run.failed == ["w1"] and salt.switches == [["w1"], ["w2"], ["w3"]]
    # the swap held (w1 not UP): w2 goes out on its own call
    assert [c[0] for c in salt.lb_calls] == ["detach", "attach", "detach", "swap", "attach"]
    assert salt.out == set() and run.lock.detached() == []
    assert [w["seconds"] for w in run.timings["lb_wait_seconds"]] == [0.5, 0.5, 0.5]


def test_no_wait_when_lb_wait_up_is_zero_nor_after_a_failure(tmp_path):
    salt = FakeSalt(failing={"w2"})
    run = make_run(tmp_path, salt, envc={"lb_wait_up": 0})
    with pytest.raises(DeployError, match="max_failures"):
        batches.stages(run, _plan([["w1"], ["w2"], ["w3"]]), "r2")
    assert "lb_wait_seconds" not in run.timings
    salt = FakeSalt(failing={"w2"})
    run = make_run(tmp_path / "2", salt)
    with pytest.raises(DeployError, match="max_failures"):
        batches.stages(run, _plan([["w1"], ["w2"], ["w3"]]), "r2")
    assert [w["batch"] for w in run.timings["lb_wait_seconds"]] == ["stage s1 batch 1/3"]  # not the failed batch's


def test_a_congested_master_is_asked_again_not_an_unexpected_error(monkeypatch):
    """At 50+ nodes the master, busy compiling every node's pillar, let Salt's client
    time out (``SaltClientError: Salt request timed out. The master is not responding``) and the
    release died with "unexpected error".  The job may run all the same: the nodes are asked, as
    for a slow node (``stragglers``)."""
    from salt.exceptions import SaltClientError

    class Client:
        def run_job(self, *args, **kwargs):
            raise SaltClientError("Salt request timed out. The master is not responding.")

    fake = jobs.Transport({}, Client())

    def stragglers(jid, missing):
        fake.asked = sorted(missing)
        return {"web-1": {"ret": {"result": True}, "retcode": 0}}, {"web-2": jobs.NO_RESPONSE}

    fake.stragglers = stragglers
    out = fake.call(["web-2", "web-1"], "deploy.prepare")
    assert fake.asked == ["web-1", "web-2"]
    assert out["web-1"] == {"ok": True, "ret": {"result": True}}
    assert out["web-2"]["ok"] is False and out["web-2"]["error"] == jobs.NO_RESPONSE


class FakeBus:
    """The master's event bus as ``jobs.gather`` reads it: the queued events, then silence (``wait``
    seconds on the test's clock)."""

    def __init__(self):
        self.queue = []

    def get_event(self, wait, tag, **kwargs):
        if self.queue:
            return self.queue.pop(0)
        jobs.time.sleep(wait)
        return None

    def unsubscribe(self, tag):
        pass


class FindJobClient:
    """A master whose nodes answer ``saltutil.find_job`` late: an answer lands in the job cache
    ``late[node]`` rounds after the round that asked (None: never; a dead node).  The job's own
    return lands in the cache at round ``done[node]``."""

    def __init__(self, late, done):
        self.late, self.done = dict(late), dict(done)
        self.rounds = []  # (nodes asked, timeout) per find_job round
        self.cache = {}  # jid -> {node: {"ret": ...}}
        self.fj_jids = []
        self.event = FakeBus()
        self.opts = {"master_job_cache": "local_cache"}
        self.returners = {"local_cache.get_jid": lambda jid: {
            n: {"return": v["ret"]} for n, v in self.cache.get(jid, {}).items()}}

    def tick(self):
        r = len(self.rounds) - 1  # the round asking now
        for i, fj in enumerate(self.fj_jids):
            for node, delay in self.late.items():
                if delay is not None and i + delay == r:
                    self.cache.setdefault(fj, {})[node] = {"ret": {"jid": "J"} if r < self.done.get(node, 99) else {}}
        for node, at in self.done.items():
            if r >= at:
                self.cache.setdefault("J", {})[node] = {"ret": {"result": True}}

    def run_job(self, nodes, fun, arg=(), tgt_type=None, timeout=None, jid=None, **kwargs):
        assert fun == "saltutil.find_job" and list(arg) == ["J"]
        self.rounds.append((sorted(nodes), timeout))
        self.fj_jids.append(jid)
        self.tick()  # answers within the round (late == 0) land on the event bus
        self.event.queue = [{"tag": f"salt/job/{jid}/ret/{n}", "data": {"id": n, "return": v["ret"]}}
                            for n, v in self.cache.get(jid, {}).items() if n in nodes]
        return {"jid": jid, "minions": sorted(nodes)}

    def get_cache_returns(self, jid):
        return self.cache.get(jid, {})


def _straggler_run(monkeypatch, client, **opts):
    clock = [1000.0]  # a clock that moves only when the transport sleeps
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(jobs.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    return jobs.Transport({"gather_job_timeout": 10, **opts}, client)


def test_a_node_whose_find_job_answer_lands_late_is_alive_not_gone(monkeypatch):
    """At 100 nodes on a small machine every node took ~30 s to answer a
    ``find_job`` (a test.ping of 101 nodes: 29.8 s); the first release reported all 101 live
    nodes "minion down or not connected".  An answer to an earlier round that lands later still
    says the node lives, and each round waits twice as long as the one before."""
    client = FindJobClient(late={"web-1": 1, "web-2": None}, done={"web-1": 3})
    fake = _straggler_run(monkeypatch, client)
    found, verdicts = fake.stragglers("J", ["web-1", "web-2"])
    assert found == {"web-1": {"ret": {"result": True}, "retcode": 0}}
    assert verdicts == {"web-2": jobs.NO_RESPONSE}
    assert [t for _, t in client.rounds][:2] == [10, 20]


def test_a_dead_node_is_gone_after_its_silent_rounds(monkeypatch):
    client = FindJobClient(late={"web-2": None}, done={})
    fake = _straggler_run(monkeypatch, client, deploy_silent_rounds=3)
    found, verdicts = fake.stragglers("J", ["web-2"])
    assert found == {} and verdicts == {"web-2": jobs.NO_RESPONSE}
    assert client.rounds == [(["web-2"], 10), (["web-2"], 20), (["web-2"], 40)]


def test_a_question_the_master_did_not_take_is_no_evidence_against_the_node(monkeypatch):
    """A ``find_job`` the congested master could not publish (``SaltClientError``) is not a round
    the node left unanswered: at 100 nodes the runner's own publish timed out and every node was
    counted silent."""
    from salt.exceptions import SaltClientError

    client = FindJobClient(late={"web-1": 0}, done={"web-1": 3})
    answer = client.run_job
    refused = [2]

    def run_job(*args, **kwargs):
        if refused[0]:
            refused[0] -= 1
            raise SaltClientError("Salt request timed out. The master is not responding.")
        return answer(*args, **kwargs)

    client.run_job = run_job
    fake = _straggler_run(monkeypatch, client)
    found, verdicts = fake.stragglers("J", ["web-1"])
    assert verdicts == {} and found == {"web-1": {"ret": {"result": True}, "retcode": 0}}


def test_find_job_rounds_are_spaced_by_the_nodes_they_ask():
    """Salt's client re-asks every ``gather_job_timeout`` while a node runs the job: at 100 nodes a
    round every 10 s cost every node one more job (test.ping of 101 nodes: 30 s on two cores)."""
    from deploy_master import config

    assert config.find_job_interval({"gather_job_timeout": 10}, 5) == 10
    assert config.find_job_interval({"gather_job_timeout": 10}, 101) == 20
    assert config.find_job_interval({"gather_job_timeout": 5, "deploy_find_job_per_node": 0}, 101) == 5


def test_a_node_that_answered_once_and_then_died_is_gone(monkeypatch):
    """An answer counts once: the round-1 "running" of a node that died after it does not keep it
    alive in every later round."""
    client = FindJobClient(late={"web-3": 0}, done={})
    client.late["web-3"] = 0
    fake = _straggler_run(monkeypatch, client)
    original = client.tick

    def tick():  # web-3 answers the first round only, then dies
        if len(client.rounds) > 1:
            client.late.pop("web-3", None)
        original()

    client.tick = tick
    found, verdicts = fake.stragglers("J", ["web-3"])
    assert found == {} and verdicts == {"web-3": jobs.NO_RESPONSE}
    assert len(client.rounds) == 3  # answered, then two silent rounds


def test_a_master_that_never_takes_the_question_is_named_at_the_deadline(monkeypatch):
    from salt.exceptions import SaltClientError

    class Client(FindJobClient):
        def run_job(self, *args, **kwargs):
            raise SaltClientError("Salt request timed out. The master is not responding.")

    fake = _straggler_run(monkeypatch, Client(late={}, done={}), deploy_job_timeout=30)
    found, verdicts = fake.stragglers("J", ["web-1"])
    assert found == {}
    assert verdicts == {"web-1": "no return within deploy_job_timeout (30s): the master did not take the "
                                 "question whether the minion runs the job"}


class ScriptedClient(FindJobClient):
    """Each round, each node answers ``find_job`` as its script says (None: silence, False: "I run no
    such job", True: "I run it"); the job's return lands in the cache at round ``done[node]``."""

    def __init__(self, script, done):
        super().__init__(late={}, done=done)
        self.script = script

    def tick(self):
        r = len(self.rounds) - 1
        for node, answers in self.script.items():
            answer = answers[min(r, len(answers) - 1)]
            if answer is not None:
                self.cache.setdefault(self.fj_jids[-1], {})[node] = {"ret": {"jid": "J"} if answer else {}}
        for node, at in self.done.items():
            if r >= at:
                self.cache.setdefault("J", {})[node] = {"ret": {"result": True}}


def test_a_node_that_thaws_and_answers_before_its_job_started_is_waited_for(monkeypatch):
    """A minion frozen (or swamped) while the job was published answers the next ``find_job`` with
    "no such job" when it runs the question before the job it received first has started (Salt 3008
    loads the job's modules before the job shows in the minion's proc folder).  One such answer is
    no verdict: the next round finds the job running."""
    client = ScriptedClient({"web-2": [None, False, True, True]}, done={"web-2": 3})
    fake = _straggler_run(monkeypatch, client)
    found, verdicts = fake.stragglers("J", ["web-2"])
    assert verdicts == {} and found == {"web-2": {"ret": {"result": True}, "retcode": 0}}


def test_a_node_that_keeps_saying_it_runs_no_such_job_is_named_so(monkeypatch):
    client = ScriptedClient({"web-2": [False]}, done={})
    fake = _straggler_run(monkeypatch, client)
    found, verdicts = fake.stragglers("J", ["web-2"])
    assert found == {} and verdicts["web-2"].startswith("no return: the minion answers but does not run this job")
    assert len(client.rounds) == 2  # deploy_silent_rounds answers in a row
