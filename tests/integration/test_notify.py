"""
Notifications end to end: the session master maps the five notifiable tags to the shipped reactor file
(salt/deploy/reactor/notify.sls), which calls the deploy_notify runner; a loopback HTTP sink receives
the webhooks.  Exactly one notification per event and hook, in order, none with a secret.
"""

import json
import time

import pytest

from sandbox import repo as sample_repo

from .conftest import SECRETS
from tests.webhook_sink import webhook_sink

_VERSION = [26, 0]  # a major version of its own: tags are shared by every module of the session


def new_version(cluster, **kwargs):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(cluster.repo, tag, **kwargs)
    return tag


@pytest.fixture
def sink():
    with webhook_sink() as handle:
        yield handle


def wait_for(got, count, timeout=60):
    """Wait until ``count`` notifications arrived, then a little more: a duplicate would show."""
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    return list(got)


def test_release_events_reach_the_webhooks_once_each(clean_cluster, sink):
    c = clean_cluster
    base, got = sink
    c.set_pillar(project_extra={"notify": [
        {"url": f"{base}/generic?token=HOOKTOKEN-1"},
        {"url": f"{base}/slack", "format": "slack", "events": ["failure", "rollback"]},
        {"url": f"{base}/ding", "format": "dingtalk", "secret": "SECdingtalk", "events": ["start", "success"]},
    ]})
    # a release that succeeds: start and success, to the generic and the DingTalk hooks
    new_version(c)
    ok = c.run("deploy.release", project="rainbow", env="pro")
    assert ok.returncode == 0, ok.stdout
    first = wait_for(got, 4)
    by_path = sorted((p.split("?")[0], b.get("event") or b["text"]["content"].split(": ")[1].split(" ")[1])
                     for p, b in first)
    assert by_path == [("/ding", "started"), ("/ding", "success"), ("/generic", "start"), ("/generic", "success")], first
    generic = [b for p, b in first if p.startswith("/generic")]
    assert [b["event"] for b in generic] == ["start", "success"]
    assert generic[1]["release"] == ok.data["release"] and generic[1]["result"] == "success"
    assert generic[1]["text"].startswith(f"rainbow/pro: release success: {ok.data['release']} in ")
    ding = [p for p, _ in first if p.startswith("/ding")]
    assert all("timestamp=" in p and "sign=" in p for p in ding)  # signed with the robot's secret
    # a release that fails at preprod: start and failure (generic), failure (slack)
    got.clear()
    broken = new_version(c, broken=True)
    bad = c.run("deploy.release", project="rainbow", env="pro", ref=broken)
    assert bad.returncode == 1
    second = wait_for(got, 4)
    assert sorted(p.split("?")[0] for p, _ in second) == ["/ding", "/generic", "/generic", "/slack"], second
    generic = [b for p, b in second if p.startswith("/generic")]
    assert [b["event"] for b in generic] == ["start", "failure"]
    assert "pre-production node pre-1 failed" in generic[1]["error"]
    slack = [b for p, b in second if p.startswith("/slack")]
    assert len(slack) == 1 and slack[0]["text"].startswith("rainbow/pro: release failure: ")
    # no secret in any notification (the pillar's secrets, the hooks' tokens), nor in the master's log
    bodies = json.dumps([b for _, b in first + second])
    with open(c.master.config["log_file"], encoding="utf-8", errors="replace") as fh:
        log = fh.read()
    for secret in (*SECRETS.values(), "HOOKTOKEN-1", "SECdingtalk"):
        assert secret not in bodies, secret
        assert secret not in log, secret
    c.set_pillar()


def test_pause_and_rollback_tags_are_routed(clean_cluster, sink):
    """The recipe maps every notifiable tag: pause and rollback events (fired by paused and
    auto-rolled-back runs) reach the hooks that want them, once."""
    c = clean_cluster
    base, got = sink
    c.set_pillar(project_extra={"notify": [{"url": f"{base}/wecom", "format": "wecom", "events": ["pause", "rollback"]}]})
    for what, data in (("pause", {"kind": "release", "stage": "gray", "release": "r9", "run": "R1"}),
                       ("rollback", {"kind": "release", "nodes": ["web-1"], "reason": "analysis failed"}),
                       ("batch", {"kind": "release"})):
        ret = c.run_cli.run("event.send", f"deploy/rainbow/pro/{what}", f"data={json.dumps(data)}")
        assert ret.returncode == 0, ret
    out = wait_for(got, 2)
    assert [b["text"]["content"] for _, b in out] == [
        "rainbow/pro: release paused after stage gray: r9 (run R1: salt-run deploy.promote or deploy.abort)",
        "rainbow/pro: release rolled back 1 node(s) to their previous release after: analysis failed",
    ]
    c.set_pillar()
