"""Releases through Salt syndics: the runner on a master of masters, the nodes behind two syndic masters.

One sandbox for the module: ``sandbox.cluster.Sandbox(syndics=2)``: the master of masters (MoM) on
127.0.0.1, syndic masters sm-1 (lb-1, web-1, web-3) and sm-2 (pre-1, web-2) on two loopback addresses
of their own, each with its salt-syndic, every daemon on Salt's TCP transport (docs/syndics.md).
Every command is ``salt-run -c <MoM config>``: a release (preprod, then batches behind HAProxy), a
normal and an emergency rollback give what they give with one master; a minion that is down behind a
live syndic, then a whole syndic master that is down, stop a release before anything is switched.

Builds a sandbox of its own: the session cluster has one master, and a syndic topology is chosen
when the masters start; the last test stops a syndic master for good.
"""

import json
import subprocess
import time

import pytest

from sandbox import repo as sample_repo
from sandbox.cluster import ENV, PROJECT

from .conftest import own_sandbox

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def box():
    with own_sandbox("dpl-sy", range(150, 200), syndics=2) as sbx:
        yield sbx


class Ran:
    """salt-run's exit code, output and its JSON return (``data``)."""

    def __init__(self, proc, seconds):
        self.returncode, self.stdout, self.stderr, self.seconds = proc.returncode, proc.stdout, proc.stderr, seconds
        try:
            self.data = json.loads(proc.stdout)
        except ValueError:
            self.data = {}

    @property
    def text(self):
        return self.stdout + self.stderr


def salt_run(box, *args, timeout=400):
    """``salt-run -c <MoM config> --out=json`` ``args``."""
    started = time.monotonic()
    proc = subprocess.run([*box.salt_cmd("salt-run"), "--out=json", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    return Ran(proc, time.monotonic() - started)


def release(box):
    return salt_run(box, "deploy.release", f"project={PROJECT}", f"env={ENV}")


def currents(box):
    return {n: box.current(n) for n in box.nodes}


def lb_states(box):
    return {n: box.lb.server_state(n) for n in box.web_ids}


def start_minions(box, names):
    """Start these minions again and wait until they answer through the MoM."""
    for name in names:
        proc = box._spawn_daemon("salt-minion", box.minion_conf_dir(name), name)  # pylint: disable=protected-access
        box._daemon_started(proc, name)  # pylint: disable=protected-access
    box.wait_minions()


def test_the_topology_answers_from_the_mom(box):
    """Every minion answers the MoM, through the syndic master the sandbox put it behind."""
    assert box.syndic_of == {"lb-1": "sm-1", "pre-1": "sm-2", "web-1": "sm-1", "web-2": "sm-2", "web-3": "sm-1"}
    assert box.ping(box.minion_ids) == set(box.minion_ids)
    daemons = box.salt_daemons()
    assert all(daemons[d] for d in ("master", "sm-1", "sm-1-syndic", "sm-2", "sm-2-syndic")), daemons


def test_release_then_a_normal_and_an_emergency_rollback(box):
    first = release(box)
    assert first.returncode == 0, first.text[-4000:]
    a = first.data["release"]
    assert currents(box) == {n: a for n in box.nodes}
    sample_repo.add_release(box.repo, "v1.2.0")
    second = release(box)
    assert second.returncode == 0, second.text[-4000:]
    b = second.data["release"]
    assert "_v1.2.0_" in b and currents(box) == {n: b for n in box.nodes}
    # preprod first, then one web node per batch, each out of the LB and back
    assert all(second.data["nodes"][n]["result"] == "ok" for n in box.nodes), second.data["nodes"]
    for node in box.web_ids:
        assert f"{node} out of the LB" in second.text, second.text[-4000:]
    assert second.text.index("preprod pre-1: switching to") < second.text.index("web-1 out of the LB")
    assert lb_states(box) == {n: "ready" for n in box.web_ids}
    status, _, first_line, _ = box.fetch()
    assert status == 200 and first_line == f"{PROJECT} 1.2.0"

    back = salt_run(box, "deploy.rollback", f"project={PROJECT}", f"env={ENV}")
    assert back.returncode == 0, back.text[-4000:]
    assert back.data["to"] == a and currents(box) == {n: a for n in box.nodes}
    assert "out of the LB" in back.text and lb_states(box) == {n: "ready" for n in box.web_ids}

    sample_repo.add_release(box.repo, "v1.3.0")
    third = release(box)
    assert third.returncode == 0, third.text[-4000:]
    emergency = salt_run(box, "deploy.rollback", f"project={PROJECT}", f"env={ENV}", "emergency=True")
    assert emergency.returncode == 0, emergency.text[-4000:]
    assert emergency.data["to"] == a  # b was marked bad by the normal rollback
    assert currents(box) == {n: a for n in box.nodes}
    assert "out of the LB" not in emergency.text and lb_states(box) == {n: "ready" for n in box.web_ids}
    # the nodes and the target from the master's record: the rollback's one call is the only job
    assert box.read_history()[-1]["timings"]["salt_calls"] == 1, box.read_history()[-1]["timings"]

    history = salt_run(box, "deploy.history", f"project={PROJECT}", f"env={ENV}")
    assert history.returncode == 0, history.text[-4000:]
    runs = [(r["kind"], r["mode"], r["result"]) for r in box.read_history()[-5:]]
    assert runs == [("release", "normal", "success")] * 2 + [("rollback", "normal", "success"),
                                                              ("release", "normal", "success"),
                                                              ("rollback", "emergency", "success")], runs
    assert history.stdout.count('"success"') >= 5, history.stdout[-2000:]


def test_a_minion_down_behind_a_live_syndic_stops_the_release(box):
    before = currents(box)
    sample_repo.add_release(box.repo, "v1.4.0")
    box.stop_daemons(["web-2"])
    try:
        ret = release(box)
        assert ret.returncode == 1, ret.text[-4000:]
        assert "prepare failed on web-2: nothing was switched" in ret.data["error"], ret.text[-4000:]
        error = ret.data["nodes"]["web-2"]["error"]
        assert error.startswith("no response") and "behind syndic sm-2" in error, error
        assert currents(box) == before
        assert lb_states(box) == {n: "ready" for n in box.web_ids}
        assert box.read_history()[-1]["result"] == "failure"
    finally:
        start_minions(box, ["web-2"])


def test_a_syndic_master_down_fails_its_nodes_and_touches_no_other(box):
    """sm-2 and its salt-syndic stop: pre-1 and web-2 are silent; the MoM names their syndic."""
    before = currents(box)
    box.stop_daemons(["sm-2-syndic", "sm-2"])
    ret = release(box)
    assert ret.returncode == 1, ret.text[-4000:]
    assert "prepare failed on pre-1, web-2: nothing was switched" in ret.data["error"], ret.text[-4000:]
    for node in ("pre-1", "web-2"):
        error = ret.data["nodes"][node]["error"]
        assert error.startswith("no response") and "syndic sm-2" in error, error
    assert currents(box) == before
    assert lb_states(box) == {n: "ready" for n in box.web_ids}
    assert box.read_history()[-1]["result"] == "failure"
    # the nodes behind sm-1 still follow the MoM
    assert box.ping(["lb-1", "web-1", "web-3"]) == {"lb-1", "web-1", "web-3"}
    lock = salt_run(box, "deploy.lock_status", f"project={PROJECT}", f"env={ENV}")
    assert lock.returncode == 0 and '"locked": false' in lock.stdout, lock.text[-4000:]
