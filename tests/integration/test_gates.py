"""
Gates between stages on the real cluster: a release that pauses after the gray
stage (exit 5, the lock kept after salt-run ended), deploy.promote and deploy.abort, a timed pause that
deploy.promote cuts short, and ``on_failure: rollback`` bringing earlier batches back when batch 2 fails.

Uses the session cluster (``clean_cluster``).
"""

import json
import os
import subprocess
import threading
import time

from sandbox import repo as sample_repo

from .conftest import NODES, WEB

_VERSION = [16, 0]  # a major version of its own: tags are shared by every module of the session

OK, FAILED, BAD_INPUT, LOCKED, ABORTED, PAUSED = 0, 1, 2, 3, 4, 5


def new_version(c):
    _VERSION[1] += 1
    tag = f"v{_VERSION[0]}.{_VERSION[1]}.0"
    sample_repo.add_release(c.repo, tag)
    return tag


def stages(gray_pause=None, rest_pause=None):
    gray = {"name": "gray", "target": "G@region:east", "batch": 1}
    rest = {"name": "all", "batch": 1}
    if gray_pause is not None:
        gray["pause"] = gray_pause
    if rest_pause is not None:
        rest["pause"] = rest_pause
    return [gray, rest]


def env_pillar(**env):
    return {"envs": {"pro": env}}


def history(c):
    path = os.path.join(c.state_dir, "history", "rainbow.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def status_of(c, node, release):
    ret = c.call(node, "deploy.releases", "rainbow")
    assert ret.returncode == 0, ret
    return {r["name"]: r["status"] for r in ret.data["releases"]}.get(release)


def lock_path(c):
    return os.path.join(c.state_dir, "locks", "rainbow_pro.lock")


def released(c):
    """Every node on one release, so that 'before' is one release everywhere."""
    if len(set(c.currents().values())) != 1 or None in c.currents().values():
        new_version(c)
        ret = c.run("deploy.release", project="rainbow", env="pro")
        assert ret.returncode == OK, ret.stdout


def paused_release(c):
    """A release that pauses after the gray stage: returns (its summary, the currents before it)."""
    released(c)
    before = c.currents()
    c.set_pillar(project_extra=env_pillar(stages=stages(gray_pause=True)))
    tag = new_version(c)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == PAUSED, (ret.returncode, ret.stdout, ret.stderr[-3000:])
    data = ret.data
    assert data["result"] == "paused" and data["run"] and f"_{tag}_" in data["release"]
    assert data["paused"] == {"stage": "gray", "next": "all",
                              "switched": {"pre-1": before["pre-1"], "web-1": before["web-1"]}}
    assert "salt-run deploy.promote project=rainbow env=pro" in data["comment"]
    # preprod and the gray stage are on the new release, the rest untouched, everyone in the LB
    new = data["release"]
    assert c.currents() == {**before, "pre-1": new, "web-1": new}
    assert c.lb_states() == {n: "ready" for n in WEB}
    return data, before


def test_a_paused_release_keeps_the_lock_and_is_promoted(clean_cluster):
    c = clean_cluster
    data, before = paused_release(c)
    run, new = data["run"], data["release"]
    # salt-run has ended: the lock is kept, and it is not stale
    assert os.path.exists(lock_path(c))
    shown = c.run("deploy.lock_status", project="rainbow", env="pro")
    assert shown.returncode == OK
    assert shown.data["locked"] is True and shown.data["alive"] is True
    assert shown.data["holder"]["paused"]["run"] == run and shown.data["holder"]["paused"]["stage"] == "gray"
    # another release (or rollback) is refused naming the paused run; unlock without force too
    second = c.run("deploy.release", project="rainbow", env="pro")
    assert second.returncode == LOCKED, second.stdout
    assert f"rainbow/pro is locked: paused run {run} (release {new}, paused after stage gray" in second.data["error"]
    assert "promote or abort it" in second.data["error"]
    rollback = c.run("deploy.rollback", project="rainbow", env="pro")
    assert rollback.returncode == LOCKED and f"paused run {run}" in rollback.data["error"]
    unlock = c.run("deploy.unlock", project="rainbow", env="pro")
    assert unlock.returncode == LOCKED and "force=True" in unlock.data["error"]
    # the views show it
    view = c.run("deploy.releases", project="rainbow", env="pro")
    assert view.returncode == OK and view.data["paused"]["run"] == run and view.data["paused"]["release"] == new
    last = history(c)[-1]
    assert last["result"] == "paused" and last["run"] == run and last["stage"] == "gray"
    stats = c.run("deploy.stats", project="rainbow", env="pro").data
    # promote: the same release, from stage "all", no build, no prepare
    promoted = c.run("deploy.promote", project="rainbow", env="pro")
    assert promoted.returncode == OK, (promoted.stdout, promoted.stderr[-3000:])
    assert promoted.data["result"] == "success" and promoted.data["release"] == new and promoted.data["run"] == run
    out = promoted.stdout + promoted.stderr
    assert "build:" not in out and "prepare:" not in out
    assert c.currents() == {n: new for n in NODES}
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert not os.path.exists(lock_path(c))
    assert {n: promoted.data["nodes"][n]["result"] for n in NODES} == {n: "ok" for n in NODES}
    last = history(c)[-1]
    assert last["result"] == "success" and last["run"] == run and last["mode"] == "promote"
    after = c.run("deploy.stats", project="rainbow", env="pro").data
    assert after["releases"]["success"] == stats["releases"]["success"] + 1
    # nothing is paused now
    again = c.run("deploy.promote", project="rainbow", env="pro")
    assert again.returncode == BAD_INPUT and "rainbow/pro has no paused run" in again.data["error"]
    unknown = c.run("deploy.abort", project="rainbow", env="pro", stage="all")
    assert unknown.returncode == BAD_INPUT and "deploy.abort: unknown argument 'stage'" in unknown.data["error"]


def test_a_paused_release_is_aborted(clean_cluster):
    c = clean_cluster
    data, before = paused_release(c)
    run, new = data["run"], data["release"]
    aborted = c.run("deploy.abort", project="rainbow", env="pro")
    assert aborted.returncode == OK, (aborted.stdout, aborted.stderr[-3000:])
    assert aborted.data["result"] == "aborted" and aborted.data["run"] == run
    back = aborted.data["rolled_back"]
    assert back["result"] == "success" and back["to"] == {"pre-1": before["pre-1"], "web-1": before["web-1"]}
    # the switched nodes are back on their old release, through the LB, the new release bad there
    assert c.currents() == before
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert status_of(c, "pre-1", new) == "bad" and status_of(c, "web-1", new) == "bad"
    assert "web-1 out of the LB" in aborted.stdout + aborted.stderr
    assert not os.path.exists(lock_path(c))
    rollback_rec, release_rec = history(c)[-2:]
    assert rollback_rec["kind"] == "rollback" and rollback_rec["mode"] == "abort" and rollback_rec["result"] == "success"
    assert release_rec["kind"] == "release" and release_rec["result"] == "aborted" and release_rec["run"] == run
    # the env is free again
    c.set_pillar()
    new_version(c)
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == OK, ret.stdout


def test_a_timed_pause_waits_and_promote_cuts_it_short(clean_cluster):
    c = clean_cluster
    released(c)
    c.set_pillar(project_extra=env_pillar(stages=stages(gray_pause=300)))
    new_version(c)
    first = {}
    argv = c.run_cli.cmdline("deploy.release", "project=rainbow", "env=pro")
    thread = threading.Thread(target=lambda: first.update(ret=subprocess.run(argv, capture_output=True, text=True)))
    thread.start()
    try:
        deadline = time.monotonic() + 240
        held = {}
        while time.monotonic() < deadline:
            try:
                with open(lock_path(c), encoding="utf-8") as fh:
                    held = json.load(fh)
            except (FileNotFoundError, ValueError):
                held = {}
            if held.get("waiting"):
                break
            time.sleep(0.2)
        assert held.get("waiting", {}).get("stage") == "gray", held
        refused = c.run("deploy.release", project="rainbow", env="pro")
        assert refused.returncode == LOCKED
        started = time.monotonic()
        asked = c.run("deploy.promote", project="rainbow", env="pro")
        assert asked.returncode == OK and asked.data["result"] == "requested", asked.stdout
    finally:
        thread.join(280)
    ret = first["ret"]
    assert ret.returncode == OK, ret.stdout[-3000:] + ret.stderr[-3000:]
    assert time.monotonic() - started < 200  # not the 300 s wait
    assert "promoted by" in ret.stdout + ret.stderr
    summary = json.loads(ret.stdout) if ret.stdout.strip().startswith("{") else None
    assert len(set(c.currents().values())) == 1
    assert c.lb_states() == {n: "ready" for n in WEB}
    assert not os.path.exists(lock_path(c))
    assert summary is None or summary["result"] == "success"


def test_on_failure_rollback_brings_earlier_batches_back(clean_cluster):
    c = clean_cluster
    released(c)
    before = c.currents()
    with open(os.path.join(c.root("web-2"), "current", "VERSION"), encoding="utf-8") as fh:
        good = fh.read().strip()
    new_version(c)
    # web-2 (stage "all", batch 2 of the run) insists on the old version: its check fails on the new one
    check = {"url": f"http://{NODES['web-2'][0]}:8080/", "contains": f"rainbow {good}",
             "retries": 2, "delay": 0.2}
    c.set_pillar(node_extra={"web-2": {"checks": [check]}},
                 project_extra=env_pillar(stages=stages(), on_failure="rollback"))
    ret = c.run("deploy.release", project="rainbow", env="pro")
    assert ret.returncode == FAILED, ret.stdout
    new = ret.data["release"]
    assert ret.data["result"] == "failure" and "max_failures=0" in ret.data["error"]
    assert ret.data["nodes"]["web-2"]["result"] == "failed"
    back = ret.data["rolled_back"]
    assert back["result"] == "success", back
    assert back["to"] == {"pre-1": before["pre-1"], "web-1": before["web-1"]}
    # batch 1 (web-1) and preprod back on the old release; web-2 switched back by itself; web-3 never reached
    assert c.currents() == before
    assert c.lb_states() == {n: "ready" for n in WEB}
    for node in ("pre-1", "web-1", "web-2"):
        assert status_of(c, node, new) == "bad", node
    rollback_rec, release_rec = history(c)[-2:]
    assert rollback_rec["kind"] == "rollback" and rollback_rec["mode"] == "auto" and rollback_rec["result"] == "success"
    assert release_rec["result"] == "failure" and release_rec["rolled_back"]["to"] == back["to"]
    assert not os.path.exists(lock_path(c))
    c.set_pillar()
