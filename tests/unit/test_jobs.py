"""``deploy_master.jobs``: a job's returns read from the master's event bus (the pure logic; the
runner's every step reads them this way on real daemons in ``tests/integration``)."""

import time

import pytest

from deploy_master import jobs


class Bus:
    """Events that land at given times on a clock that moves only while the reader waits."""

    def __init__(self, clock, events):
        self.clock, self.events = clock, sorted(events, key=lambda e: e[0])  # (at, tag, data)
        self.unsubscribed = []
        self.waits = []

    def get_event(self, wait, tag, match_type, full):
        assert match_type == "startswith" and full
        self.waits.append(wait)
        while self.events and self.events[0][0] <= self.clock[0] + wait:
            at, etag, data = self.events.pop(0)
            self.clock[0] = max(self.clock[0], at)
            if etag.startswith(tag):
                return {"tag": etag, "data": data}
        self.clock[0] += wait
        return None

    def unsubscribe(self, tag):
        self.unsubscribed.append(tag)


class Client:
    def __init__(self, bus):
        self.event = bus
        self.published = []

    def run_job(self, nodes, fun, arg=(), tgt_type=None, timeout=None, jid=None, kwarg=None, listen=False):
        self.published.append((nodes, fun, list(arg), kwarg, tgt_type, jid, listen))
        return {"jid": jid, "minions": nodes}


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def ret(jid, node, value, retcode=0, at=0.0):
    return (at, f"salt/job/{jid}/ret/{node}", {"id": node, "return": value, "retcode": retcode, "fun_args": []})


def test_returns_are_read_until_every_node_answered(clock):
    bus = Bus(clock, [ret("J", "web-2", {"result": True}, at=100.3), ret("J", "web-1", "boom", retcode=1, at=100.5),
                      (100.4, "salt/job/OTHER/ret/web-3", {"id": "web-3", "return": True}),
                      (100.4, "salt/job/J/new", {"minions": ["web-1", "web-2"]})])
    found = jobs.gather(Client(bus), "J", ["web-1", "web-2"], timeout=15, quiet=10)
    assert found == {"web-2": {"ret": {"result": True}, "retcode": 0}, "web-1": {"ret": "boom", "retcode": 1}}
    assert clock[0] == 100.5  # no waiting once every node answered
    assert bus.unsubscribed == ["salt/job/J"]


def test_a_silent_node_is_left_to_the_caller_after_the_timeout(clock):
    bus = Bus(clock, [ret("J", "web-1", True, at=101)])
    found = jobs.gather(Client(bus), "J", ["web-1", "web-2"], timeout=15, quiet=10)
    assert found == {"web-1": {"ret": True, "retcode": 0}}
    assert clock[0] == pytest.approx(115)  # 15 s from the start: web-1's return at 1 s + 10 s quiet ends earlier


def test_returns_that_keep_landing_keep_the_reader_past_the_timeout(clock):
    """A long step (a 100-node prepare) whose returns land after ``deploy_timeout``: read while they
    land, each return gives the rest ``quiet`` more seconds."""
    events = [ret("J", f"web-{i}", True, at=100 + 9 + 5 * i) for i in range(1, 5)]  # at 14, 19, 24, 29 s
    bus = Bus(clock, events)
    found = jobs.gather(Client(bus), "J", [f"web-{i}" for i in range(1, 6)], timeout=15, quiet=10)
    assert sorted(found) == ["web-1", "web-2", "web-3", "web-4"]
    assert clock[0] == pytest.approx(139)  # web-5 never answered: 10 s after the last return


def test_a_nodes_second_return_or_a_node_not_asked_is_ignored(clock):
    bus = Bus(clock, [ret("J", "web-1", "first", at=100.1), ret("J", "web-1", "again", at=100.2),
                      ret("J", "web-9", "stranger", at=100.2), ret("J", "web-2", "x", at=100.3)])
    found = jobs.gather(Client(bus), "J", ["web-1", "web-2"], timeout=5, quiet=1)
    assert found == {"web-1": {"ret": "first", "retcode": 0}, "web-2": {"ret": "x", "retcode": 0}}


def test_publish_lists_the_nodes_and_listens_first():
    client = Client(Bus([0.0], []))
    assert jobs.publish(client, ["web-1"], "deploy.current", {"project": "p"}, "J", 15) is True
    assert client.published == [(["web-1"], "deploy.current", [], {"project": "p"}, "list", "J", True)]

    class Nobody(Client):
        def run_job(self, *args, **kwargs):
            return {}  # Salt's client: no minion matched, nothing published

    assert jobs.publish(Nobody(Bus([0.0], [])), ["gone"], "test.ping", None, "J", 15) is False


def test_run_publishes_then_gathers_and_a_job_nobody_took_has_no_returns(clock):
    bus = Bus(clock, [ret("J", "web-1", True, at=100.2)])
    client = Client(bus)
    assert jobs.run(client, ["web-1"], "test.ping", "J", timeout=5, quiet=1) == {"web-1": {"ret": True, "retcode": 0}}
    assert client.published[0][:2] == (["web-1"], "test.ping")

    class Nobody(Client):
        def run_job(self, *args, **kwargs):
            return {}

    assert jobs.run(Nobody(Bus(clock, [])), ["gone"], "test.ping", "J", timeout=5, quiet=1) == {}
