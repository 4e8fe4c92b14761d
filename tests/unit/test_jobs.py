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
        self.seen = list(self.events)

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
    """Salt's client: publishes, reads the bus, and reads the master's job cache (``cache``: jid ->
    node -> what the authenticated return path stored; by default every return on the bus)."""

    def __init__(self, bus, cache=None):
        self.event = bus
        self.published = []
        self.opts = {"master_job_cache": "local_cache"}
        self.cache = cache
        self.cache_reads = 0
        self.returners = {"local_cache.get_jid": self.get_jid}

    def get_jid(self, jid):
        self.cache_reads += 1
        if self.cache is not None:
            return self.cache.get(jid, {})
        return {e[1].rsplit("/", 1)[1]: {"return": e[2]["return"], "retcode": e[2].get("retcode", 0)}
                for e in self.event.seen if e[1].startswith(f"salt/job/{jid}/ret/")}

    def run_job(self, nodes, fun, arg=(), tgt_type=None, timeout=None, jid=None, kwarg=None, listen=False):
        self.published.append((nodes, fun, list(arg), kwarg, tgt_type, jid, listen))
        return {"jid": jid, "minions": nodes}


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


def test_a_return_counts_as_the_job_cache_holds_it_and_a_forged_event_is_ignored(clock):
    """web-3 fires ``salt/job/J/ret/pre-1`` naming pre-1 (Salt's minion tag blacklist lets it through):
    the master's job cache, written by the authenticated return path under the id the minion
    authenticated with, holds no such return: pre-1 has not answered; web-1's retcode is the cache's."""
    bus = Bus(clock, [ret("J", "pre-1", {"result": True}, at=100.1), ret("J", "web-1", {"result": True}, at=100.2)])
    client = Client(bus, cache={"J": {"web-1": {"return": {"result": False}, "retcode": 1}}})
    got = jobs.run(client, ["pre-1", "web-1"], "deploy.switch", "J", timeout=5, quiet=1)
    assert got == {"web-1": {"ret": {"result": False}, "retcode": 1}}
    assert clock[0] >= 100.2 + jobs.CACHE_GRACE  # pre-1's return was looked for, then left to the caller


def test_the_job_cache_is_read_once_when_it_holds_every_return(clock):
    bus = Bus(clock, [ret("J", f"web-{i}", True, at=100 + i / 10) for i in range(1, 11)])
    client = Client(bus)
    assert len(jobs.run(client, [f"web-{i}" for i in range(1, 11)], "test.ping", "J", timeout=5, quiet=1)) == 10
    assert client.cache_reads == 1


def test_a_return_written_to_the_cache_just_after_its_event_counts(clock, monkeypatch):
    cache = {"J": {}}
    bus = Bus(clock, [ret("J", "web-1", True, at=100.1)])
    client = Client(bus, cache=cache)
    monkeypatch.setattr(time, "sleep", lambda s: (clock.__setitem__(0, clock[0] + s),
                                                  cache["J"].setdefault("web-1", {"return": True})))
    assert jobs.run(client, ["web-1"], "test.ping", "J", timeout=5, quiet=1) == {"web-1": {"ret": True, "retcode": 0}}


def test_no_job_cache_no_release():
    assert jobs.cache_check({"job_cache": True}) is None
    assert "job_cache" in jobs.cache_check({"job_cache": False})
    assert "ext_job_cache" in jobs.cache_check({"job_cache": True, "ext_job_cache": "redis"})
