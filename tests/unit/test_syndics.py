"""Releases through syndics, the pure logic: the syndics' ``new`` events read beside the returns, which
syndic each node is behind, the error of a node no syndic took a job for, and the plan's targets matched
by the syndic masters (the same on real daemons: ``tests/integration/test_syndics.py``)."""

import re

import pytest

from deploy_master import jobs, plan as planning
from deploy_master.rollout import start, syndics


class Bus:
    """Events that land at given times on a clock that moves only while the reader waits; regex or prefix tags."""

    def __init__(self, clock, events):
        self.clock, self.events = clock, sorted(events, key=lambda e: e[0])
        self.unsubscribed = []

    def get_event(self, wait, tag, match_type, full):
        assert full
        while self.events and self.events[0][0] <= self.clock[0] + wait:
            at, etag, data = self.events.pop(0)
            self.clock[0] = max(self.clock[0], at)
            if re.match(tag, etag) if match_type == "regex" else etag.startswith(tag):
                return {"tag": etag, "data": data}
        self.clock[0] += wait
        return None

    def unsubscribe(self, tag, match_type=None):
        self.unsubscribed.append((tag, match_type))


class Client:
    def __init__(self, bus, new_events=None):
        self.event, self.published, self.new_events = bus, [], new_events or {}

    def run_job(self, target, fun, arg=(), tgt_type=None, timeout=None, jid=None, kwarg=None, listen=False):
        self.published.append((target, fun, tgt_type, jid))
        for at, syndic, minions in self.new_events.get(target, []):
            self.event.events.append((at, f"syndic/{syndic}/salt/job/{jid}/new", {"minions": minions}))
        self.event.events.sort(key=lambda e: e[0])
        return {"jid": jid, "minions": []}


def test_gather_reads_which_syndic_took_the_job_for_which_node(clock):
    J = "20261203050000000001"
    bus = Bus(clock, [(100.2, f"syndic/sm-1/salt/job/{J}/new", {"minions": ["web-1", "web-3"]}),
                      (100.3, "syndic/sm-1/salt/job/OTHER/new", {"minions": ["web-9"]}),
                      (100.4, f"salt/job/{J}/ret/web-1", {"id": "web-1", "return": True}),
                      (100.5, f"syndic/sm-1/salt/job/{J}/ret/web-3", {"id": "web-3", "return": True})])
    lists = {}
    found = jobs.gather(Client(bus), J, ["web-1", "web-3"], timeout=3, quiet=1, syndics=lists)
    assert found == {"web-1": {"ret": True, "retcode": 0}}  # only the master's own return events count
    assert lists == {"sm-1": {"web-1", "web-3"}}
    assert (f"syndic/.*/{J}", "regex") in bus.unsubscribed


def test_the_error_of_a_silent_node_names_its_syndic():
    lists = {"sm-1": {"web-1"}}
    assert jobs.syndic_verdict("web-1", lists, {}) == jobs.NO_RESPONSE + " (behind syndic sm-1)"
    assert "syndic sm-2, which it is behind, did not take the job" in jobs.syndic_verdict("web-2", lists, {"web-2": "sm-2"})
    assert "no syndic took the job for it" in jobs.syndic_verdict("web-4", lists, {})


def test_which_syndic_a_node_is_behind_is_remembered(tmp_path):
    opts = {"cachedir": str(tmp_path)}
    assert jobs.syndic_members(opts) == {}
    jobs.remember_syndics(opts, {"sm-1": {"web-1"}, "sm-2": {"web-2"}})
    jobs.remember_syndics(opts, {"sm-1": {"web-2"}})  # moved
    assert jobs.syndic_members(opts) == {"web-1": "sm-1", "web-2": "sm-1"}
    (tmp_path / "syndics").mkdir()
    (tmp_path / "syndics" / "sm-1").write_text("")
    assert jobs.known_syndics(opts) == {"sm-1"}


def test_syndic_match_stops_once_every_known_syndic_told(clock, tmp_path):
    client = Client(Bus(clock, []), {"G@roles:x": [(100.5, "sm-1", ["web-1"]), (100.7, "sm-2", ["web-2"])]})
    opts = {"cachedir": str(tmp_path), "syndic_wait": 5}
    assert jobs.syndic_match(client, opts, "G@roles:x", expect={"sm-1", "sm-2"}) == {"sm-1": {"web-1"}, "sm-2": {"web-2"}}
    assert clock[0] == 100.7
    # a syndic master that matches nothing tells nothing: wait syndic_wait + 1 s
    assert jobs.syndic_match(client, opts, "G@roles:none", expect={"sm-1"}) == {}
    assert clock[0] == pytest.approx(106.7)


class Store:
    def __init__(self, record):
        self.record = record

    def record_read(self, project, env):
        return dict(self.record)

    def record_update(self, project, env, changes, lock=None):
        for node, inventory in changes.items():
            if inventory is None:
                self.record.pop(node, None)
            else:
                self.record[node] = inventory


class Run:
    def __init__(self, client, opts, record, lock=None):
        self.client, self.opts, self.store, self.lock = client, opts, Store(record), lock
        self.transport = jobs.Transport(opts, client)
        self.project, self.env = "rainbow", "pro"
        self.envc = {"target": "G@roles:rainbow", "preprod": "pre-1",
                     "stages": [{"name": "gray", "target": "G@region:east", "batch": 1}, {"name": "all", "batch": 1}]}


def test_the_plan_on_a_master_of_masters_and_a_dead_syndic(clock, tmp_path):
    opts = {"cachedir": str(tmp_path), "syndic_wait": 1}
    (tmp_path / "syndics").mkdir()
    for s in ("sm-1", "sm-2"):
        (tmp_path / "syndics" / s).write_text("")
    events = {"G@roles:rainbow": [(100.1, "sm-1", ["web-1", "web-3"]), (100.2, "sm-2", ["pre-1", "web-2"])],
              "G@region:east": [(100.1, "sm-1", ["web-1"])], "*": [(100.1, "sm-1", ["lb-1", "web-1", "web-3"])]}
    client = Client(Bus(clock, []), events)
    run = Run(client, opts, {})
    steps = planning.make("pro", run.envc, *syndics.matcher(run))
    assert steps["nodes"] == ["pre-1", "web-1", "web-2", "web-3"] and steps["down"] == []
    assert [s["batches"] for s in steps["stages"]] == [[["web-1"]], [["web-2"], ["web-3"]]]
    assert jobs.syndic_members(opts)["web-2"] == "sm-2"
    # sm-2 is down: its nodes that hold releases (the record) stay in the plan, counted down
    del events["G@roles:rainbow"][1]
    run = Run(client, opts, {"pre-1": {"releases": ["r1"]}, "web-2": {"releases": ["r1"]}, "web-1": {}})
    steps = planning.make("pro", run.envc, *syndics.matcher(run))
    assert steps["nodes"] == ["pre-1", "web-1", "web-2", "web-3"] and steps["down"] == ["pre-1", "web-2"]
    assert "*" in [p[0] for p in client.published]  # asked whether sm-2 answers at all
    assert run.transport.calls == 3  # the env's target, the gray stage's, and '*': each a job of the run


def test_the_emergency_rollback_on_a_master_of_masters_acts_on_the_last_plan(clock, tmp_path):
    """A release (it holds the lock) keeps the nodes it matched; a look at the plan (test=True, a listing)
    does not; the emergency rollback publishes no job before its own call."""
    opts = {"cachedir": str(tmp_path), "syndic_wait": 1, "order_masters": True}
    (tmp_path / "syndics").mkdir()
    (tmp_path / "syndics" / "sm-1").write_text("")
    events = {"G@roles:rainbow": [(100.1, "sm-1", ["pre-1", "web-1"])], "G@region:east": [(100.1, "sm-1", ["web-1"])]}
    run = Run(Client(Bus(clock, []), events), opts, {})
    start.plan(run)
    assert start.plan(run, emergency=True) is not None and run.transport.calls == 4  # nothing kept: matched again
    run = Run(Client(Bus(clock, []), events), opts, {}, lock=object())
    start.plan(run)
    client = Client(Bus(clock, []))
    run = Run(client, opts, {}, lock=object())
    steps = start.plan(run, emergency=True)
    assert steps == {"nodes": ["pre-1", "web-1"], "preprod": "pre-1", "stages": [], "down": []}
    assert client.published == [] and run.transport.calls == 0


def test_a_call_on_a_master_of_masters_names_the_syndic_of_each_silent_node(tmp_path, monkeypatch):
    opts = {"cachedir": str(tmp_path), "order_masters": True}
    jobs.remember_syndics(opts, {"sm-2": {"pre-1"}})

    def run(client, nodes, fun, jid, timeout, quiet, arg=(), kwarg=None, landed=None, syndics=None):
        syndics.update({"sm-1": {"web-1", "web-2"}})  # sm-2 took nothing: it is down
        return {"web-1": {"ret": {"result": True}, "retcode": 0}}

    monkeypatch.setattr(jobs, "run", run)
    monkeypatch.setattr(jobs.Transport, "stragglers",
                        lambda self, jid, missing: ({}, dict.fromkeys(missing, jobs.NO_RESPONSE)))
    out = jobs.Transport(opts, client=None).call(["pre-1", "web-1", "web-2"], "deploy.prepare")
    assert out["web-1"]["ok"]
    assert out["web-2"]["error"] == jobs.NO_RESPONSE + " (behind syndic sm-1)"
    assert out["pre-1"]["error"].startswith("no response: syndic sm-2, which it is behind, did not take the job")
    assert jobs.syndic_members(opts) == {"pre-1": "sm-2", "web-1": "sm-1", "web-2": "sm-1"}
