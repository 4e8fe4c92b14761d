"""Two deployment servers hot/hot on one etcd, on real daemons.

One cluster for the module: ``sandbox.cluster.Sandbox(masters=2, store="etcd")`` (etcd on
loopback, two salt-masters on two loopback addresses with the same keys and pillar, each with
its own file_roots, minions listing both), lock TTL 3 s.

Builds a cluster of its own: the session cluster has one master and the local store, and a master's
store is chosen when it starts.
"""

import os
import signal
import subprocess
import time

import psutil
import pytest

from sandbox import cluster, repo as sample_repo
from sandbox.cluster import ENV, PROJECT

from .conftest import own_sandbox
import contextlib

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TTL = 3


@pytest.fixture(scope="module")
def box():
    with own_sandbox("dpl-2m", range(200, 250), masters=2, store="etcd", etcd_ttl=TTL) as sbx:
        yield sbx


def salt_run(box, master, *args, timeout=300):
    argv = [*box.salt_cmd("salt-run", master), "--out=json", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def currents(box):
    return {n: box.current(n) for n in box.nodes}


def _lb_state(box, node):
    return box.lb.server_state(node)


def kill_tree(pid):
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def test_first_master_releases_and_second_serves_its_own_artifact(box):
    """Release 1 from master A; release 2 from master B, whose artifact exists only in B's file_roots:
    the minions fetch salt:// from the master that published the job."""
    rel = salt_run(box, "master", "deploy.release", f"project={PROJECT}", f"env={ENV}")
    assert rel.returncode == 0, rel.stdout[-3000:]
    sample_repo.add_release(box.repo, "v1.2.0")
    rel = salt_run(box, "master-b", "deploy.release", f"project={PROJECT}", f"env={ENV}")
    assert rel.returncode == 0, rel.stdout[-3000:]
    new = currents(box)
    assert all("_v1.2.0_" in (c or "") for c in new.values()), new
    a_artifacts = os.listdir(os.path.join(box.path, "srv", "salt", "deploy_artifacts", PROJECT))
    b_artifacts = os.listdir(os.path.join(box.path, "srv", "salt-b", "deploy_artifacts", PROJECT))
    assert not [a for a in a_artifacts if "_v1.2.0_" in a] and [b for b in b_artifacts if "_v1.2.0_" in b]
    # the same history from both masters
    hist_a = salt_run(box, "master", "deploy.history", f"project={PROJECT}")
    hist_b = salt_run(box, "master-b", "deploy.history", f"project={PROJECT}")
    assert hist_a.stdout == hist_b.stdout and hist_a.stdout.count('"success"') >= 2


def _release_killed_mid_batch(box):
    """A release from master A, its salt-run SIGKILLed once web-1 is out of the LB; returns the Popen."""
    argv = [*box.salt_cmd("salt-run", "master"), "deploy.release", f"project={PROJECT}", f"env={ENV}"]
    runner = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,  # pylint: disable=consider-using-with
                              start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    deadline = time.monotonic() + 240
    for line in runner.stdout:
        seen.append(line)
        if "out of the LB" in line or time.monotonic() > deadline:
            break
    assert any("web-1 out of the LB" in line for line in seen), "".join(seen)[-3000:]
    return runner


def test_a_runner_killed_on_master_a_is_cleared_by_unlock_on_master_b(box):
    before = currents(box)
    runner = _release_killed_mid_batch(box)  # the release of what is already current: nothing else changes
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    assert _lb_state(box, "web-1") != "ready"
    deadline = time.monotonic() + TTL + 120
    while True:
        out = salt_run(box, "master-b", "deploy.unlock", f"project={PROJECT}", f"env={ENV}")
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        assert "is held by a running release by" in out.stdout, out.stdout[-2000:]
        time.sleep(1)
    assert out.returncode == 0 and '"cleared"' in out.stdout, out.stdout[-3000:]
    assert "restored LB state of web-1 left detached by an interrupted run" in out.stdout, out.stdout[-3000:]
    assert {n: _lb_state(box, n) for n in box.web_ids} == {n: "ready" for n in box.web_ids}
    assert currents(box) == before
    assert box.read_history()[-1]["result"] == "interrupted"
    show = salt_run(box, "master", "deploy.lock_status", f"project={PROJECT}", f"env={ENV}")
    assert show.returncode == 0 and '"locked": false' in show.stdout, show.stdout[-2000:]


def test_master_a_dies_mid_release_and_master_b_takes_over(box):
    sample_repo.add_release(box.repo, "v1.3.0")
    runner = _release_killed_mid_batch(box)
    # master A dies: its salt-master and the runner, SIGKILL
    kill_tree(box.pids["master"])
    os.killpg(runner.pid, signal.SIGKILL)
    runner.wait()
    assert _lb_state(box, "web-1") != "ready"  # left out of the LB by the dead run

    # until the dead run's lease expires (TTL), B is refused and told who holds the lock; then it takes over
    refusals = []
    deadline = time.monotonic() + TTL + 120
    while True:
        rel = salt_run(box, "master-b", "deploy.release", f"project={PROJECT}", f"env={ENV}")
        if rel.returncode == 0 or "is locked: release by" not in rel.stdout or time.monotonic() > deadline:
            break
        assert "on master" in rel.stdout, rel.stdout[-2000:]
        refusals.append(rel)
        time.sleep(1)
    assert rel.returncode == 0, rel.stdout[-4000:]
    assert "took over a stale lock of release by" in rel.stdout, rel.stdout[-4000:]
    assert "restored LB state of web-1 left detached by an interrupted run" in rel.stdout, rel.stdout[-4000:]
    assert all("_v1.3.0_" in (c or "") for c in currents(box).values()), currents(box)
    assert {n: _lb_state(box, n) for n in box.web_ids} == {n: "ready" for n in box.web_ids}
    results = [r["result"] for r in box.read_history()]
    assert "interrupted" in results and results[-1] == "success", results

    # an emergency rollback from B while A is down
    emergency = salt_run(box, "master-b", "deploy.rollback", f"project={PROJECT}", f"env={ENV}", "emergency=True")
    assert emergency.returncode == 0, emergency.stdout[-4000:]
    assert all("_v1.2.0_" in (c or "") for c in currents(box).values()), currents(box)

    # history and stats: the same from both masters (salt-run reads etcd; A's daemon is not needed)
    for fun in ("deploy.history", "deploy.stats"):
        a = salt_run(box, "master", fun, f"project={PROJECT}")
        b = salt_run(box, "master-b", fun, f"project={PROJECT}")
        assert a.returncode == 0 and a.stdout == b.stdout, (a.stdout[-2000:], b.stdout[-2000:])
    stats = salt_run(box, "master-b", "deploy.stats", f"project={PROJECT}").stdout
    assert '"interrupted": 2' in stats and '"emergency": 1' in stats, stats


def test_etcd_down_refuses_state_changes_and_views(box):
    etcd = box.pids["etcd"]
    cmdline = psutil.Process(etcd).cmdline()
    before = currents(box)
    os.kill(etcd, signal.SIGKILL)
    psutil.Process(etcd).wait(10) if psutil.pid_exists(etcd) else None
    try:
        for args in (["deploy.release"], ["deploy.rollback"], ["deploy.rollback", "emergency=True"],
                     ["deploy.unlock"], ["deploy.lock_status"]):
            started = time.monotonic()
            out = salt_run(box, "master-b", args[0], f"project={PROJECT}", f"env={ENV}", *args[1:], timeout=120)
            assert out.returncode == 1, (args, out.stdout[-2000:])
            assert "deploy store etcd (http://127.0.0.1:" in out.stdout and "is unreachable" in out.stdout, out.stdout[-2000:]
            assert time.monotonic() - started < 60
        hist = salt_run(box, "master-b", "deploy.history", f"project={PROJECT}")
        assert hist.returncode == 1 and "is unreachable" in hist.stdout
        assert currents(box) == before
        assert {n: _lb_state(box, n) for n in box.web_ids} == {n: "ready" for n in box.web_ids}
    finally:
        proc = subprocess.Popen(cmdline, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                                start_new_session=True)
        box.pids["etcd"] = proc.pid
        cluster._wait(lambda: cluster._port_open("127.0.0.1", box.ports["etcd"]), 20)  # pylint: disable=protected-access
