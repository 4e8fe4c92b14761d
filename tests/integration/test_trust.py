"""
The trust model against someone who tries (docs/trust.md), on real daemons:

- a read-only console user (the viewer of the console's eauth config) sends requests straight to the
  master's request port, past salt-api: it cannot clear a lock, whatever the keyword arguments;
- a peer minion (web-3), with its own key and its own request channel to the master, fires events
  whose tag and data name another node: a forged ``salt/job/<jid>/ret/pre-1`` "checks passed" does
  not count for pre-1, and a forged ``deploy/rainbow/pro/success`` posts no notification.

Uses the session cluster (``clean_cluster``): the peer is web-3's own key on a request channel of the
test's, closed after each test.
"""

import json
import os
import threading
import time

import pytest
import salt.channel.client
import salt.config
import salt.exceptions
import salt.minion
import salt.runner
import salt.utils.event

from sandbox import repo as sample_repo

from .conftest import CONSOLE_USERS, WEB
from tests.webhook_sink import webhook_sink

_VERSION = [28, 0]  # a major version of its own: tags are shared by every module of the session


def new_version(cluster, **kwargs):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(cluster.repo, tag, **kwargs)
    return tag


def stale_lock(cluster):
    """A lock whose run is gone (its pid does not exist): any unlock would clear it."""
    locks = os.path.join(cluster.state_dir, "locks")
    os.makedirs(locks, exist_ok=True)
    held = {"kind": "release", "user": "alice", "host": "10.0.0.5", "jid": "20260101000000000000",
            "pid": 999_999_99, "created": 0, "since": "2026-01-01T00:00:00+00:00"}
    path = os.path.join(locks, "rainbow_pro.lock")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(held, fh)
    return path


class Peer:
    """A minion as an attacker holding its key uses it: its own request channel to the master,
    sending what the minion's event API sends (``_minion_event`` with a batch of ``events``, as
    ``event.send`` with ``preload`` does)."""

    def __init__(self, cluster, node):
        self.opts = salt.config.minion_config(cluster.minions[node].config_file)
        self.opts.update(salt.minion.resolve_dns(self.opts))
        self.channel = salt.channel.client.ReqChannel.factory(self.opts)
        self.fired = []

    def fire(self, tag, data):
        self.channel.send({"cmd": "_minion_event", "id": self.opts["id"],
                           "events": [{"tag": tag, "data": data}]}, timeout=30)
        self.fired.append(tag)

    def close(self):
        self.channel.close()


@pytest.fixture
def web3(clean_cluster):
    peer = Peer(clean_cluster, "web-3")
    yield peer
    peer.close()


def test_a_viewer_straight_to_the_master_cannot_clear_a_lock(clean_cluster):
    """The console's viewer, authenticated with its password on the master's request port (Salt's
    RunnerClient.master_call, no salt-api): every form of deploy.unlock is refused by the eauth
    ACL, deploy.lock_status shows the lock, and the lock stays."""
    c = clean_cluster
    lock = stale_lock(c)
    opts = salt.config.client_config(c.master.config_file)
    runner = salt.runner.RunnerClient(opts)
    auth = {"eauth": "file", "username": "viewer", "password": CONSOLE_USERS["viewer"]}
    base = {"project": "rainbow", "env": "pro"}
    try:
        for kwarg in ({**base, "kwarg": {"show": True}}, {**base, "force": True, "kwarg": {"show": "True"}},
                      {**base, "show": True}, {**base, "show": True, "force": True}, base):
            with pytest.raises(salt.exceptions.EauthAuthenticationError):
                runner.cmd_sync({"fun": "deploy.unlock", "kwarg": kwarg, **auth}, timeout=60)
            assert os.path.exists(lock), kwarg
        shown = runner.cmd_sync({"fun": "deploy.lock_status", "kwarg": dict(base), **auth}, timeout=60)
        assert shown["locked"] is True and shown["alive"] is False and shown["holder"]["user"] == "alice", shown
        assert os.path.exists(lock)
    finally:
        os.unlink(lock)


def test_a_peer_minion_cannot_answer_for_pre1(clean_cluster, web3):
    """A broken release fails its checks on pre-1.  While pre-1 switches, web-3 fires
    ``salt/job/<jid>/ret/pre-1`` saying the switch and its checks passed: the runner reads pre-1's
    return from the master's job cache (what pre-1 itself returned), so the release stops at pre-1
    and no web node is switched."""
    c = clean_cluster
    good = new_version(c)
    assert c.run("deploy.release", project="rainbow", env="pro", ref=good).returncode == 0
    before = c.currents(WEB)
    broken = new_version(c, broken=True)
    opts = c.master.config
    forged, stop = [], threading.Event()

    def forge():
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
            while not stop.is_set():
                ev = bus.get_event(wait=0.5, tag="salt/job/", match_type="startswith", full=True)
                data = (ev or {}).get("data") or {}
                if not ev or not ev["tag"].endswith("/new") or data.get("fun") != "deploy.switch" \
                        or "pre-1" not in (data.get("minions") or []):
                    continue
                jid = data["jid"]
                kw = (data.get("arg") or [{}])[-1] if data.get("arg") else {}
                release = kw.get("release") if isinstance(kw, dict) else None
                ret = {"result": True, "changed": True, "previous": before["web-1"], "current": release,
                       "seconds": 0.5, "steps": [{"step": "checks", "result": True, "seconds": 0.1}]}
                web3.fire(f"salt/job/{jid}/ret/pre-1", {"id": "pre-1", "jid": jid, "fun": "deploy.switch",
                                                        "return": ret, "retcode": 0, "success": True})
                forged.append(jid)

    thread = threading.Thread(target=forge, daemon=True)
    thread.start()
    time.sleep(1)  # listening before the release publishes
    try:
        bad = c.run("deploy.release", project="rainbow", env="pro", ref=broken)
    finally:
        stop.set()
        thread.join(10)
        new_version(c)  # repair the branch: later tests release master
    assert forged, "the forger never saw pre-1's switch"
    assert bad.returncode == 1, bad.stdout
    assert "pre-production node pre-1 failed" in bad.data["error"], bad.data
    assert c.currents(WEB) == before  # no web node switched to the broken release


def test_a_peer_minions_deploy_event_posts_no_notification(clean_cluster, web3):
    """web-3 fires ``deploy/rainbow/pro/success`` (and the other notifiable tags): the runner posts
    notifications from its own run only, so the hooks receive nothing."""
    c = clean_cluster
    with webhook_sink() as (base, got):
        c.set_pillar(project_extra={"notify": [{"url": f"{base}/generic"}]})
        for what in ("start", "pause", "success", "failure", "rollback"):
            web3.fire(f"deploy/rainbow/pro/{what}", {"project": "rainbow", "env": "pro", "kind": "release",
                                                     "result": what, "release": "forged", "error": "forged"})
        assert len(web3.fired) == 5
        time.sleep(8)  # a reactor would have posted by now
        assert list(got) == []
