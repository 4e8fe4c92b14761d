"""
Several load balancers, and the wait until a batch put back is UP, on real daemons: the session
cluster (``clean_cluster``) plus HAProxy instances and an nginx LB of this module, in front of the
same web nodes.

A watcher samples, every 50 ms, each LB's view of each web node (HAProxy: ``show stat`` status;
nginx: its upstream file) and the release each node's ``current`` points to: the switch of a node
(its ``current`` changing between two samples) must fall where every LB has it out (MAINT).
"""

import csv
import io
import os
import re
import threading
import time

import pytest

from sandbox import web

from .conftest import NODES, USER, WEB, _free_port
from .test_release import new_version

pytestmark = pytest.mark.slow  # extra HAProxy and nginx instances, six real releases: minutes


def _haproxy(work_dir, name, servers=None, **kwargs):
    lb = web.HAProxy(os.path.join(work_dir, "svc", name), "rainbow",
                     servers or {n: f"{NODES[n][0]}:8080" for n in WEB},
                     bind=f"127.0.0.1:{_free_port()}", user=USER, **kwargs)
    lb.start()
    return lb


@pytest.fixture(scope="module")
def hap2(work_dir, php_nodes):
    lb = _haproxy(work_dir, "haproxy-2")
    yield lb
    lb.stop()


@pytest.fixture(scope="module")
def hap_slow(work_dir, php_nodes):
    """A slow health check: a server back from maintenance is UP once a check (every 2 s) says so."""
    lb = _haproxy(work_dir, "haproxy-slow", check_inter="2s", rise=3)
    yield lb
    lb.stop()


@pytest.fixture(scope="module")
def hap_dead3(work_dir, php_nodes):
    """web-3 at an address where nothing listens: its health check never passes."""
    servers = {n: f"{NODES[n][0]}:8080" for n in WEB} | {"web-3": f"{NODES['web-3'][0]}:{_free_port()}"}
    lb = _haproxy(work_dir, "haproxy-dead3", servers=servers)
    yield lb
    lb.stop()


@pytest.fixture(scope="module")
def nginx_lb(work_dir, php_nodes):
    lb = web.NginxLB(os.path.join(work_dir, "svc", "nginx-lbs"), "rainbow_lbs",
                     {n: f"{NODES[n][0]}:8080" for n in WEB}, bind=f"127.0.0.1:{_free_port()}", user=USER)
    lb.start()
    yield lb
    lb.stop()


def hap(lb, name, minion="lb-1", **extra):
    return {"name": name, "driver": "haproxy", "minion": minion, "socket": lb.socket, "backend": "rainbow",
            "drain_timeout": 10, **extra}


def ready(*lbs):
    for lb in lbs:
        for node in WEB:
            lb.command(f"set server rainbow/{node} state ready")


def statuses(lb):
    """{server: status}: HAProxy's ``show stat`` status, or MAINT/UP from an nginx LB's upstream file."""
    if isinstance(lb, web.NginxLB):
        with open(lb.upstream_file, encoding="utf-8") as fh:
            text = fh.read()
        out = {}
        for node in WEB:
            line = re.search(rf"^.*server\s+{re.escape(lb.servers[node])}\b.*$", text, re.M).group(0)
            out[node] = "MAINT" if re.search(r"\bdown\b", line.split(";")[0]) or line.lstrip().startswith("#") \
                else "UP"
        return out
    rows = csv.DictReader(io.StringIO(lb.command("show stat").lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r.get("pxname") == "rainbow" and r["svname"] in WEB}


class Watch(threading.Thread):
    def __init__(self, cluster, lbs):
        super().__init__(daemon=True)
        self.cluster, self.lbs, self.samples, self.done = cluster, lbs, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            sample = {"current": self.cluster.currents(WEB)}
            sample.update({name: statuses(lb) for name, lb in self.lbs.items()})
            self.samples.append(sample)
            time.sleep(0.05)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join(10)

    def switches_out_of_every_lb(self):
        """Each node's switch (its current changing between two samples) falls where every LB has it in MAINT."""
        seen = 0
        for before, after in zip(self.samples, self.samples[1:], strict=False):
            for node in WEB:
                if before["current"][node] != after["current"][node]:
                    seen += 1
                    for name in self.lbs:
                        assert before[name][node] == after[name][node] == "MAINT", (node, name, before, after)
        return seen


def until_up(lb, timeout=60):
    """Wait until ``lb`` has every web node UP (a node with no release yet fails its health check)."""
    deadline = time.monotonic() + timeout
    while statuses(lb) != {n: "UP" for n in WEB}:
        assert time.monotonic() < deadline, statuses(lb)
        time.sleep(0.2)


def release(c):
    new_version(c)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    return ret, ret.data if isinstance(ret.data, dict) else {}


@pytest.mark.parametrize("second_minion", ["lb-1", "pre-1"])
def test_a_batch_is_out_of_every_lb_during_its_switch(clean_cluster, hap2, second_minion):
    """Two HAProxy in front of the same nodes (on one LB minion, then on two): each batch is out of
    both while it switches, back in both after; an operator's maint on one LB is kept."""
    c = clean_cluster
    ready(hap2)
    hap2.command("set server rainbow/web-3 state maint")  # an operator's, on the second LB only
    c.set_pillar(project_extra={"lb": [hap(c.lb, "dc1"), hap(hap2, "dc2", minion=second_minion)]})
    with Watch(c, {"dc1": c.lb, "dc2": hap2}) as watch:
        ret, summary = release(c)
    assert ret.returncode == 0, ret.stdout
    assert watch.switches_out_of_every_lb() == len(WEB)
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert {n: hap2.server_state(n) for n in WEB} == {"web-1": "ready", "web-2": "ready", "web-3": "maint"}
    assert {n: summary["nodes"][n]["lb"] for n in WEB} == {"web-1": "ready", "web-2": "ready",
                                                           "web-3": "dc1: ready, dc2: maint"}
    assert summary["timings"]["lb_wait_seconds"], summary["timings"]
    path = os.path.join(c.state_dir, "locks", "rainbow_pro.detached.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            assert fh.read().strip() in ("", "[]")


def test_one_lb_failing_to_drain_fails_the_batch_and_the_other_is_put_back(clean_cluster, nginx_lb):
    """dc2 (nginx) answers the status but cannot take the batch out (its ``nginx -t`` fails): the batch
    fails before its switch, and dc1 (HAProxy), which had it out, has it back."""
    c = clean_cluster
    before = c.currents(WEB)
    broken = {"name": "dc2", "driver": "nginx", "minion": "lb-1", "upstream_file": nginx_lb.upstream_file,
              "servers": dict(nginx_lb.servers), "nginx": ["/bin/false"]}
    c.set_pillar(project_extra={"lb": [hap(c.lb, "dc1"), broken]})
    with Watch(c, {"dc1": c.lb}) as watch:
        ret, summary = release(c)
    assert ret.returncode != 0 and summary.get("result") == "failure", ret.stdout
    assert "dc2" in summary["error"] and "nginx -t failed" in summary["error"], summary["error"]
    assert c.currents(WEB) == before  # the batch failed before its switch
    assert any(s["dc1"]["web-1"] == "MAINT" for s in watch.samples)  # dc1 had it out ...
    assert c.lb_states() == {n: "ready" for n in WEB}  # ... and has it back
    assert statuses(nginx_lb) == {n: "UP" for n in WEB}


def test_nginx_and_haproxy_together(clean_cluster, nginx_lb):
    c = clean_cluster
    ng = {"name": "ng", "driver": "nginx", "minion": "pre-1", "upstream_file": nginx_lb.upstream_file,
          "servers": dict(nginx_lb.servers), "nginx": nginx_lb.reload_command()[:-2]}
    c.set_pillar(project_extra={"lb": [hap(c.lb, "hap"), ng]})
    with Watch(c, {"hap": c.lb, "ng": nginx_lb}) as watch:
        ret, summary = release(c)
    assert ret.returncode == 0, ret.stdout
    assert watch.switches_out_of_every_lb() == len(WEB)
    assert statuses(nginx_lb) == {n: "UP" for n in WEB}
    assert {n: summary["nodes"][n]["lb"] for n in WEB} == {n: "ready" for n in WEB}
    assert all(status == 200 for status, _, _ in (web.http_get(nginx_lb.url) for _ in range(3)))


def test_the_next_batch_waits_until_the_last_is_up(clean_cluster, hap_slow):
    """inter 2s rise 3: a server back from maintenance is ``UP 1/2`` until a check passes; the next
    batch leaves only then, so at no moment is one server out while another is not yet UP."""
    c = clean_cluster
    ready(hap_slow)
    if None in c.currents(WEB).values():  # nodes with no release fail their health check: serve one first
        assert release(c)[0].returncode == 0
    until_up(hap_slow)
    c.set_pillar(project_extra={"lb": [hap(hap_slow, "slow")]})
    with Watch(c, {"slow": hap_slow}) as watch:
        ret, summary = release(c)
    assert ret.returncode == 0, ret.stdout
    assert watch.switches_out_of_every_lb() == len(WEB)
    for sample in watch.samples:
        states = sample["slow"]
        if any(s == "MAINT" for s in states.values()):
            assert all(s in ("UP", "MAINT") for s in states.values()), sample
            assert list(states.values()).count("MAINT") == 1, sample
    waits = [w["seconds"] for w in summary["timings"]["lb_wait_seconds"]]
    assert len(waits) == len(WEB) and max(waits) > 0.5, waits


def test_a_server_that_does_not_come_back_fails_the_batch(clean_cluster, hap_dead3):
    c = clean_cluster
    ready(hap_dead3)
    c.set_pillar(project_extra={"lb": [hap(c.lb, "dc1"), hap(hap_dead3, "dc3")], "lb_wait_up": 3})
    ret, summary = release(c)
    assert ret.returncode != 0 and summary.get("result") == "failure", ret.stdout
    web3 = summary["nodes"]["web-3"]
    assert web3["result"] == "failed" and "not UP" in web3["error"] and "dc3" in web3["error"], web3
    assert all(summary["nodes"][n]["result"] == "ok" for n in ("web-1", "web-2")), summary["nodes"]
    waits = {w["batch"]: w["seconds"] for w in summary["timings"]["lb_wait_seconds"]}
    assert max(waits.values()) >= 3, waits
    # put back in every LB all the same (its admin state), only not UP on dc3
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert {n: hap_dead3.server_state(n) for n in WEB} == {n: "ready" for n in WEB}
