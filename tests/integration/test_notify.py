"""
Notifications end to end: the runner posts its run's five notifiable events itself (no reactor on the
session master); a loopback HTTP sink receives
the webhooks.  Exactly one notification per event and hook, in order, none with a secret.

Uses the session cluster (the runner posts; no reactor); a webhook sink per test.
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
    new_version(c)  # repair the branch: later tests release master
    # no secret in any notification (the pillar's secrets, the hooks' tokens), nor in the master's log
    bodies = json.dumps([b for _, b in first + second])
    with open(c.master.config["log_file"], encoding="utf-8", errors="replace") as fh:
        log = fh.read()
    for secret in (*SECRETS.values(), "HOOKTOKEN-1", "SECdingtalk"):
        assert secret not in bodies, secret
        assert secret not in log, secret
    c.set_pillar()


def test_a_paused_then_aborted_release_notifies_pause_then_rollback(clean_cluster, sink):
    """A real release that pauses after the gray stage (exit 5), then deploy.abort: the hook that
    wants pause and rollback gets exactly those two, in that order, in WeCom's format."""
    c = clean_cluster
    base, got = sink
    new_version(c)  # master may hold a broken commit (the test before): a good one on top
    assert c.run("deploy.release", project="rainbow", env="pro").returncode == 0  # one release everywhere
    c.set_pillar(project_extra={
        "notify": [{"url": f"{base}/wecom?key=WECOMKEY-1", "format": "wecom", "events": ["pause", "rollback"]}],
        "envs": {"pro": {"stages": [{"name": "gray", "target": "G@region:east", "batch": 1, "pause": True},
                                    {"name": "all", "batch": 1}]}},
    })
    new_version(c)
    paused = c.run("deploy.release", project="rainbow", env="pro")
    assert paused.returncode == 5, (paused.stdout, paused.stderr[-2000:])
    run, release = paused.data["run"], paused.data["release"]
    assert wait_for(got, 1)[0][1]["text"]["content"] == (
        f"rainbow/pro: release paused after stage gray: {release} (run {run}: salt-run deploy.promote or deploy.abort)"
        " (by root)")
    aborted = c.run("deploy.abort", project="rainbow", env="pro")
    assert aborted.returncode == 0, (aborted.stdout, aborted.stderr[-2000:])
    out = wait_for(got, 2)
    assert len(out) == 2, out
    assert out[1][1]["text"]["content"].startswith(
        "rainbow/pro: release rolled back 2 node(s) to their previous release after: aborted by deploy.abort"), out
    assert "WECOMKEY-1" not in json.dumps([b for _, b in out])
    c.set_pillar()
